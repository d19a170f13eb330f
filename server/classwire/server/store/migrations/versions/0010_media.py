"""The media plane: published tracks, subscriptions, speaking intervals and quality samples.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from classwire.server.store.types import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=f"fk_{table}_{column}_{target}", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "media_tracks",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("main_session_id", sa.String(64), nullable=False),
        sa.Column("participant_id", sa.String(64), nullable=False),
        sa.Column("identity", sa.String(128), nullable=False),
        sa.Column("client_track_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("source", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("mime_type", sa.String(64), nullable=False),
        sa.Column("muted", sa.Boolean(), nullable=False),
        sa.Column("muted_by", sa.JSON(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("publish_time", UTCDateTime(), nullable=False),
        sa.Column("unpublish_time", UTCDateTime(), nullable=True),
        sa.Column("unpublish_reason", sa.Integer(), nullable=False),
        _fk("media_tracks", "tenant_id", "tenants"),
        _fk("media_tracks", "session_id", "sessions"),
        _fk("media_tracks", "participant_id", "participants"),
        sa.PrimaryKeyConstraint("id", name="pk_media_tracks"),
    )
    op.create_index(
        "ix_media_tracks_room", "media_tracks", ["tenant_id", "session_id", "publish_time", "id"]
    )
    op.create_index("ix_media_tracks_participant", "media_tracks", ["tenant_id", "participant_id"])

    op.create_table(
        "media_subscriptions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("track_id", sa.String(64), nullable=False),
        sa.Column("subscriber_participant_id", sa.String(64), nullable=False),
        sa.Column("publisher_participant_id", sa.String(64), nullable=False),
        sa.Column("automatic", sa.Boolean(), nullable=False),
        sa.Column("subscribe_time", UTCDateTime(), nullable=False),
        sa.Column("unsubscribe_time", UTCDateTime(), nullable=True),
        _fk("media_subscriptions", "tenant_id", "tenants"),
        _fk("media_subscriptions", "session_id", "sessions"),
        _fk("media_subscriptions", "track_id", "media_tracks"),
        sa.PrimaryKeyConstraint("id", name="pk_media_subscriptions"),
    )
    op.create_index(
        "ix_media_subscriptions_room",
        "media_subscriptions",
        ["tenant_id", "session_id", "subscribe_time", "id"],
    )
    op.create_index(
        "ix_media_subscriptions_track", "media_subscriptions", ["tenant_id", "track_id"]
    )

    op.create_table(
        "speaking_intervals",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("main_session_id", sa.String(64), nullable=False),
        sa.Column("participant_id", sa.String(64), nullable=False),
        sa.Column("identity", sa.String(128), nullable=False),
        sa.Column("track_id", sa.String(64), nullable=False),
        sa.Column("start_time", UTCDateTime(), nullable=False),
        sa.Column("end_time", UTCDateTime(), nullable=False),
        _fk("speaking_intervals", "tenant_id", "tenants"),
        _fk("speaking_intervals", "session_id", "sessions"),
        sa.PrimaryKeyConstraint("id", name="pk_speaking_intervals"),
    )
    op.create_index(
        "ix_speaking_intervals_room",
        "speaking_intervals",
        ["tenant_id", "session_id", "start_time", "id"],
    )
    op.create_index(
        "ix_speaking_intervals_main", "speaking_intervals", ["tenant_id", "main_session_id"]
    )

    op.create_table(
        "quality_samples",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("participant_id", sa.String(64), nullable=False),
        sa.Column("identity", sa.String(128), nullable=False),
        sa.Column("direction", sa.Integer(), nullable=False),
        sa.Column("track_id", sa.String(64), nullable=False),
        sa.Column("sample_time", UTCDateTime(), nullable=False),
        sa.Column("period_seconds", sa.Float(), nullable=False),
        sa.Column("packet_loss_ratio", sa.Float(), nullable=False),
        sa.Column("jitter_ms", sa.Float(), nullable=True),
        sa.Column("round_trip_time_ms", sa.Float(), nullable=True),
        sa.Column("bitrate_bps", sa.BigInteger(), nullable=False),
        _fk("quality_samples", "tenant_id", "tenants"),
        _fk("quality_samples", "session_id", "sessions"),
        sa.PrimaryKeyConstraint("id", name="pk_quality_samples"),
    )
    op.create_index(
        "ix_quality_samples_room",
        "quality_samples",
        ["tenant_id", "session_id", "sample_time", "id"],
    )


def downgrade() -> None:
    for table in ("quality_samples", "speaking_intervals", "media_subscriptions", "media_tracks"):
        op.drop_table(table)
