"""Queries for the classroom area. Every function takes the caller's AsyncSession and never
commits: the unit of work owns the transaction. Every lookup filters on tenant_id, so another
tenant's id behaves exactly like a missing one."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import Select, and_, delete, false, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from classwire.api.events.v1 import session_events_pb2 as ev

from .classroom_models import (
    BreakoutAssignment,
    BreakoutRound,
    ChatMessageRow,
    PollAnswerRow,
    PollRow,
    RaisedHand,
)
from .models import SessionParticipant


def _insert(session: AsyncSession):
    return pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert


# Hands ------------------------------------------------------------------------------------------


async def raise_hand(
    session: AsyncSession, tenant_id: str, room_id: str, participant_id: str, at: datetime
) -> bool:
    """Adds the hand unless it is already up; True when it was added (races keep one row)."""
    result = await session.execute(
        _insert(session)(RaisedHand)
        .values(
            tenant_id=tenant_id, session_id=room_id, participant_id=participant_id, raise_time=at
        )
        .on_conflict_do_nothing()
    )
    return result.rowcount == 1


async def hand_queue(
    session: AsyncSession, tenant_id: str, room_id: str
) -> list[tuple[RaisedHand, SessionParticipant]]:
    query = (
        select(RaisedHand, SessionParticipant)
        .join(SessionParticipant, SessionParticipant.id == RaisedHand.participant_id)
        .where(RaisedHand.tenant_id == tenant_id, RaisedHand.session_id == room_id)
        .order_by(RaisedHand.raise_time, RaisedHand.participant_id)
    )
    return [(hand, participant) for hand, participant in (await session.execute(query)).all()]


async def remove_hands(
    session: AsyncSession, tenant_id: str, room_id: str, participant_ids: Collection[str]
) -> None:
    if participant_ids:
        await session.execute(
            delete(RaisedHand).where(
                RaisedHand.tenant_id == tenant_id,
                RaisedHand.session_id == room_id,
                RaisedHand.participant_id.in_(list(participant_ids)),
            )
        )


# Chat -------------------------------------------------------------------------------------------


async def get_chat_message(
    session: AsyncSession, tenant_id: str, message_id: str, *, lock: bool = False
) -> ChatMessageRow | None:
    query = select(ChatMessageRow).where(
        ChatMessageRow.tenant_id == tenant_id, ChatMessageRow.id == message_id
    )
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    return await session.scalar(query)


def chat_messages(
    tenant_id: str,
    room_id: str,
    *,
    include_deleted: bool,
    send_time_from: datetime | None,
    reader_participant_id: str | None,
    reader_is_instructor: bool,
) -> Select:
    """A room's messages as one reader may see them; reader None is a backend service."""
    query = select(ChatMessageRow).where(
        ChatMessageRow.tenant_id == tenant_id, ChatMessageRow.session_id == room_id
    )
    if not include_deleted:
        query = query.where(ChatMessageRow.delete_time.is_(None))
    if send_time_from is not None:
        query = query.where(ChatMessageRow.send_time >= send_time_from)
    if reader_participant_id is not None:
        query = query.where(
            or_(
                ChatMessageRow.audience == ev.CHAT_AUDIENCE_EVERYONE,
                ChatMessageRow.sender_participant_id == reader_participant_id,
                and_(
                    ChatMessageRow.audience == ev.CHAT_AUDIENCE_PARTICIPANT,
                    ChatMessageRow.recipient_participant_id == reader_participant_id,
                ),
                ChatMessageRow.audience == ev.CHAT_AUDIENCE_INSTRUCTORS
                if reader_is_instructor
                else false(),
            )
        )
    return query


# Polls ------------------------------------------------------------------------------------------


async def get_poll(
    session: AsyncSession, tenant_id: str, poll_id: str, *, lock: bool = False
) -> PollRow | None:
    query = select(PollRow).where(PollRow.tenant_id == tenant_id, PollRow.id == poll_id)
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    return await session.scalar(query)


def polls(tenant_id: str, room_id: str, states: Collection[int] = ()) -> Select:
    query = select(PollRow).where(PollRow.tenant_id == tenant_id, PollRow.session_id == room_id)
    if states:
        query = query.where(PollRow.state.in_(list(states)))
    return query


