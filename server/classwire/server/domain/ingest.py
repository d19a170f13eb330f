"""Ingest of the embedding product's own events (CustomEvent) into the tenant's log.

Each batch commits in one unit of work with batched inserts: sequences are reserved for the
whole batch in one counter update, the events and their deduplication records are written in
one executemany each. Results are per event; one bad event never blocks the others.
Deduplication by client_event_id lasts as long as the record is kept (at least DEDUP_WINDOW).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError

from classwire.api.events.v1 import data_events_pb2, event_pb2

from ..events.outbox import UnitOfWorkFactory
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
NAME_PATTERN = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")
PRINTABLE_ASCII = re.compile(r"^[\x20-\x7e]+$")


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


class IngestDomain:
    def __init__(self, db: Database, uow: UnitOfWorkFactory) -> None:
        self.db = db
        self.uow = uow

    async def ingest(
        self, principal: Principal, events: list[data_events_pb2.CustomEvent], offset: int = 0
    ) -> list[IngestOutcome]:
        """Commits one batch; returns one outcome per event, indexed from `offset`."""
        principal.require("data:write")
        for attempt in range(2):
            try:
                return await self._ingest(principal, events, offset)
            except IntegrityError:
                # Two concurrent first commits of one client_event_id (PostgreSQL): the loser
                # rolls back and, on the retry, sees the winner's record as a duplicate.
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _ingest(
        self, principal: Principal, events: list[data_events_pb2.CustomEvent], offset: int
    ) -> list[IngestOutcome]:
        now = utcnow()
        tenant_id = principal.tenant_id
        outcomes: list[IngestOutcome | None] = [None] * len(events)
        valid: list[int] = []
        for i, event in enumerate(events):
            problems = validate(event, now)
            if problems:
                outcomes[i] = IngestOutcome(
                    offset + i,
                    event.client_event_id,
                    "rejected",
                    reason="INVALID_EVENT",
                    message="; ".join(f"{p.field}: {p.description}" for p in problems),
                    violations=problems,
                )
            else:
                valid.append(i)
        prints = {i: fingerprint(events[i]) for i in valid}
        async with self.uow(tenant_id, actor_of(principal)) as uow:
            session = uow.session
            known = await data_repo.ingested(
                session, tenant_id, {events[i].client_event_id for i in valid}
            )
            sessions = await data_repo.existing_sessions(
                session, tenant_id, {events[i].session_id for i in valid if events[i].session_id}
            )
            to_write: list[int] = []
            # client_event_id -> (fingerprint, index of the first event of this batch with it)
            in_batch: dict[str, tuple[str, int]] = {}
            later: list[tuple[int, int]] = []  # (duplicate index, index it repeats)
            for i in valid:
                event = events[i]
                cid = event.client_event_id
                record = known.get(cid)
                first = in_batch.get(cid)
                earlier_print = record.fingerprint if record else (first[0] if first else None)
                if earlier_print is not None and earlier_print != prints[i]:
                    outcomes[i] = IngestOutcome(
                        offset + i,
                        cid,
                        "rejected",
                        reason="CLIENT_EVENT_ID_REUSED",
                        message="client_event_id was already used for an event with other content",
                    )
                elif record is not None:
                    outcomes[i] = IngestOutcome(
                        offset + i,
                        cid,
                        "duplicate",
                        event_id=record.event_id,
                        sequence=record.sequence,
                    )
                elif first is not None:
                    later.append((i, first[1]))
                elif event.session_id and event.session_id not in sessions:
                    outcomes[i] = IngestOutcome(
                        offset + i,
                        cid,
                        "rejected",
                        reason="SESSION_NOT_FOUND",
                        message=f"session {event.session_id!r} not found",
                    )
                else:
                    in_batch[cid] = (prints[i], i)
                    to_write.append(i)
            if to_write:
                envelopes = await self._append(uow, [events[i] for i in to_write], now)
                dedup = []
                for i, envelope in zip(to_write, envelopes, strict=True):
                    outcomes[i] = IngestOutcome(
                        offset + i,
                        events[i].client_event_id,
                        "accepted",
                        event_id=envelope.id,
                        sequence=envelope.sequence,
                    )
                    dedup.append(
                        {
                            "tenant_id": tenant_id,
                            "client_event_id": events[i].client_event_id,
                            "fingerprint": prints[i],
                            "event_id": envelope.id,
                            "sequence": envelope.sequence,
                            "create_time": now,
                        }
                    )
                await data_repo.record_ingested(session, dedup)
            for i, first in later:
                source = outcomes[first]
                outcomes[i] = IngestOutcome(
                    offset + i,
                    events[i].client_event_id,
                    "duplicate",
                    event_id=source.event_id,
                    sequence=source.sequence,
                )
        return [o for o in outcomes if o is not None]

    async def _append(
        self, uow, events: list[data_events_pb2.CustomEvent], now: datetime
    ) -> list[event_pb2.Event]:
        """Writes the events to the log now (the unit of work batches the numbering and the
        insert) and returns their envelopes, whose ids and sequences the caller reports."""
        for event in events:
            occur = (
                event.occur_time.ToDatetime(tzinfo=now.tzinfo)
                if event.HasField("occur_time")
                else now
            )
            uow.emit(event, session_id=event.session_id or None, occur_time=occur)
        return await uow.write_pending()

    async def purge_dedup_records(self, older_than: timedelta = DEDUP_WINDOW * 2) -> int:
        """Forgets client_event_ids first committed before `older_than` ago."""
        async with self.db.writer() as session, session.begin():
            return await data_repo.purge_ingested(session, utcnow() - older_than)
