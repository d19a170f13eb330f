"""Durable timers: "do this at that time", surviving restarts and never firing twice.

A timer is scheduled inside the unit of work of the change that needs it, so it exists exactly
when that change does. A background runner claims due timers with a lease (SKIP LOCKED on
PostgreSQL, so replicas share the work), runs the handler registered for the timer's kind in a
new unit of work, and marks the timer fired in that same transaction: the handler's changes and
the firing commit together or not at all. A handler that fails is retried with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from ..domain.ids import new_id
from ..store import timers as timer_store
from ..store.engine import Database
from ..store.types import utcnow
from .outbox import UnitOfWork, UnitOfWorkFactory, system_actor

log = structlog.get_logger(__name__)

MAX_ATTEMPTS = 20
MAX_BACKOFF = timedelta(minutes=5)


@dataclass(frozen=True)
class DueTimer:
    id: str
    tenant_id: str
    kind: str
    key: str
    due_time: datetime
    payload: dict[str, Any]
    attempts: int


TimerHandler = Callable[[DueTimer, UnitOfWork], Awaitable[None]]


class Timers:
    def __init__(
        self,
        db: Database,
        uow: UnitOfWorkFactory,
        *,
        lease: timedelta = timedelta(seconds=60),
        poll_interval: float = 1.0,
        batch: int = 50,
    ) -> None:
        self.db = db
        self.uow = uow
        self.lease = lease
        self.poll_interval = poll_interval
        self.batch = batch
        self._handlers: dict[str, TimerHandler] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def register(self, kind: str, handler: TimerHandler) -> None:
        if kind in self._handlers:
            raise ValueError(f"a handler for timer kind {kind!r} is already registered")
        self._handlers[kind] = handler

    async def schedule(
        self,
        uow: UnitOfWork,
        kind: str,
        key: str,
        due_time: datetime,
        payload: dict[str, Any] | None = None,
    ) -> bool:
        """Schedules a timer in the caller's unit of work; False if (kind, key) already exists."""
        added = await timer_store.add(
            uow.session,
            id=new_id("tmr"),
            tenant_id=uow.tenant_id,
            kind=kind,
            key=key,
            due_time=due_time,
            payload=payload or {},
        )
        self._wake.set()  # the runner re-reads the next due time
        return added

    async def cancel(self, uow: UnitOfWork, kind: str, key: str) -> bool:
        return await timer_store.cancel(uow.session, uow.tenant_id, kind, key)

    # -- the runner -----------------------------------------------------------------------

    def start(self) -> asyncio.Task:
        self._task = asyncio.create_task(self._run(), name="durable-timers")
        return self._task

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                fired = await self.run_due()
                if fired:
                    continue
                wait = self.poll_interval
                async with self.db.reader() as session:
                    upcoming = await timer_store.next_due_time(session)
                if upcoming is not None:
                    wait = max(0.0, min(wait, (upcoming - utcnow()).total_seconds()))
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("timer runner pass failed")
                await asyncio.sleep(self.poll_interval)

    async def run_due(self) -> int:
        """Claims and fires the timers due now; returns how many fired."""
        now = utcnow()
        async with self.db.writer() as session, session.begin():
            claimed = await timer_store.claim_due(session, now, now + self.lease, self.batch)
            due = [
                DueTimer(t.id, t.tenant_id, t.kind, t.key, t.due_time, dict(t.payload), t.attempts)
                for t in claimed
            ]
        fired = 0
        for timer in due:
            if await self._fire(timer):
                fired += 1
        return fired

    async def _fire(self, timer: DueTimer) -> bool:
        handler = self._handlers.get(timer.kind)
        if handler is None:
            log.warning("no handler for timer kind", kind=timer.kind, timer_id=timer.id)
            return False
        try:
            async with self.uow(timer.tenant_id, system_actor(f"timer:{timer.kind}")) as uow:
                row = await timer_store.lock_pending(uow.session, timer.id)
                if row is None:  # fired or cancelled meanwhile
                    return False
                await handler(timer, uow)
                row.fire_time = utcnow()
            return True
        except Exception as exc:
            log.exception("timer handler failed", kind=timer.kind, timer_id=timer.id)
            await self._record_failure(timer, exc)
            return False

    async def _record_failure(self, timer: DueTimer, exc: Exception) -> None:
        backoff = min(MAX_BACKOFF, timedelta(seconds=2 ** min(timer.attempts, 10)))
        async with self.db.writer() as session, session.begin():
            row = await timer_store.lock_pending(session, timer.id)
            if row is None:
                return
            row.last_error = f"{type(exc).__name__}: {exc}"[:2000]
            row.lease_until = utcnow() + backoff
            if timer.attempts >= MAX_ATTEMPTS:
                row.fire_time = utcnow()  # gave up; last_error says why
