"""Keeps the analytics rollups up to date as events commit.

Each tenant has a cursor row (`analytics_cursors`). A replica leases the cursors of tenants whose
log moved past them (SKIP LOCKED on PostgreSQL), reads the events after the cursor in batches,
folds each batch into the rows it touches (domain/analytics_fold.py) and writes those rows and
the cursor's advance in one transaction: every event is counted exactly once, across restarts
and replicas. A replica that lost its lease finds the cursor no longer its own and rolls back.

Wakes on new events through Wakeups and polls every `poll_interval` in case a hint is lost.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog

from classwire.api.events.v1 import event_pb2

from ..domain.analytics_fold import FOLDED_TYPES, Fold, session_id_of
from ..domain.ids import new_id
from ..store import analytics_repositories as repo
from ..store.engine import Database
from ..store.types import utcnow
from .catalogue import unwrap
from .log_follower import LogFollower

log = structlog.get_logger(__name__)


class RollupConsumer(LogFollower):
    label = "analytics rollup"

    def __init__(
        self,
        db: Database,
        wakeups=None,
        *,
        poll_interval: float = 1.0,
        lease: timedelta = timedelta(seconds=60),
        batch: int = 1000,
    ) -> None:
        self.db = db
        self.wakeups = wakeups
        self.poll_interval = poll_interval
        self.lease = lease
        self.batch = batch
        self.owner = new_id("rlp")
        super().__init__()

    async def release_all(self) -> None:
        async with self.db.writer() as session, session.begin():
            await repo.release_cursors(session, self.owner)

    async def run_once(self) -> dict[str, int]:
        """One pass over every tenant with new events; returns the log heads to wait on."""
        now = utcnow()
        async with self.db.writer() as session, session.begin():
            heads = await repo.tenant_heads(session)
            known = await repo.cursors(session)
            await repo.ensure_cursors(session, [t for t in heads if t not in known])
            claimed = await repo.claim_cursors(session, self.owner, now, now + self.lease, 16)
        for tenant_id in claimed:
            try:
                while await self.fold_batch(tenant_id):
                    pass
            finally:
                async with self.db.writer() as session, session.begin():
                    await repo.release_cursors(session, self.owner, tenant_id)
        return heads

    async def catch_up(self) -> None:
        """Folds until every tenant's cursor reaches the log's head (tests, benchmarks)."""
        while True:
            async with self.db.reader() as session:
                heads = await repo.tenant_heads(session)
                known = await repo.cursors(session)
            if all(known.get(t, 0) >= h for t, h in heads.items()):
                return
            await self.run_once()

    async def fold_batch(self, tenant_id: str) -> int:
        """Folds the next batch of the tenant's events; returns how many events it read."""
        async with self.db.writer() as session, session.begin():
            cursor = await repo.owned_cursor(session, tenant_id, self.owner)
            if cursor is None:
                return 0  # the lease was lost
            rows = await repo.events_after(session, tenant_id, cursor.last_sequence, self.batch)
            if not rows:
                return 0
            parsed = []
            for _, event_type, payload in rows:
                if event_type not in FOLDED_TYPES:
                    continue
                envelope = event_pb2.Event.FromString(payload)
                parsed.append((envelope, unwrap(envelope)))
            if parsed:
                await self._fold(session, tenant_id, parsed)
            cursor.last_sequence = rows[-1][0]
            cursor.lease_until = utcnow() + self.lease
            return len(rows)

    async def _fold(self, session, tenant_id: str, parsed) -> None:
        ids = {session_id_of(e, p) for e, p in parsed} - {""}
        ids |= {
            p.parent_session_id
            for e, p in parsed
            if e.type.endswith(".SessionCreated") and p.parent_session_id
        }
        sessions = await repo.load_sessions(session, tenant_id, ids)
        roots = {s["root_session_id"] for s in sessions} - ids
        if roots:
            sessions += await repo.load_sessions(session, tenant_id, roots)
        created = [e.session_id for e, _ in parsed if e.type.endswith(".SessionCreated")]
        fold = Fold(
            tenant_id,
            sessions,
            await repo.load_attendances(
                session, tenant_id, {s["root_session_id"] for s in sessions} | ids
            ),
            await repo.assigned_instructors(session, created),
        )
        for envelope, payload in parsed:
            try:
                fold.apply(envelope, payload)
            except Exception:
                # One malformed event must not hold the tenant's analytics back for ever.
                log.exception(
                    "analytics fold skipped an event",
                    tenant_id=tenant_id,
                    sequence=envelope.sequence,
                    event_type=envelope.type,
                )
        await repo.save(session, *fold.changed())


def start_rollups(platform) -> RollupConsumer:
    """Starts the rollup consumer as a background task of `platform` (cancelled at close)."""
    consumer = RollupConsumer(platform.db, platform.wakeups)
    platform.rollups = consumer
    platform.tasks.append(asyncio.create_task(consumer.run(), name="analytics-rollups"))
    return consumer
