"""Queries of the scheduling area. Repositories never commit: the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from .models import SessionInstructor
from .roster_models import RosterPerson, RosterQualification
from .scheduling_models import (
    SchedAssignmentPlan,
    SchedAvailability,
    SchedBooking,
    SchedBookingPerson,
    SchedFeedToken,
    SchedPersonLock,
    SchedSeries,
    SchedSettings,
    SchedSubstituteProposal,
)


def _insert(session: AsyncSession):
    return pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert


async def lock_people(session: AsyncSession, tenant_id: str, person_ids: Iterable[str]) -> None:
    """Takes the booking lock of each person, in a fixed order so two transactions never wait
    on each other crosswise. Concurrent bookers of one person queue here until the holder
    commits; the overlap check after it then sees the holder's booking."""
    ids = sorted(set(p for p in person_ids if p))
    if not ids:
        return
    insert = _insert(session)
    await session.execute(
        insert(SchedPersonLock)
        .values([{"tenant_id": tenant_id, "person_id": p, "version": 0} for p in ids])
        .on_conflict_do_nothing()
    )
    for person_id in ids:
        await session.execute(
            update(SchedPersonLock)
            .where(SchedPersonLock.tenant_id == tenant_id, SchedPersonLock.person_id == person_id)
            .values(version=SchedPersonLock.version + 1)
        )


async def people(session: AsyncSession, tenant_id: str, ids: Sequence[str]) -> list[RosterPerson]:
    if not ids:
        return []
    rows = await session.scalars(
        select(RosterPerson).where(
            RosterPerson.tenant_id == tenant_id,
            RosterPerson.id.in_(list(ids)),
            RosterPerson.delete_time.is_(None),
        )
    )
    return list(rows)


async def qualified_ids(session: AsyncSession, tenant_id: str, subject: str, level: str):
    levels = [""] if not level else ["", level]
    rows = await session.scalars(
        select(RosterQualification.person_id)
        .where(
            RosterQualification.tenant_id == tenant_id,
            RosterQualification.subject == subject,
            RosterQualification.level.in_(levels) if level else True,
        )
        .distinct()
    )
    return list(rows)


async def slot_instructors(
    session: AsyncSession,
    tenant_id: str,
    subject: str,
    level: str,
    instructor_bit: int,
    active: int,
    only: Sequence[str] = (),
):
    """Active instructors qualified for `subject` (any level, or `level`) who have an
    availability, in one query: (id, person zone, instructor profile, availability version,
    availability zone, booking policy). Weekly rules are read separately, only for schedules
    not already cached at that version."""
    levels = [""] if not level else ["", level]
    qualified = select(RosterQualification.person_id).where(
        RosterQualification.tenant_id == tenant_id,
        RosterQualification.subject == subject,
    )
    if level:
        qualified = qualified.where(RosterQualification.level.in_(levels))
    query = (
        select(
            RosterPerson.id,
            RosterPerson.time_zone,
            RosterPerson.instructor_profile,
            SchedAvailability.version,
            SchedAvailability.time_zone.label("availability_zone"),
            SchedAvailability.booking_policy,
        )
        .join(SchedAvailability, SchedAvailability.person_id == RosterPerson.id)
        .where(
            RosterPerson.tenant_id == tenant_id,
            RosterPerson.id.in_(qualified),
            RosterPerson.state == active,
            RosterPerson.delete_time.is_(None),
            RosterPerson.role_bits.op("&")(instructor_bit) != 0,
            SchedAvailability.tenant_id == tenant_id,
        )
    )
    if only:
        query = query.where(RosterPerson.id.in_(list(only)))
    return list(await session.execute(query))


async def settings(session: AsyncSession, tenant_id: str) -> SchedSettings | None:
    return await session.get(SchedSettings, tenant_id)


async def availability(session: AsyncSession, tenant_id: str, person_id: str):
    row = await session.get(SchedAvailability, person_id)
    return row if row is not None and row.tenant_id == tenant_id else None


