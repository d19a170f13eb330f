"""Recordings and their files.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from classwire.server.store.types import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=f"fk_{table}_{column}_{target}", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "recordings",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("consent_required", sa.Boolean(), nullable=False),
        sa.Column("auto_started", sa.Boolean(), nullable=False),
        sa.Column("started_by", sa.JSON(), nullable=False),
        sa.Column("start_time", UTCDateTime(), nullable=False),
        sa.Column("stop_time", UTCDateTime(), nullable=True),
        sa.Column("ready_time", UTCDateTime(), nullable=True),
        sa.Column("stop_reason", sa.Integer(), nullable=False),
        sa.Column("failure_reason", sa.String(64), nullable=False),
        sa.Column("failure_message", sa.String(1000), nullable=False),
        sa.Column("consented_participant_ids", sa.JSON(), nullable=False),
        sa.Column("declined_participant_ids", sa.JSON(), nullable=False),
        _fk("recordings", "tenant_id", "tenants"),
        _fk("recordings", "session_id", "sessions"),
        sa.PrimaryKeyConstraint("id", name="pk_recordings"),
    )
    op.create_index("ix_recordings_tenant_start", "recordings", ["tenant_id", "start_time", "id"])
    op.create_index("ix_recordings_room", "recordings", ["tenant_id", "session_id", "state"])

    op.create_table(
        "recording_files",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("recording_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("participant_id", sa.String(64), nullable=False),
        sa.Column("identity", sa.String(128), nullable=False),
        sa.Column("track_ids", sa.JSON(), nullable=False),
        sa.Column("mime_type", sa.String(64), nullable=False),
        sa.Column("blob_key", sa.String(1024), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("duration_ms", sa.BigInteger(), nullable=False),
        sa.Column("start_time", UTCDateTime(), nullable=False),
        sa.Column("ready", sa.Boolean(), nullable=False),
        _fk("recording_files", "recording_id", "recordings"),
        _fk("recording_files", "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("id", name="pk_recording_files"),
    )
    op.create_index(
        "ix_recording_files_recording", "recording_files", ["recording_id", "start_time"]
    )


def downgrade() -> None:
    op.drop_table("recording_files")
    op.drop_table("recordings")
