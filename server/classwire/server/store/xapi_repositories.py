"""Queries of the xAPI statements, the continuous pusher and the record exports. Never commit."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from . import log_cursors
from . import repositories as core_repo
from .models import Event, LiveSession
from .report_models import SessionReportRow
from .xapi_models import XapiPushCursor


def _insert(session: AsyncSession):
    return pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert


# -- sessions and events ------------------------------------------------------------------------


async def session_tree(session: AsyncSession, tenant_id: str, session_id: str) -> list[str] | None:
    """The session and its breakout rooms, or None when the tenant has no such session."""
    query = select(LiveSession.id).where(
        LiveSession.tenant_id == tenant_id,
        or_(LiveSession.id == session_id, LiveSession.parent_session_id == session_id),
    )
    ids = list((await session.scalars(query)).all())
    if session_id not in ids:
        return None
    return [session_id] + sorted(i for i in ids if i != session_id)


async def sessions_info(
    session: AsyncSession, tenant_id: str, session_ids: Collection[str]
) -> dict[str, tuple[str, str, str]]:
    """session id -> (root session id, title, class id)."""
    if not session_ids:
        return {}
    query = select(
        LiveSession.id, LiveSession.parent_session_id, LiveSession.title, LiveSession.class_id
    ).where(LiveSession.tenant_id == tenant_id, LiveSession.id.in_(list(session_ids)))
    return {
        sid: (parent or sid, title, class_id)
        for sid, parent, title, class_id in (await session.execute(query)).all()
    }


# The tenant log after a cursor, filtered by type, session and occur time.
events_page = core_repo.events_after


async def count_events(
    session: AsyncSession,
    tenant_id: str,
    *,
    types: Collection[str],
    session_ids: Collection[str] = (),
    occur_from: datetime | None = None,
    occur_to: datetime | None = None,
) -> int:
    query = select(func.count()).where(Event.tenant_id == tenant_id, Event.type.in_(list(types)))
    if session_ids:
        query = query.where(Event.session_id.in_(list(session_ids)))
    if occur_from is not None:
        query = query.where(Event.occur_time >= occur_from)
    if occur_to is not None:
        query = query.where(Event.occur_time < occur_to)
    return int(await session.scalar(query) or 0)


async def session_events_of_types(
    session: AsyncSession, tenant_id: str, session_ids: Collection[str], types: Collection[str]
) -> list[bytes]:
    """Payloads of the sessions' events of these types (joins and polls: statement context)."""
    if not session_ids:
        return []
    query = (
        select(Event.payload)
        .where(
            Event.tenant_id == tenant_id,
            Event.session_id.in_(list(session_ids)),
            Event.type.in_(list(types)),
        )
        .order_by(Event.sequence)
    )
    return list((await session.scalars(query)).all())


async def reports_by_session(
    session: AsyncSession, tenant_id: str, session_ids: Collection[str]
) -> dict[str, bytes]:
    if not session_ids:
        return {}
    query = select(SessionReportRow.session_id, SessionReportRow.content).where(
        SessionReportRow.tenant_id == tenant_id,
        SessionReportRow.session_id.in_(list(session_ids)),
        SessionReportRow.content.is_not(None),
    )
    return {sid: content for sid, content in (await session.execute(query)).all()}


# -- the continuous pusher's cursors ------------------------------------------------------------


tenant_heads = log_cursors.tenant_heads


async def cursor_tenants(session: AsyncSession) -> set[str]:
    return set((await session.scalars(select(XapiPushCursor.tenant_id))).all())


async def ensure_cursors(
    session: AsyncSession, tenant_ids: Collection[str], lrs: str, now: datetime
) -> None:
    if tenant_ids:
        rows = [
            {
                "tenant_id": t,
                "lrs": lrs,
                "last_sequence": 0,
                "attempt_count": 0,
                "last_error": "",
                "update_time": now,
            }
            for t in tenant_ids
        ]
        await session.execute(
            _insert(session)(XapiPushCursor).values(rows).on_conflict_do_nothing()
        )


async def claim_cursors(
    session: AsyncSession, owner: str, now: datetime, lease_until: datetime, limit: int
) -> list[str]:
    """Leases the cursors of tenants whose log moved past them and whose retry is due."""
    due = or_(XapiPushCursor.next_attempt_time.is_(None), XapiPushCursor.next_attempt_time <= now)
    return await log_cursors.claim(
        session, XapiPushCursor, owner, now, lease_until, limit, where=[due]
    )


async def owned_cursor(session: AsyncSession, tenant_id: str, owner: str) -> XapiPushCursor | None:
    return await log_cursors.owned(session, XapiPushCursor, tenant_id, owner)


async def get_cursor(session: AsyncSession, tenant_id: str) -> XapiPushCursor | None:
    return await session.get(XapiPushCursor, tenant_id, populate_existing=True)


async def release_cursors(session: AsyncSession, owner: str, tenant_id: str | None = None) -> None:
    await log_cursors.release(session, XapiPushCursor, owner, tenant_id)