async def availabilities(session: AsyncSession, tenant_id: str, person_ids: Sequence[str]):
    if not person_ids:
        return []
    rows = await session.scalars(
        select(SchedAvailability).where(
            SchedAvailability.tenant_id == tenant_id,
            SchedAvailability.person_id.in_(list(person_ids)),
        )
    )
    return list(rows)


async def list_availabilities(
    session: AsyncSession, tenant_id: str, person_ids: Sequence[str], after: str, limit: int
):
    query = select(SchedAvailability).where(SchedAvailability.tenant_id == tenant_id)
    if person_ids:
        query = query.where(SchedAvailability.person_id.in_(list(person_ids)))
    if after:
        query = query.where(SchedAvailability.person_id > after)
    rows = await session.scalars(query.order_by(SchedAvailability.person_id).limit(limit))
    return list(rows)


async def booking(session: AsyncSession, tenant_id: str, booking_id: str, *, lock=False):
    query = select(SchedBooking).where(
        SchedBooking.tenant_id == tenant_id, SchedBooking.id == booking_id
    )
    if lock:
        query = query.with_for_update()
    return await session.scalar(query)


async def occurrence(
    session: AsyncSession, tenant_id: str, series_id: str, original: datetime, *, lock=False
):
    query = select(SchedBooking).where(
        SchedBooking.tenant_id == tenant_id,
        SchedBooking.series_id == series_id,
        SchedBooking.original_start_time == original,
    )
    if lock:
        query = query.with_for_update()
    return await session.scalar(query)


async def series(session: AsyncSession, tenant_id: str, series_id: str, *, lock=False):
    query = select(SchedSeries).where(
        SchedSeries.tenant_id == tenant_id, SchedSeries.id == series_id
    )
    if lock:
        query = query.with_for_update()
    return await session.scalar(query)


async def series_occurrences(session: AsyncSession, series_id: str) -> list[SchedBooking]:
    rows = await session.scalars(
        select(SchedBooking)
        .where(SchedBooking.series_id == series_id)
        .order_by(SchedBooking.original_start_time)
    )
    return list(rows)


async def busy(
    session: AsyncSession,
    tenant_id: str,
    person_ids: Sequence[str],
    start: datetime,
    end: datetime,
    *,
    role: int | None = None,
) -> list[SchedBookingPerson]:
    """Participations of `person_ids` in scheduled bookings overlapping [start, end) (in
    `role` only, when given)."""
    if not person_ids:
        return []
    query = select(SchedBookingPerson).where(
        SchedBookingPerson.tenant_id == tenant_id,
        SchedBookingPerson.person_id.in_(list(person_ids)),
        SchedBookingPerson.state == 1,
        SchedBookingPerson.start_time < end,
        SchedBookingPerson.end_time > start,
    )
    if role is not None:
        query = query.where(SchedBookingPerson.role == role)
    rows = await session.scalars(query.order_by(SchedBookingPerson.start_time))
    return list(rows)


async def busy_times(
    session: AsyncSession,
    tenant_id: str,
    person_ids: Sequence[str],
    start: datetime,
    end: datetime,
):
    """(person_id, start_time, end_time) of the scheduled bookings `person_ids` teach that
    overlap [start, end): plain rows, no ORM objects, for slot search over many instructors."""
    if not person_ids:
        return []
    rows = await session.execute(
        select(
            SchedBookingPerson.person_id,
            SchedBookingPerson.start_time,
            SchedBookingPerson.end_time,
        )
        .where(
            SchedBookingPerson.tenant_id == tenant_id,
            SchedBookingPerson.person_id.in_(list(person_ids)),
            SchedBookingPerson.state == 1,
            SchedBookingPerson.role == 2,
            SchedBookingPerson.start_time < end,
            SchedBookingPerson.end_time > start,
        )
        .order_by(SchedBookingPerson.start_time)
    )
    return list(rows)


