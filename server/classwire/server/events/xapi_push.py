"""Pushes every tenant's xAPI statements to the configured Learning Record Store as events commit.

The events table is the outbox. Each tenant has a cursor row (`xapi_push_cursors`); a replica
leases the cursors of tenants whose log moved past them (SKIP LOCKED on PostgreSQL), builds the
statements of the next batch of events, sends them, and advances the cursor only after the LRS
took them, in a transaction that first checks it still holds the lease. A batch the LRS could not
take (down, overloaded) is retried with exponential backoff and jitter; the cursor stays put. A
crash between the send and the commit resends that batch: the statement ids derive from the
events, so the LRS answers that it already holds them and nothing is stored twice. Statements
the LRS rejects for good are counted in XapiStatementsPushed and skipped.

Wakes on new events through Wakeups and polls every `poll_interval` in case a hint is lost.
"""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import structlog

from classwire.api.events.v1 import data_events_pb2 as dev

from ..domain import xapi_vocab as vocab
from ..domain.ids import new_id
from ..domain.xapi import PushResult, Scope, XapiDomain
from ..store import events as events_repo
from ..store import xapi_repositories as repo
from ..store.events import TENANT_STREAM
from ..store.types import utcnow
from .log_follower import LogFollower
from .outbox import system_actor

log = structlog.get_logger(__name__)


class XapiPusher(LogFollower):
    label = "xapi push"

    def __init__(
        self,
        domain: XapiDomain,
        wakeups=None,
        *,
        poll_interval: float = 2.0,
        lease: timedelta = timedelta(seconds=60),
        batch_events: int = 500,
        backoff_base: float = 2.0,
        backoff_max: float = 600.0,
    ) -> None:
        self.domain = domain
        self.db = domain.db
        self.wakeups = wakeups
        self.poll_interval = poll_interval
        self.lease = lease
        self.batch_events = batch_events
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.owner = new_id("xpp")
        super().__init__()

    def backoff(self, attempts: int) -> float:
        """Exponential with jitter: half fixed, half random, so replicas' retries spread out."""
        delay = min(self.backoff_max, self.backoff_base * 2 ** max(0, attempts - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    async def release_all(self) -> None:
        async with self.db.writer() as session, session.begin():
            await repo.release_cursors(session, self.owner)

    async def run_once(self) -> dict[str, int]:
        """One pass over the tenants with statements to push; returns the log heads."""
        lrs = self.domain.default_lrs
        now = utcnow()
        async with self.db.writer() as session, session.begin():
            heads = await repo.tenant_heads(session)
            known = await repo.cursor_tenants(session)
            await repo.ensure_cursors(session, [t for t in heads if t not in known], lrs, now)
            claimed = await repo.claim_cursors(session, self.owner, now, now + self.lease, 16)
        for tenant_id in claimed:
            try:
                while await self.push_batch(tenant_id):
                    pass
            finally:
                async with self.db.writer() as session, session.begin():
                    await repo.release_cursors(session, self.owner, tenant_id)
        return heads

    async def push_batch(self, tenant_id: str) -> bool:
        """Pushes the statements of the next batch of the tenant's events; True to go on."""
        async with self.db.reader() as session:
            cursor = await repo.get_cursor(session, tenant_id)
            head = await events_repo.last_sequence(session, tenant_id, TENANT_STREAM)
        if cursor is None or cursor.lease_owner != self.owner or cursor.last_sequence >= head:
            return False
        name, store = await self.domain.store(cursor.lrs or "")
        upto = min(head, cursor.last_sequence + self.batch_events)
        result = PushResult(new_id("xps"), name)
        batch = []
        async for _, statements in self.domain.statements(
            tenant_id, Scope(), cursor.last_sequence, head=upto
        ):
            batch.extend(statements)
            while len(batch) >= store.max_batch:
                result.add(await self.domain.send(name, store, batch[: store.max_batch]))
                batch = batch[store.max_batch :]
        if batch:
            result.add(await self.domain.send(name, store, batch))
        now = utcnow()
        async with self.domain.uow(tenant_id, system_actor("xapi-push")) as uow:
            owned = await repo.owned_cursor(uow.session, tenant_id, self.owner)
            if owned is None:
                return False  # the lease was lost: the new owner pushes (harmlessly) again
            owned.update_time = now
            if result.retryable:
                owned.attempt_count += 1
                delay = self.backoff(owned.attempt_count)
                owned.next_attempt_time = now + timedelta(seconds=delay)
                owned.last_error = (result.failures[0].message if result.failures else "")[:500]
                log.warning(
                    "xapi push failed; will retry",
                    tenant_id=tenant_id,
                    lrs=name,
                    retry_in_seconds=round(delay, 1),
                    error=owned.last_error,
                )
                return False
            owned.last_sequence = upto
            owned.attempt_count = 0
            owned.next_attempt_time = None
            owned.last_error = ""
            owned.lease_until = now + self.lease
            if result.statement_count:
                uow.emit(
                    dev.XapiStatementsPushed(
                        push_id=result.push_id,
                        lrs=name,
                        mapping_version=vocab.MAPPING_VERSION,
                        statement_count=result.statement_count,
                        stored_count=result.stored_count,
                        already_stored_count=result.already_stored_count,
                        failed_count=result.failed_count,
                    )
                )
        return upto < head


def start_xapi_push(platform, domain: XapiDomain) -> XapiPusher | None:
    """Starts the continuous pusher when an LRS is configured and continuous push is on."""
    if not domain.default_lrs or not domain.settings.continuous_push:
        return None
    pusher = XapiPusher(domain, platform.wakeups)
    platform.tasks.append(asyncio.create_task(pusher.run(), name="xapi-push"))
    return pusher
