"""The durable event log, read through the API: one session's stream (WatchSession) and the
tenant's log (WatchEvents, ListEvents, GetEvent).

Streams read from the database, never from memory, so a resumed stream continues exactly after
the cursor it was given, also after a restart or on another replica. Wakeups only shorten the
wait for new events; a lost wakeup costs at most one poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from classwire.api.events.v1 import event_pb2

from ..events.catalogue import is_event_type, unwrap
from ..events.wakeups import Wakeups
from ..store import events as event_store
from ..store import repositories as repo
from ..store.engine import Database
from ..store.models import Event
from ..store.types import utcnow
from . import paging
from .auth import Principal
from .errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
    Violations,
)

DEFAULT_HEARTBEAT = timedelta(seconds=15)
HEARTBEAT_RANGE = (timedelta(seconds=1), timedelta(minutes=5))
MAX_FILTER_VALUES = 500
MAX_CUSTOM_NAME = 128
CUSTOM_EVENT = "classwire.api.events.v1.CustomEvent"

# Area wrapper name (`classwire.api.events.v1.SessionEvent`) -> the payload names of that area.
AREAS: dict[str, frozenset[str]] = {
    area.message_type.full_name: frozenset(
        f.message_type.full_name for f in area.message_type.fields if f.message_type is not None
    )
    for area in event_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields
}


@dataclass(frozen=True)
class EventFilter:
    types: tuple[str, ...] = ()
    session_ids: tuple[str, ...] = ()
    custom_event_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResolvedFilter:
    types: frozenset[str]
    session_ids: tuple[str, ...]
    custom_event_names: frozenset[str]

    def passes(self, row: Event) -> event_pb2.Event | None:
        """The decoded event if it passes the parts of the filter SQL cannot see, else None."""
        envelope = event_pb2.Event.FromString(row.payload)
        if self.custom_event_names and row.type == CUSTOM_EVENT:
            payload = unwrap(envelope)
            if getattr(payload, "name", "") not in self.custom_event_names:
                return None
        return envelope

    def fingerprint(self) -> dict:
        return {
            "types": sorted(self.types),
            "session_ids": sorted(self.session_ids),
            "custom": sorted(self.custom_event_names),
        }


@dataclass(frozen=True)
class Heartbeat:
    """`cursor`: every passing event up to it was sent. `head`: the log's last sequence (the
    tenant's for WatchEvents, the session's for WatchSession)."""

    cursor: int
    head: int
    server_time: datetime


def resolve_types(
    names: tuple[str, ...], field: str, problems: Violations, *, areas: bool
) -> frozenset[str]:
    """Payload type names (area wrappers expanded when `areas`); unknown names are violations."""
    resolved: set[str] = set()
    if len(names) > MAX_FILTER_VALUES:
        problems.add(field, f"at most {MAX_FILTER_VALUES} names")
    for i, name in enumerate(names):
        if is_event_type(name):
            resolved.add(name)
        elif areas and name in AREAS:
            resolved |= AREAS[name]
        else:
            problems.add(f"{field}[{i}]", f"unknown event type {name!r}")
    return frozenset(resolved)


def resolve_filter(flt: EventFilter, prefix: str = "filter") -> ResolvedFilter:
    problems = Violations()
    types = resolve_types(flt.types, f"{prefix}.types", problems, areas=True)
    if len(flt.session_ids) > MAX_FILTER_VALUES:
        problems.add(f"{prefix}.session_ids", f"at most {MAX_FILTER_VALUES} ids")
    for i, session_id in enumerate(flt.session_ids):
        if not session_id:
            problems.add(f"{prefix}.session_ids[{i}]", "must not be empty")
    if len(flt.custom_event_names) > MAX_FILTER_VALUES:
        problems.add(f"{prefix}.custom_event_names", f"at most {MAX_FILTER_VALUES} names")
    for i, name in enumerate(flt.custom_event_names):
        if not 0 < len(name) <= MAX_CUSTOM_NAME:
            problems.add(
                f"{prefix}.custom_event_names[{i}]", f"must be 1 to {MAX_CUSTOM_NAME} characters"
            )
    problems.raise_if_any()
    return ResolvedFilter(types, tuple(flt.session_ids), frozenset(flt.custom_event_names))


class EventLog:
    """Reads of the durable log. `close()` ends every open stream with UNAVAILABLE, so a draining
    server does not wait for watchers that would never finish by themselves."""

    def __init__(
        self,
        db: Database,
        wakeups: Wakeups,
        *,
        poll_interval: timedelta = timedelta(seconds=2),
        batch_size: int = 200,
        session_heartbeat_interval: timedelta = DEFAULT_HEARTBEAT,
    ) -> None:
        self.db = db
        self.wakeups = wakeups
        self.poll_interval = poll_interval.total_seconds()
        self.batch_size = batch_size
        # WatchSession's request has no interval: the contract fixes it at 15 s.
        self.session_heartbeat_interval = session_heartbeat_interval
        self._closed = asyncio.Event()

    def close(self) -> None:
        self._closed.set()

    def _check_open(self) -> None:
        if self._closed.is_set():
            raise Unavailable(
                "the server is shutting down; resume from the last sequence on another replica",
                reason="SERVER_SHUTTING_DOWN",
            )

    async def _wait(self, tenant_id: str, seen: int, timeout: float) -> None:
        """Until the tenant's log grows past `seen`, the timeout passes, or the log closes."""
        if timeout <= 0:
            return
        grown = asyncio.ensure_future(self.wakeups.wait(tenant_id, seen, timeout))
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({grown, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (grown, closed):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    # WatchSession ------------------------------------------------------------------------------

    async def watch_session(
        self, principal: Principal, session_id: str, after: int, types: tuple[str, ...]
    ) -> AsyncIterator[event_pb2.Event | Heartbeat]:
        principal.require("session:read")
        problems = Violations()
        names = resolve_types(types, "event_types", problems, areas=False)
        problems.raise_if_any()
        tenant_id = principal.tenant_id
        async with self.db.reader() as session:
            if await repo.get_live_session(session, tenant_id, session_id) is None:
                raise NotFound(f"session {session_id!r} not found", reason="SESSION_NOT_FOUND")
            head = await event_store.last_sequence(session, tenant_id, session_id)
        if after > head:
            raise OutOfRange(
                f"after_sequence {after} is beyond the session's last event {head}",
                reason="SEQUENCE_AHEAD",
                metadata={"latest_sequence": str(head)},
            )
        interval = self.session_heartbeat_interval.total_seconds()
        loop = asyncio.get_running_loop()
        cursor, idle_since = after, loop.time()
        while True:
            self._check_open()
            async with self.db.reader() as session:
                # Read the tenant head before the events: a commit after this read wakes the wait
                # below at once, so no event can slip between the query and the wait.
                tenant_head = await event_store.last_sequence(
                    session, tenant_id, event_store.TENANT_STREAM
                )
                rows = await event_store.read_after(
                    session, tenant_id, cursor, self.batch_size, session_id=session_id, types=names
                )
            for row in rows:
                cursor = row.session_sequence or cursor
                yield event_pb2.Event.FromString(row.payload)
            if rows:
                idle_since = loop.time()
                if len(rows) == self.batch_size:
                    continue
            elif loop.time() - idle_since >= interval:
                async with self.db.reader() as session:
                    latest = await event_store.last_sequence(session, tenant_id, session_id)
                yield Heartbeat(cursor, latest, utcnow())
                idle_since = loop.time()
            remaining = interval - (loop.time() - idle_since)
            await self._wait(tenant_id, tenant_head, min(self.poll_interval, max(remaining, 0.01)))

    # WatchEvents -------------------------------------------------------------------------------

    async def watch_events(
        self,
        principal: Principal,
        flt: EventFilter,
        after: int | None,
        heartbeat_interval: timedelta | None,
    ) -> AsyncIterator[event_pb2.Event | Heartbeat]:
        """`after` None starts at the head (from_latest)."""
        principal.require("data:read")
        resolved = resolve_filter(flt)
        interval = heartbeat_interval if heartbeat_interval is not None else DEFAULT_HEARTBEAT
        low, high = HEARTBEAT_RANGE
        if not low <= interval <= high:
            raise InvalidArgument(
                FieldViolation("heartbeat_interval", "must be between 1 s and 5 min")
            )
        tenant_id = principal.tenant_id
        async with self.db.reader() as session:
            head = await event_store.last_sequence(session, tenant_id, event_store.TENANT_STREAM)
        if after is not None and after > head:
            raise OutOfRange(
                f"after_sequence {after} is beyond the log's last sequence {head}",
                reason="CURSOR_AHEAD_OF_LOG",
                metadata={"head_sequence": str(head)},
            )
        cursor = head if after is None else after
        loop = asyncio.get_running_loop()
        yield Heartbeat(cursor, head, utcnow())
        idle_since = loop.time()
        seconds = interval.total_seconds()
        while True:
            self._check_open()
            async with self.db.reader() as session:
                head = await event_store.last_sequence(
                    session, tenant_id, event_store.TENANT_STREAM
                )
                rows = await repo.events_after(
                    session,
                    tenant_id,
                    cursor,
                    self.batch_size,
                    types=resolved.types,
                    session_ids=resolved.session_ids,
                )
            sent = False
            for row in rows:
                cursor = row.sequence
                envelope = resolved.passes(row)
                if envelope is not None:
                    sent = True
                    yield envelope
            if len(rows) == self.batch_size:
                idle_since = loop.time() if sent else idle_since
                continue
            # A short page means every passing event up to the head read before it was sent
            # (sequences become visible in commit order), so the cursor moves past filtered-out
            # events too and a narrow filter resumes without rescanning them.
            cursor = max(cursor, head)
            if sent:
                idle_since = loop.time()
            elif loop.time() - idle_since >= seconds:
                yield Heartbeat(cursor, head, utcnow())
                idle_since = loop.time()
            remaining = seconds - (loop.time() - idle_since)
            await self._wait(tenant_id, head, min(self.poll_interval, max(remaining, 0.01)))

    # ListEvents, GetEvent ----------------------------------------------------------------------

    async def list_events(
        self,
        principal: Principal,
        flt: EventFilter,
        occur_from: datetime | None,
        occur_to: datetime | None,
        after: int,
        size: int,
        token: str,
    ) -> tuple[list[event_pb2.Event], str, int]:
        """A page of events, the next page token, and the highest sequence examined."""
        principal.require("data:read")
        resolved = resolve_filter(flt)
        if occur_from is not None and occur_to is not None and occur_to <= occur_from:
            raise InvalidArgument(
                FieldViolation("time_range.end_time", "must be after time_range.start_time")
            )
        limit = paging.page_size(size)
        fingerprint = {
            **resolved.fingerprint(),
            "from": occur_from.isoformat() if occur_from else None,
            "to": occur_to.isoformat() if occur_to else None,
            "after": after,
        }
        # The page token reuses the shared (time, id) token format with the sequence as the id:
        # the log is ordered by sequence alone.
        decoded = paging.decode(token, fingerprint)
        cursor = after
        if decoded is not None:
            try:
                cursor = int(decoded[1])
            except ValueError:
                raise InvalidArgument(
                    FieldViolation("page_token", "not a page token from this list"),
                    reason="INVALID_PAGE_TOKEN",
                ) from None
        async with self.db.reader() as session:
            head = await event_store.last_sequence(
                session, principal.tenant_id, event_store.TENANT_STREAM
            )
            rows = await repo.events_after(
                session,
                principal.tenant_id,
                cursor,
                limit,
                types=resolved.types,
                session_ids=resolved.session_ids,
                occur_from=occur_from,
                occur_to=occur_to,
            )
        events = [e for e in (resolved.passes(r) for r in rows) if e is not None]
        if len(rows) == limit:
            last = rows[-1]
            return (
                events,
                paging.encode(last.occur_time, str(last.sequence), fingerprint),
                last.sequence,
            )
        examined = rows[-1].sequence if rows else cursor
        if occur_to is None:
            # The last page examined the whole log up to the head read before it, so WatchEvents
            # can continue after the head. With an end time, later events were not examined.
            examined = max(examined, head)
        return events, "", examined

    async def get_event(self, principal: Principal, event_id: str) -> event_pb2.Event:
        principal.require("data:read")
        async with self.db.reader() as session:
            row = await repo.get_event(session, principal.tenant_id, event_id)
        if row is None:
            raise NotFound(f"event {event_id!r} not found", reason="EVENT_NOT_FOUND")
        return event_pb2.Event.FromString(row.payload)