async def set_participants(session: AsyncSession, row: SchedBooking) -> None:
    """Rewrites a booking's participant rows from the booking."""
    existing = await session.scalars(
        select(SchedBookingPerson).where(SchedBookingPerson.booking_id == row.id)
    )
    for item in existing:
        await session.delete(item)
    await session.flush()
    wanted = {p: 1 for p in row.learner_ids}
    if row.instructor_id:
        wanted[row.instructor_id] = 2
    for person_id, role in wanted.items():
        session.add(
            SchedBookingPerson(
                booking_id=row.id,
                person_id=person_id,
                tenant_id=row.tenant_id,
                role=role,
                state=row.state,
                start_time=row.start_time,
                end_time=row.end_time,
            )
        )
    await session.flush()


async def bookings_by_ids(session: AsyncSession, tenant_id: str, ids: Sequence[str]):
    if not ids:
        return []
    rows = await session.scalars(
        select(SchedBooking).where(SchedBooking.tenant_id == tenant_id, SchedBooking.id.in_(ids))
    )
    return list(rows)


async def list_bookings(
    session: AsyncSession,
    tenant_id: str,
    *,
    start: datetime,
    end: datetime,
    states: Sequence[int],
    person_id: str = "",
    instructor_id: str = "",
    learner_id: str = "",
    class_id: str = "",
    series_id: str = "",
    subject: str = "",
    unassigned_only: bool = False,
    after: tuple[datetime, str] | None = None,
    limit: int = 50,
) -> list[SchedBooking]:
    query = select(SchedBooking).where(
        SchedBooking.tenant_id == tenant_id,
        SchedBooking.start_time < end,
        SchedBooking.end_time > start,
        SchedBooking.state.in_(list(states)),
    )
    for who, role in ((person_id, None), (learner_id, 1)):
        if who:
            members = select(SchedBookingPerson.booking_id).where(
                SchedBookingPerson.tenant_id == tenant_id,
                SchedBookingPerson.person_id == who,
                SchedBookingPerson.start_time < end,
                SchedBookingPerson.end_time > start,
            )
            if role is not None:
                members = members.where(SchedBookingPerson.role == role)
            query = query.where(SchedBooking.id.in_(members))
    if instructor_id:
        query = query.where(SchedBooking.instructor_id == instructor_id)
    if class_id:
        query = query.where(SchedBooking.class_id == class_id)
    if series_id:
        query = query.where(SchedBooking.series_id == series_id)
    if subject:
        query = query.where(SchedBooking.subject == subject)
    if unassigned_only:
        query = query.where(SchedBooking.instructor_id == "")
    if after is not None:
        at, last = after
        query = query.where(
            or_(
                SchedBooking.start_time > at,
                and_(SchedBooking.start_time == at, SchedBooking.id > last),
            )
        )
    rows = await session.scalars(
        query.order_by(SchedBooking.start_time, SchedBooking.id).limit(limit)
    )
    return list(rows)


async def list_series(
    session: AsyncSession,
    tenant_id: str,
    *,
    state: int,
    class_id: str,
    instructor_id: str,
    after: str,
    limit: int,
) -> list[SchedSeries]:
    query = select(SchedSeries).where(SchedSeries.tenant_id == tenant_id)
    if state:
        query = query.where(SchedSeries.state == state)
    if class_id:
        query = query.where(SchedSeries.class_id == class_id)
    if instructor_id:
        query = query.where(SchedSeries.instructor_id == instructor_id)
    if after:
        query = query.where(SchedSeries.id > after)
    rows = await session.scalars(query.order_by(SchedSeries.id).limit(limit))
    return list(rows)


