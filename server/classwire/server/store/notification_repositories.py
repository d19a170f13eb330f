"""Storage of notifications and workflows, and the roster/session reads they need. Never commits:
callers own the transaction."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from . import log_cursors
from . import repositories as core_repo
from .models import AttendanceInterval, LiveSession, SessionParticipant
from .notification_models import (
    NotificationRow,
    NotificationTemplateRow,
    WorkflowConfigRow,
    WorkflowCursor,
    WorkflowEffect,
)
from .roster_models import RosterEnrollment, RosterGuardianLink, RosterPerson
from .scheduling_models import SchedBooking


def _insert(session: AsyncSession):
    return pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert


# -- notifications ----------------------------------------------------------------------------


async def insert_notification(session: AsyncSession, values: dict[str, Any]) -> bool:
    """Inserts unless the (tenant, recipient, cause) notice exists; True when inserted."""
    result = await session.execute(
        _insert(session)(NotificationRow).values(**values).on_conflict_do_nothing()
    )
    return result.rowcount == 1


async def notification_by_cause(
    session: AsyncSession, tenant_id: str, recipient_id: str, cause: str
) -> NotificationRow | None:
    return await session.scalar(
        select(NotificationRow).where(
            NotificationRow.tenant_id == tenant_id,
            NotificationRow.recipient_id == recipient_id,
            NotificationRow.cause == cause,
        )
    )


async def get_notification(
    session: AsyncSession, tenant_id: str, notification_id: str, *, lock: bool = False
) -> NotificationRow | None:
    query = select(NotificationRow).where(
        NotificationRow.tenant_id == tenant_id, NotificationRow.id == notification_id
    )
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    return await session.scalar(query)


def notifications(
    tenant_id: str,
    *,
    recipient_id: str = "",
    session_id: str = "",
    workflow: str = "",
    state: int = 0,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Select:
    query = select(NotificationRow).where(NotificationRow.tenant_id == tenant_id)
    if recipient_id:
        query = query.where(NotificationRow.recipient_id == recipient_id)
    if session_id:
        query = query.where(NotificationRow.session_id == session_id)
    if workflow:
        query = query.where(NotificationRow.workflow == workflow)
    if state:
        query = query.where(NotificationRow.state == state)
    if start is not None:
        query = query.where(NotificationRow.create_time >= start)
    if end is not None:
        query = query.where(NotificationRow.create_time < end)
    return query


async def page_newest_first(
    session: AsyncSession, query: Select, limit: int, after: tuple[datetime, str] | None
) -> list[NotificationRow]:
    if after is not None:
        at, last_id = after
        query = query.where(
            or_(
                NotificationRow.create_time < at,
                and_(NotificationRow.create_time == at, NotificationRow.id < last_id),
            )
        )
    query = query.order_by(NotificationRow.create_time.desc(), NotificationRow.id.desc())
    return list((await session.scalars(query.limit(limit))).all())


async def claim_due(
    session: AsyncSession, state: int, owner: str, now: datetime, lease_until: datetime, limit: int
) -> list[str]:
    """Leases due notices in `state`. SKIP LOCKED lets replicas claim disjoint sets on
    PostgreSQL; SQLite has one writer, so the plain update is already exclusive."""
    query = (
        select(NotificationRow.id)
        .where(
            NotificationRow.state == state,
            NotificationRow.next_attempt_time <= now,
            or_(NotificationRow.lease_until.is_(None), NotificationRow.lease_until < now),
        )
        .order_by(NotificationRow.next_attempt_time)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list((await session.scalars(query)).all())
    if ids:
        await session.execute(
            update(NotificationRow)
            .where(NotificationRow.id.in_(ids))
            .values(lease_owner=owner, lease_until=lease_until)
        )
    return ids


async def load_owned(
    session: AsyncSession, ids: Collection[str], owner: str
) -> list[NotificationRow]:
    if not ids:
        return []
    query = select(NotificationRow).where(
        NotificationRow.id.in_(list(ids)), NotificationRow.lease_owner == owner
    )
    return list((await session.scalars(query)).all())


async def release_all(session: AsyncSession, owner: str) -> None:
    await session.execute(
        update(NotificationRow)
        .where(NotificationRow.lease_owner == owner)
        .values(lease_owner=None, lease_until=None)
    )


async def next_due_time(session: AsyncSession, state: int) -> datetime | None:
    return await session.scalar(
        select(NotificationRow.next_attempt_time)
        .where(NotificationRow.state == state, NotificationRow.next_attempt_time.is_not(None))
        .order_by(NotificationRow.next_attempt_time)
        .limit(1)
    )


# -- templates ----------------------------------------------------------------------------------


async def template_overrides(
    session: AsyncSession, tenant_id: str, name: str = "", locale: str = ""
) -> list[NotificationTemplateRow]:
    query = select(NotificationTemplateRow).where(NotificationTemplateRow.tenant_id == tenant_id)
    if name:
        query = query.where(NotificationTemplateRow.name == name)
    if locale:
        query = query.where(NotificationTemplateRow.locale == locale)
    return list((await session.scalars(query)).all())


async def get_template_override(
    session: AsyncSession, tenant_id: str, name: str, locale: str
) -> NotificationTemplateRow | None:
    return await session.get(NotificationTemplateRow, (tenant_id, name, locale))


async def delete_template_override(session: AsyncSession, row: NotificationTemplateRow) -> None:
    await session.delete(row)


# -- workflows ----------------------------------------------------------------------------------


async def workflow_configs(session: AsyncSession, tenant_id: str) -> dict[str, WorkflowConfigRow]:
    rows = await session.scalars(
        select(WorkflowConfigRow).where(WorkflowConfigRow.tenant_id == tenant_id)
    )
    return {row.name: row for row in rows.all()}


async def get_workflow_config(
    session: AsyncSession, tenant_id: str, name: str
) -> WorkflowConfigRow | None:
    return await session.get(WorkflowConfigRow, (tenant_id, name))


async def add_effect(session: AsyncSession, tenant_id: str, key: str, now: datetime) -> bool:
    """Records an effect by key; False when it was already had."""
    result = await session.execute(
        _insert(session)(WorkflowEffect)
        .values(tenant_id=tenant_id, key=key, create_time=now)
        .on_conflict_do_nothing()
    )
    return result.rowcount == 1


tenant_heads = log_cursors.tenant_heads


async def ensure_cursors(session: AsyncSession, tenant_ids: Collection[str]) -> None:
    await log_cursors.ensure(session, WorkflowCursor, tenant_ids)


async def cursors(session: AsyncSession) -> dict[str, int]:
    return await log_cursors.positions(session, WorkflowCursor)


async def claim_cursors(
    session: AsyncSession,
    owner: str,
    now: datetime,
    lease_until: datetime,
    limit: int,
    exclude: Collection[str] = (),
) -> list[str]:
    """Leases tenants whose log has moved past their workflow cursor."""
    where = [WorkflowCursor.tenant_id.not_in(list(exclude))] if exclude else []
    return await log_cursors.claim(
        session, WorkflowCursor, owner, now, lease_until, limit, where=where
    )


async def owned_cursor(session: AsyncSession, tenant_id: str, owner: str) -> WorkflowCursor | None:
    return await log_cursors.owned(session, WorkflowCursor, tenant_id, owner)


async def release_cursors(session: AsyncSession, owner: str, tenant_id: str = "") -> None:
    await log_cursors.release(session, WorkflowCursor, owner, tenant_id)


async def set_cursor(session: AsyncSession, tenant_id: str, sequence: int) -> None:
    await session.execute(
        update(WorkflowCursor)
        .where(WorkflowCursor.tenant_id == tenant_id)
        .values(last_sequence=sequence)
    )


# The whole tenant log after a cursor (no filters), as the event-log API reads it.
events_after = core_repo.events_after


# -- roster and session reads ---------------------------------------------------------------------


async def people(
    session: AsyncSession, tenant_id: str, ids: Collection[str]
) -> dict[str, RosterPerson]:
    if not ids:
        return {}
    rows = await session.scalars(
        select(RosterPerson).where(
            RosterPerson.tenant_id == tenant_id,
            RosterPerson.id.in_(list(ids)),
            RosterPerson.delete_time.is_(None),
        )
    )
    return {row.id: row for row in rows.all()}


async def people_by_identity(
    session: AsyncSession, tenant_id: str, identities: Collection[str]
) -> dict[str, RosterPerson]:
    """Session identities resolved to roster people: an identity is a person id or an
    external id."""
    if not identities:
        return {}
    values = list(identities)
    rows = await session.scalars(
        select(RosterPerson).where(
            RosterPerson.tenant_id == tenant_id,
            or_(RosterPerson.id.in_(values), RosterPerson.external_id.in_(values)),
            RosterPerson.delete_time.is_(None),
        )
    )
    found: dict[str, RosterPerson] = {}
    for row in rows.all():
        if row.id in identities:
            found[row.id] = row
        if row.external_id and row.external_id in identities:
            found[row.external_id] = row
    return found


async def people_with_role(
    session: AsyncSession, tenant_id: str, role_bit: int, active: int, limit: int
) -> list[RosterPerson]:
    rows = await session.scalars(
        select(RosterPerson)
        .where(
            RosterPerson.tenant_id == tenant_id,
            RosterPerson.state == active,
            RosterPerson.delete_time.is_(None),
            RosterPerson.role_bits.op("&")(role_bit) != 0,
        )
        .order_by(RosterPerson.id)
        .limit(limit)
    )
    return list(rows.all())


async def guardian_links(
    session: AsyncSession, tenant_id: str, learner_ids: Collection[str]
) -> list[RosterGuardianLink]:
    if not learner_ids:
        return []
    rows = await session.scalars(
        select(RosterGuardianLink)
        .where(
            RosterGuardianLink.tenant_id == tenant_id,
            RosterGuardianLink.learner_id.in_(list(learner_ids)),
        )
        .order_by(RosterGuardianLink.learner_id, RosterGuardianLink.guardian_id)
    )
    return list(rows.all())


async def live_session(
    session: AsyncSession, tenant_id: str, session_id: str
) -> LiveSession | None:
    return await session.scalar(
        select(LiveSession).where(LiveSession.tenant_id == tenant_id, LiveSession.id == session_id)
    )


async def session_participants(
    session: AsyncSession, tenant_id: str, session_id: str
) -> list[SessionParticipant]:
    rows = await session.scalars(
        select(SessionParticipant).where(
            SessionParticipant.tenant_id == tenant_id, SessionParticipant.session_id == session_id
        )
    )
    return list(rows.all())


async def attended_participant_ids(
    session: AsyncSession, tenant_id: str, session_id: str
) -> set[str]:
    rows = await session.scalars(
        select(AttendanceInterval.participant_id)
        .where(
            AttendanceInterval.tenant_id == tenant_id, AttendanceInterval.session_id == session_id
        )
        .distinct()
    )
    return set(rows.all())


async def bookings_of_session(
    session: AsyncSession, tenant_id: str, session_id: str
) -> list[SchedBooking]:
    rows = await session.scalars(
        select(SchedBooking).where(
            SchedBooking.tenant_id == tenant_id, SchedBooking.session_id == session_id
        )
    )
    return list(rows.all())


async def class_learners(
    session: AsyncSession, tenant_id: str, class_id: str, active: int, learner: int
) -> list[str]:
    rows = await session.scalars(
        select(RosterEnrollment.person_id).where(
            RosterEnrollment.tenant_id == tenant_id,
            RosterEnrollment.class_id == class_id,
            RosterEnrollment.state == active,
            RosterEnrollment.role == learner,
        )
    )
    return list(rows.all())
