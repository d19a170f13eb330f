"""The event log's storage: sequence assignment and reads. Never commits."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Event, EventCounter

TENANT_STREAM = ""


async def next_sequence(session: AsyncSession, tenant_id: str, stream: str) -> int:
    """Hands out the next sequence of a stream, locking its counter row until commit."""
    result = await session.execute(
        update(EventCounter)
        .where(EventCounter.tenant_id == tenant_id, EventCounter.stream == stream)
        .values(last_sequence=EventCounter.last_sequence + 1)
        .returning(EventCounter.last_sequence)
    )
    value = result.scalar_one_or_none()
    if value is not None:
        return value
    insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
    await session.execute(
        insert(EventCounter)
        .values(tenant_id=tenant_id, stream=stream, last_sequence=0)
        .on_conflict_do_nothing()
    )
    return await next_sequence(session, tenant_id, stream)


async def lock_counter(session: AsyncSession, tenant_id: str) -> None:
    """Locks the tenant's counter row until commit, when it exists."""
    await session.execute(
        select(EventCounter.last_sequence)
        .where(EventCounter.tenant_id == tenant_id, EventCounter.stream == TENANT_STREAM)
        .with_for_update()
    )


async def next_sequences(session: AsyncSession, tenant_id: str, stream: str, count: int) -> int:
    """Reserves `count` consecutive sequences of a stream in one statement; returns the first.

    The counter row stays locked until commit, as for single appends, so sequences still become
    visible in commit order.
    """
    result = await session.execute(
        update(EventCounter)
        .where(EventCounter.tenant_id == tenant_id, EventCounter.stream == stream)
        .values(last_sequence=EventCounter.last_sequence + count)
        .returning(EventCounter.last_sequence)
    )
    value = result.scalar_one_or_none()
    if value is not None:
        return value - count + 1
    insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
    await session.execute(
        insert(EventCounter)
        .values(tenant_id=tenant_id, stream=stream, last_sequence=0)
        .on_conflict_do_nothing()
    )
    return await next_sequences(session, tenant_id, stream, count)


async def read_after(
    session: AsyncSession,
    tenant_id: str,
    after_sequence: int,
    limit: int,
    *,
    session_id: str | None = None,
    types: Sequence[str] = (),
) -> list[Event]:
    """Events after a cursor, oldest first: the tenant stream, or one session's stream."""
    query = select(Event).where(Event.tenant_id == tenant_id)
    if session_id is not None:
        query = query.where(
            Event.session_id == session_id, Event.session_sequence > after_sequence
        ).order_by(Event.session_sequence)
    else:
        query = query.where(Event.sequence > after_sequence).order_by(Event.sequence)
    if types:
        query = query.where(Event.type.in_(list(types)))
    return list((await session.scalars(query.limit(limit))).all())


async def last_sequence(session: AsyncSession, tenant_id: str, stream: str) -> int:
    value = await session.scalar(
        select(EventCounter.last_sequence).where(
            EventCounter.tenant_id == tenant_id, EventCounter.stream == stream
        )
    )
    return value or 0