async def person_series(session: AsyncSession, tenant_id: str, person_id: str):
    """Series in which the person teaches or has an occurrence (for calendar feeds)."""
    ids = select(SchedBooking.series_id).where(
        SchedBooking.tenant_id == tenant_id,
        SchedBooking.series_id.is_not(None),
        SchedBooking.id.in_(
            select(SchedBookingPerson.booking_id).where(
                SchedBookingPerson.tenant_id == tenant_id,
                SchedBookingPerson.person_id == person_id,
            )
        ),
    )
    rows = await session.scalars(
        select(SchedSeries).where(
            SchedSeries.tenant_id == tenant_id,
            or_(SchedSeries.id.in_(ids), SchedSeries.instructor_id == person_id),
        )
    )
    return list(rows)


async def previous_instructors(
    session: AsyncSession, tenant_id: str, learner_id: str, subject: str
):
    rows = await session.scalars(
        select(SchedBooking.instructor_id)
        .join(SchedBookingPerson, SchedBookingPerson.booking_id == SchedBooking.id)
        .where(
            SchedBookingPerson.tenant_id == tenant_id,
            SchedBookingPerson.person_id == learner_id,
            SchedBookingPerson.role == 1,
            SchedBooking.subject == subject,
            SchedBooking.instructor_id != "",
        )
        .distinct()
    )
    return list(rows)


async def external_taken(session: AsyncSession, model, tenant_id: str, external_id: str) -> bool:
    found = await session.scalar(
        select(model.id).where(model.tenant_id == tenant_id, model.external_id == external_id)
    )
    return found is not None


# Matching, substitutes, feed tokens -------------------------------------------------------------


async def person_lock_versions(
    session: AsyncSession, tenant_id: str, person_ids: Sequence[str]
) -> dict[str, int]:
    """The booking-lock version of each person (0 for one never locked): it grows with every
    booking change that involves them, so an unchanged version means nothing changed."""
    if not person_ids:
        return {}
    rows = await session.execute(
        select(SchedPersonLock.person_id, SchedPersonLock.version).where(
            SchedPersonLock.tenant_id == tenant_id,
            SchedPersonLock.person_id.in_(list(person_ids)),
        )
    )
    found = {p: v for p, v in rows}
    return {p: found.get(p, 0) for p in person_ids}


async def instructors(session: AsyncSession, tenant_id: str, instructor_bit: int, active: int):
    """Active instructors of the tenant (not deleted)."""
    rows = await session.scalars(
        select(RosterPerson)
        .where(
            RosterPerson.tenant_id == tenant_id,
            RosterPerson.state == active,
            RosterPerson.delete_time.is_(None),
            RosterPerson.role_bits.op("&")(instructor_bit) != 0,
        )
        .order_by(RosterPerson.id)
    )
    return list(rows)


async def lesson_history(
    session: AsyncSession, tenant_id: str, learner_ids: Sequence[str], before: datetime
) -> list[tuple[str, str, str, datetime]]:
    """(learner id, subject, instructor id, start) of the learners' lessons with an instructor
    that started before `before` and were not cancelled, newest first."""
    if not learner_ids:
        return []
    rows = await session.execute(
        select(
            SchedBookingPerson.person_id,
            SchedBooking.subject,
            SchedBooking.instructor_id,
            SchedBooking.start_time,
        )
        .join(SchedBooking, SchedBooking.id == SchedBookingPerson.booking_id)
        .where(
            SchedBookingPerson.tenant_id == tenant_id,
            SchedBookingPerson.person_id.in_(list(learner_ids)),
            SchedBookingPerson.role == 1,
            SchedBooking.instructor_id != "",
            SchedBooking.state != 3,
            SchedBooking.start_time < before,
        )
        .order_by(SchedBooking.start_time.desc())
        .limit(20_000)
    )
    return [tuple(r) for r in rows]


