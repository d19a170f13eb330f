"""A small client for the Janus HTTP API (long-poll transport) on aiohttp.

One :class:`JanusSession` is one Janus session: requests are POSTed to
``<url>/<session>[/<handle>]``; asynchronous results and events arrive on a long poll
(``GET <url>/<session>?maxev=N``) that a background task keeps open, and are routed to the
handle that sent them (a waiting request is matched by its transaction). The long poll itself
keeps the session alive; an explicit keepalive is sent as well, in case a poll is slow to return.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

__all__ = ["JanusError", "JanusHandle", "JanusSession"]

EventCallback = Callable[[dict[str, Any]], Awaitable[None]]


class JanusError(Exception):
    """Janus (core or plugin) refused a request. ``code`` is Janus's numeric error code."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"janus error {code}: {reason}")
        self.code = code
        self.reason = reason


def _transaction() -> str:
    return secrets.token_hex(8)


class JanusHandle:
    """A handle attached to a plugin; ``on_event`` receives every event not awaited by a call."""

    def __init__(self, session: JanusSession, handle_id: int) -> None:
        self.session = session
        self.id = handle_id
        self.on_event: EventCallback | None = None
        # Events are handled in order on a task of the handle's own, never on the poll task:
        # a handler may send requests whose answers arrive on that same poll.
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    def _deliver(self, event: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        self._queue.put_nowait(event)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name=f"janus-handle-{self.id}")

    async def _work(self) -> None:
        while not self._queue.empty():
            event = self._queue.get_nowait()
            if self.on_event is None:
                continue
            try:
                await self.on_event(event)
            except Exception as exc:  # one bad event must not stop the others
                if self.session._on_error is not None:
                    self.session._on_error(exc)

    async def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """A synchronous plugin request (create, destroy, rtp_forward, ...): its plugin data."""
        reply = await self.session._post(
            {"janus": "message", "body": body}, handle_id=self.id, expect="success"
        )
        return _plugin_data(reply)

    async def message(
        self, body: dict[str, Any], jsep: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """An asynchronous plugin request (join, configure, start, ...): the event that answers
        it (plugin data) and its JSEP, if any."""
        transaction = _transaction()
        waiter = self.session._expect(transaction)
        message: dict[str, Any] = {"janus": "message", "body": body, "transaction": transaction}
        if jsep is not None:
            message["jsep"] = jsep
        try:
            reply = await self.session._post(message, handle_id=self.id, expect=None)
            if reply.get("janus") == "event":  # answered at once, without an ack
                event = reply
            else:
                event = await asyncio.wait_for(waiter, self.session.timeout)
        finally:
            self.session._waiters.pop(transaction, None)
        return _plugin_data(event), event.get("jsep")

    async def trickle(self, candidate: dict[str, Any]) -> None:
        await self.session._post(
            {"janus": "trickle", "candidate": candidate}, handle_id=self.id, expect="ack"
        )

    async def detach(self) -> None:
        self.session._handles.pop(self.id, None)
        self.on_event = None
        with contextlib.suppress(JanusError, aiohttp.ClientError, TimeoutError):
            await self.session._post({"janus": "detach"}, handle_id=self.id, expect="success")


def _plugin_data(reply: dict[str, Any]) -> dict[str, Any]:
    data = reply.get("plugindata", {}).get("data", {})
    if "error_code" in data:
        raise JanusError(int(data["error_code"]), str(data.get("error", "")))
    return data


class JanusSession:
    def __init__(
        self,
        url: str,
        *,
        api_secret: str | None = None,
        admin_url: str | None = None,
        admin_secret: str | None = None,
        timeout: float = 10.0,
        keepalive_interval: float = 25.0,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.admin_url = admin_url.rstrip("/") if admin_url else None
        self.api_secret = api_secret
        self.admin_secret = admin_secret
        self.timeout = timeout
        self.keepalive_interval = keepalive_interval
        self.id: int | None = None
        self._http: aiohttp.ClientSession | None = None
        self._handles: dict[int, JanusHandle] = {}
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._on_error = on_error

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        reply = await self._post({"janus": "create"}, expect="success", session=False)
        self.id = int(reply["data"]["id"])
        self._tasks = [
            asyncio.create_task(self._poll(), name="janus-poll"),
            asyncio.create_task(self._keepalive(), name="janus-keepalive"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._http is not None:
            if self.id is not None:
                with contextlib.suppress(JanusError, aiohttp.ClientError, TimeoutError):
                    await self._post({"janus": "destroy"}, expect="success")
            await self._http.close()
            self._http = None
        for waiter in self._waiters.values():
            if not waiter.done():
                waiter.set_exception(ConnectionError("janus session closed"))

    async def attach(self, plugin: str) -> JanusHandle:
        reply = await self._post({"janus": "attach", "plugin": plugin}, expect="success")
        handle = JanusHandle(self, int(reply["data"]["id"]))
        self._handles[handle.id] = handle
        return handle

    async def admin(self, request: str, handle_id: int | None = None) -> dict[str, Any]:
        """An Admin API request about this session (or one of its handles)."""
        if self.admin_url is None or self._http is None:
            raise JanusError(0, "no admin API configured")
        path = f"{self.admin_url}/{self.id}" + (f"/{handle_id}" if handle_id else "")
        body: dict[str, Any] = {"janus": request, "transaction": _transaction()}
        if self.admin_secret:
            body["admin_secret"] = self.admin_secret
        async with self._http.post(
            path, json=body, timeout=aiohttp.ClientTimeout(total=self.timeout)
        ) as response:
            reply = await response.json(content_type=None)
        if reply.get("janus") == "error":
            error = reply.get("error", {})
            raise JanusError(int(error.get("code", 0)), str(error.get("reason", "")))
        return reply

    # -- plumbing -----------------------------------------------------------------------------

    def _expect(self, transaction: str) -> asyncio.Future[dict[str, Any]]:
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters[transaction] = waiter
        return waiter

    async def _post(
        self,
        message: dict[str, Any],
        *,
        handle_id: int | None = None,
        expect: str | None,
        session: bool = True,
    ) -> dict[str, Any]:
        if self._http is None:
            raise ConnectionError("janus session is not started")
        message.setdefault("transaction", _transaction())
        if self.api_secret:
            message["apisecret"] = self.api_secret
        path = self.url
        if session:
            path += f"/{self.id}"
            if handle_id is not None:
                path += f"/{handle_id}"
        async with self._http.post(
            path, json=message, timeout=aiohttp.ClientTimeout(total=self.timeout)
        ) as response:
            reply = await response.json(content_type=None)
        if reply.get("janus") == "error":
            error = reply.get("error", {})
            raise JanusError(int(error.get("code", 0)), str(error.get("reason", "")))
        if expect is not None and reply.get("janus") != expect:
            raise JanusError(0, f"expected {expect!r}, got {reply.get('janus')!r}")
        return reply

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive_interval)
            with contextlib.suppress(JanusError, aiohttp.ClientError, TimeoutError):
                await self._post({"janus": "keepalive"}, expect="ack")

    async def _poll(self) -> None:
        assert self._http is not None
        failures = 0
        while True:
            params = {"maxev": "20", "rid": str(secrets.randbits(32))}
            if self.api_secret:
                params["apisecret"] = self.api_secret
            try:
                async with self._http.get(
                    f"{self.url}/{self.id}",
                    params=params,
                    timeout=aiohttp.ClientTimeout(total=60),
                ) as response:
                    reply = await response.json(content_type=None)
                failures = 0
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                failures += 1
                if failures >= 5 and self._on_error is not None:
                    self._on_error(exc)
                await asyncio.sleep(min(2.0, 0.1 * failures))
                continue
            for event in reply if isinstance(reply, list) else [reply]:
                await self._dispatch(event)

    async def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("janus")
        if kind == "keepalive":
            return
        waiter = self._waiters.get(event.get("transaction", ""))
        if waiter is not None and kind == "event" and not waiter.done():
            waiter.set_result(event)
        handle = self._handles.get(event.get("sender", 0))
        if handle is not None:
            handle._deliver(event)
