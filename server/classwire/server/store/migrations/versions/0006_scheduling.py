"""Scheduling: availability, bookings, series, matching plans, timers, calendars.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from classwire.server.store.types import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sched_person_locks",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("person_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_sched_person_locks_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", "person_id", name=op.f("pk_sched_person_locks")),
    )
    op.create_table(
        "sched_series",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=True),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("class_id", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=100), nullable=False),
        sa.Column("level", sa.String(length=100), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.Column("start_time", UTCDateTime(), nullable=False),
        sa.Column("duration_seconds", sa.Integer(), nullable=False),
        sa.Column("rrule", sa.String(length=500), nullable=False),
        sa.Column("exdates", sa.JSON(), nullable=False),
        sa.Column("rdates", sa.JSON(), nullable=False),
        sa.Column("instructor_id", sa.String(length=64), nullable=False),
        sa.Column("learner_ids", sa.JSON(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("reminder_policy", sa.JSON(), nullable=True),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("last_start_time", UTCDateTime(), nullable=True),
        sa.Column("cancellation", sa.JSON(), nullable=True),
        sa.Column("cancel_from_time", UTCDateTime(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("update_time", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_sched_series_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sched_series")),
        sa.UniqueConstraint("tenant_id", "external_id", name="uq_sched_series_tenant_external_id"),
    )
    op.create_index(
        "ix_sched_series_list", "sched_series", ["tenant_id", "state", "id"], unique=False
    )
    op.create_table(
        "sched_settings",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("update_time", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_sched_settings_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("tenant_id", name=op.f("pk_sched_settings")),
    )
    op.create_table(
        "sched_availability",
        sa.Column("person_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.Column("weekly_rules", sa.JSON(), nullable=False),
        sa.Column("date_overrides", sa.JSON(), nullable=False),
        sa.Column("time_off", sa.JSON(), nullable=False),
        sa.Column("booking_policy", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("update_time", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["roster_people.id"],
            name=op.f("fk_sched_availability_person_id_roster_people"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_sched_availability_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("person_id", name=op.f("pk_sched_availability")),
    )
    op.create_index(
        "ix_sched_availability_list", "sched_availability", ["tenant_id", "person_id"], unique=False
    )
    op.create_table(
        "sched_bookings",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=True),
        sa.Column("series_id", sa.String(length=64), nullable=True),
        sa.Column("original_start_time", UTCDateTime(), nullable=True),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("class_id", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=100), nullable=False),
        sa.Column("level", sa.String(length=100), nullable=False),
        sa.Column("start_time", UTCDateTime(), nullable=False),
        sa.Column("end_time", UTCDateTime(), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.Column("instructor_id", sa.String(length=64), nullable=False),
        sa.Column("substituted_instructor_id", sa.String(length=64), nullable=False),
        sa.Column("learner_ids", sa.JSON(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("provision_time", UTCDateTime(), nullable=True),
        sa.Column("assignment", sa.JSON(), nullable=True),
        sa.Column("cancellation", sa.JSON(), nullable=True),
        sa.Column("reschedules", sa.JSON(), nullable=False),
        sa.Column("no_shows", sa.JSON(), nullable=False),
        sa.Column("reminder_policy", sa.JSON(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("update_time", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_id"],
            ["sched_series.id"],
            name=op.f("fk_sched_bookings_series_id_sched_series"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_sched_bookings_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sched_bookings")),
        sa.UniqueConstraint(
            "series_id", "original_start_time", name="uq_sched_bookings_series_original"
        ),
        sa.UniqueConstraint(
            "tenant_id", "external_id", name="uq_sched_bookings_tenant_external_id"
        ),
    )
    op.create_index(
        "ix_sched_bookings_series", "sched_bookings", ["series_id", "start_time"], unique=False
    )
    op.create_index(
        "ix_sched_bookings_start", "sched_bookings", ["tenant_id", "start_time", "id"], unique=False
    )
    op.create_table(
        "sched_booking_people",
        sa.Column("booking_id", sa.String(length=64), nullable=False),
        sa.Column("person_id", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("role", sa.Integer(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("start_time", UTCDateTime(), nullable=False),
        sa.Column("end_time", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["booking_id"],
            ["sched_bookings.id"],
            name=op.f("fk_sched_booking_people_booking_id_sched_bookings"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_sched_booking_people_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("booking_id", "person_id", name=op.f("pk_sched_booking_people")),
    )
    op.create_index(
        "ix_sched_booking_people_busy",
        "sched_booking_people",
        ["tenant_id", "person_id", "start_time"],
        unique=False,
    )


def downgrade() -> None:
    for table in (
        "sched_booking_people",
        "sched_bookings",
        "sched_availability",
        "sched_settings",
        "sched_series",
        "sched_person_locks",
    ):
        op.drop_table(table)
