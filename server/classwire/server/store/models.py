"""The database schema. Every tenant-owned row carries `tenant_id`; every query filters on it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .types import UTCDateTime

# Deterministic constraint names, so migrations can name what they alter on both engines.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[str]: JSON()}


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    display_name: Mapped[str] = mapped_column(String(200))
    # SHA-256 of the secret: the secret is 256 random bits, so a slow hash adds nothing.
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]]
    create_time: Mapped[datetime]
    last_use_time: Mapped[datetime | None]
    expire_time: Mapped[datetime | None]
    revoke_time: Mapped[datetime | None]


class SigningKey(Base):
    """A participant-token signing secret (HS256). Kept in clear: it must sign and verify."""

    __tablename__ = "signing_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    secret: Mapped[str] = mapped_column(String(128))
    create_time: Mapped[datetime]
    retire_time: Mapped[datetime | None]


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(Text)
    event_types: Mapped[list[str]]
    description: Mapped[str] = mapped_column(Text, default="")
    enabled: Mapped[bool]
    disabled_reason: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]


class WebhookSecret(Base):
    __tablename__ = "webhook_secrets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    secret: Mapped[str] = mapped_column(String(128))
    create_time: Mapped[datetime]
    expire_time: Mapped[datetime | None]


class EventCounter(Base):
    """The last sequence handed out per tenant (stream "") and per session (stream = session id).

    Appending an event increments its row inside the writer's transaction; the row lock orders
    concurrent writers, so sequences become visible in commit order and a reader that resumes
    after sequence N can never miss a later-committed N-1.
    """

    __tablename__ = "event_counters"

    tenant_id: Mapped[str] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    stream: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_sequence: Mapped[int] = mapped_column(BigInteger, default=0)


class Event(Base):
    """The durable event log and transactional outbox: written with the change it describes."""

    __tablename__ = "events"
    __table_args__ = (
        UniqueConstraint("tenant_id", "sequence", name="uq_events_tenant_sequence"),
        Index("ix_events_session", "tenant_id", "session_id", "session_sequence"),
        Index("ix_events_type", "tenant_id", "type", "sequence"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    sequence: Mapped[int] = mapped_column(BigInteger)
    session_id: Mapped[str | None] = mapped_column(String(64))
    session_sequence: Mapped[int | None] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(200))
    occur_time: Mapped[datetime]
    # The serialized classwire.api.events.v1.Event, so readers never lose a field.
    payload: Mapped[bytes] = mapped_column(LargeBinary)


class IdempotencyRecord(Base):
    """The first response to a create-like request, keyed by its request_id (AIP-155)."""

    __tablename__ = "idempotency_records"

    tenant_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    method: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    response: Mapped[bytes] = mapped_column(LargeBinary)
    create_time: Mapped[datetime] = mapped_column(index=True)


class LiveSession(Base):
    """A live session (classwire.api.session.v1.Session); breakout rooms are rows with a parent.

    Enum columns hold the proto enum numbers (common.v1.SessionState, events.v1.SessionEndReason):
    those numbers are frozen by the v1 contract, so they are as stable as names and smaller.
    """

    __tablename__ = "sessions"
    __table_args__ = (
        # ListSessions pages by (scheduled start, id) within a tenant.
        Index("ix_sessions_schedule", "tenant_id", "scheduled_start_time", "id"),
        Index("ix_sessions_parent", "tenant_id", "parent_session_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    parent_session_id: Mapped[str | None] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE")
    )
    breakout_name: Mapped[str] = mapped_column(String(100), default="")
    title: Mapped[str] = mapped_column(String(200))
    class_id: Mapped[str] = mapped_column(String(64), default="")
    course_id: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[int] = mapped_column(Integer)
    scheduled_start_time: Mapped[datetime]
    scheduled_end_time: Mapped[datetime]
    capacity: Mapped[int] = mapped_column(Integer, default=0)
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # `metadata` is reserved on declarative classes, hence the attribute name.
    labels: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    room_locked: Mapped[bool] = mapped_column(default=False)
    create_time: Mapped[datetime]
    update_time: Mapped[datetime]
    open_time: Mapped[datetime | None]
    live_time: Mapped[datetime | None]
    end_time: Mapped[datetime | None]
    end_reason: Mapped[int] = mapped_column(Integer, default=0)
    end_message: Mapped[str] = mapped_column(Text, default="")
    # Since when the live room has had nobody in it (the empty-room timer's episode); None
    # while someone is in the room.
    empty_since: Mapped[datetime | None]


class SessionInstructor(Base):
    """One expected instructor of a session: a row each, so ListSessions filters by identity
    with an index on both engines instead of searching inside a JSON array."""

    __tablename__ = "session_instructors"
    __table_args__ = (Index("ix_session_instructors_identity", "tenant_id", "identity"),)

    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    identity: Mapped[str] = mapped_column(String(128), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # The caller's order, kept so the session reads back as it was written.
    position: Mapped[int] = mapped_column(Integer)


class SessionParticipant(Base):
    """One identity in one session. The id is assigned by the first join token for the identity
    and kept by every later one, so a participant is the same across tokens and rejoins."""

    __tablename__ = "participants"
    __table_args__ = (
        UniqueConstraint("session_id", "identity", name="uq_participants_session_identity"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    identity: Mapped[str] = mapped_column(String(128))
    # As given by the first token; the participant connection keeps them current once it joins.
    display_name: Mapped[str] = mapped_column(String(100))
    role: Mapped[int] = mapped_column(Integer)
    create_time: Mapped[datetime]
    # session.v1 ParticipantState number; INVITED (1) until the first connection.
    state: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    # The room it is in now: the session or one of its breakout rooms; None before joining.
    room_session_id: Mapped[str | None] = mapped_column(String(64))
    # The participant's own PermissionOverrides (grant/revoke lists); None: none.
    permission_overrides: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    labels: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)
    first_join_time: Mapped[datetime | None]
    join_time: Mapped[datetime | None]
    leave_time: Mapped[datetime | None]
    leave_reason: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    reconnect_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Held in the waiting room only until an instructor joins (not by the waiting-room setting).
    held_for_instructor: Mapped[bool] = mapped_column(default=False, server_default=false())
    removed: Mapped[bool] = mapped_column(default=False, server_default=false())
    rejoin_blocked: Mapped[bool] = mapped_column(default=False, server_default=false())
    # Resume tokens are HMACs of (participant, epoch) under this per-participant key; every
    # Joined moves the epoch on, so only the latest token resumes. Kept here so they survive a
    # restart.
    resume_key: Mapped[str | None] = mapped_column(String(64))
    resume_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    disconnect_time: Mapped[datetime | None]
    resume_deadline: Mapped[datetime | None]
    # The join token of the current connection, so revoking it disconnects the participant.
    connection_token_id: Mapped[str | None] = mapped_column(String(64))


class AttendanceInterval(Base):
    """One stay of a participant in one room, from entering to leaving. A resumed reconnection
    keeps the interval open; leaving, a move between rooms or the session's end closes it."""

    __tablename__ = "attendance_intervals"
    __table_args__ = (
        Index("ix_attendance_intervals_session", "session_id", "participant_id", "join_time"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    # The main session, whichever room the interval was in.
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    participant_id: Mapped[str] = mapped_column(ForeignKey("participants.id", ondelete="CASCADE"))
    room_session_id: Mapped[str] = mapped_column(String(64))
    role: Mapped[int] = mapped_column(Integer)
    join_time: Mapped[datetime]
    leave_time: Mapped[datetime | None]
    leave_reason: Mapped[int] = mapped_column(Integer, default=0)


class JoinToken(Base):
    """A participant token that was issued (never the token itself): its id is the JWT `jti`,
    so a token can be revoked and a revoked one refused."""

    __tablename__ = "join_tokens"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    participant_id: Mapped[str] = mapped_column(
        ForeignKey("participants.id", ondelete="CASCADE"), index=True
    )
    signing_key_id: Mapped[str] = mapped_column(String(64))
    role: Mapped[int] = mapped_column(Integer)
    display_name: Mapped[str] = mapped_column(String(100))
    permission_overrides: Mapped[dict[str, Any]] = mapped_column(default=dict)
    labels: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    create_time: Mapped[datetime]
    expire_time: Mapped[datetime]
    revoke_time: Mapped[datetime | None]


class Timer(Base):
    """A durable timer: fires once at or after `due_time`, also across restarts and replicas.

    (tenant_id, kind, key) is unique, so scheduling the same timer twice keeps one. A replica
    claims a due timer by leasing it (`lease_until`); the handler's changes and the `fire_time`
    mark commit in one transaction, so a crash mid-way leaves it pending for a retry, and a
    committed firing is never repeated.
    """

    __tablename__ = "timers"
    __table_args__ = (
        UniqueConstraint("tenant_id", "kind", "key", name="uq_timers_tenant_kind_key"),
        Index("ix_timers_due", "fire_time", "due_time"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(200))
    due_time: Mapped[datetime]
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    lease_until: Mapped[datetime | None]
    fire_time: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
