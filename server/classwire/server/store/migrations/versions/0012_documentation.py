"""Session documentation: transcript segments and post-session reports.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from classwire.server.store.types import UTCDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=f"fk_{table}_{column}_{target}", ondelete="CASCADE"
    )


def upgrade() -> None:
    # Transcripts.
    op.create_table(
        "transcriptions",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("engine", sa.String(100), nullable=False),
        sa.Column("language", sa.String(35), nullable=False),
        sa.Column("auto_started", sa.Boolean(), nullable=False),
        sa.Column("started_by", sa.JSON(), nullable=False),
        sa.Column("start_time", UTCDateTime(), nullable=False),
        sa.Column("stop_time", UTCDateTime(), nullable=True),
        sa.Column("engines", sa.JSON(), nullable=False),
        sa.Column("transcript_state", sa.Integer(), nullable=False),
        sa.Column("complete_time", UTCDateTime(), nullable=True),
        sa.Column("update_time", UTCDateTime(), nullable=False),
        _fk("transcriptions", "session_id", "sessions"),
        _fk("transcriptions", "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("session_id", name="pk_transcriptions"),
    )
    op.create_table(
        "transcription_tracks",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("track_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("participant_id", sa.String(64), nullable=False),
        sa.Column("engine", sa.String(100), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("final_caption_count", sa.Integer(), nullable=False),
        sa.Column("failure_reason", sa.String(100), nullable=False),
        sa.Column("failure_message", sa.Text(), nullable=False),
        sa.Column("update_time", UTCDateTime(), nullable=False),
        _fk("transcription_tracks", "session_id", "sessions"),
        _fk("transcription_tracks", "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("session_id", "track_id", name="pk_transcription_tracks"),
    )
    op.create_table(
        "transcript_segments",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("participant_id", sa.String(64), nullable=False),
        sa.Column("identity", sa.String(128), nullable=False),
        sa.Column("display_name", sa.String(100), nullable=False),
        sa.Column("track_id", sa.String(64), nullable=False),
        sa.Column("utterance_id", sa.String(64), nullable=False),
        sa.Column("start_time", UTCDateTime(), nullable=False),
        sa.Column("end_time", UTCDateTime(), nullable=False),
        sa.Column("start_offset_ms", sa.Integer(), nullable=False),
        sa.Column("end_offset_ms", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("language", sa.String(35), nullable=False),
        sa.Column("engine", sa.String(100), nullable=False),
        _fk("transcript_segments", "session_id", "sessions"),
        _fk("transcript_segments", "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("id", name="pk_transcript_segments"),
    )
    op.create_index(
        "ix_transcript_segments_room",
        "transcript_segments",
        ["tenant_id", "session_id", "start_time", "id"],
    )
    # Reports (below).
    op.create_table(
        "session_reports",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("parent_session_id", sa.String(64), nullable=False),
        sa.Column("class_id", sa.String(64), nullable=False),
        sa.Column("course_id", sa.String(64), nullable=False),
        sa.Column("end_time", UTCDateTime(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_time", UTCDateTime(), nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("transcript_wait_until", UTCDateTime(), nullable=True),
        sa.Column("generate_time", UTCDateTime(), nullable=True),
        sa.Column("failure_reason", sa.String(100), nullable=False),
        sa.Column("failure_message", sa.Text(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.Column("update_time", UTCDateTime(), nullable=False),
        _fk("session_reports", "session_id", "sessions"),
        _fk("session_reports", "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("session_id", name="pk_session_reports"),
    )
    op.create_index(
        "ix_session_reports_end", "session_reports", ["tenant_id", "end_time", "session_id"]
    )
    op.create_index("ix_session_reports_queue", "session_reports", ["state", "next_attempt_time"])
    op.create_table(
        "session_report_people",
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("identity", sa.String(128), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("role", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["session_reports.session_id"],
            name="fk_session_report_people_session_id_session_reports",
            ondelete="CASCADE",
        ),
        _fk("session_report_people", "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("session_id", "identity", name="pk_session_report_people"),
    )
    op.create_index(
        "ix_session_report_people_identity", "session_report_people", ["tenant_id", "identity"]
    )
    op.create_table(
        "report_cursors",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        _fk("report_cursors", "tenant_id", "tenants"),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_report_cursors"),
    )


def downgrade() -> None:
    # Reports first (above), then transcripts.
    op.drop_table("report_cursors")
    op.drop_index("ix_session_report_people_identity", table_name="session_report_people")
    op.drop_table("session_report_people")
    op.drop_index("ix_session_reports_queue", table_name="session_reports")
    op.drop_index("ix_session_reports_end", table_name="session_reports")
    op.drop_table("session_reports")
    op.drop_index("ix_transcript_segments_room", table_name="transcript_segments")
    op.drop_table("transcript_segments")
    op.drop_table("transcription_tracks")
    op.drop_table("transcriptions")
