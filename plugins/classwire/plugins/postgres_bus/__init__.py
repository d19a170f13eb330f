"""An event bus on PostgreSQL LISTEN/NOTIFY, shared by every replica using the same database.

One dedicated asyncpg connection LISTENs to every channel that has subscribers in this process;
publishing runs ``pg_notify`` on a small pool. When the listening connection drops, a watchdog
reconnects with backoff and LISTENs again; payloads published meanwhile are lost, which the bus
contract allows (at most once: consumers also poll the durable log). Options:

- ``url``: PostgreSQL URL; defaults to the server's database URL. ``postgresql+asyncpg://``,
  ``postgresql://`` and ``postgres://`` are accepted.
- ``pool_size``: publishing connections (default 2).
- ``health_check_interval``: seconds between checks of the listening connection (default 5).
- ``connect_timeout``: seconds (default 10).
- ``max_queue``: payloads buffered per subscriber (default 10000); beyond, newest are dropped.
- ``application_name``: connections show in ``pg_stat_activity`` as ``<name>-listen`` and
  ``<name>-publish`` (default ``classwire-bus``).

Payloads are bytes but NOTIFY carries text of under 8000 bytes, so each is framed: ``t`` +
the text itself when it is valid in the database encoding, else ``b`` + base64, and a binary
payload too long for that goes as ``f`` fragments sent in one transaction (PostgreSQL delivers a
transaction's notifications together and in order, and reassembly happens per channel).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import secrets
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from classwire.server.plugins import hookimpl
from classwire.server.plugins.types import (
    EventBus,
    ProviderContext,
    Subscription,
    validate_bus_payload,
    validate_channel,
)

__all__ = [
    "PostgresBus",
    "PostgresSubscription",
    "classwire_register_event_buses",
    "normalize_url",
]

_NOTIFY_LIMIT = 7999  # PostgreSQL refuses a NOTIFY payload of 8000 bytes or more
_FRAGMENT_DATA = 7900  # base64 characters per fragment, leaving room for the header
_FRAGMENT_RE = re.compile(r"f([0-9a-f]{16}):(\d+):(\d+):")
_CONNECTION_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CannotConnectNowError,
)
_CLOSED = object()


def normalize_url(url: str) -> str:
    """An asyncpg DSN from a SQLAlchemy-style or plain PostgreSQL URL.

    :raises ValueError: the URL is not a PostgreSQL one.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a database URL: {url!r}")
    base = scheme.split("+", 1)[0].lower()
    if base not in ("postgresql", "postgres"):
        raise ValueError(
            "postgres_bus needs a PostgreSQL URL (use PostgreSQL as the database or set the "
            f"'url' option); got a {scheme!r} URL"
        )
    return f"postgresql://{rest}"


def encode(payload: bytes, *, utf8_ok: bool) -> list[str]:
    """Frame a payload into one or more NOTIFY payloads."""
    if b"\x00" not in payload:
        try:
            text = payload.decode("utf-8" if utf8_ok else "ascii")
        except UnicodeDecodeError:
            pass
        else:
            return ["t" + text]
    b64 = base64.b64encode(payload).decode("ascii")
    if len(b64) + 1 <= _NOTIFY_LIMIT:
        return ["b" + b64]
    parts = [b64[i : i + _FRAGMENT_DATA] for i in range(0, len(b64), _FRAGMENT_DATA)]
    msg_id = secrets.token_hex(8)
    return [f"f{msg_id}:{i}:{len(parts)}:{part}" for i, part in enumerate(parts)]


class PostgresSubscription(Subscription):
    def __init__(self, bus: PostgresBus, channel: str, max_queue: int) -> None:
        self.bus = bus
        self.channel = channel
        self.dropped = 0
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=max_queue + 1)
        self._max = max_queue
        self._started = False
        self._closed = False

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("subscription is closed")
        await self.bus._attach(self)
        self._started = True

    def _deliver(self, payload: bytes) -> None:
        if self._queue.qsize() >= self._max:
            self.dropped += 1
            return
        self._queue.put_nowait(payload)

    def _end(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(_CLOSED)

    async def close(self) -> None:
        if self._closed:
            return
        self._end()
        await self.bus._detach(self)

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        if not self._started:
            raise RuntimeError("enter the subscription with 'async with' before iterating")
        item = await self._queue.get()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)
            raise StopAsyncIteration
        assert isinstance(item, bytes)
        return item


