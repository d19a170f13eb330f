"""Queries for the platform area. Every function takes the caller's AsyncSession and never
commits: the unit of work owns the transaction. Every tenant-owned lookup filters on tenant_id,
so another tenant's id behaves exactly like a missing one."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Select, and_, bindparam, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from .engine import Database
from .models import (
    ApiKey,
    AttendanceInterval,
    Event,
    IdempotencyRecord,
    JoinToken,
    LiveSession,
    SessionInstructor,
    SessionParticipant,
    SigningKey,
    Tenant,
    WebhookEndpoint,
    WebhookSecret,
)

T = TypeVar("T")


async def get_tenant(session: AsyncSession, tenant_id: str) -> Tenant | None:
    return await session.get(Tenant, tenant_id)


async def page(
    session: AsyncSession,
    query: Select,
    time_column,
    id_column,
    limit: int,
    after: tuple[datetime, str] | None,
    newest_first: bool = False,
) -> list:
    """Keyset pagination on (time, id): stable under concurrent inserts, no OFFSET scans."""
    if after is not None:
        at, last_id = after
        if newest_first:
            query = query.where(or_(time_column < at, and_(time_column == at, id_column < last_id)))
        else:
            query = query.where(or_(time_column > at, and_(time_column == at, id_column > last_id)))
    order = (time_column.desc(), id_column.desc()) if newest_first else (time_column, id_column)
    return list((await session.scalars(query.order_by(*order).limit(limit))).all())


def tenants() -> Select:
    return select(Tenant)


async def get_api_key(session: AsyncSession, tenant_id: str, key_id: str) -> ApiKey | None:
    return await session.scalar(
        select(ApiKey).where(ApiKey.tenant_id == tenant_id, ApiKey.id == key_id)
    )


_API_KEY_ROW = (
    select(ApiKey.__table__)
    .where(ApiKey.tenant_id == bindparam("tenant_id"), ApiKey.id == bindparam("key_id"))
    .limit(1)
)


async def read_api_key(db: Database, tenant_id: str, key_id: str):
    """A read-only row of a key (attribute access like the model), read without an ORM session:
    GetApiKey is the hot read RPC of API key management."""
    return await db.fetch_first(_API_KEY_ROW, {"tenant_id": tenant_id, "key_id": key_id})


async def find_api_key(session: AsyncSession, key_id: str) -> ApiKey | None:
    """Looks a key up by id alone: used to authenticate, before the tenant is known."""
    return await session.get(ApiKey, key_id)


def api_keys(tenant_id: str) -> Select:
    return select(ApiKey).where(ApiKey.tenant_id == tenant_id)


async def get_signing_key(session: AsyncSession, tenant_id: str, key_id: str) -> SigningKey | None:
    return await session.scalar(
        select(SigningKey).where(SigningKey.tenant_id == tenant_id, SigningKey.id == key_id)
    )


async def find_signing_key(session: AsyncSession, key_id: str) -> SigningKey | None:
    return await session.get(SigningKey, key_id)


def signing_keys(tenant_id: str) -> Select:
    return select(SigningKey).where(SigningKey.tenant_id == tenant_id)


async def active_signing_keys(session: AsyncSession, tenant_id: str) -> list[SigningKey]:
    query = (
        signing_keys(tenant_id)
        .where(SigningKey.retire_time.is_(None))
        .order_by(SigningKey.create_time.desc(), SigningKey.id.desc())
    )
    return list((await session.scalars(query)).all())


async def get_webhook_endpoint(
    session: AsyncSession, tenant_id: str, endpoint_id: str
) -> WebhookEndpoint | None:
    return await session.scalar(
        select(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.id == endpoint_id
        )
    )


def webhook_endpoints(tenant_id: str) -> Select:
    return select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)


async def webhook_secrets(
    session: AsyncSession, tenant_id: str, endpoint_ids: list[str]
) -> list[WebhookSecret]:
    if not endpoint_ids:
        return []
    query = (
        select(WebhookSecret)
        .where(WebhookSecret.tenant_id == tenant_id, WebhookSecret.endpoint_id.in_(endpoint_ids))
        .order_by(WebhookSecret.create_time, WebhookSecret.id)
    )
    return list((await session.scalars(query)).all())


async def get_idempotency_record(
    session: AsyncSession, tenant_id: str, method: str, request_id: str
) -> IdempotencyRecord | None:
    return await session.get(IdempotencyRecord, (tenant_id, method, request_id))


# Sessions ---------------------------------------------------------------------------------------


async def get_live_session(
    session: AsyncSession, tenant_id: str, session_id: str
) -> LiveSession | None:
    return await session.scalar(
        select(LiveSession).where(LiveSession.tenant_id == tenant_id, LiveSession.id == session_id)
    )


def live_sessions(
    tenant_id: str,
    *,
    states: Collection[int] = (),
    start_from: datetime | None = None,
    start_to: datetime | None = None,
    class_id: str = "",
    course_id: str = "",
    instructor_identity: str = "",
    parent_session_id: str = "",
) -> Select:
    """Sessions of a tenant; empty filters match everything. Without a parent: main sessions."""
    query = select(LiveSession).where(LiveSession.tenant_id == tenant_id)
    if parent_session_id:
        query = query.where(LiveSession.parent_session_id == parent_session_id)
    else:
        query = query.where(LiveSession.parent_session_id.is_(None))
    if states:
        query = query.where(LiveSession.state.in_(list(states)))
    if start_from is not None:
        query = query.where(LiveSession.scheduled_start_time >= start_from)
    if start_to is not None:
        query = query.where(LiveSession.scheduled_start_time < start_to)
    if class_id:
        query = query.where(LiveSession.class_id == class_id)
    if course_id:
        query = query.where(LiveSession.course_id == course_id)
    if instructor_identity:
        query = query.where(
            LiveSession.id.in_(
                select(SessionInstructor.session_id).where(
                    SessionInstructor.tenant_id == tenant_id,
                    SessionInstructor.identity == instructor_identity,
                )
            )
        )
    return query


async def session_instructors(
    session: AsyncSession, tenant_id: str, session_ids: Collection[str]
) -> dict[str, list[str]]:
    """The expected instructors of each session, in the order they were given."""
    found: dict[str, list[str]] = {sid: [] for sid in session_ids}
    if not session_ids:
        return found
    query = (
        select(SessionInstructor)
        .where(
            SessionInstructor.tenant_id == tenant_id,
            SessionInstructor.session_id.in_(list(session_ids)),
        )
        .order_by(SessionInstructor.session_id, SessionInstructor.position)
    )
    for row in (await session.scalars(query)).all():
        found[row.session_id].append(row.identity)
    return found


async def ensure_participant(
    session: AsyncSession,
    *,
    participant_id: str,
    tenant_id: str,
    session_id: str,
    identity: str,
    display_name: str,
    role: int,
    create_time: datetime,
) -> SessionParticipant:
    """The participant of (session, identity), created with `participant_id` if it is new.

    Two first tokens for one identity may race on PostgreSQL; the unique constraint lets exactly
    one insert win and both read back the same row.
    """
    insert = pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert
    await session.execute(
        insert(SessionParticipant)
        .values(
            id=participant_id,
            tenant_id=tenant_id,
            session_id=session_id,
            identity=identity,
            display_name=display_name,
            role=role,
            create_time=create_time,
        )
        .on_conflict_do_nothing(index_elements=["session_id", "identity"])
    )
    return await session.scalar(
        select(SessionParticipant).where(
            SessionParticipant.session_id == session_id, SessionParticipant.identity == identity
        )
    )


async def get_join_token(session: AsyncSession, tenant_id: str, token_id: str) -> JoinToken | None:
    return await session.scalar(
        select(JoinToken).where(JoinToken.tenant_id == tenant_id, JoinToken.id == token_id)
    )


async def lock_live_session(
    session: AsyncSession, tenant_id: str, session_id: str
) -> LiveSession | None:
    """The session row, locked until commit on PostgreSQL (SQLite writers are serialized), so
    joins, capacity checks and lifecycle moves of one session happen one at a time."""
    return await session.scalar(
        select(LiveSession)
        .where(LiveSession.tenant_id == tenant_id, LiveSession.id == session_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )


async def child_sessions(
    session: AsyncSession, tenant_id: str, parent_id: str
) -> list[LiveSession]:
    query = select(LiveSession).where(
        LiveSession.tenant_id == tenant_id, LiveSession.parent_session_id == parent_id
    )
    return list((await session.scalars(query)).all())


async def get_participant(
    session: AsyncSession, tenant_id: str, participant_id: str, *, lock: bool = False
) -> SessionParticipant | None:
    query = select(SessionParticipant).where(
        SessionParticipant.tenant_id == tenant_id, SessionParticipant.id == participant_id
    )
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    return await session.scalar(query)


def participants(
    tenant_id: str,
    session_id: str,
    *,
    states: Collection[int] = (),
    roles: Collection[int] = (),
    room_session_id: str = "",
) -> Select:
    query = select(SessionParticipant).where(
        SessionParticipant.tenant_id == tenant_id, SessionParticipant.session_id == session_id
    )
    if states:
        query = query.where(SessionParticipant.state.in_(list(states)))
    if roles:
        query = query.where(SessionParticipant.role.in_(list(roles)))
    if room_session_id:
        query = query.where(SessionParticipant.room_session_id == room_session_id)
    return query


async def participants_list(
    session: AsyncSession, tenant_id: str, session_id: str, **filters
) -> list[SessionParticipant]:
    query = participants(tenant_id, session_id, **filters).order_by(
        SessionParticipant.first_join_time, SessionParticipant.id
    )
    return list((await session.scalars(query)).all())


async def participants_in_states(
    session: AsyncSession, states: Collection[int]
) -> list[SessionParticipant]:
    """Participants of every tenant in these states (start-up recovery only)."""
    query = select(SessionParticipant).where(SessionParticipant.state.in_(list(states)))
    return list((await session.scalars(query)).all())


def first_join_key(never: datetime):
    """The sort key of participant lists: first join, with those who never joined last."""
    return func.coalesce(SessionParticipant.first_join_time, never)


async def count_participants(
    session: AsyncSession, tenant_id: str, session_id: str, states: Collection[int]
) -> int:
    query = (
        select(func.count())
        .select_from(SessionParticipant)
        .where(
            SessionParticipant.tenant_id == tenant_id,
            SessionParticipant.session_id == session_id,
            SessionParticipant.state.in_(list(states)),
        )
    )
    return int(await session.scalar(query) or 0)


async def instructor_has_joined(
    session: AsyncSession, tenant_id: str, session_id: str, roles: Collection[int]
) -> bool:
    query = select(SessionParticipant.id).where(
        SessionParticipant.tenant_id == tenant_id,
        SessionParticipant.session_id == session_id,
        SessionParticipant.role.in_(list(roles)),
        SessionParticipant.first_join_time.is_not(None),
    )
    return (await session.scalar(query.limit(1))) is not None


async def live_join_tokens(
    session: AsyncSession, tenant_id: str, participant_id: str
) -> list[JoinToken]:
    query = select(JoinToken).where(
        JoinToken.tenant_id == tenant_id,
        JoinToken.participant_id == participant_id,
        JoinToken.revoke_time.is_(None),
    )
    return list((await session.scalars(query)).all())


async def open_interval(
    session: AsyncSession, tenant_id: str, participant_id: str
) -> AttendanceInterval | None:
    query = select(AttendanceInterval).where(
        AttendanceInterval.tenant_id == tenant_id,
        AttendanceInterval.participant_id == participant_id,
        AttendanceInterval.leave_time.is_(None),
    )
    return await session.scalar(query.order_by(AttendanceInterval.join_time.desc()).limit(1))


async def attendance_intervals(
    session: AsyncSession, tenant_id: str, session_id: str
) -> list[AttendanceInterval]:
    query = (
        select(AttendanceInterval)
        .where(
            AttendanceInterval.tenant_id == tenant_id, AttendanceInterval.session_id == session_id
        )
        .order_by(
            AttendanceInterval.participant_id, AttendanceInterval.join_time, AttendanceInterval.id
        )
    )
    return list((await session.scalars(query)).all())


async def family_events_after(
    session: AsyncSession, tenant_id: str, main_session_id: str, after_sequence: int, limit: int
) -> list[Event]:
    """Events of a session and of its breakout rooms after a tenant sequence, oldest first."""
    family = select(LiveSession.id).where(
        LiveSession.tenant_id == tenant_id,
        or_(LiveSession.id == main_session_id, LiveSession.parent_session_id == main_session_id),
    )
    query = (
        select(Event)
        .where(
            Event.tenant_id == tenant_id,
            Event.sequence > after_sequence,
            Event.session_id.in_(family),
        )
        .order_by(Event.sequence)
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


async def families_events_after(
    session: AsyncSession,
    tenant_id: str,
    main_session_ids: Collection[str],
    after_sequence: int,
    limit: int,
) -> list[tuple[Event, str]]:
    """Events of several sessions and their breakout rooms after a tenant sequence, oldest
    first, each with the id of its main session: one read serves every live room of a tenant."""
    mains = list(main_session_ids)
    main_of = func.coalesce(LiveSession.parent_session_id, LiveSession.id)
    query = (
        select(Event, main_of)
        .join(
            LiveSession,
            and_(LiveSession.tenant_id == Event.tenant_id, LiveSession.id == Event.session_id),
        )
        .where(
            Event.tenant_id == tenant_id,
            Event.sequence > after_sequence,
            or_(LiveSession.id.in_(mains), LiveSession.parent_session_id.in_(mains)),
        )
        .order_by(Event.sequence)
        .limit(limit)
    )
    return [(row[0], row[1]) for row in (await session.execute(query)).all()]


# The event log, read through the API ------------------------------------------------------------


async def get_event(session: AsyncSession, tenant_id: str, event_id: str) -> Event | None:
    return await session.scalar(
        select(Event).where(Event.tenant_id == tenant_id, Event.id == event_id)
    )


async def events_after(
    session: AsyncSession,
    tenant_id: str,
    after_sequence: int,
    limit: int,
    *,
    types: Collection[str] = (),
    session_ids: Collection[str] = (),
    occur_from: datetime | None = None,
    occur_to: datetime | None = None,
) -> list[Event]:
    """The tenant log after a cursor, oldest first, filtered by type, session and occur time."""
    query = select(Event).where(Event.tenant_id == tenant_id, Event.sequence > after_sequence)
    if types:
        query = query.where(Event.type.in_(list(types)))
    if session_ids:
        query = query.where(Event.session_id.in_(list(session_ids)))
    if occur_from is not None:
        query = query.where(Event.occur_time >= occur_from)
    if occur_to is not None:
        query = query.where(Event.occur_time < occur_to)
    return list((await session.scalars(query.order_by(Event.sequence).limit(limit))).all())
