"""Storage of post-session reports and the report runner's cursors. Never commits."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from .documentation_models import TranscriptionRow
from .models import Event, EventCounter, LiveSession, SessionInstructor
from .report_models import ReportCursor, SessionReportPerson, SessionReportRow

__all__ = ["ReportCursor", "SessionReportPerson", "SessionReportRow"]


def _insert(session: AsyncSession):
    return pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert


async def tenant_heads(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(
        select(EventCounter.tenant_id, EventCounter.last_sequence).where(EventCounter.stream == "")
    )
    return dict(rows.all())


async def cursors(session: AsyncSession) -> dict[str, int]:
    rows = await session.execute(select(ReportCursor.tenant_id, ReportCursor.last_sequence))
    return dict(rows.all())


async def ensure_cursors(session: AsyncSession, tenant_ids: Collection[str]) -> None:
    if tenant_ids:
        await session.execute(
            _insert(session)(ReportCursor)
            .values([{"tenant_id": t, "last_sequence": 0} for t in tenant_ids])
            .on_conflict_do_nothing()
        )


async def lock_cursor(session: AsyncSession, tenant_id: str) -> ReportCursor | None:
    """The tenant's cursor, locked until commit; None when another replica holds it."""
    return await session.scalar(
        select(ReportCursor)
        .where(ReportCursor.tenant_id == tenant_id)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )


