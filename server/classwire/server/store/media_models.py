"""Tables of the media area: published tracks, subscriptions, speaking intervals and quality
samples. They share the core's declarative Base (and naming convention).

`session_id` is always the room (the session or one of its breakout rooms) the media belongs
to; `main_session_id` the session the room belongs to, for talk time across breakout rooms.
Enum columns hold proto enum numbers (common.v1.TrackSource, events.v1.MediaDirection).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base


class MediaTrack(Base):
    """A track a participant published; kept after it ends for statistics and recordings."""

    __tablename__ = "media_tracks"
    __table_args__ = (
        # ListTracks pages a room's tracks by (publish time, id).
        Index("ix_media_tracks_room", "tenant_id", "session_id", "publish_time", "id"),
        Index("ix_media_tracks_participant", "tenant_id", "participant_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    main_session_id: Mapped[str] = mapped_column(String(64))
    participant_id: Mapped[str] = mapped_column(ForeignKey("participants.id", ondelete="CASCADE"))
    identity: Mapped[str] = mapped_column(String(128))
    # The publisher's own id for the track (its MediaStreamTrack id).
    client_track_id: Mapped[str] = mapped_column(String(128), default="")
    kind: Mapped[str] = mapped_column(String(8))  # audio | video
    source: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(100), default="")
    mime_type: Mapped[str] = mapped_column(String(64), default="")
    muted: Mapped[bool] = mapped_column(default=False)
    # common.v1.Actor fields of who muted it, while muted: {"kind", "id", "identity"}.
    muted_by: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    width: Mapped[int] = mapped_column(Integer, default=0)
    height: Mapped[int] = mapped_column(Integer, default=0)
    publish_time: Mapped[datetime]
    unpublish_time: Mapped[datetime | None]
    unpublish_reason: Mapped[int] = mapped_column(Integer, default=0)


class MediaSubscription(Base):
    """A participant's subscription to a track; ended ones keep their end time."""

    __tablename__ = "media_subscriptions"
    __table_args__ = (
        Index("ix_media_subscriptions_room", "tenant_id", "session_id", "subscribe_time", "id"),
        Index("ix_media_subscriptions_track", "tenant_id", "track_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    track_id: Mapped[str] = mapped_column(ForeignKey("media_tracks.id", ondelete="CASCADE"))
    subscriber_participant_id: Mapped[str] = mapped_column(String(64))
    publisher_participant_id: Mapped[str] = mapped_column(String(64))
    automatic: Mapped[bool]
    subscribe_time: Mapped[datetime]
    unsubscribe_time: Mapped[datetime | None]


class SpeakingIntervalRow(Base):
    __tablename__ = "speaking_intervals"
    __table_args__ = (
        Index("ix_speaking_intervals_room", "tenant_id", "session_id", "start_time", "id"),
        Index("ix_speaking_intervals_main", "tenant_id", "main_session_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    main_session_id: Mapped[str] = mapped_column(String(64))
    participant_id: Mapped[str] = mapped_column(String(64))
    identity: Mapped[str] = mapped_column(String(128))
    track_id: Mapped[str] = mapped_column(String(64))
    start_time: Mapped[datetime]
    end_time: Mapped[datetime]


class QualitySampleRow(Base):
    __tablename__ = "quality_samples"
    __table_args__ = (
        Index("ix_quality_samples_room", "tenant_id", "session_id", "sample_time", "id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    participant_id: Mapped[str] = mapped_column(String(64))
    identity: Mapped[str] = mapped_column(String(128))
    direction: Mapped[int] = mapped_column(Integer)
    track_id: Mapped[str] = mapped_column(String(64), default="")
    sample_time: Mapped[datetime]
    period_seconds: Mapped[float] = mapped_column(Float)
    packet_loss_ratio: Mapped[float] = mapped_column(Float, default=0.0)
    jitter_ms: Mapped[float | None] = mapped_column(Float)
    round_trip_time_ms: Mapped[float | None] = mapped_column(Float)
    bitrate_bps: Mapped[int] = mapped_column(BigInteger, default=0)
