"""Webhook delivery from the durable event log, signed per the Standard Webhooks specification.

The events table is the outbox. Each enabled endpoint has a cursor row (`webhook_cursors`): the
dispatcher fans the events after the cursor that pass the endpoint's filter out into delivery
rows and advances the cursor in the same transaction, then sends the endpoint's pending
deliveries one at a time in event sequence order, recording every attempt. State lives only in
the database, so a restart resumes where the last commit left off; an attempt whose outcome was
not committed is sent again with the same `webhook-id` (the event id): at least once.

Replicas share the work by leasing endpoints (SKIP LOCKED on PostgreSQL); one replica works an
endpoint at a time, which keeps its deliveries in order. Failures retry with exponential backoff
and jitter (or after the receiver's Retry-After) for up to `max_age` (72 h), then the endpoint is
disabled. HTTP 410 disables the endpoint at once. Both emit WebhookEndpointDisabled.

Wakes on new events through Wakeups, and polls every `poll_interval` in case a hint is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
import structlog
from google.protobuf import json_format
from standardwebhooks.webhooks import Webhook

from classwire.api.events.v1 import event_pb2
from classwire.api.events.v1 import platform_events_pb2 as ev
from classwire.api.platform.v1 import resources_pb2 as pb

from ..domain.ids import new_id
from ..store import data_repositories as data_repo
from ..store import events as event_store
from ..store import repositories as repo
from ..store.engine import Database
from ..store.types import utcnow
from .outbox import UnitOfWorkFactory, system_actor
from .wakeups import Wakeups

log = structlog.get_logger(__name__)

PENDING = pb.WEBHOOK_DELIVERY_STATE_PENDING
SUCCEEDED = pb.WEBHOOK_DELIVERY_STATE_SUCCEEDED
FAILED = pb.WEBHOOK_DELIVERY_STATE_FAILED
ENDPOINT_CREATED = ev.WebhookEndpointCreated.DESCRIPTOR.full_name
USER_AGENT = "classwire-webhooks/1"

# Dispatchers running in this process, so an API call (redelivery) can wake them at once.
_RUNNING: weakref.WeakSet[WebhookDispatcher] = weakref.WeakSet()


def nudge() -> None:
    """Wakes this process's dispatchers (other replicas notice on their next poll)."""
    for dispatcher in list(_RUNNING):
        dispatcher.wake()


@dataclass(frozen=True)
class Outcome:
    status: int  # 0: no response
    error: str
    latency: float
    retry_after: float | None


@dataclass(frozen=True)
class Work:
    tenant_id: str
    endpoint_id: str
    url: str
    secrets: list[str]
    delivery_id: str
    event_id: str
    body: bytes


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        at = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return max(0.0, (at - now).total_seconds())


