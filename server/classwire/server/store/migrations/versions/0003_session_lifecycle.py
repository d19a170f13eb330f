"""Live-session lifecycle, presence and attendance.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from classwire.server.store.types import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

PARTICIPANT_COLUMNS = (
    ("state", lambda: sa.Column("state", sa.Integer(), nullable=False, server_default="1")),
    ("room_session_id", lambda: sa.Column("room_session_id", sa.String(64), nullable=True)),
    ("permission_overrides", lambda: sa.Column("permission_overrides", sa.JSON(), nullable=True)),
    ("metadata", lambda: sa.Column("metadata", sa.JSON(), nullable=True)),
    ("first_join_time", lambda: sa.Column("first_join_time", UTCDateTime(), nullable=True)),
    ("join_time", lambda: sa.Column("join_time", UTCDateTime(), nullable=True)),
    ("leave_time", lambda: sa.Column("leave_time", UTCDateTime(), nullable=True)),
    (
        "leave_reason",
        lambda: sa.Column("leave_reason", sa.Integer(), nullable=False, server_default="0"),
    ),
    (
        "reconnect_count",
        lambda: sa.Column("reconnect_count", sa.Integer(), nullable=False, server_default="0"),
    ),
    (
        "held_for_instructor",
        lambda: sa.Column(
            "held_for_instructor", sa.Boolean(), nullable=False, server_default=sa.false()
        ),
    ),
    (
        "removed",
        lambda: sa.Column("removed", sa.Boolean(), nullable=False, server_default=sa.false()),
    ),
    (
        "rejoin_blocked",
        lambda: sa.Column(
            "rejoin_blocked", sa.Boolean(), nullable=False, server_default=sa.false()
        ),
    ),
    ("resume_key", lambda: sa.Column("resume_key", sa.String(64), nullable=True)),
    (
        "resume_epoch",
        lambda: sa.Column("resume_epoch", sa.Integer(), nullable=False, server_default="0"),
    ),
    ("disconnect_time", lambda: sa.Column("disconnect_time", UTCDateTime(), nullable=True)),
    ("resume_deadline", lambda: sa.Column("resume_deadline", UTCDateTime(), nullable=True)),
    (
        "connection_token_id",
        lambda: sa.Column("connection_token_id", sa.String(64), nullable=True),
    ),
)


def upgrade() -> None:
    op.add_column("sessions", sa.Column("empty_since", UTCDateTime(), nullable=True))
    for _, column in PARTICIPANT_COLUMNS:
        op.add_column("participants", column())
    op.create_table(
        "attendance_intervals",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("participant_id", sa.String(64), nullable=False),
        sa.Column("room_session_id", sa.String(64), nullable=False),
        sa.Column("role", sa.Integer(), nullable=False),
        sa.Column("join_time", UTCDateTime(), nullable=False),
        sa.Column("leave_time", UTCDateTime(), nullable=True),
        sa.Column("leave_reason", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["participant_id"],
            ["participants.id"],
            name="fk_attendance_intervals_participant_id_participants",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name="fk_attendance_intervals_session_id_sessions",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name="fk_attendance_intervals_tenant_id_tenants",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_attendance_intervals"),
    )
    op.create_index(
        "ix_attendance_intervals_session",
        "attendance_intervals",
        ["session_id", "participant_id", "join_time"],
    )


def downgrade() -> None:
    op.drop_table("attendance_intervals")
    with op.batch_alter_table("participants") as batch:
        for name, _ in reversed(PARTICIPANT_COLUMNS):
            batch.drop_column(name)
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("empty_since")
