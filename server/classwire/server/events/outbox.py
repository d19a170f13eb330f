"""Units of work: a state change and the events that describe it commit together.

Nothing is announced that was not stored, and nothing stored goes unannounced: events are rows
in the same transaction as the change (the transactional outbox), and only after the commit
does the unit of work wake the readers of the log (watch streams, dispatchers, other replicas).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from google.protobuf import timestamp_pb2
from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from classwire.api.common.v1 import common_pb2
from classwire.api.events.v1 import event_pb2

from ..store import data_repositories as data_repo
from ..store import events as event_store
from ..store.engine import Database
from ..store.types import utcnow
from .catalogue import wrap
from .wakeups import Wakeups


@dataclass(slots=True)
class PendingEvent:
    payload: Message
    session_id: str | None
    occur_time: datetime
    # The envelope with everything but its sequences, once built (see prepare_events).
    envelope: event_pb2.Event | None = None
    type: str = ""


def prepare_events(
    tenant_id: str,
    actor: common_pb2.Actor,
    items: Iterable[tuple[Message, str | None, datetime]],
) -> list[PendingEvent]:
    """Builds the envelopes of (payload, session_id, occur_time) events, all but their
    sequences, for UnitOfWork.emit_prepared. A bulk writer (ingest) calls it before its unit of
    work begins, so the write lock is not held while thousands of envelopes are built."""
    stamps: dict[datetime, timestamp_pb2.Timestamp] = {}
    pending = [PendingEvent(payload, sid, occur) for payload, sid, occur in items]
    for item in pending:
        _build(item, tenant_id, actor, stamps)
    return pending


def _build(
    item: PendingEvent,
    tenant_id: str,
    actor: common_pb2.Actor,
    stamps: dict[datetime, timestamp_pb2.Timestamp],
) -> None:
    # Most batches share one occur_time (an import, an ingest batch): convert it once.
    stamp = stamps.get(item.occur_time)
    if stamp is None:
        stamp = stamps[item.occur_time] = timestamp_pb2.Timestamp()
        stamp.FromDatetime(item.occur_time)
    envelope = event_pb2.Event(
        id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        session_id=item.session_id or "",
        occur_time=stamp,
        actor=actor,
    )
    item.type = envelope.type = wrap(item.payload, envelope)
    item.envelope = envelope


@dataclass
class UnitOfWork:
    session: AsyncSession
    tenant_id: str
    actor: common_pb2.Actor
    pending: list[PendingEvent] = field(default_factory=list)
    committed: list[event_pb2.Event] = field(default_factory=list)

    def emit(
        self, payload: Message, *, session_id: str | None = None, occur_time: datetime | None = None
    ) -> None:
        """Queues an event; it is numbered and written when the unit of work commits."""
        self.pending.append(PendingEvent(payload, session_id, occur_time or utcnow()))

    def emit_prepared(self, events: Iterable[PendingEvent]) -> None:
        """Queues events built by prepare_events for this unit of work's tenant."""
        for item in events:
            if item.envelope is None or item.envelope.tenant_id != self.tenant_id:
                raise ValueError("events prepared for another tenant")
            self.pending.append(item)

    async def write_pending(self) -> list[event_pb2.Event]:
        """Numbers and writes the queued events now, in this transaction, and returns their
        envelopes (ids and sequences), for callers that report them before the commit. The
        commit writes whatever is still queued."""
        if not self.pending:
            return []
        # One counter update per stream reserves the whole batch: a bulk change (an import,
        # an ingest batch) costs two round trips for its numbering, not two per event.
        next_tenant = await event_store.next_sequences(
            self.session, self.tenant_id, event_store.TENANT_STREAM, len(self.pending)
        )
        per_session: dict[str, int] = {}
        for item in self.pending:
            if item.session_id:
                per_session[item.session_id] = per_session.get(item.session_id, 0) + 1
        next_session = {
            sid: await event_store.next_sequences(self.session, self.tenant_id, sid, count)
            for sid, count in sorted(per_session.items())
        }
        rows = []
        written = []
        stamps: dict[datetime, timestamp_pb2.Timestamp] = {}
        for item in self.pending:
            if item.envelope is None:
                _build(item, self.tenant_id, self.actor, stamps)
            envelope = item.envelope
            envelope.sequence = next_tenant
            next_tenant += 1
            if item.session_id:
                envelope.session_sequence = next_session[item.session_id]
                next_session[item.session_id] += 1
            # In the column order of the events table (data_repo.EVENT_COLUMNS).
            rows.append(
                (
                    envelope.id,
                    self.tenant_id,
                    envelope.sequence,
                    item.session_id,
                    envelope.session_sequence or None,
                    item.type,
                    item.occur_time,
                    envelope.SerializeToString(),
                )
            )
            written.append(envelope)
        await data_repo.append_events(self.session, rows)
        self.committed.extend(written)
        self.pending.clear()
        return written


class UnitOfWorkFactory:
    def __init__(self, db: Database, wakeups: Wakeups) -> None:
        self.db = db
        self.wakeups = wakeups

    def __call__(self, tenant_id: str, actor: common_pb2.Actor | None = None) -> _Scope:
        return _Scope(self, tenant_id, actor or system_actor("platform"))


class _Scope:
    def __init__(self, factory: UnitOfWorkFactory, tenant_id: str, actor: common_pb2.Actor):
        self.factory = factory
        self.tenant_id = tenant_id
        self.actor = actor

    async def __aenter__(self) -> UnitOfWork:
        self.session = self.factory.db.writer()
        await self.session.begin()
        if self.tenant_id and not self.factory.db.is_sqlite:
            # Every unit of work that may emit events ends by locking the tenant's event
            # counter. Taking that lock first instead gives all writers of a tenant one lock
            # order, so a writer holding the counter never waits on a row another writer holds
            # while that one waits for the counter (a deadlock on PostgreSQL). SQLite's single
            # writer needs nothing of the kind.
            await event_store.lock_counter(self.session, self.tenant_id)
        self.uow = UnitOfWork(self.session, self.tenant_id, self.actor)
        return self.uow

    async def __aexit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:
                await self.session.rollback()
                return
            await self.uow.write_pending()
            await self.session.commit()
        finally:
            await self.session.close()
        if self.uow.committed:
            last = self.uow.committed[-1]
            await self.factory.wakeups.announce(self.tenant_id, last.sequence)


def system_actor(component: str) -> common_pb2.Actor:
    return common_pb2.Actor(kind=common_pb2.Actor.KIND_SYSTEM, id=component)
