"""Ingest of the embedding product's own events (CustomEvent) into the tenant's log.

A batch is checked and its log entries built before any lock is taken; then the batches of
one tenant that wait meanwhile commit together in one unit of work (group commit), with batched
inserts: sequences are reserved for the group in one counter update, the events and their
deduplication records are written in one executemany each. A request returns only after its
group committed. Results are per event; one bad event never blocks the others.
Deduplication by client_event_id lasts as long as the record is kept (at least DEDUP_WINDOW);
the platform purges older records in the background (run_purge).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy.exc import IntegrityError

from classwire.api.common.v1 import common_pb2
from classwire.api.events.v1 import data_events_pb2

from ..events.outbox import PendingEvent, UnitOfWorkFactory, prepare_events
from ..store import data_repositories as data_repo
from ..store.engine import Database
from ..store.types import utcnow
from .auth import Principal
from .errors import FieldViolation, InvalidArgument, ResourceExhausted
from .platform import actor_of

MAX_BATCH = 500
MAX_STREAM = 100_000
MAX_CLIENT_ID = 128
MAX_NAME = 128
MAX_DATA_BYTES = 32 * 1024
MAX_IDENTITY = 128
MAX_ID = 64
MAX_FUTURE = timedelta(minutes=5)
DEDUP_WINDOW = timedelta(hours=24)
# Records are kept twice the promised window: a margin against clock skew between replicas.
DEDUP_RETENTION = DEDUP_WINDOW * 2
PURGE_INTERVAL = 3600.0  # seconds
PURGE_BATCH = 2000  # rows per purge transaction
SLICE = 100  # events checked between two yields to the event loop
GROUP_EVENTS = 2000  # at most this many events commit in one unit of work
NAME_PATTERN = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")
PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]+$")

log = structlog.get_logger(__name__)


@dataclass
class Violation:
    field: str
    description: str
    reason: str


@dataclass
class IngestOutcome:
    """`kind` is accepted, duplicate or rejected."""

    index: int
    client_event_id: str
    kind: str
    event_id: str = ""
    sequence: int = 0
    reason: str = ""
    message: str = ""
    violations: list[Violation] = field(default_factory=list)


def fingerprint(event: data_events_pb2.CustomEvent) -> str:
    return hashlib.sha256(event.SerializeToString(deterministic=True)).hexdigest()


def validate(event: data_events_pb2.CustomEvent, now: datetime) -> list[Violation]:
    problems: list[Violation] = []

    def bad(name: str, description: str, reason: str) -> None:
        problems.append(Violation(name, description, reason))

    cid = event.client_event_id
    if not cid:
        bad("client_event_id", "is required", "REQUIRED")
    elif len(cid) > MAX_CLIENT_ID:
        bad("client_event_id", f"must be at most {MAX_CLIENT_ID} characters", "TOO_LONG")
    elif not PRINTABLE_ASCII.match(cid):
        bad("client_event_id", "must be printable ASCII", "INVALID_CHARACTERS")
    if not event.name:
        bad("name", "is required", "REQUIRED")
    elif len(event.name) > MAX_NAME:
        bad("name", f"must be at most {MAX_NAME} characters", "TOO_LONG")
    elif not NAME_PATTERN.match(event.name):
        bad("name", "must be lower-case dot-separated words of [a-z0-9_]", "INVALID_FORMAT")
    if len(event.subject_identity) > MAX_IDENTITY:
        bad("subject_identity", f"must be at most {MAX_IDENTITY} characters", "TOO_LONG")
    for name in ("session_id", "class_id"):
        if len(getattr(event, name)) > MAX_ID:
            bad(name, f"must be at most {MAX_ID} characters", "TOO_LONG")
    if event.HasField("data") and event.data.ByteSize() > MAX_DATA_BYTES:
        bad("data", f"must be at most {MAX_DATA_BYTES} bytes once serialized", "TOO_LARGE")
    if event.HasField("occur_time"):
        try:
            occur = event.occur_time.ToDatetime(tzinfo=now.tzinfo)
        except (ValueError, OverflowError):
            bad("occur_time", "is not a valid timestamp", "INVALID_FORMAT")
        else:
            if occur > now + MAX_FUTURE:
                bad("occur_time", "must be at most 5 minutes in the future", "IN_FUTURE")
    return problems


def check_batch_size(count: int, field_name: str = "events") -> None:
    if count == 0:
        raise InvalidArgument(FieldViolation(field_name, "must hold at least one event"))
    if count > MAX_BATCH:
        raise InvalidArgument(FieldViolation(field_name, f"must hold at most {MAX_BATCH} events"))


def stream_too_large() -> ResourceExhausted:
    return ResourceExhausted(
        f"an IngestEvents stream takes at most {MAX_STREAM} events; the events before the "
        "limit were committed",
        reason="INGEST_STREAM_TOO_LARGE",
        metadata={"limit": str(MAX_STREAM)},
    )


def _log_entries(
    events: list[data_events_pb2.CustomEvent], indexes: list[int], now: datetime
) -> Iterator[tuple[data_events_pb2.CustomEvent, str | None, datetime]]:
    """(payload, session_id, occur_time) of each event, as the log records it."""
    for i in indexes:
        event = events[i]
        occur = event.occur_time.ToDatetime(tzinfo=UTC) if event.HasField("occur_time") else now
        yield event, event.session_id or None, occur


async def _lookups(session, batch: _Batch) -> tuple[dict[str, data_repo.IngestedEvent], set[str]]:
    """The earlier commits of the batch's client_event_ids, and which of its sessions exist."""
    events, valid = batch.events, batch.valid
    known = await data_repo.ingested(
        session, batch.tenant_id, {events[i].client_event_id for i in valid}
    )
    sessions = await data_repo.existing_sessions(
        session, batch.tenant_id, {events[i].session_id for i in valid if events[i].session_id}
    )
    return known, sessions


