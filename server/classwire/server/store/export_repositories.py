"""Reads of the record exports (ExportRecords): the log's head and its events, session reports,
and the rows exported in (time, id) order. Never commits: the caller owns the transaction.

Every read returns one page after a position the previous page left, so an export of any size
reads in short transactions and bounded memory.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from . import repositories as core_repo
from .analytics_models import RatingRow
from .documentation_models import TranscriptSegmentRow
from .models import LiveSession
from .report_models import SessionReportRow

# The tenant log after a sequence, oldest first, filtered by type, session and occur time.
events_page = core_repo.events_after


async def sessions_of_classes(
    session: AsyncSession, tenant_id: str, class_ids: Collection[str]
) -> list[str]:
    """Ids of the tenant's sessions of these roster classes."""
    query = select(LiveSession.id).where(
        LiveSession.tenant_id == tenant_id, LiveSession.class_id.in_(list(class_ids))
    )
    return list((await session.scalars(query)).all())


async def session_reports_page(
    session: AsyncSession,
    tenant_id: str,
    *,
    session_ids: Collection[str] = (),
    end_from: datetime | None = None,
    end_to: datetime | None = None,
    after_session_id: str = "",
    limit: int = 500,
) -> list[SessionReportRow]:
    """Built reports (with content) in session id order after `after_session_id`; the time
    range applies to the session's end."""
    query = select(SessionReportRow).where(
        SessionReportRow.tenant_id == tenant_id,
        SessionReportRow.content.is_not(None),
        SessionReportRow.session_id > after_session_id,
    )
    if session_ids:
        query = query.where(SessionReportRow.session_id.in_(list(session_ids)))
    if end_from is not None:
        query = query.where(SessionReportRow.end_time >= end_from)
    if end_to is not None:
        query = query.where(SessionReportRow.end_time < end_to)
    query = query.order_by(SessionReportRow.session_id).limit(limit)
    return list((await session.scalars(query)).all())


# -- rows exported in (time, id) order ----------------------------------------------------------


@dataclass(frozen=True)
class TimeKeyed:
    """A table exported in (time, id) order: the column its time range and order use, and the
    identity columns that the identities filter matches (any of them)."""

    model: type
    time: str
    identities: tuple[str, ...]

    def position(self, row) -> tuple[datetime, str]:
        """Where a row leaves the next page to start."""
        return getattr(row, self.time), row.id


RATINGS = TimeKeyed(RatingRow, "create_time", ("rater_identity", "instructor_identity"))
TRANSCRIPT_SEGMENTS = TimeKeyed(TranscriptSegmentRow, "start_time", ("identity",))


async def time_keyed_page(
    session: AsyncSession,
    source: TimeKeyed,
    tenant_id: str,
    *,
    session_ids: Collection[str] = (),
    identities: Collection[str] = (),
    start: datetime | None = None,
    end: datetime | None = None,
    after: tuple[datetime, str] | None = None,
    limit: int = 500,
) -> list:
    """The next page of `source`'s rows after the position `after` (None: from the first)."""
    model = source.model
    at = getattr(model, source.time)
    query = select(model).where(model.tenant_id == tenant_id)
    if session_ids:
        query = query.where(model.session_id.in_(list(session_ids)))
    if identities:
        who = list(identities)
        query = query.where(or_(*(getattr(model, c).in_(who) for c in source.identities)))
    if start is not None:
        query = query.where(at >= start)
    if end is not None:
        query = query.where(at < end)
    if after is not None:
        moment, last_id = after
        query = query.where(or_(at > moment, and_(at == moment, model.id > last_id)))
    query = query.order_by(at, model.id).limit(limit)
    return list((await session.scalars(query)).all())
