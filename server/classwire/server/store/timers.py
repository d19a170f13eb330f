"""Storage of durable timers. Never commits: callers own the transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Timer


async def add(
    session: AsyncSession,
    *,
    id: str,
    tenant_id: str,
    kind: str,
    key: str,
    due_time: datetime,
    payload: dict[str, Any],
) -> bool:
    """Inserts a timer unless (tenant, kind, key) exists; True when it was inserted."""
    insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
    result = await session.execute(
        insert(Timer)
        .values(
            id=id,
            tenant_id=tenant_id,
            kind=kind,
            key=key,
            due_time=due_time,
            payload=payload,
            attempts=0,
            last_error="",
        )
        .on_conflict_do_nothing()
    )
    return result.rowcount == 1


async def cancel(session: AsyncSession, tenant_id: str, kind: str, key: str) -> bool:
    result = await session.execute(
        Timer.__table__.delete().where(
            Timer.tenant_id == tenant_id,
            Timer.kind == kind,
            Timer.key == key,
            Timer.fire_time.is_(None),
        )
    )
    return result.rowcount > 0


async def claim_due(
    session: AsyncSession, now: datetime, lease_until: datetime, limit: int
) -> list[Timer]:
    """Leases up to `limit` due timers. SKIP LOCKED lets replicas claim disjoint sets on
    PostgreSQL; SQLite has one writer, so the plain update is already exclusive."""
    due = (
        select(Timer.id)
        .where(
            Timer.fire_time.is_(None),
            Timer.due_time <= now,
            or_(Timer.lease_until.is_(None), Timer.lease_until < now),
        )
        .order_by(Timer.due_time)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list((await session.scalars(due)).all())
    if not ids:
        return []
    await session.execute(
        update(Timer)
        .where(Timer.id.in_(ids))
        .values(lease_until=lease_until, attempts=Timer.attempts + 1)
    )
    rows = await session.scalars(select(Timer).where(Timer.id.in_(ids)).order_by(Timer.due_time))
    return list(rows.all())


async def lock_pending(session: AsyncSession, timer_id: str) -> Timer | None:
    """The timer if it has not fired yet, locked until the caller's commit."""
    query = (
        select(Timer)
        .where(Timer.id == timer_id, Timer.fire_time.is_(None))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return await session.scalar(query)


async def next_due_time(session: AsyncSession) -> datetime | None:
    return await session.scalar(
        select(Timer.due_time).where(Timer.fire_time.is_(None)).order_by(Timer.due_time).limit(1)
    )


async def get(session: AsyncSession, tenant_id: str, kind: str, key: str) -> Timer | None:
    return await session.scalar(
        select(Timer).where(
            and_(Timer.tenant_id == tenant_id, Timer.kind == kind, Timer.key == key)
        )
    )
