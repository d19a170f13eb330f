"""Tables of the data-and-integrations area: webhook delivery state, ingest deduplication and
usage rollups. They share the core's declarative Base (and naming convention)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base


class WebhookCursor(Base):
    """Where one endpoint stands in its tenant's log, and who is working on it.

    `last_sequence`: every event up to it has its delivery row (or did not match the filter).
    `next_attempt_time`: when the endpoint's oldest pending delivery is due, so idle endpoints
    cost nothing. A replica works an endpoint only while it holds the lease, which keeps each
    endpoint's deliveries in order across replicas.
    """

    __tablename__ = "webhook_cursors"

    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    last_sequence: Mapped[int] = mapped_column(BigInteger)
    next_attempt_time: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]


class WebhookDeliveryRow(Base):
    """One event to one endpoint. `state` holds platform.v1 WebhookDeliveryState numbers."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # ListWebhookDeliveries pages newest first within an endpoint.
        Index("ix_webhook_deliveries_list", "endpoint_id", "create_time", "id"),
        # The dispatcher takes an endpoint's oldest pending delivery.
        Index("ix_webhook_deliveries_queue", "endpoint_id", "state", "event_sequence"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(200))
    event_sequence: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[int] = mapped_column(Integer)
    attempt_count: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_time: Mapped[datetime | None]
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]


class WebhookAttemptRow(Base):
    """One HTTP attempt of a delivery; `http_status` 0 when no response arrived."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id", "attempt_time"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    attempt_time: Mapped[datetime]
    http_status: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    latency_us: Mapped[int] = mapped_column(BigInteger, default=0)


class IngestedEvent(Base):
    """The first commit of each client_event_id, for deduplication of ingested custom events."""

    __tablename__ = "ingested_events"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    client_event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # SHA-256 of the event as sent, so a reused id with other content is told apart.
    fingerprint: Mapped[str] = mapped_column(String(64))
    event_id: Mapped[str] = mapped_column(String(64))
    sequence: Mapped[int] = mapped_column(BigInteger)
    create_time: Mapped[datetime] = mapped_column(index=True)


class UsageDay(Base):
    """Metered counters of one tenant over one UTC day (`day` is midnight UTC)."""

    __tablename__ = "usage_days"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    day: Mapped[datetime] = mapped_column(primary_key=True)
    api_calls: Mapped[int] = mapped_column(BigInteger, default=0)
