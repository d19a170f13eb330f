"""Leased per-tenant cursors over the event log, shared by the components that follow it (the
workflow runner, the analytics rollups, the xAPI pusher). Each component has its own cursor
table with the columns `tenant_id`, `last_sequence`, `lease_owner` and `lease_until`; these
functions take that model. Repositories never commit: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from .models import EventCounter


async def tenant_heads(session: AsyncSession) -> dict[str, int]:
    """The last sequence of every tenant's log."""
    query = select(EventCounter.tenant_id, EventCounter.last_sequence).where(
        EventCounter.stream == ""
    )
    return {tenant: head for tenant, head in (await session.execute(query)).all()}


async def positions(session: AsyncSession, model) -> dict[str, int]:
    """tenant id -> last sequence the component has handled."""
    query = select(model.tenant_id, model.last_sequence)
    return {tenant: last for tenant, last in (await session.execute(query)).all()}


async def ensure(session: AsyncSession, model, tenant_ids: Collection[str], **columns: Any) -> None:
    """Creates missing cursors at the start of the log (`columns` fills other required ones)."""
    if not tenant_ids:
        return
    insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
    rows = [{"tenant_id": t, "last_sequence": 0, **columns} for t in tenant_ids]
    await session.execute(insert(model).values(rows).on_conflict_do_nothing())


async def claim(
    session: AsyncSession,
    model,
    owner: str,
    now: datetime,
    lease_until: datetime,
    limit: int,
    *,
    where: Collection = (),
    renew_own: bool = False,
) -> list[str]:
    """Leases up to `limit` cursors of tenants whose log moved past them (SKIP LOCKED on
    PostgreSQL; SQLite's single writer makes the update exclusive). `where` adds conditions on
    the cursor; `renew_own` also takes cursors `owner` already holds."""
    free = [model.lease_until.is_(None), model.lease_until < now]
    if renew_own:
        free.append(model.lease_owner == owner)
    query = (
        select(model.tenant_id)
        .join(
            EventCounter,
            and_(EventCounter.tenant_id == model.tenant_id, EventCounter.stream == ""),
        )
        .where(or_(*free), EventCounter.last_sequence > model.last_sequence, *where)
        .limit(limit)
        .with_for_update(skip_locked=True, of=model)
    )
    ids = list((await session.scalars(query)).all())
    if ids:
        await session.execute(
            update(model)
            .where(model.tenant_id.in_(ids))
            .values(lease_owner=owner, lease_until=lease_until)
        )
    return ids


async def owned(session: AsyncSession, model, tenant_id: str, owner: str):
    """The tenant's cursor, locked and freshly read, while `owner` still holds its lease."""
    return await session.scalar(
        select(model)
        .where(model.tenant_id == tenant_id, model.lease_owner == owner)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


async def release(session: AsyncSession, model, owner: str, tenant_id: str | None = None) -> None:
    """Gives up `owner`'s leases (one tenant's, or all of them)."""
    query = update(model).where(model.lease_owner == owner)
    if tenant_id:
        query = query.where(model.tenant_id == tenant_id)
    await session.execute(query.values(lease_owner=None, lease_until=None))