def sign(secrets: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature header: one `v1,<base64>` per active secret, space-separated."""
    when = datetime.fromtimestamp(timestamp, UTC)
    text = body.decode()
    return " ".join(Webhook(secret).sign(msg_id, when, text) for secret in secrets)


class WebhookDispatcher:
    def __init__(
        self,
        db: Database,
        uow: UnitOfWorkFactory,
        wakeups: Wakeups,
        *,
        poll_interval: float = 2.0,
        lease: timedelta = timedelta(seconds=60),
        request_timeout: float = 10.0,
        backoff_base: float = 5.0,
        backoff_max: float = 3600.0,
        max_retry_after: float = 6 * 3600.0,
        max_age: timedelta = timedelta(hours=72),
        max_endpoints: int = 32,
        scan_batch: int = 500,
    ) -> None:
        self.db = db
        self.uow = uow
        self.wakeups = wakeups
        self.poll_interval = poll_interval
        self.lease = lease
        self.request_timeout = request_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.max_age = max_age
        self.max_endpoints = max_endpoints
        self.scan_batch = scan_batch
        self.owner = new_id("whd")
        self._wake = asyncio.Event()
        self._working: dict[str, asyncio.Task] = {}
        self._http: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> asyncio.Task:
        _RUNNING.add(self)
        self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")
        return self._task

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake(self) -> None:
        self._wake.set()

    def backoff(self, attempts: int) -> float:
        """Exponential backoff with jitter: half fixed, half random, so retries spread out."""
        delay = min(self.backoff_max, self.backoff_base * 2 ** max(0, attempts - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    async def _run(self) -> None:
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.request_timeout),
            headers={"user-agent": USER_AGENT},
        )
        try:
            while True:
                try:
                    heads = await self.run_once()
                    await self._sleep(heads)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("webhook dispatcher pass failed")
                    await asyncio.sleep(self.poll_interval)
        finally:
            _RUNNING.discard(self)
            workers = list(self._working.values())
            for task in workers:
                task.cancel()
            for task in workers:
                with contextlib.suppress(BaseException):
                    await task
            # Hand the endpoints back at once, so a restart does not wait for the leases.
            with contextlib.suppress(Exception):
                async with self.db.writer() as session, session.begin():
                    await data_repo.release_cursors(session, self.owner)
            await self._http.close()

    async def _sleep(self, heads: dict[str, int]) -> None:
        self._wake.clear()
        waits = [asyncio.ensure_future(self._wake.wait())]
        for tenant_id, head in heads.items():
            waits.append(
                asyncio.ensure_future(self.wakeups.wait(tenant_id, head, self.poll_interval))
            )
        try:
            await asyncio.wait(waits, timeout=self.poll_interval, return_when="FIRST_COMPLETED")
        finally:
            for task in waits:
                task.cancel()
            for task in waits:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def run_once(self) -> dict[str, int]:
        """One pass: new endpoints get cursors, endpoints with work are leased and worked in
        the background. Returns the log heads of the tenants with endpoints, to wait on."""
        await self._ensure_cursors()
        room = self.max_endpoints - len(self._working)
        if room > 0:
            now = utcnow()
            async with self.db.writer() as session, session.begin():
                claimed = await data_repo.claim_endpoints(
                    session, self.owner, now, now + self.lease, room, exclude=list(self._working)
                )
            for endpoint_id in claimed:
                self._working[endpoint_id] = asyncio.create_task(
                    self._work(endpoint_id), name=f"webhook:{endpoint_id}"
                )
        async with self.db.reader() as session:
            return await data_repo.tenant_heads(session)

    async def _ensure_cursors(self) -> None:
        async with self.db.reader() as session:
            fresh = await data_repo.endpoints_without_cursor(session, 100)
        for endpoint in fresh:
            async with self.db.writer() as session, session.begin():
                start = await self._start_sequence(session, endpoint.tenant_id, endpoint.id)
                await data_repo.create_cursor(
                    session, endpoint.id, endpoint.tenant_id, start, utcnow()
                )

    @staticmethod
    async def _start_sequence(session, tenant_id: str, endpoint_id: str) -> int:
        """An endpoint receives the events after its own creation."""
        for row in await data_repo.events_of_type_desc(session, tenant_id, ENDPOINT_CREATED, 1000):
            envelope = event_pb2.Event.FromString(row.payload)
            if envelope.platform.webhook_endpoint_created.endpoint_id == endpoint_id:
                return row.sequence
        return await event_store.last_sequence(session, tenant_id, event_store.TENANT_STREAM)

    # -- one endpoint -----------------------------------------------------------------------

    async def _work(self, endpoint_id: str) -> None:
        try:
            while True:
                work = await self._prepare(endpoint_id)
                if work is None:
                    break
                outcome = await self._send(work)
                if not await self._record(work, outcome):
                    break
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook endpoint pass failed", endpoint_id=endpoint_id)
        finally:
            self._working.pop(endpoint_id, None)
            with contextlib.suppress(Exception):
                await self._release(endpoint_id)
            self._wake.set()

    async def _prepare(self, endpoint_id: str) -> Work | None:
        """Fans new events out to delivery rows, then returns the head-of-line delivery if it
        is due (None when there is nothing to send now, or the lease was lost)."""
        now = utcnow()
        async with self.db.writer() as session, session.begin():
            cursor = await data_repo.owned_cursor(session, endpoint_id, self.owner)
            if cursor is None:
                return None
            cursor.lease_until = now + self.lease
            endpoint = await repo.get_webhook_endpoint(session, cursor.tenant_id, endpoint_id)
            if endpoint is None or not endpoint.enabled:
                return None
            for _ in range(20):
                head = await event_store.last_sequence(
                    session, cursor.tenant_id, event_store.TENANT_STREAM
                )
                found = await data_repo.events_for_endpoint(
                    session,
                    cursor.tenant_id,
                    cursor.last_sequence,
                    endpoint.event_types,
                    self.scan_batch,
                )
                await data_repo.insert_deliveries(
                    session,
                    [
                        {
                            "id": new_id("whd"),
                            "tenant_id": cursor.tenant_id,
                            "endpoint_id": endpoint_id,
                            "event_id": event_id,
                            "event_type": event_type,
                            "event_sequence": sequence,
                            "state": PENDING,
                            "attempt_count": 0,
                            "next_attempt_time": now,
                            "create_time": now,
                            "update_time": now,
                        }
                        for event_id, event_type, sequence in found
                    ],
                )
                if len(found) == self.scan_batch:
                    cursor.last_sequence = found[-1][2]
                    continue
                # A short page saw every committed event up to the head read before it
                # (sequences become visible in commit order), filtered-out ones included.
                cursor.last_sequence = max(cursor.last_sequence, head)
                break
            delivery = await data_repo.head_of_line(session, endpoint_id, PENDING)
            if delivery is None:
                cursor.next_attempt_time = None
                return None
            cursor.next_attempt_time = delivery.next_attempt_time
            if delivery.next_attempt_time is not None and delivery.next_attempt_time > now:
                return None
            event = await data_repo.get_event_row(session, cursor.tenant_id, delivery.event_id)
            if event is None:  # removed by retention: nothing left to deliver
                delivery.state = FAILED
                delivery.next_attempt_time = None
                delivery.update_time = now
                # The released cursor is claimed again at once for the next delivery.
                self._wake.set()
                return None
            secrets = [
                s.secret
                for s in await repo.webhook_secrets(session, cursor.tenant_id, [endpoint_id])
                if s.expire_time is None or s.expire_time > now
            ]
            envelope = event_pb2.Event.FromString(event.payload)
            body = json_format.MessageToJson(envelope, indent=None).encode()
            return Work(
                cursor.tenant_id,
                endpoint_id,
                endpoint.url,
                secrets,
                delivery.id,
                delivery.event_id,
                body,
            )

    async def _send(self, work: Work) -> Outcome:
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": work.event_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(work.secrets, work.event_id, timestamp, work.body),
        }
        started = time.perf_counter()
        try:
            async with self._http.post(
                work.url, data=work.body, headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                return Outcome(
                    response.status,
                    "",
                    time.perf_counter() - started,
                    parse_retry_after(response.headers.get("retry-after"), utcnow()),
                )
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            return Outcome(0, "timeout", time.perf_counter() - started, None)
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"[:500]
            return Outcome(0, text, time.perf_counter() - started, None)

    async def _record(self, work: Work, outcome: Outcome) -> bool:
        """Records the attempt and its consequence; True to go on with the next delivery."""
        now = utcnow()
        attempt_time = now - timedelta(seconds=outcome.latency)
        async with self.uow(work.tenant_id, system_actor("webhooks")) as uow:
            session = uow.session
            await data_repo.add_attempt(
                session,
                id=new_id("wha"),
                tenant_id=work.tenant_id,
                delivery_id=work.delivery_id,
                attempt_time=attempt_time,
                http_status=outcome.status,
                error=outcome.error,
                latency_us=int(outcome.latency * 1_000_000),
            )
            cursor = await data_repo.owned_cursor(session, work.endpoint_id, self.owner)
            delivery = await data_repo.get_delivery(session, work.delivery_id)
            if cursor is None or delivery is None or delivery.state != PENDING:
                return False  # another replica took over, or the endpoint was deleted
            delivery.attempt_count += 1
            delivery.update_time = now
            if 200 <= outcome.status < 300:
                delivery.state = SUCCEEDED
                delivery.next_attempt_time = None
                return True
            if outcome.status == 410:
                await self._disable(uow, work.endpoint_id, "HTTP 410 Gone", now)
                return False
            if outcome.retry_after is not None:
                delay = min(outcome.retry_after, self.max_retry_after)
            else:
                delay = self.backoff(delivery.attempt_count)
            due = now + timedelta(seconds=delay)
            if due > delivery.create_time + self.max_age:
                hours = self.max_age.total_seconds() / 3600
                await self._disable(
                    uow, work.endpoint_id, f"retries exhausted after {hours:g}h", now
                )
                return False
            delivery.next_attempt_time = due
            cursor.next_attempt_time = due
            return False

    async def _disable(self, uow, endpoint_id: str, reason: str, now: datetime) -> None:
        endpoint = await repo.get_webhook_endpoint(uow.session, uow.tenant_id, endpoint_id)
        if endpoint is None:
            return
        endpoint.enabled = False
        endpoint.disabled_reason = reason
        endpoint.update_time = now
        await data_repo.fail_pending(uow.session, endpoint_id, PENDING, FAILED, now)
        uow.emit(ev.WebhookEndpointDisabled(endpoint_id=endpoint_id, reason=reason))
        log.warning("webhook endpoint disabled", endpoint_id=endpoint_id, reason=reason)

    async def _release(self, endpoint_id: str) -> None:
        async with self.db.writer() as session, session.begin():
            cursor = await data_repo.owned_cursor(session, endpoint_id, self.owner)
            if cursor is None:
                return
            delivery = await data_repo.head_of_line(session, endpoint_id, PENDING)
            cursor.next_attempt_time = delivery.next_attempt_time if delivery else None
            cursor.lease_owner = None
            cursor.lease_until = None
