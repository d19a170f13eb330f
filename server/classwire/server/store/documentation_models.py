"""Tables of the documentation area. They share the core's declarative Base (and naming convention).

Transcripts: one `transcriptions` row per room (the session or one breakout room) that ever ran
transcription, one `transcription_tracks` row per audio track a recognizer ran on, and the final
segments in `transcript_segments`. Enum columns hold the proto enum numbers (media.v1
TranscriptionState, TrackTranscriptionState; data.v1 TranscriptState), frozen by the v1 contract.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base

# -- transcripts -------------------------------------------------------------------------------


class TranscriptionRow(Base):
    """Transcription of one room: the control state and the transcript's life."""

    __tablename__ = "transcriptions"

    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    state: Mapped[int] = mapped_column(Integer)
    engine: Mapped[str] = mapped_column(String(100))
    language: Mapped[str] = mapped_column(String(35))
    auto_started: Mapped[bool] = mapped_column(default=False)
    # common.v1.Actor fields of who started it last: {"kind", "id", "identity"}.
    started_by: Mapped[dict[str, Any]] = mapped_column(JSON)
    start_time: Mapped[datetime]
    stop_time: Mapped[datetime | None]
    # Every engine that ran in this room, in first-use order.
    engines: Mapped[list[str]] = mapped_column(JSON)
    transcript_state: Mapped[int] = mapped_column(Integer)
    complete_time: Mapped[datetime | None]
    update_time: Mapped[datetime]


class TranscriptionTrackRow(Base):
    """The recognizer of one published audio track."""

    __tablename__ = "transcription_tracks"

    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    track_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    participant_id: Mapped[str] = mapped_column(String(64))
    engine: Mapped[str] = mapped_column(String(100))
    state: Mapped[int] = mapped_column(Integer)
    final_caption_count: Mapped[int] = mapped_column(Integer, default=0)
    failure_reason: Mapped[str] = mapped_column(String(100), default="")
    failure_message: Mapped[str] = mapped_column(Text, default="")
    update_time: Mapped[datetime]


class TranscriptSegmentRow(Base):
    """One final segment, attributed to the publisher of its track."""

    __tablename__ = "transcript_segments"
    __table_args__ = (
        # GetTranscript and the exports page a room's segments by (start time, id).
        Index("ix_transcript_segments_room", "tenant_id", "session_id", "start_time", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    participant_id: Mapped[str] = mapped_column(String(64))
    identity: Mapped[str] = mapped_column(String(128))
    display_name: Mapped[str] = mapped_column(String(100))
    track_id: Mapped[str] = mapped_column(String(64))
    utterance_id: Mapped[str] = mapped_column(String(64))
    start_time: Mapped[datetime]
    end_time: Mapped[datetime]
    # Offsets from the room's start (its live time), in milliseconds: what cues use.
    start_offset_ms: Mapped[int] = mapped_column(Integer)
    end_offset_ms: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    confidence: Mapped[float] = mapped_column(Float)
    language: Mapped[str] = mapped_column(String(35))
    engine: Mapped[str] = mapped_column(String(100))


# -- reports (below) ---------------------------------------------------------------------------


# Post-session reports: their tables live in report_models (imported here so the schema has them).
from .report_models import ReportCursor, SessionReportPerson, SessionReportRow  # noqa: E402,F401
