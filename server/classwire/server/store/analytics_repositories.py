"""Storage of the analytics rollups and ratings. Never commits: the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import Select, and_, case, delete, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from . import log_cursors
from .analytics_models import AnalyticsAttendance, AnalyticsCursor, AnalyticsSession, RatingRow
from .models import Event, SessionInstructor, SessionParticipant

A = AnalyticsAttendance
CHUNK = 500  # bound IN lists and executemany batches


def _insert(session: AsyncSession):
    return pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert


# -- the consumer's cursors (leased like the workflow runner's) -----------------------------------


tenant_heads = log_cursors.tenant_heads


async def cursors(session: AsyncSession) -> dict[str, int]:
    return await log_cursors.positions(session, AnalyticsCursor)


async def ensure_cursors(session: AsyncSession, tenant_ids: Collection[str]) -> None:
    await log_cursors.ensure(session, AnalyticsCursor, tenant_ids)


async def claim_cursors(
    session: AsyncSession, owner: str, now: datetime, lease_until: datetime, limit: int
) -> list[str]:
    return await log_cursors.claim(
        session, AnalyticsCursor, owner, now, lease_until, limit, renew_own=True
    )


async def owned_cursor(session: AsyncSession, tenant_id: str, owner: str) -> AnalyticsCursor | None:
    return await log_cursors.owned(session, AnalyticsCursor, tenant_id, owner)


async def release_cursors(session: AsyncSession, owner: str, tenant_id: str | None = None) -> None:
    await log_cursors.release(session, AnalyticsCursor, owner, tenant_id)


async def cursor_position(session: AsyncSession, tenant_id: str) -> int:
    value = await session.scalar(
        select(AnalyticsCursor.last_sequence).where(AnalyticsCursor.tenant_id == tenant_id)
    )
    return value or 0


async def events_after(
    session: AsyncSession, tenant_id: str, after: int, limit: int
) -> list[tuple[int, str, bytes]]:
    query = (
        select(Event.sequence, Event.type, Event.payload)
        .where(Event.tenant_id == tenant_id, Event.sequence > after)
        .order_by(Event.sequence)
        .limit(limit)
    )
    return [tuple(row) for row in (await session.execute(query)).all()]


# -- the fold's rows ----------------------------------------------------------------------------


def _columns(model) -> list[str]:
    return [c.name for c in model.__table__.columns]


async def load_sessions(
    session: AsyncSession, tenant_id: str, session_ids: Collection[str]
) -> list[dict]:
    ids = sorted(set(session_ids))
    out: list[dict] = []
    table = AnalyticsSession.__table__
    for i in range(0, len(ids), CHUNK):
        result = await session.execute(
            select(table).where(
                table.c.tenant_id == tenant_id, table.c.session_id.in_(ids[i : i + CHUNK])
            )
        )
        out.extend(dict(row._mapping) for row in result)
    return out


async def load_attendances(
    session: AsyncSession, tenant_id: str, session_ids: Collection[str]
) -> list[dict]:
    ids = sorted(set(session_ids))
    out: list[dict] = []
    table = A.__table__
    for i in range(0, len(ids), CHUNK):
        result = await session.execute(
            select(table).where(
                table.c.tenant_id == tenant_id, table.c.session_id.in_(ids[i : i + CHUNK])
            )
        )
        out.extend(dict(row._mapping) for row in result)
    return out


async def assigned_instructors(
    session: AsyncSession, session_ids: Collection[str]
) -> dict[str, list[str]]:
    """The instructors a session was created with, in their order."""
    ids = sorted(set(session_ids))
    out: dict[str, list[str]] = {}
    for i in range(0, len(ids), CHUNK):
        result = await session.execute(
            select(SessionInstructor.session_id, SessionInstructor.identity)
            .where(SessionInstructor.session_id.in_(ids[i : i + CHUNK]))
            .order_by(SessionInstructor.session_id, SessionInstructor.position)
        )
        for session_id, identity in result:
            out.setdefault(session_id, []).append(identity)
    return out


async def _upsert(session: AsyncSession, model, rows: list[dict], keys: Sequence[str]) -> None:
    if not rows:
        return
    insert = _insert(session)(model.__table__)
    names = [c for c in _columns(model) if c not in keys]
    statement = insert.on_conflict_do_update(
        index_elements=list(keys), set_={c: insert.excluded[c] for c in names}
    )
    for i in range(0, len(rows), CHUNK):
        await session.execute(statement, rows[i : i + CHUNK])


async def save(session: AsyncSession, sessions: list[dict], attendances: list[dict]) -> None:
    await _upsert(session, AnalyticsSession, sessions, ("tenant_id", "session_id"))
    await _upsert(session, A, attendances, ("tenant_id", "session_id", "identity"))


# -- queries ------------------------------------------------------------------------------------


def _sum(column):
    return func.coalesce(func.sum(column), 0)


def _count_if(condition):
    return _sum(case((condition, 1), else_=0))


ATTENDANCE_MEASURES = {
    "sessions": func.count(func.distinct(A.session_id)),
    "expected": _count_if(A.expected),
    "attended": _count_if(A.attended),
    "absences": _count_if(and_(A.expected, ~A.attended, A.ended)),
    "late_arrivals": _count_if(A.late),
    "early_leaves": _count_if(A.left_early),
    "present_ms": _sum(A.present_ms),
    "scheduled_ms": _sum(case((A.expected, A.scheduled_ms), else_=0)),
}

ENGAGEMENT_MEASURES = {
    "attendances": _count_if(A.attended),
    "present_ms": _sum(A.present_ms),
    "talk_ms": _sum(A.talk_ms),
    "talk_share_sum": _sum(case((A.attended, A.talk_share), else_=0.0)),
    "camera_ms": _sum(A.camera_ms),
    "chat_messages": _sum(A.chat_messages),
    "hand_raises": _sum(A.hand_raises),
    "reactions": _sum(A.reactions),
    "polls_offered": _sum(A.polls_offered),
    "polls_answered": _sum(A.polls_answered),
    "graded_answers": _sum(A.graded_answers),
    "correct_answers": _sum(A.correct_answers),
}

QUALITY_MEASURES = {
    "sessions_scheduled": _count_if(A.expected),
    "sessions_taught": _count_if(A.attended),
    "no_shows": _count_if(and_(A.expected, ~A.attended, A.ended)),
    "late_starts": _count_if(A.late),
    "lateness_sum_ms": _sum(case((A.attended, A.late_ms), else_=0)),
    "lateness_max_ms": func.coalesce(func.max(case((A.attended, A.late_ms), else_=0)), 0),
    "early_ends": _count_if(A.left_early),
    "disconnects": _sum(A.disconnects),
    "present_ms": _sum(A.present_ms),
    "sessions_with_disconnects": _count_if(A.disconnects > 0),
    "rating_count": _sum(A.rating_count),
    "rating_sum": _sum(A.rating_sum),
    **{f"rating_{n}": _sum(getattr(A, f"rating_{n}")) for n in range(1, 6)},
}

GROUP_COLUMNS = {"learner": A.identity, "class": A.class_id, "instructor": A.instructor}


def _scope(
    query: Select,
    tenant_id: str,
    roles: Collection[int],
    first_slot: int,
    end_slot: int,
    learners: Collection[str] = (),
    instructors: Collection[str] = (),
    class_ids: Collection[str] = (),
    course_ids: Collection[str] = (),
) -> Select:
    query = query.where(
        A.tenant_id == tenant_id,
        A.role.in_(list(roles)),
        A.slot >= first_slot,
        A.slot < end_slot,
        ~A.cancelled,
    )
    if learners:
        query = query.where(A.identity.in_(list(learners)))
    if instructors:
        query = query.where(A.instructor.in_(list(instructors)))
    if class_ids:
        query = query.where(A.class_id.in_(list(class_ids)))
    if course_ids:
        query = query.where(A.course_id.in_(list(course_ids)))
    return query


async def group_keys(
    session: AsyncSession, group: str, after: str, limit: int, **scope
) -> list[str]:
    """The next `limit` group ids (in order) with a row in scope."""
    column = GROUP_COLUMNS[group]
    query = _scope(select(column).distinct(), **scope).where(column > after, column != "")
    result = await session.scalars(query.order_by(column).limit(limit))
    return list(result.all())


async def aggregate(
    session: AsyncSession,
    group: str | None,
    keys: Collection[str],
    measures: dict,
    **scope,
) -> list[dict]:
    """Measures per (group id, slot) over the scope; group None for the whole tenant."""
    column = GROUP_COLUMNS[group] if group else None
    selected = [A.slot.label("slot"), *(m.label(n) for n, m in measures.items())]
    if column is not None:
        selected.insert(0, column.label("key"))
    query = _scope(select(*selected), **scope)
    if column is not None:
        query = query.where(column.in_(list(keys))).group_by(column, A.slot)
    else:
        query = query.group_by(A.slot)
    return [dict(row._mapping) for row in (await session.execute(query)).all()]


async def display_names(session: AsyncSession, tenant_id: str, identities: Collection[str]):
    if not identities:
        return {}
    query = (
        select(A.identity, func.max(A.display_name))
        .where(A.tenant_id == tenant_id, A.identity.in_(list(identities)))
        .group_by(A.identity)
    )
    return {identity: name or "" for identity, name in (await session.execute(query)).all()}


# -- ratings ------------------------------------------------------------------------------------


async def joined_identities(
    session: AsyncSession, tenant_id: str, session_id: str, roles: Collection[int] = ()
) -> list[str]:
    """Identities of the session's participants who joined at least once, in identity order;
    only those of these roles when `roles` is given (who may rate, and whom)."""
    query = select(SessionParticipant.identity).where(
        SessionParticipant.tenant_id == tenant_id,
        SessionParticipant.session_id == session_id,
        SessionParticipant.first_join_time.is_not(None),
    )
    if roles:
        query = query.where(SessionParticipant.role.in_(list(roles)))
    return list((await session.scalars(query.order_by(SessionParticipant.identity))).all())


async def rating_for(
    session: AsyncSession, tenant_id: str, session_id: str, rater: str, instructor: str
) -> RatingRow | None:
    return await session.scalar(
        select(RatingRow).where(
            RatingRow.tenant_id == tenant_id,
            RatingRow.session_id == session_id,
            RatingRow.rater_identity == rater,
            RatingRow.instructor_identity == instructor,
        )
    )


async def get_rating(session: AsyncSession, tenant_id: str, rating_id: str) -> RatingRow | None:
    return await session.scalar(
        select(RatingRow).where(RatingRow.tenant_id == tenant_id, RatingRow.id == rating_id)
    )


async def delete_rating(session: AsyncSession, row: RatingRow) -> None:
    await session.execute(delete(RatingRow).where(RatingRow.id == row.id))


async def list_ratings(
    session: AsyncSession,
    tenant_id: str,
    *,
    session_id: str,
    instructor: str,
    rater: str,
    start: datetime | None,
    end: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[RatingRow]:
    query = select(RatingRow).where(RatingRow.tenant_id == tenant_id)
    if session_id:
        query = query.where(RatingRow.session_id == session_id)
    if instructor:
        query = query.where(RatingRow.instructor_identity == instructor)
    if rater:
        query = query.where(RatingRow.rater_identity == rater)
    if start is not None:
        query = query.where(RatingRow.create_time >= start)
    if end is not None:
        query = query.where(RatingRow.create_time < end)
    if after is not None:
        at, last_id = after
        query = query.where(
            or_(
                RatingRow.create_time < at,
                and_(RatingRow.create_time == at, RatingRow.id < last_id),
            )
        )
    query = query.order_by(RatingRow.create_time.desc(), RatingRow.id.desc()).limit(limit)
    return list((await session.scalars(query)).all())
