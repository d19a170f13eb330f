"""Analytics: rollups kept up to date as events commit, and ratings.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from classwire.server.store.types import UTCDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"], ["tenants.id"], name=f"fk_{table}_tenant_id_tenants", ondelete="CASCADE"
    )


def _count(name: str) -> sa.Column:
    return sa.Column(name, sa.Integer(), nullable=False)


def _ms(name: str) -> sa.Column:
    return sa.Column(name, sa.BigInteger(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "analytics_cursors",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        _tenant_fk("analytics_cursors"),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_analytics_cursors"),
    )
    op.create_table(
        "analytics_sessions",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("root_session_id", sa.String(64), nullable=False),
        sa.Column("class_id", sa.String(64), nullable=False),
        sa.Column("course_id", sa.String(64), nullable=False),
        sa.Column("scheduled_start_ms", sa.BigInteger(), nullable=True),
        sa.Column("scheduled_end_ms", sa.BigInteger(), nullable=True),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("state_json", sa.JSON(), nullable=False),
        _tenant_fk("analytics_sessions"),
        sa.PrimaryKeyConstraint("tenant_id", "session_id", name="pk_analytics_sessions"),
    )
    op.create_table(
        "analytics_attendances",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("identity", sa.String(128), nullable=False),
        sa.Column("role", sa.Integer(), nullable=False),
        sa.Column("display_name", sa.String(100), nullable=False),
        sa.Column("class_id", sa.String(64), nullable=False),
        sa.Column("course_id", sa.String(64), nullable=False),
        sa.Column("instructor", sa.String(128), nullable=False),
        sa.Column("slot", sa.BigInteger(), nullable=False),
        _ms("scheduled_ms"),
        sa.Column("cancelled", sa.Boolean(), nullable=False),
        sa.Column("ended", sa.Boolean(), nullable=False),
        sa.Column("expected", sa.Boolean(), nullable=False),
        sa.Column("attended", sa.Boolean(), nullable=False),
        sa.Column("present", sa.Boolean(), nullable=False),
        sa.Column("late", sa.Boolean(), nullable=False),
        _ms("late_ms"),
        sa.Column("left_early", sa.Boolean(), nullable=False),
        _ms("present_ms"),
        _ms("talk_ms"),
        sa.Column("talk_share", sa.Float(), nullable=False),
        _ms("camera_ms"),
        sa.Column("camera_since_ms", sa.BigInteger(), nullable=True),
        _count("chat_messages"),
        _count("hand_raises"),
        _count("reactions"),
        _count("polls_offered"),
        _count("polls_answered"),
        _count("graded_answers"),
        _count("correct_answers"),
        _count("disconnects"),
        _count("rating_count"),
        _count("rating_sum"),
        *(_count(f"rating_{n}") for n in range(1, 6)),
        _tenant_fk("analytics_attendances"),
        sa.PrimaryKeyConstraint(
            "tenant_id", "session_id", "identity", name="pk_analytics_attendances"
        ),
    )
    op.create_index(
        "ix_analytics_attendances_identity",
        "analytics_attendances",
        ["tenant_id", "identity", "slot"],
    )
    op.create_index(
        "ix_analytics_attendances_role", "analytics_attendances", ["tenant_id", "role", "slot"]
    )
    op.create_index(
        "ix_analytics_attendances_class",
        "analytics_attendances",
        ["tenant_id", "class_id", "role", "slot"],
    )
    op.create_index(
        "ix_analytics_attendances_instructor",
        "analytics_attendances",
        ["tenant_id", "instructor", "role", "slot"],
    )
    op.create_table(
        "ratings",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("rater_identity", sa.String(128), nullable=False),
        sa.Column("instructor_identity", sa.String(128), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("update_time", UTCDateTime(), nullable=False),
        _tenant_fk("ratings"),
        sa.PrimaryKeyConstraint("id", name="pk_ratings"),
    )
    op.create_index(
        "uq_ratings_rater",
        "ratings",
        ["tenant_id", "session_id", "rater_identity", "instructor_identity"],
        unique=True,
    )
    op.create_index("ix_ratings_list", "ratings", ["tenant_id", "create_time", "id"])
    op.create_index(
        "ix_ratings_instructor", "ratings", ["tenant_id", "instructor_identity", "create_time"]
    )


def downgrade() -> None:
    op.drop_table("ratings")
    op.drop_table("analytics_attendances")
    op.drop_table("analytics_sessions")
    op.drop_table("analytics_cursors")
