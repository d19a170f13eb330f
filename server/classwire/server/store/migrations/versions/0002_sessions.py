"""Live sessions: sessions, their expected instructors, participants and issued join tokens.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

from classwire.server.store.types import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"], ["tenants.id"], name=f"fk_{table}_tenant_id_tenants", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("parent_session_id", sa.String(64), nullable=True),
        sa.Column("breakout_name", sa.String(100), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("class_id", sa.String(64), nullable=False),
        sa.Column("course_id", sa.String(64), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("scheduled_start_time", UTCDateTime(), nullable=False),
        sa.Column("scheduled_end_time", UTCDateTime(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("room_locked", sa.Boolean(), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("update_time", UTCDateTime(), nullable=False),
        sa.Column("open_time", UTCDateTime(), nullable=True),
        sa.Column("live_time", UTCDateTime(), nullable=True),
        sa.Column("end_time", UTCDateTime(), nullable=True),
        sa.Column("end_reason", sa.Integer(), nullable=False),
        sa.Column("end_message", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_session_id"],
            ["sessions.id"],
            name="fk_sessions_parent_session_id_sessions",
            ondelete="CASCADE",
        ),
        _tenant_fk("sessions"),
        sa.PrimaryKeyConstraint("id", name="pk_sessions"),
    )
    op.create_index("ix_sessions_schedule", "sessions", ["tenant_id", "scheduled_start_time", "id"])
    op.create_index("ix_sessions_parent", "sessions", ["tenant_id", "parent_session_id"])
    op.create_table(
        "session_instructors",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("identity", sa.String(128), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name="fk_session_instructors_session_id_sessions",
            ondelete="CASCADE",
        ),
        _tenant_fk("session_instructors"),
        sa.PrimaryKeyConstraint("session_id", "identity", name="pk_session_instructors"),
    )
    op.create_index(
        "ix_session_instructors_identity", "session_instructors", ["tenant_id", "identity"]
    )
    op.create_table(
        "participants",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("identity", sa.String(128), nullable=False),
        sa.Column("display_name", sa.String(100), nullable=False),
        sa.Column("role", sa.Integer(), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name="fk_participants_session_id_sessions",
            ondelete="CASCADE",
        ),
        _tenant_fk("participants"),
        sa.PrimaryKeyConstraint("id", name="pk_participants"),
        sa.UniqueConstraint("session_id", "identity", name="uq_participants_session_identity"),
    )
    op.create_table(
        "join_tokens",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("participant_id", sa.String(64), nullable=False),
        sa.Column("signing_key_id", sa.String(64), nullable=False),
        sa.Column("role", sa.Integer(), nullable=False),
        sa.Column("display_name", sa.String(100), nullable=False),
        sa.Column("permission_overrides", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("expire_time", UTCDateTime(), nullable=False),
        sa.Column("revoke_time", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["participant_id"],
            ["participants.id"],
            name="fk_join_tokens_participant_id_participants",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
            name="fk_join_tokens_session_id_sessions",
            ondelete="CASCADE",
        ),
        _tenant_fk("join_tokens"),
        sa.PrimaryKeyConstraint("id", name="pk_join_tokens"),
    )
    op.create_index("ix_join_tokens_session_id", "join_tokens", ["session_id"])
    op.create_index("ix_join_tokens_participant_id", "join_tokens", ["participant_id"])


def downgrade() -> None:
    for table in ("join_tokens", "participants", "session_instructors", "sessions"):
        op.drop_table(table)
