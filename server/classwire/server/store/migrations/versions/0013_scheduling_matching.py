"""Matching and substitutes: assignment plans, substitute proposals, calendar feed tokens.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

from classwire.server.store.types import UTCDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"], ["tenants.id"], name=f"fk_{table}_tenant_id_tenants", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "sched_assignment_plans",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("matcher", sa.String(100), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("objective", sa.Float(), nullable=False),
        sa.Column("best_bound", sa.Float(), nullable=False),
        sa.Column("gap", sa.Float(), nullable=False),
        sa.Column("solve_seconds", sa.Float(), nullable=False),
        sa.Column("assignments", sa.JSON(), nullable=False),
        sa.Column("person_versions", sa.JSON(), nullable=False),
        sa.Column("assigned_count", sa.Integer(), nullable=False),
        sa.Column("unassigned_count", sa.Integer(), nullable=False),
        sa.Column("changed_count", sa.Integer(), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("apply_time", UTCDateTime(), nullable=True),
        sa.Column("expire_time", UTCDateTime(), nullable=False),
        _tenant_fk("sched_assignment_plans"),
        sa.PrimaryKeyConstraint("id", name="pk_sched_assignment_plans"),
    )
    op.create_index(
        "ix_sched_assignment_plans_list", "sched_assignment_plans", ["tenant_id", "create_time"]
    )
    op.create_table(
        "sched_substitute_proposals",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("booking_id", sa.String(64), nullable=False),
        sa.Column("absent_instructor_id", sa.String(64), nullable=False),
        sa.Column("candidates", sa.JSON(), nullable=False),
        sa.Column("matcher", sa.String(100), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("assigned_instructor_id", sa.String(64), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        _tenant_fk("sched_substitute_proposals"),
        sa.ForeignKeyConstraint(
            ["booking_id"],
            ["sched_bookings.id"],
            name="fk_sched_substitute_proposals_booking_id_sched_bookings",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_sched_substitute_proposals"),
    )
    op.create_index(
        "ix_sched_substitute_proposals_booking",
        "sched_substitute_proposals",
        ["tenant_id", "booking_id"],
    )
    op.create_table(
        "sched_feed_tokens",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("person_id", sa.String(64), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("last_use_time", UTCDateTime(), nullable=True),
        _tenant_fk("sched_feed_tokens"),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["roster_people.id"],
            name="fk_sched_feed_tokens_person_id_roster_people",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_sched_feed_tokens"),
        sa.UniqueConstraint("secret_hash", name="uq_sched_feed_tokens_secret_hash"),
    )
    op.create_index(
        "ix_sched_feed_tokens_person",
        "sched_feed_tokens",
        ["tenant_id", "person_id", "create_time"],
    )


def downgrade() -> None:
    op.drop_table("sched_feed_tokens")
    op.drop_table("sched_substitute_proposals")
    op.drop_table("sched_assignment_plans")