async def events_of_type(
    session: AsyncSession, tenant_id: str, event_type: str, after: int, upto: int, limit: int
) -> list[Event]:
    """Events of one type in (after, upto], oldest first (served by ix_events_type)."""
    query = (
        select(Event)
        .where(
            Event.tenant_id == tenant_id,
            Event.type == event_type,
            Event.sequence > after,
            Event.sequence <= upto,
        )
        .order_by(Event.sequence)
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


async def session_events(
    session: AsyncSession,
    tenant_id: str,
    session_ids: Collection[str],
    types: Collection[str],
    after: int,
    limit: int,
) -> list[Event]:
    """Events of the given sessions and types after a tenant sequence, oldest first."""
    query = (
        select(Event)
        .where(
            Event.tenant_id == tenant_id,
            Event.session_id.in_(list(session_ids)),
            Event.type.in_(list(types)),
            Event.sequence > after,
        )
        .order_by(Event.sequence)
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


async def transcripts_in_state(
    session: AsyncSession, tenant_id: str, session_ids: Collection[str], state: int
) -> list[str]:
    """The rooms among session_ids whose transcript is in the given state."""
    rows = await session.scalars(
        select(TranscriptionRow.session_id).where(
            TranscriptionRow.tenant_id == tenant_id,
            TranscriptionRow.session_id.in_(list(session_ids)),
            TranscriptionRow.transcript_state == state,
        )
    )
    return list(rows.all())


async def add_pending(session: AsyncSession, values: dict) -> bool:
    """Inserts a report row unless the session has one; True when inserted."""
    result = await session.execute(
        _insert(session)(SessionReportRow).values(**values).on_conflict_do_nothing()
    )
    return result.rowcount == 1


async def get(
    session: AsyncSession, tenant_id: str, session_id: str, *, lock: bool = False
) -> SessionReportRow | None:
    query = select(SessionReportRow).where(
        SessionReportRow.tenant_id == tenant_id, SessionReportRow.session_id == session_id
    )
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    return await session.scalar(query)


async def claim_due(
    session: AsyncSession,
    owner: str,
    now: datetime,
    lease_until: datetime,
    states: Collection[int],
    limit: int,
) -> list[SessionReportRow]:
    """Leases due build jobs: pending ones whose attempt time has come, and building ones whose
    builder's lease lapsed (it crashed). SKIP LOCKED lets replicas claim disjoint sets."""
    due = (
        select(SessionReportRow.session_id)
        .where(
            SessionReportRow.state.in_(list(states)),
            SessionReportRow.next_attempt_time <= now,
            or_(SessionReportRow.lease_until.is_(None), SessionReportRow.lease_until < now),
        )
        .order_by(SessionReportRow.next_attempt_time)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list((await session.scalars(due)).all())
    if not ids:
        return []
    await session.execute(
        update(SessionReportRow)
        .where(SessionReportRow.session_id.in_(ids))
        .values(
            lease_owner=owner,
            lease_until=lease_until,
            attempts=SessionReportRow.attempts + 1,
            update_time=now,
        )
    )
    rows = await session.scalars(
        select(SessionReportRow)
        .where(SessionReportRow.session_id.in_(ids))
        .execution_options(populate_existing=True)
    )
    return list(rows.all())


async def next_due_time(session: AsyncSession, states: Collection[int]) -> datetime | None:
    return await session.scalar(
        select(SessionReportRow.next_attempt_time)
        .where(
            SessionReportRow.state.in_(list(states)),
            SessionReportRow.next_attempt_time.is_not(None),
        )
        .order_by(SessionReportRow.next_attempt_time)
        .limit(1)
    )


async def set_people(
    session: AsyncSession, tenant_id: str, session_id: str, people: dict[str, int]
) -> None:
    await session.execute(
        delete(SessionReportPerson).where(SessionReportPerson.session_id == session_id)
    )
    if people:
        await session.execute(
            SessionReportPerson.__table__.insert(),
            [
                {"session_id": session_id, "identity": i, "tenant_id": tenant_id, "role": r}
                for i, r in people.items()
            ],
        )


async def page(
    session: AsyncSession,
    tenant_id: str,
    *,
    class_id: str,
    course_id: str,
    instructor_identity: str,
    instructor_roles: Collection[int],
    learner_identity: str,
    learner_roles: Collection[int],
    state: int,
    end_from: datetime | None,
    end_to: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[SessionReportRow]:
    """Reports newest session end first, keyset-paged on (end_time, session_id)."""
    query = select(SessionReportRow).where(SessionReportRow.tenant_id == tenant_id)
    if class_id:
        query = query.where(SessionReportRow.class_id == class_id)
    if course_id:
        query = query.where(SessionReportRow.course_id == course_id)
    if state:
        query = query.where(SessionReportRow.state == state)
    if end_from is not None:
        query = query.where(SessionReportRow.end_time >= end_from)
    if end_to is not None:
        query = query.where(SessionReportRow.end_time < end_to)
    if instructor_identity:
        taught = select(SessionReportPerson.session_id).where(
            SessionReportPerson.tenant_id == tenant_id,
            SessionReportPerson.identity == instructor_identity,
            SessionReportPerson.role.in_(list(instructor_roles)),
        )
        # Scheduled instructors count too, so a report still building is found.
        scheduled = select(SessionInstructor.session_id).where(
            SessionInstructor.tenant_id == tenant_id,
            SessionInstructor.identity == instructor_identity,
        )
        query = query.where(
            or_(SessionReportRow.session_id.in_(taught), SessionReportRow.session_id.in_(scheduled))
        )
    if learner_identity:
        learned = select(SessionReportPerson.session_id).where(
            SessionReportPerson.tenant_id == tenant_id,
            SessionReportPerson.identity == learner_identity,
            SessionReportPerson.role.in_(list(learner_roles)),
        )
        query = query.where(SessionReportRow.session_id.in_(learned))
    if after is not None:
        at, last_id = after
        query = query.where(
            or_(
                SessionReportRow.end_time < at,
                and_(SessionReportRow.end_time == at, SessionReportRow.session_id < last_id),
            )
        )
    query = query.order_by(
        SessionReportRow.end_time.desc(), SessionReportRow.session_id.desc()
    ).limit(limit)
    return list((await session.scalars(query)).all())


async def sessions_by_id(
    session: AsyncSession, tenant_id: str, ids: Collection[str]
) -> dict[str, LiveSession]:
    if not ids:
        return {}
    rows = await session.scalars(
        select(LiveSession).where(LiveSession.tenant_id == tenant_id, LiveSession.id.in_(list(ids)))
    )
    return {row.id: row for row in rows.all()}
