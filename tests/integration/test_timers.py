"""Durable timers against the real database: fire once, in the handler's transaction, retried
after a failure, and not at all when cancelled."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from classwire.api.events.v1 import platform_events_pb2 as ev
from classwire.server.store import timers as timer_store
from classwire.server.store.types import utcnow


async def test_timer_fires_once_with_its_handler_changes(server):
    platform = server.server.platform
    calls = []

    async def handler(timer, uow):
        calls.append(timer.key)
        # The handler's own changes commit with the firing: an event here proves it.
        uow.emit(ev.TenantUpdated(tenant_id=timer.tenant_id, changed_paths=[timer.key]))

    platform.timers.register("test.once", handler)
    async with platform.uow(server.tenant_id) as uow:
        assert await platform.timers.schedule(uow, "test.once", "k1", utcnow(), {"x": 1})
        # Scheduling the same key again keeps the first timer.
        assert not await platform.timers.schedule(uow, "test.once", "k1", utcnow())
    for _ in range(100):
        if calls:
            break
        await asyncio.sleep(0.05)
    assert calls == ["k1"]
    assert await platform.timers.run_due() == 0  # never twice
    async with platform.db.reader() as session:
        row = await timer_store.get(session, server.tenant_id, "test.once", "k1")
    assert row.fire_time is not None and row.attempts == 1


async def test_failed_handler_is_retried_and_cancelled_timer_never_fires(server):
    platform = server.server.platform
    attempts = []

    async def flaky(timer, uow):
        attempts.append(timer.attempts)
        if len(attempts) == 1:
            raise RuntimeError("first attempt fails")

    platform.timers.register("test.flaky", flaky)
    platform.timers.register("test.cancelled", flaky)
    async with platform.uow(server.tenant_id) as uow:
        await platform.timers.schedule(uow, "test.flaky", "f", utcnow() - timedelta(seconds=1))
        await platform.timers.schedule(
            uow, "test.cancelled", "c", utcnow() + timedelta(milliseconds=300)
        )
    async with platform.uow(server.tenant_id) as uow:
        assert await platform.timers.cancel(uow, "test.cancelled", "c")
    for _ in range(100):
        if len(attempts) >= 1:
            break
        await asyncio.sleep(0.05)
    # The failure leased the timer for a backoff; make it due again instead of waiting.
    async with platform.db.writer() as session, session.begin():
        row = await timer_store.get(session, server.tenant_id, "test.flaky", "f")
        assert "first attempt fails" in row.last_error and row.fire_time is None
        row.lease_until = utcnow() - timedelta(seconds=1)
    platform.timers._wake.set()
    for _ in range(100):
        if len(attempts) >= 2:
            break
        await asyncio.sleep(0.05)
    assert attempts == [1, 2]
    await asyncio.sleep(0.5)
    async with platform.db.reader() as session:
        assert await timer_store.get(session, server.tenant_id, "test.cancelled", "c") is None
