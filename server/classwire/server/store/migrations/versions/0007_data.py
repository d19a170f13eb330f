"""Data and integrations: webhook cursors, deliveries and attempts; ingest deduplication; usage.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

from classwire.server.store.types import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _fk(table: str, column: str, target: str) -> sa.ForeignKeyConstraint:
    referred = target.split(".")[0]
    return sa.ForeignKeyConstraint(
        [column], [target], name=f"fk_{table}_{column}_{referred}", ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "webhook_cursors",
        sa.Column("endpoint_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("last_sequence", sa.BigInteger(), nullable=False),
        sa.Column("next_attempt_time", UTCDateTime(), nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        _fk("webhook_cursors", "endpoint_id", "webhook_endpoints.id"),
        _fk("webhook_cursors", "tenant_id", "tenants.id"),
        sa.PrimaryKeyConstraint("endpoint_id", name="pk_webhook_cursors"),
    )
    op.create_index("ix_webhook_cursors_tenant_id", "webhook_cursors", ["tenant_id"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("endpoint_id", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("event_type", sa.String(200), nullable=False),
        sa.Column("event_sequence", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column("next_attempt_time", UTCDateTime(), nullable=True),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        sa.Column("update_time", UTCDateTime(), nullable=False),
        _fk("webhook_deliveries", "tenant_id", "tenants.id"),
        _fk("webhook_deliveries", "endpoint_id", "webhook_endpoints.id"),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
    )
    op.create_index(
        "ix_webhook_deliveries_list", "webhook_deliveries", ["endpoint_id", "create_time", "id"]
    )
    op.create_index(
        "ix_webhook_deliveries_queue",
        "webhook_deliveries",
        ["endpoint_id", "state", "event_sequence"],
    )
    op.create_table(
        "webhook_attempts",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("delivery_id", sa.String(64), nullable=False),
        sa.Column("attempt_time", UTCDateTime(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("latency_us", sa.BigInteger(), nullable=False),
        _fk("webhook_attempts", "tenant_id", "tenants.id"),
        _fk("webhook_attempts", "delivery_id", "webhook_deliveries.id"),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_attempts"),
    )
    op.create_index(
        "ix_webhook_attempts_delivery", "webhook_attempts", ["delivery_id", "attempt_time"]
    )
    op.create_table(
        "ingested_events",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("client_event_id", sa.String(128), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=False),
        sa.Column("sequence", sa.BigInteger(), nullable=False),
        sa.Column("create_time", UTCDateTime(), nullable=False),
        _fk("ingested_events", "tenant_id", "tenants.id"),
        sa.PrimaryKeyConstraint("tenant_id", "client_event_id", name="pk_ingested_events"),
    )
    op.create_index("ix_ingested_events_create_time", "ingested_events", ["create_time"])
    op.create_table(
        "usage_days",
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("day", UTCDateTime(), nullable=False),
        sa.Column("api_calls", sa.BigInteger(), nullable=False),
        _fk("usage_days", "tenant_id", "tenants.id"),
        sa.PrimaryKeyConstraint("tenant_id", "day", name="pk_usage_days"),
    )


def downgrade() -> None:
    op.drop_table("usage_days")
    op.drop_index("ix_ingested_events_create_time", table_name="ingested_events")
    op.drop_table("ingested_events")
    op.drop_index("ix_webhook_attempts_delivery", table_name="webhook_attempts")
    op.drop_table("webhook_attempts")
    op.drop_index("ix_webhook_deliveries_queue", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_list", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_webhook_cursors_tenant_id", table_name="webhook_cursors")
    op.drop_table("webhook_cursors")