class PostgresBus(EventBus):
    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 2,
        health_check_interval: float = 5.0,
        connect_timeout: float = 10.0,
        max_queue: int = 10000,
        application_name: str = "classwire-bus",
        logger: Any = None,
    ) -> None:
        if pool_size < 1 or health_check_interval <= 0 or connect_timeout <= 0 or max_queue < 1:
            raise ValueError(
                "pool_size, health_check_interval, connect_timeout and max_queue must be positive"
            )
        self._dsn = normalize_url(dsn)
        self._pool_size = pool_size
        self._interval = health_check_interval
        self._connect_timeout = connect_timeout
        self.max_queue = max_queue
        # Shows in pg_stat_activity as <name>-listen and <name>-publish, for operators.
        self._app_name = application_name
        self._log = logger if logger is not None else structlog.get_logger("classwire.postgres_bus")
        self._conn: asyncpg.Connection | None = None
        self._pool: asyncpg.Pool | None = None
        self._subscribers: dict[str, set[PostgresSubscription]] = {}
        self._partial: dict[str, tuple[str, int, list[str]]] = {}
        self._lock = asyncio.Lock()
        self._lost = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None
        self._utf8_ok = False
        self._started = False
        self._closed = False
        self.reconnects = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("bus is closed")
        async with self._lock:
            if self._started:
                return
            self._pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._pool_size,
                timeout=self._connect_timeout,
                server_settings={"application_name": f"{self._app_name}-publish"},
            )
            await self._connect_locked()
            self._watchdog = asyncio.create_task(self._watch(), name="postgres_bus.watchdog")
            self._started = True

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        subscribers, self._subscribers = self._subscribers, {}
        for group in subscribers.values():
            for subscription in group:
                subscription._end()
        async with self._lock:
            await self._drop_connection_locked()
            if self._pool is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._pool.close(), self._connect_timeout)
                self._pool = None

    # -- listening ----------------------------------------------------------------------------

    async def _connect_locked(self) -> None:
        conn = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout,
            server_settings={"application_name": f"{self._app_name}-listen"},
        )
        conn.add_termination_listener(self._on_terminated)
        self._utf8_ok = conn.get_settings().server_encoding.upper() in ("UTF8", "UTF-8")
        self._partial.clear()
        try:
            for channel in self._subscribers:
                await conn.add_listener(channel, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self._lost.clear()

    async def _drop_connection_locked(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)
            if not conn.is_closed():
                conn.terminate()

    def _on_terminated(self, conn: asyncpg.Connection) -> None:
        if conn is self._conn:
            self._lost.set()

    async def _healthy_locked(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            await asyncio.wait_for(conn.fetchval("SELECT 1"), self._connect_timeout)
        except _CONNECTION_ERRORS:
            return False
        return True

    async def _reconnect_locked(self) -> None:
        await self._drop_connection_locked()
        await self._connect_locked()
        self.reconnects += 1
        self._log.warning(
            "event_bus_reconnected",
            channels=len(self._subscribers),
            note="payloads published while disconnected are lost; consumers poll the log",
        )

    async def _watch(self) -> None:
        delay = 0.1
        while not self._closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self._interval)
            try:
                async with self._lock:
                    if self._closed:
                        return
                    if not await self._healthy_locked():
                        await self._reconnect_locked()
                delay = 0.1
            except _CONNECTION_ERRORS as exc:
                self._log.warning("event_bus_reconnect_failed", error=str(exc), retry_in=delay)
                self._lost.set()  # try again straight after the back-off
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            except Exception:  # noqa: BLE001
                # Never let the watchdog die: without it the bus would stay deaf for good.
                self._log.exception("event_bus_watchdog_error")
                await asyncio.sleep(delay)

    async def _attach(self, subscription: PostgresSubscription) -> None:
        if self._closed:
            raise RuntimeError("bus is closed")
        await self.start()
        async with self._lock:
            channel = subscription.channel
            group = self._subscribers.get(channel)
            if group:
                group.add(subscription)
                return
            for attempt in (1, 2):
                if self._conn is None or self._conn.is_closed():
                    await self._reconnect_locked()
                assert self._conn is not None
                try:
                    await self._conn.add_listener(channel, self._on_notify)
                    break
                except _CONNECTION_ERRORS:
                    if attempt == 2:
                        raise
                    await self._drop_connection_locked()
            self._subscribers[channel] = {subscription}

    async def _detach(self, subscription: PostgresSubscription) -> None:
        async with self._lock:
            channel = subscription.channel
            group = self._subscribers.get(channel)
            if group is None:
                return
            group.discard(subscription)
            if group:
                return
            del self._subscribers[channel]
            self._partial.pop(channel, None)
            conn = self._conn
            if conn is not None and not conn.is_closed():
                try:
                    await conn.remove_listener(channel, self._on_notify)
                except _CONNECTION_ERRORS:
                    # A dead connection listens to nothing; the watchdog will replace it.
                    self._lost.set()

    def _on_notify(self, conn: Any, pid: int, channel: str, text: str) -> None:
        payload = self._decode(channel, text)
        if payload is None:
            return
        for subscription in tuple(self._subscribers.get(channel, ())):
            subscription._deliver(payload)

    def _decode(self, channel: str, text: str) -> bytes | None:
        try:
            kind = text[:1]
            if kind == "t":
                return text[1:].encode("utf-8")
            if kind == "b":
                return base64.b64decode(text[1:], validate=True)
            match = _FRAGMENT_RE.match(text) if kind == "f" else None
            if match is None:
                self._log.warning("event_bus_foreign_payload", channel=channel)
                return None
            msg_id, index, count = match.group(1), int(match.group(2)), int(match.group(3))
            data = text[match.end() :]
            if index == 0:
                self._partial[channel] = (msg_id, count, [data])
            else:
                current = self._partial.get(channel)
                if current is None or current[0] != msg_id or len(current[2]) != index:
                    # A fragment of a message whose start we missed (reconnect): drop it.
                    self._partial.pop(channel, None)
                    return None
                current[2].append(data)
            current = self._partial[channel]
            if len(current[2]) < current[1]:
                return None
            del self._partial[channel]
            return base64.b64decode("".join(current[2]), validate=True)
        except (ValueError, UnicodeError):
            self._log.warning("event_bus_bad_payload", channel=channel)
            return None

    # -- publishing ---------------------------------------------------------------------------

    def subscribe(self, channel: str) -> PostgresSubscription:
        return PostgresSubscription(self, validate_channel(channel), self.max_queue)

    async def publish(self, channel: str, payload: bytes) -> None:
        validate_channel(channel)
        data = validate_bus_payload(payload)
        if self._closed:
            raise RuntimeError("bus is closed")
        await self.start()
        frames = encode(data, utf8_ok=self._utf8_ok)
        assert self._pool is not None
        for attempt in (1, 2):
            try:
                async with self._pool.acquire() as conn:
                    if len(frames) == 1:
                        await conn.execute("SELECT pg_notify($1, $2)", channel, frames[0])
                    else:
                        async with conn.transaction():
                            for frame in frames:
                                await conn.execute("SELECT pg_notify($1, $2)", channel, frame)
                return
            except _CONNECTION_ERRORS:
                # A pooled connection the server dropped while idle fails once; the pool then
                # replaces it, so one retry covers a database restart between publishes.
                if attempt == 2:
                    raise


def _positive(options: Any, name: str, default: float, cast: Callable[[Any], Any]) -> Any:
    value = cast(options.get(name, default))
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return value


def create_bus(context: ProviderContext) -> PostgresBus:
    options = context.options
    known = {
        "url",
        "pool_size",
        "health_check_interval",
        "connect_timeout",
        "max_queue",
        "application_name",
    }
    unknown = set(options) - known
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    url = options.get("url") or context.database_url
    return PostgresBus(
        normalize_url(str(url)),
        pool_size=_positive(options, "pool_size", 2, int),
        health_check_interval=_positive(options, "health_check_interval", 5.0, float),
        connect_timeout=_positive(options, "connect_timeout", 10.0, float),
        max_queue=_positive(options, "max_queue", 10000, int),
        application_name=str(options.get("application_name", "classwire-bus")),
        logger=context.logger,
    )


@hookimpl
def classwire_register_event_buses(register: Callable[..., None]) -> None:
    register(
        "postgres_bus",
        create_bus,
        description="PostgreSQL LISTEN/NOTIFY, shared by all replicas on one database",
    )
