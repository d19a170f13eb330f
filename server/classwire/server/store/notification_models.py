"""Tables of notifications and automated workflows. They share the core's declarative Base.

`notifications` holds one row per recipient per cause (a unique key): a workflow that handles the
same event twice, or a replica that races another, finds the row and sends nothing more.
State and suppression reasons are the data.v1 / events.v1 enum numbers.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base


def _tenant() -> Mapped[str]:
    return mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))


class NotificationRow(Base):
    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("tenant_id", "recipient_id", "cause", name="uq_notifications_cause"),
        # ListNotifications pages newest first within a tenant.
        Index("ix_notifications_list", "tenant_id", "create_time", "id"),
        # The sender's queue: due PENDING rows.
        Index("ix_notifications_queue", "state", "next_attempt_time"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = _tenant()
    recipient_id: Mapped[str] = mapped_column(String(64))
    cause: Mapped[str] = mapped_column(String(300))
    cause_kind: Mapped[int] = mapped_column(Integer)  # roster.v1 NotificationCause
    channel: Mapped[str] = mapped_column(String(100), default="")
    contact_kind: Mapped[str] = mapped_column(String(20), default="")
    address: Mapped[str] = mapped_column(Text, default="")
    recipient_name: Mapped[str] = mapped_column(String(200), default="")
    template: Mapped[str] = mapped_column(String(100))
    locale: Mapped[str] = mapped_column(String(35), default="")
    workflow: Mapped[str] = mapped_column(String(100), default="")
    session_id: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[int] = mapped_column(Integer)
    suppression_reason: Mapped[int] = mapped_column(Integer, default=0)
    failure_reason: Mapped[str] = mapped_column(String(100), default="")
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    subject: Mapped[str] = mapped_column(Text, default="")
    text_body: Mapped[str] = mapped_column(Text, default="")
    html_body: Mapped[str] = mapped_column(Text, default="")
    provider_message_id: Mapped[str] = mapped_column(String(300), default="")
    create_time: Mapped[datetime]
    send_time: Mapped[datetime | None]
    next_attempt_time: Mapped[datetime | None]
    # A notice that no longer matters after this time (a reminder after its lesson started).
    expire_time: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]


class NotificationTemplateRow(Base):
    """A tenant's override of a built-in template in one locale."""

    __tablename__ = "notification_templates"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    locale: Mapped[str] = mapped_column(String(35), primary_key=True)
    subject: Mapped[str] = mapped_column(Text)
    html_body: Mapped[str] = mapped_column(Text)
    text_body: Mapped[str] = mapped_column(Text)
    update_time: Mapped[datetime]


class WorkflowConfigRow(Base):
    """A tenant's configuration of a workflow; a workflow without a row uses its defaults."""

    __tablename__ = "workflow_configs"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    enabled: Mapped[bool] = mapped_column(Boolean)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    update_time: Mapped[datetime]


class WorkflowCursor(Base):
    """How far the workflow runner has read a tenant's log, and which replica holds it."""

    __tablename__ = "workflow_cursors"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    last_sequence: Mapped[int] = mapped_column(BigInteger)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]


class WorkflowEffect(Base):
    """An effect a workflow already had (a run, an emitted or scheduled event), by its key."""

    __tablename__ = "workflow_effects"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    create_time: Mapped[datetime]


__all__ = [
    "NotificationRow",
    "NotificationTemplateRow",
    "WorkflowConfigRow",
    "WorkflowCursor",
    "WorkflowEffect",
]
