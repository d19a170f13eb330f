"""Tables of the scheduling area. They share the core's declarative Base (and naming convention).

Nested values that are read whole (weekly rules, policies, cancellation, reschedules) are JSON;
what queries filter on has its own indexed column or table: a booking's participants are rows of
`sched_booking_people` so "who is busy when" is an index range scan on both engines.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base


def _tenant() -> Mapped[str]:
    return mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))


class SchedSettings(Base):
    """A tenant's SchedulingSettings in proto JSON form; absent means every default."""

    __tablename__ = "sched_settings"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer)
    update_time: Mapped[datetime]


class SchedAvailability(Base):
    __tablename__ = "sched_availability"
    __table_args__ = (Index("ix_sched_availability_list", "tenant_id", "person_id"),)

    person_id: Mapped[str] = mapped_column(
        ForeignKey("roster_people.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = _tenant()
    # "" follows the person's own zone.
    time_zone: Mapped[str] = mapped_column(String(64), default="")
    weekly_rules: Mapped[list[Any]] = mapped_column(JSON)
    date_overrides: Mapped[list[Any]] = mapped_column(JSON)
    time_off: Mapped[list[Any]] = mapped_column(JSON)
    booking_policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    version: Mapped[int] = mapped_column(Integer)
    update_time: Mapped[datetime]


class SchedPersonLock(Base):
    """One row per person who takes part in bookings. A booking transaction updates the rows
    of its instructor and learners before it checks for overlaps, so two transactions booking
    the same person are serialised by the database (row lock on PostgreSQL, the single writer
    on SQLite) and the second sees the first's booking."""

    __tablename__ = "sched_person_locks"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    person_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class SchedSeries(Base):
    __tablename__ = "sched_series"
    __table_args__ = (
        UniqueConstraint("tenant_id", "external_id", name="uq_sched_series_tenant_external_id"),
        Index("ix_sched_series_list", "tenant_id", "state", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = _tenant()
    external_id: Mapped[str | None] = mapped_column(String(255))
    title: Mapped[str] = mapped_column(String(200), default="")
    class_id: Mapped[str] = mapped_column(String(64), default="")
    subject: Mapped[str] = mapped_column(String(100), default="")
    level: Mapped[str] = mapped_column(String(100), default="")
    time_zone: Mapped[str] = mapped_column(String(64))
    start_time: Mapped[datetime]
    duration_seconds: Mapped[int] = mapped_column(Integer)
    rrule: Mapped[str] = mapped_column(String(500), default="")
    exdates: Mapped[list[Any]] = mapped_column(JSON)
    rdates: Mapped[list[Any]] = mapped_column(JSON)
    instructor_id: Mapped[str] = mapped_column(String(64), default="")
    learner_ids: Mapped[list[Any]] = mapped_column(JSON)
    capacity: Mapped[int] = mapped_column(Integer)
    reminder_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    state: Mapped[int] = mapped_column(Integer)
    last_start_time: Mapped[datetime | None]
    cancellation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    cancel_from_time: Mapped[datetime | None]
    labels: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    version: Mapped[int] = mapped_column(Integer)
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]


class SchedBooking(Base):
    __tablename__ = "sched_bookings"
    __table_args__ = (
        UniqueConstraint("tenant_id", "external_id", name="uq_sched_bookings_tenant_external_id"),
        # An occurrence exists once (RFC 5545 RECURRENCE-ID); NULLs (one-off bookings) differ.
        UniqueConstraint(
            "series_id", "original_start_time", name="uq_sched_bookings_series_original"
        ),
        Index("ix_sched_bookings_start", "tenant_id", "start_time", "id"),
        Index("ix_sched_bookings_series", "series_id", "start_time"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = _tenant()
    external_id: Mapped[str | None] = mapped_column(String(255))
    series_id: Mapped[str | None] = mapped_column(ForeignKey("sched_series.id", ondelete="CASCADE"))
    original_start_time: Mapped[datetime | None]
    title: Mapped[str] = mapped_column(String(200), default="")
    class_id: Mapped[str] = mapped_column(String(64), default="")
    subject: Mapped[str] = mapped_column(String(100), default="")
    level: Mapped[str] = mapped_column(String(100), default="")
    start_time: Mapped[datetime]
    end_time: Mapped[datetime]
    time_zone: Mapped[str] = mapped_column(String(64), default="")
    instructor_id: Mapped[str] = mapped_column(String(64), default="")
    substituted_instructor_id: Mapped[str] = mapped_column(String(64), default="")
    learner_ids: Mapped[list[Any]] = mapped_column(JSON)
    capacity: Mapped[int] = mapped_column(Integer)
    state: Mapped[int] = mapped_column(Integer)
    session_id: Mapped[str] = mapped_column(String(64), default="")
    provision_time: Mapped[datetime | None]
    assignment: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    cancellation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    reschedules: Mapped[list[Any]] = mapped_column(JSON)
    no_shows: Mapped[list[Any]] = mapped_column(JSON)
    reminder_policy: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    labels: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    version: Mapped[int] = mapped_column(Integer)
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]


class SchedBookingPerson(Base):
    """A participant of a booking (role 1 learner, 2 instructor), with the booking's times and
    state copied so busy-time queries read one index range. Removed when the person leaves."""

    __tablename__ = "sched_booking_people"
    __table_args__ = (
        Index("ix_sched_booking_people_busy", "tenant_id", "person_id", "start_time"),
    )

    booking_id: Mapped[str] = mapped_column(
        ForeignKey("sched_bookings.id", ondelete="CASCADE"), primary_key=True
    )
    person_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = _tenant()
    role: Mapped[int] = mapped_column(Integer)
    state: Mapped[int] = mapped_column(Integer)
    start_time: Mapped[datetime]
    end_time: Mapped[datetime]


class SchedAssignmentPlan(Base):
    """A bulk assignment plan. `assignments` holds, per booking, the instructor chosen, the one
    before, the explanation and the booking version the plan was computed against;
    `person_versions` the person-lock versions of every instructor it relies on, so applying
    refuses a plan once anything it read has changed."""

    __tablename__ = "sched_assignment_plans"
    __table_args__ = (Index("ix_sched_assignment_plans_list", "tenant_id", "create_time"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = _tenant()
    state: Mapped[int] = mapped_column(Integer)
    matcher: Mapped[str] = mapped_column(String(100))
    status: Mapped[int] = mapped_column(Integer)
    objective: Mapped[float] = mapped_column(Float)
    best_bound: Mapped[float] = mapped_column(Float)
    gap: Mapped[float] = mapped_column(Float)
    solve_seconds: Mapped[float] = mapped_column(Float)
    assignments: Mapped[list[Any]] = mapped_column(JSON)
    person_versions: Mapped[dict[str, Any]] = mapped_column(JSON)
    assigned_count: Mapped[int] = mapped_column(Integer)
    unassigned_count: Mapped[int] = mapped_column(Integer)
    changed_count: Mapped[int] = mapped_column(Integer)
    create_time: Mapped[datetime]
    apply_time: Mapped[datetime | None]
    expire_time: Mapped[datetime]


class SchedSubstituteProposal(Base):
    __tablename__ = "sched_substitute_proposals"
    __table_args__ = (Index("ix_sched_substitute_proposals_booking", "tenant_id", "booking_id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = _tenant()
    booking_id: Mapped[str] = mapped_column(ForeignKey("sched_bookings.id", ondelete="CASCADE"))
    absent_instructor_id: Mapped[str] = mapped_column(String(64))
    candidates: Mapped[list[Any]] = mapped_column(JSON)
    matcher: Mapped[str] = mapped_column(String(100))
    state: Mapped[int] = mapped_column(Integer)
    assigned_instructor_id: Mapped[str] = mapped_column(String(64), default="")
    create_time: Mapped[datetime]


class SchedFeedToken(Base):
    """A calendar feed token: only the SHA-256 of its secret is kept (the secret is 256
    random bits, so a plain hash cannot be brute-forced)."""

    __tablename__ = "sched_feed_tokens"
    __table_args__ = (
        UniqueConstraint("secret_hash", name="uq_sched_feed_tokens_secret_hash"),
        Index("ix_sched_feed_tokens_person", "tenant_id", "person_id", "create_time"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = _tenant()
    person_id: Mapped[str] = mapped_column(ForeignKey("roster_people.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(200), default="")
    secret_hash: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[datetime]
    last_use_time: Mapped[datetime | None]


__all__ = [
    "SchedAssignmentPlan",
    "SchedFeedToken",
    "SchedSubstituteProposal",
    "SchedAvailability",
    "SchedBooking",
    "SchedBookingPerson",
    "SchedPersonLock",
    "SchedSeries",
    "SchedSettings",
]