async def poll_answers(
    session: AsyncSession, tenant_id: str, poll_ids: Collection[str]
) -> dict[str, list[PollAnswerRow]]:
    found: dict[str, list[PollAnswerRow]] = {pid: [] for pid in poll_ids}
    if not poll_ids:
        return found
    query = (
        select(PollAnswerRow)
        .where(PollAnswerRow.tenant_id == tenant_id, PollAnswerRow.poll_id.in_(list(poll_ids)))
        .order_by(PollAnswerRow.poll_id, PollAnswerRow.answer_time, PollAnswerRow.participant_id)
    )
    for row in (await session.scalars(query)).all():
        found[row.poll_id].append(row)
    return found


async def get_poll_answer(
    session: AsyncSession, tenant_id: str, poll_id: str, participant_id: str
) -> PollAnswerRow | None:
    return await session.scalar(
        select(PollAnswerRow).where(
            PollAnswerRow.tenant_id == tenant_id,
            PollAnswerRow.poll_id == poll_id,
            PollAnswerRow.participant_id == participant_id,
        )
    )


# Breakouts --------------------------------------------------------------------------------------


async def latest_round(
    session: AsyncSession, tenant_id: str, session_id: str, *, lock: bool = False
) -> BreakoutRound | None:
    query = (
        select(BreakoutRound)
        .where(BreakoutRound.tenant_id == tenant_id, BreakoutRound.session_id == session_id)
        .order_by(BreakoutRound.open_time.desc(), BreakoutRound.id.desc())
        .limit(1)
    )
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    return await session.scalar(query)


async def get_round(
    session: AsyncSession, tenant_id: str, round_id: str, *, lock: bool = False
) -> BreakoutRound | None:
    query = select(BreakoutRound).where(
        BreakoutRound.tenant_id == tenant_id, BreakoutRound.id == round_id
    )
    if lock:
        query = query.with_for_update().execution_options(populate_existing=True)
    return await session.scalar(query)


async def assignments(
    session: AsyncSession, tenant_id: str, round_id: str
) -> list[BreakoutAssignment]:
    query = (
        select(BreakoutAssignment)
        .where(BreakoutAssignment.tenant_id == tenant_id, BreakoutAssignment.round_id == round_id)
        .order_by(BreakoutAssignment.position, BreakoutAssignment.participant_id)
    )
    return list((await session.scalars(query)).all())


async def get_assignment(
    session: AsyncSession, tenant_id: str, round_id: str, participant_id: str
) -> BreakoutAssignment | None:
    return await session.scalar(
        select(BreakoutAssignment).where(
            BreakoutAssignment.tenant_id == tenant_id,
            BreakoutAssignment.round_id == round_id,
            BreakoutAssignment.participant_id == participant_id,
        )
    )


# Participants, as the classroom reads them ------------------------------------------------------


async def participants_by_id(
    session: AsyncSession, tenant_id: str, session_id: str, participant_ids: Collection[str]
) -> dict[str, SessionParticipant]:
    if not participant_ids:
        return {}
    query = select(SessionParticipant).where(
        SessionParticipant.tenant_id == tenant_id,
        SessionParticipant.session_id == session_id,
        SessionParticipant.id.in_(list(participant_ids)),
    )
    return {row.id: row for row in (await session.scalars(query)).all()}


async def splittable_participants(
    session: AsyncSession,
    tenant_id: str,
    session_id: str,
    roles: Collection[int],
    excluded_states: Collection[int],
) -> list[SessionParticipant]:
    """Participants of a main session with these roles that have not left, were not removed
    and are not held in the waiting room, in join order (never-joined ones last)."""
    query = (
        select(SessionParticipant)
        .where(
            SessionParticipant.tenant_id == tenant_id,
            SessionParticipant.session_id == session_id,
            SessionParticipant.role.in_(list(roles)),
            SessionParticipant.state.not_in(list(excluded_states)),
            SessionParticipant.removed.is_(False),
        )
        .order_by(
            SessionParticipant.first_join_time.is_(None),
            SessionParticipant.first_join_time,
            SessionParticipant.create_time,
            SessionParticipant.id,
        )
    )
    return list((await session.scalars(query)).all())


async def present_participants(
    session: AsyncSession, tenant_id: str, session_id: str, room_id: str, states: Collection[int]
) -> list[SessionParticipant]:
    """Participants of a session (main id) in the given states that are now in `room_id`."""
    query = select(SessionParticipant).where(
        SessionParticipant.tenant_id == tenant_id,
        SessionParticipant.session_id == session_id,
        SessionParticipant.room_session_id == room_id,
        SessionParticipant.state.in_(list(states)),
    )
    return list((await session.scalars(query)).all())
