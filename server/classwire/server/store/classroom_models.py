"""Tables of the classroom area: the hand queue, chat, polls and their answers, breakout rounds
and their room assignments. They share the core's declarative Base (and naming convention).

Enum columns hold the proto enum numbers (events.v1.ChatAudience, session.v1.PollState, ...):
those numbers are frozen by the v1 contract. `session_id` is always the room (the session or
one of its breakout rooms) the row belongs to.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base


class RaisedHand(Base):
    """A raised hand in one room; lowering deletes the row (the events keep the history)."""

    __tablename__ = "raised_hands"
    __table_args__ = (Index("ix_raised_hands_queue", "tenant_id", "session_id", "raise_time"),)

    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    participant_id: Mapped[str] = mapped_column(
        ForeignKey("participants.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    raise_time: Mapped[datetime]


class ChatMessageRow(Base):
    __tablename__ = "chat_messages"
    __table_args__ = (
        # ListChatMessages pages a room's messages by (send time, id).
        Index("ix_chat_messages_room", "tenant_id", "session_id", "send_time", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    # The sender as a common.v1.Actor: kind number, id and identity.
    sender_kind: Mapped[int] = mapped_column(Integer)
    sender_id: Mapped[str] = mapped_column(String(64))
    sender_identity: Mapped[str] = mapped_column(String(128), default="")
    # Empty when a backend service posted.
    sender_participant_id: Mapped[str] = mapped_column(String(64), default="")
    sender_display_name: Mapped[str] = mapped_column(String(100))
    audience: Mapped[int] = mapped_column(Integer)
    recipient_participant_id: Mapped[str] = mapped_column(String(64), default="")
    # Emptied when the message is deleted: the text is removed for everyone.
    text: Mapped[str] = mapped_column(Text)
    reply_to_message_id: Mapped[str] = mapped_column(String(64), default="")
    send_time: Mapped[datetime]
    delete_time: Mapped[datetime | None]
    # common.v1.Actor fields of who deleted it: {"kind", "id", "identity"}.
    deleted_by: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class PollRow(Base):
    __tablename__ = "polls"
    __table_args__ = (
        # ListPolls pages a room's polls newest first by (create time, id).
        Index("ix_polls_room", "tenant_id", "session_id", "create_time", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    question: Mapped[str] = mapped_column(Text)
    # [{"id": ..., "text": ...}] in display order.
    options: Mapped[list[Any]] = mapped_column(JSON)
    correct_option_ids: Mapped[list[str]]
    anonymous: Mapped[bool]
    max_selections: Mapped[int] = mapped_column(Integer)
    results_visibility: Mapped[int] = mapped_column(Integer)
    duration_seconds: Mapped[float | None] = mapped_column(Float)
    state: Mapped[int] = mapped_column(Integer)
    # session.v1 PollClosed.Reason number once closed, else 0.
    close_reason: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[dict[str, Any]] = mapped_column(JSON)
    create_time: Mapped[datetime]
    # The timer's deadline while open (if any); when it closed once closed.
    close_time: Mapped[datetime | None]


class PollAnswerRow(Base):
    """One participant's answer to a poll; answering again replaces it until the poll closes."""

    __tablename__ = "poll_answers"

    poll_id: Mapped[str] = mapped_column(
        ForeignKey("polls.id", ondelete="CASCADE"), primary_key=True
    )
    participant_id: Mapped[str] = mapped_column(
        ForeignKey("participants.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    identity: Mapped[str] = mapped_column(String(128))
    option_ids: Mapped[list[str]]
    correct: Mapped[bool]
    answer_time: Mapped[datetime]


class BreakoutRound(Base):
    """One round of breakout rooms of a main session. The rooms are child sessions (rows of
    `sessions` with `parent_session_id`), listed here in the order they were created."""

    __tablename__ = "breakout_rounds"
    __table_args__ = (Index("ix_breakout_rounds_session", "tenant_id", "session_id", "open_time"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    room_session_ids: Mapped[list[str]]
    # session.v1 BreakoutsState number.
    state: Mapped[int] = mapped_column(Integer)
    open_time: Mapped[datetime]
    # When the rooms close: by their duration, by the closing countdown, or when they closed.
    close_time: Mapped[datetime | None]


class BreakoutAssignment(Base):
    """Where a participant is assigned during a round; no row means the main room."""

    __tablename__ = "breakout_assignments"
    __table_args__ = (Index("ix_breakout_assignments_room", "round_id", "room_session_id"),)

    round_id: Mapped[str] = mapped_column(
        ForeignKey("breakout_rounds.id", ondelete="CASCADE"), primary_key=True
    )
    participant_id: Mapped[str] = mapped_column(
        ForeignKey("participants.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    room_session_id: Mapped[str] = mapped_column(String(64))
    # Keeps rooms listed in assignment order (join order for an even split).
    position: Mapped[int] = mapped_column(Integer)