@dataclass
class _Batch:
    """One request's events, checked and built, waiting for the commit of its group."""

    tenant_id: str
    actor: common_pb2.Actor
    events: list[data_events_pb2.CustomEvent]
    offset: int
    now: datetime
    outcomes: list[IngestOutcome | None]
    valid: list[int] = field(default_factory=list)
    prints: dict[int, str] = field(default_factory=dict)
    prepared: dict[int, PendingEvent] = field(default_factory=dict)
    # From the lookup before the write lock (or, on a retry, under it).
    known: dict[str, data_repo.IngestedEvent] = field(default_factory=dict)
    sessions: set[str] = field(default_factory=set)

    def outcome(self, i: int, kind: str, **kw) -> IngestOutcome:
        self.outcomes[i] = IngestOutcome(
            self.offset + i, self.events[i].client_event_id, kind, **kw
        )
        return self.outcomes[i]


class IngestDomain:
    """Batches of concurrent requests of one tenant commit together (group commit): while one
    group holds the write lock, the batches that arrive meanwhile queue and then commit in the
    next unit of work, up to GROUP_EVENTS events. A request returns once its group committed."""

    def __init__(self, db: Database, uow: UnitOfWorkFactory) -> None:
        self.db = db
        self.uow = uow
        # tenant -> batches waiting for a commit, and the task committing them
        self._waiting: dict[str, list[tuple[_Batch, asyncio.Future]]] = {}
        self._committers: dict[str, asyncio.Task] = {}

    async def ingest(
        self, principal: Principal, events: list[data_events_pb2.CustomEvent], offset: int = 0
    ) -> list[IngestOutcome]:
        """Commits one batch; returns one outcome per event, indexed from `offset`."""
        principal.require("data:write")
        batch = await self._check(principal, events, offset)
        if batch.valid:
            async with self.db.reader() as session:
                batch.known, batch.sessions = await _lookups(session, batch)
            await self._commit(batch)
        return [o for o in batch.outcomes if o is not None]

    async def _check(
        self, principal: Principal, events: list[data_events_pb2.CustomEvent], offset: int
    ) -> _Batch:
        """Validates, fingerprints and builds the log entries of the events, in slices: the
        units of work of other requests resume between them instead of waiting for a whole
        batch of CPU work."""
        now = utcnow()
        batch = _Batch(
            principal.tenant_id, actor_of(principal), events, offset, now, [None] * len(events)
        )
        for start in range(0, len(events), SLICE):
            if start:
                await asyncio.sleep(0)
            fresh = []
            for i in range(start, min(start + SLICE, len(events))):
                event = events[i]
                problems = validate(event, now)
                if problems:
                    batch.outcome(
                        i,
                        "rejected",
                        reason="INVALID_EVENT",
                        message="; ".join(f"{p.field}: {p.description}" for p in problems),
                        violations=problems,
                    )
                else:
                    fresh.append(i)
                    batch.prints[i] = fingerprint(event)
            entries = prepare_events(batch.tenant_id, batch.actor, _log_entries(events, fresh, now))
            batch.prepared.update(zip(fresh, entries, strict=True))
            batch.valid.extend(fresh)
        return batch

    async def _commit(self, batch: _Batch) -> None:
        """Queues the batch for its tenant's committer and waits for the commit."""
        done = asyncio.get_running_loop().create_future()
        # A caller that goes away leaves its batch to the group; nobody reads the result then.
        done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._waiting.setdefault(batch.tenant_id, []).append((batch, done))
        if batch.tenant_id not in self._committers:
            self._committers[batch.tenant_id] = asyncio.create_task(
                self._committer(batch.tenant_id), name="ingest-commit"
            )
        # Shielded: cancelling one request must not abort the unit of work of its group.
        await asyncio.shield(done)

    async def _committer(self, tenant_id: str) -> None:
        queue = self._waiting[tenant_id]
        try:
            while queue:
                group, size = [], 0
                while queue and (not group or size + len(queue[0][0].valid) <= GROUP_EVENTS):
                    group.append(queue.pop(0))
                    size += len(group[-1][0].valid)
                try:
                    await self._write_group([batch for batch, _ in group])
                except Exception as exc:
                    for _, done in group:
                        if not done.done():
                            done.set_exception(exc)
                except BaseException:
                    queue[:0] = group
                    raise
                else:
                    for _, done in group:
                        if not done.done():
                            done.set_result(None)
        finally:
            del self._committers[tenant_id]
            del self._waiting[tenant_id]
            for _, done in queue:  # left only when the committer itself was cancelled
                done.cancel()

    async def _write_group(self, group: list[_Batch]) -> None:
        for attempt in range(2):
            try:
                return await self._write(group, relookup=bool(attempt))
            except IntegrityError:
                # Another request committed one of these client_event_ids after the lookup:
                # the group rolls back and, on the retry, sees that record as a duplicate.
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _write(self, group: list[_Batch], relookup: bool) -> None:
        """One unit of work for the group; sets the outcome of each of its valid events."""
        tenant_id = group[0].tenant_id
        async with self.uow(tenant_id, group[0].actor) as uow:
            to_write: list[tuple[_Batch, int]] = []
            # client_event_id -> (fingerprint, batch and index of its first event in the group)
            firsts: dict[str, tuple[str, _Batch, int]] = {}
            later: list[tuple[_Batch, int, _Batch, int]] = []  # a repeat, and what it repeats
            for batch in group:
                if relookup:
                    batch.known, batch.sessions = await _lookups(uow.session, batch)
                for i in batch.valid:
                    event = batch.events[i]
                    cid = event.client_event_id
                    record = batch.known.get(cid)
                    first = firsts.get(cid)
                    earlier = record.fingerprint if record else (first[0] if first else None)
                    if earlier is not None and earlier != batch.prints[i]:
                        batch.outcome(
                            i,
                            "rejected",
                            reason="CLIENT_EVENT_ID_REUSED",
                            message="client_event_id was already used for an event with other "
                            "content",
                        )
                    elif record is not None:
                        batch.outcome(
                            i, "duplicate", event_id=record.event_id, sequence=record.sequence
                        )
                    elif first is not None:
                        later.append((batch, i, first[1], first[2]))
                    elif event.session_id and event.session_id not in batch.sessions:
                        batch.outcome(
                            i,
                            "rejected",
                            reason="SESSION_NOT_FOUND",
                            message=f"session {event.session_id!r} not found",
                        )
                    else:
                        firsts[cid] = (batch.prints[i], batch, i)
                        to_write.append((batch, i))
            if to_write:
                uow.emit_prepared(batch.prepared[i] for batch, i in to_write)
                envelopes = await uow.write_pending()
                dedup = []
                for (batch, i), envelope in zip(to_write, envelopes, strict=True):
                    batch.outcome(i, "accepted", event_id=envelope.id, sequence=envelope.sequence)
                    # In the column order of ingested_events (data_repo.INGESTED_COLUMNS).
                    dedup.append(
                        (
                            tenant_id,
                            batch.events[i].client_event_id,
                            batch.prints[i],
                            envelope.id,
                            envelope.sequence,
                            batch.now,
                        )
                    )
                await data_repo.record_ingested(uow.session, dedup)
            for batch, i, source_batch, source_i in later:
                source = source_batch.outcomes[source_i]
                batch.outcome(i, "duplicate", event_id=source.event_id, sequence=source.sequence)

    async def purge_dedup_records(
        self, older_than: timedelta = DEDUP_RETENTION, batch: int = PURGE_BATCH
    ) -> int:
        """Forgets client_event_ids first committed more than `older_than` ago; returns how
        many. Each batch commits on its own, so ingest writers get the lock in between."""
        before = utcnow() - older_than
        purged = 0
        while True:
            async with self.db.writer() as session, session.begin():
                count = await data_repo.purge_ingested(session, before, batch)
            purged += count
            if count < batch:
                return purged
            await asyncio.sleep(0)

    async def run_purge(self, interval: float = PURGE_INTERVAL) -> None:
        """Purges old deduplication records at start and then every `interval` seconds, until
        cancelled. Replicas may all run it: a purge is idempotent."""
        while True:
            try:
                purged = await self.purge_dedup_records()
                if purged:
                    log.info("ingest deduplication records purged", count=purged)
            except Exception:
                log.warning("ingest deduplication purge failed; retrying later", exc_info=True)
            await asyncio.sleep(interval)
