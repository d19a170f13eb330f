"""Tables of the analytics area. They share the core's declarative Base (and naming convention).

The rollup consumer (events/rollups.py) folds each tenant's log into these rows:

- `analytics_sessions`: one row per session with what later events need to be folded (class,
  schedule, instructors, participant ids, polls, ratings), so a fold never scans the log.
- `analytics_attendances`: one row per (session, person): the fact every analytics query sums.
  `slot` is the session's scheduled start truncated to 15 minutes (epoch seconds), so day and
  week buckets in any IANA time zone are exact; the indexes make the four query shapes (by
  learner, class, instructor, tenant over a time range) index range scans.

Durations are integer milliseconds, times epoch milliseconds: sums stay exact and cheap.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base


class AnalyticsCursor(Base):
    """How far the rollups have folded a tenant's log, and which replica holds the lease."""

    __tablename__ = "analytics_cursors"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    last_sequence: Mapped[int] = mapped_column(BigInteger)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]


class AnalyticsSession(Base):
    """A session as the rollups know it; breakout rooms point at their root session."""

    __tablename__ = "analytics_sessions"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    root_session_id: Mapped[str] = mapped_column(String(64))
    class_id: Mapped[str] = mapped_column(String(64), default="")
    course_id: Mapped[str] = mapped_column(String(64), default="")
    scheduled_start_ms: Mapped[int | None] = mapped_column(BigInteger)
    scheduled_end_ms: Mapped[int | None] = mapped_column(BigInteger)
    state: Mapped[int] = mapped_column(Integer, default=0)
    # The fold's working state: {"instructors": [...], "participants": {pid: identity},
    # "polls": {poll_id: [correct option ids]}, "answers": {"poll/identity": correct},
    # "ratings": {rating_id: [instructor, score]}, "instructor_talk_ms": n}.
    state_json: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class AnalyticsAttendance(Base):
    """One person in one (root) session: attendance, engagement and quality measures."""

    __tablename__ = "analytics_attendances"
    __table_args__ = (
        Index("ix_analytics_attendances_identity", "tenant_id", "identity", "slot"),
        Index("ix_analytics_attendances_role", "tenant_id", "role", "slot"),
        Index("ix_analytics_attendances_class", "tenant_id", "class_id", "role", "slot"),
        Index("ix_analytics_attendances_instructor", "tenant_id", "instructor", "role", "slot"),
    )

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    session_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    identity: Mapped[str] = mapped_column(String(128), primary_key=True)
    role: Mapped[int] = mapped_column(Integer, default=0)
    display_name: Mapped[str] = mapped_column(String(100), default="")
    class_id: Mapped[str] = mapped_column(String(64), default="")
    course_id: Mapped[str] = mapped_column(String(64), default="")
    # The session's first instructor (the instructor grouping and filter).
    instructor: Mapped[str] = mapped_column(String(128), default="")
    slot: Mapped[int] = mapped_column(BigInteger, default=0)
    scheduled_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    cancelled: Mapped[bool] = mapped_column(Boolean, default=False)
    ended: Mapped[bool] = mapped_column(Boolean, default=False)
    expected: Mapped[bool] = mapped_column(Boolean, default=False)
    attended: Mapped[bool] = mapped_column(Boolean, default=False)
    present: Mapped[bool] = mapped_column(Boolean, default=False)
    late: Mapped[bool] = mapped_column(Boolean, default=False)
    late_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    left_early: Mapped[bool] = mapped_column(Boolean, default=False)
    present_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    talk_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    talk_share: Mapped[float] = mapped_column(Float, default=0.0)
    camera_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    camera_since_ms: Mapped[int | None] = mapped_column(BigInteger)
    chat_messages: Mapped[int] = mapped_column(Integer, default=0)
    hand_raises: Mapped[int] = mapped_column(Integer, default=0)
    reactions: Mapped[int] = mapped_column(Integer, default=0)
    polls_offered: Mapped[int] = mapped_column(Integer, default=0)
    polls_answered: Mapped[int] = mapped_column(Integer, default=0)
    graded_answers: Mapped[int] = mapped_column(Integer, default=0)
    correct_answers: Mapped[int] = mapped_column(Integer, default=0)
    disconnects: Mapped[int] = mapped_column(Integer, default=0)
    rating_count: Mapped[int] = mapped_column(Integer, default=0)
    rating_sum: Mapped[int] = mapped_column(Integer, default=0)
    rating_1: Mapped[int] = mapped_column(Integer, default=0)
    rating_2: Mapped[int] = mapped_column(Integer, default=0)
    rating_3: Mapped[int] = mapped_column(Integer, default=0)
    rating_4: Mapped[int] = mapped_column(Integer, default=0)
    rating_5: Mapped[int] = mapped_column(Integer, default=0)


class RatingRow(Base):
    """A rater's rating of a session's instructor; one per (session, rater, instructor)."""

    __tablename__ = "ratings"
    __table_args__ = (
        Index(
            "uq_ratings_rater",
            "tenant_id",
            "session_id",
            "rater_identity",
            "instructor_identity",
            unique=True,
        ),
        Index("ix_ratings_list", "tenant_id", "create_time", "id"),
        Index("ix_ratings_instructor", "tenant_id", "instructor_identity", "create_time"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(String(64))
    rater_identity: Mapped[str] = mapped_column(String(128))
    instructor_identity: Mapped[str] = mapped_column(String(128))
    score: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]


__all__ = ["AnalyticsAttendance", "AnalyticsCursor", "AnalyticsSession", "RatingRow"]
