"""Notifications and automated workflows: the notification log (one row per recipient per
cause), template overrides, workflow configuration, the workflow runner's cursors and effects.

Revision ID: 0009
Revises: 0007
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

from classwire.server.store.types import UTCDateTime

revision = "0009"
down_revision = "0007"
branch_labels = None
depends_on = None


def _tenant_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["tenant_id"], ["tenants.id"], name=f"fk_{table}_tenant_id_tenants", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "notifications",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("recipient_id", sa.String(64), nullable=False),
        sa.Column("cause", sa.String(300), nullable=False),
        sa.Column("cause_kind", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(100), nullable=False),
        sa.Column("contact_kind", sa.String(20), nullable=False),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("recipient_name", sa.String(200), nullable=False),
        sa.Column("template", sa.String(100), nullable=False),
        sa.Column("locale", sa.String(35), nullable=False),
        sa.Column("workflow", sa.String(100), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("suppression_reason", sa.Integer(), nullable=False),
        sa.Column("failure_reason", sa.String(100), nullable=False),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("text_body", sa.Text(), nullable=False),
        sa.Column("html_body", sa.Text(), nullable=False),
        sa.Column("provider_message_id", sa.String(300), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("send_time", UTCDateTime(), nullable=True),
        sa.Column("next_attempt_time", UTCDateTime(), nullable=True),
        sa.Column("expire_time", UTCDateTime(), nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        _tenant_fk("notifications"),
        sa.PrimaryKeyConstraint("id", name="pk_notifications"),
        sa.UniqueConstraint("tenant_id", "recipient_id", "cause", name="uq_notifications_cause"),
    )
    op.create_index("ix_notifications_list", "notifications", ["tenant_id", "create_time", "id"])
    op.create_index("ix_notifications_queue", "notifications", ["state", "next_attempt_time"])
    op.create_table(
        "notification_templates",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("locale", sa.String(35), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("html_body", sa.Text(), nullable=False),
        sa.Column("text_body", sa.Text(), nullable=False),
        sa.Column("update_time", UTCDateTime(), nullable=False),
        _tenant_fk("notification_templates"),
        sa.PrimaryKeyConstraint("tenant_id", "name", "locale", name="pk_notification_templates"),
    )
    op.create_table(
        "workflow_configs",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("update_time", UTCDateTime(), nullable=False),
        _tenant_fk("workflow_configs"),
        sa.PrimaryKeyConstraint("tenant_id", "name", name="pk_workflow_configs"),
    )
    op.create_table(
        "workflow_cursors",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        _tenant_fk("workflow_cursors"),
        sa.PrimaryKeyConstraint("tenant_id", name="pk_workflow_cursors"),
    )
    op.create_table(
        "workflow_effects",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("key", sa.String(400), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        _tenant_fk("workflow_effects"),
        sa.PrimaryKeyConstraint("tenant_id", "key", name="pk_workflow_effects"),
    )


def downgrade() -> None:
    op.drop_table("workflow_effects")
    op.drop_table("workflow_cursors")
    op.drop_table("workflow_configs")
    op.drop_table("notification_templates")
    op.drop_index("ix_notifications_queue", table_name="notifications")
    op.drop_index("ix_notifications_list", table_name="notifications")
    op.drop_table("notifications")
