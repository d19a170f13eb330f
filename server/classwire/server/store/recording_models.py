"""Tables of the recording area. They share the core's declarative Base (and naming convention).

`session_id` is the room recorded (a session or one of its breakout rooms). Enum columns hold
proto enum numbers (media.v1.RecordingState, RecordingFileKind, events.v1.RecordingStopped.Reason).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base


class RecordingRow(Base):
    __tablename__ = "recordings"
    __table_args__ = (
        # ListRecordings pages newest first by (start time, id).
        Index("ix_recordings_tenant_start", "tenant_id", "start_time", "id"),
        Index("ix_recordings_room", "tenant_id", "session_id", "state"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    state: Mapped[int] = mapped_column(Integer)
    # media.v1.RecordingOptions in its proto JSON form, as resolved at start.
    options: Mapped[dict[str, Any]] = mapped_column(JSON)
    consent_required: Mapped[bool] = mapped_column(default=False)
    auto_started: Mapped[bool] = mapped_column(default=False)
    # common.v1.Actor fields: {"kind", "id", "identity"}.
    started_by: Mapped[dict[str, Any]] = mapped_column(JSON)
    start_time: Mapped[datetime]
    stop_time: Mapped[datetime | None]
    ready_time: Mapped[datetime | None]
    stop_reason: Mapped[int] = mapped_column(Integer, default=0)
    failure_reason: Mapped[str] = mapped_column(String(64), default="")
    failure_message: Mapped[str] = mapped_column(String(1000), default="")
    consented_participant_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    declined_participant_ids: Mapped[list[str]] = mapped_column(JSON, default=list)


class RecordingFileRow(Base):
    __tablename__ = "recording_files"
    __table_args__ = (Index("ix_recording_files_recording", "recording_id", "start_time"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    recording_id: Mapped[str] = mapped_column(ForeignKey("recordings.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    kind: Mapped[int] = mapped_column(Integer)
    participant_id: Mapped[str] = mapped_column(String(64), default="")
    identity: Mapped[str] = mapped_column(String(128), default="")
    track_ids: Mapped[list[str]] = mapped_column(JSON, default=list)
    mime_type: Mapped[str] = mapped_column(String(64))
    blob_key: Mapped[str] = mapped_column(String(1024))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    duration_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    start_time: Mapped[datetime]
    ready: Mapped[bool] = mapped_column(default=False)