async def selection(
    session: AsyncSession,
    tenant_id: str,
    start: datetime,
    end: datetime,
    class_ids: Sequence[str],
    subjects: Sequence[str],
    include_assigned: bool,
    limit: int,
) -> list[SchedBooking]:
    """Scheduled bookings starting in [start, end), optionally of some classes or subjects."""
    query = select(SchedBooking).where(
        SchedBooking.tenant_id == tenant_id,
        SchedBooking.state == 1,
        SchedBooking.start_time >= start,
        SchedBooking.start_time < end,
    )
    if class_ids:
        query = query.where(SchedBooking.class_id.in_(list(class_ids)))
    if subjects:
        query = query.where(SchedBooking.subject.in_(list(subjects)))
    if not include_assigned:
        query = query.where(SchedBooking.instructor_id == "")
    rows = await session.scalars(
        query.order_by(SchedBooking.start_time, SchedBooking.id).limit(limit)
    )
    return list(rows)


async def plan(session: AsyncSession, tenant_id: str, plan_id: str, *, lock=False):
    query = select(SchedAssignmentPlan).where(
        SchedAssignmentPlan.tenant_id == tenant_id, SchedAssignmentPlan.id == plan_id
    )
    if lock:
        query = query.with_for_update()
    return await session.scalar(query)


async def replace_session_instructor(
    session: AsyncSession, tenant_id: str, session_id: str, previous: str, current: str
) -> None:
    """The live session expects instructor `current` instead of `previous` (either may be
    empty); the new one goes first in its list."""
    if previous:
        old = await session.get(SessionInstructor, (session_id, previous))
        if old is not None:
            await session.delete(old)
            await session.flush()
    if current and await session.get(SessionInstructor, (session_id, current)) is None:
        session.add(
            SessionInstructor(
                session_id=session_id, identity=current, tenant_id=tenant_id, position=0
            )
        )
        await session.flush()


async def proposal(session: AsyncSession, tenant_id: str, proposal_id: str, *, lock=False):
    query = select(SchedSubstituteProposal).where(
        SchedSubstituteProposal.tenant_id == tenant_id, SchedSubstituteProposal.id == proposal_id
    )
    if lock:
        query = query.with_for_update()
    return await session.scalar(query)


async def open_proposals(session: AsyncSession, tenant_id: str, booking_id: str):
    rows = await session.scalars(
        select(SchedSubstituteProposal).where(
            SchedSubstituteProposal.tenant_id == tenant_id,
            SchedSubstituteProposal.booking_id == booking_id,
            SchedSubstituteProposal.state == 1,
        )
    )
    return list(rows)


async def feed_token(session: AsyncSession, tenant_id: str, token_id: str):
    return await session.scalar(
        select(SchedFeedToken).where(
            SchedFeedToken.tenant_id == tenant_id, SchedFeedToken.id == token_id
        )
    )


async def feed_token_by_hash(session: AsyncSession, secret_hash: str):
    return await session.scalar(
        select(SchedFeedToken).where(SchedFeedToken.secret_hash == secret_hash)
    )


async def count_feed_tokens(session: AsyncSession, tenant_id: str, person_id: str) -> int:
    rows = await session.scalars(
        select(SchedFeedToken.id).where(
            SchedFeedToken.tenant_id == tenant_id, SchedFeedToken.person_id == person_id
        )
    )
    return len(list(rows))


async def list_feed_tokens(
    session: AsyncSession,
    tenant_id: str,
    person_id: str,
    after: tuple[datetime, str] | None,
    limit: int,
):
    query = select(SchedFeedToken).where(
        SchedFeedToken.tenant_id == tenant_id, SchedFeedToken.person_id == person_id
    )
    if after is not None:
        at, last = after
        query = query.where(
            or_(
                SchedFeedToken.create_time > at,
                and_(SchedFeedToken.create_time == at, SchedFeedToken.id > last),
            )
        )
    rows = await session.scalars(
        query.order_by(SchedFeedToken.create_time, SchedFeedToken.id).limit(limit)
    )
    return list(rows)
