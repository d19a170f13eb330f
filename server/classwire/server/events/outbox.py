"""Units of work: a state change and the events that describe it commit together.

Nothing is announced that was not stored, and nothing stored goes unannounced: events are rows
in the same transaction as the change (the transactional outbox), and only after the commit
does the unit of work wake the readers of the log (watch streams, dispatchers, other replicas).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from google.protobuf.message import Message
from sqlalchemy.ext.asyncio import AsyncSession

from classwire.api.common.v1 import common_pb2
from classwire.api.events.v1 import event_pb2

from ..store import events as event_store
from ..store.engine import Database
from ..store.types import utcnow
from .catalogue import wrap
from .wakeups import Wakeups


@dataclass
class PendingEvent:
    payload: Message
    session_id: str | None
    occur_time: datetime


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
        for item in self.pending:
            envelope = event_pb2.Event(
                id=str(uuid.uuid4()), tenant_id=self.tenant_id, session_id=item.session_id or ""
            )
            event_type = wrap(item.payload, envelope)
            envelope.type = event_type
            envelope.occur_time.FromDatetime(item.occur_time)
            envelope.actor.CopyFrom(self.actor)
            envelope.sequence = next_tenant
            next_tenant += 1
            if item.session_id:
                envelope.session_sequence = next_session[item.session_id]
                next_session[item.session_id] += 1
            rows.append(
                {
                    "id": envelope.id,
                    "tenant_id": self.tenant_id,
                    "sequence": envelope.sequence,
                    "session_id": item.session_id,
                    "session_sequence": envelope.session_sequence or None,
                    "type": event_type,
                    "occur_time": item.occur_time,
                    "payload": envelope.SerializeToString(),
                }
            )
            written.append(envelope)
        await event_store.insert_events(self.session, rows)
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
