"""Classroom interactions: hand raise, chat, reactions, polls, breakouts.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from classwire.server.store.types import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=f"fk_{table}_{column}_{target}", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "raised_hands",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("participant_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("raise_time", UTCDateTime(), nullable=False),
        _fk("raised_hands", "session_id", "sessions"),
        _fk("raised_hands", "participant_id", "participants"),
        _fk("raised_hands", "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("session_id", "participant_id", name="pk_raised_hands"),
    )
    op.create_index(
        "ix_raised_hands_queue", "raised_hands", ["tenant_id", "session_id", "raise_time"]
    )

    op.create_table(
        "chat_messages",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("sender_kind", sa.Integer(), nullable=False),
        sa.Column("sender_id", sa.String(64), nullable=False),
        sa.Column("sender_identity", sa.String(128), nullable=False),
        sa.Column("sender_participant_id", sa.String(64), nullable=False),
        sa.Column("sender_display_name", sa.String(100), nullable=False),
        sa.Column("audience", sa.Integer(), nullable=False),
        sa.Column("recipient_participant_id", sa.String(64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("reply_to_message_id", sa.String(64), nullable=False),
        sa.Column("send_time", UTCDateTime(), nullable=False),
        sa.Column("delete_time", UTCDateTime(), nullable=True),
        sa.Column("deleted_by", sa.JSON(), nullable=True),
        _fk("chat_messages", "session_id", "sessions"),
        _fk("chat_messages", "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("id", name="pk_chat_messages"),
    )
    op.create_index(
        "ix_chat_messages_room", "chat_messages", ["tenant_id", "session_id", "send_time", "id"]
    )

    op.create_table(
        "polls",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("correct_option_ids", sa.JSON(), nullable=False),
        sa.Column("anonymous", sa.Boolean(), nullable=False),
        sa.Column("max_selections", sa.Integer(), nullable=False),
        sa.Column("results_visibility", sa.Integer(), nullable=False),
        sa.Column("duration_seconds", sa.Float(), nullable=True),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("close_reason", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.JSON(), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("close_time", UTCDateTime(), nullable=True),
        _fk("polls", "session_id", "sessions"),
        _fk("polls", "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("id", name="pk_polls"),
    )
    op.create_index("ix_polls_room", "polls", ["tenant_id", "session_id", "create_time", "id"])

    op.create_table(
        "poll_answers",
        sa.Column("poll_id", sa.String(64), nullable=False),
        sa.Column("participant_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("identity", sa.String(128), nullable=False),
        sa.Column("option_ids", sa.JSON(), nullable=False),
        sa.Column("correct", sa.Boolean(), nullable=False),
        sa.Column("answer_time", UTCDateTime(), nullable=False),
        _fk("poll_answers", "poll_id", "polls"),
        _fk("poll_answers", "participant_id", "participants"),
        _fk("poll_answers", "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("poll_id", "participant_id", name="pk_poll_answers"),
    )

    op.create_table(
        "breakout_rounds",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("room_session_ids", sa.JSON(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("open_time", UTCDateTime(), nullable=False),
        sa.Column("close_time", UTCDateTime(), nullable=True),
        _fk("breakout_rounds", "session_id", "sessions"),
        _fk("breakout_rounds", "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("id", name="pk_breakout_rounds"),
    )
    op.create_index(
        "ix_breakout_rounds_session", "breakout_rounds", ["tenant_id", "session_id", "open_time"]
    )

    op.create_table(
        "breakout_assignments",
        sa.Column("round_id", sa.String(64), nullable=False),
        sa.Column("participant_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("room_session_id", sa.String(64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        _fk("breakout_assignments", "round_id", "breakout_rounds"),
        _fk("breakout_assignments", "participant_id", "participants"),
        _fk("breakout_assignments", "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("round_id", "participant_id", name="pk_breakout_assignments"),
    )
    op.create_index(
        "ix_breakout_assignments_room", "breakout_assignments", ["round_id", "room_session_id"]
    )


def downgrade() -> None:
    for table in (
        "breakout_assignments",
        "breakout_rounds",
        "poll_answers",
        "polls",
        "chat_messages",
        "raised_hands",
    ):
        op.drop_table(table)
