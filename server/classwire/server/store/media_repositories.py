"""Queries of the media area. Every query filters on tenant; repositories never commit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .media_models import MediaSubscription, MediaTrack, QualitySampleRow, SpeakingIntervalRow


async def get_track(session: AsyncSession, tenant_id: str, track_id: str) -> MediaTrack | None:
    return await session.scalar(
        select(MediaTrack).where(MediaTrack.tenant_id == tenant_id, MediaTrack.id == track_id)
    )


def tracks(
    tenant_id: str, session_id: str, participant_id: str = "", include_unpublished: bool = False
) -> Select:
    query = select(MediaTrack).where(
        MediaTrack.tenant_id == tenant_id, MediaTrack.session_id == session_id
    )
    if participant_id:
        query = query.where(MediaTrack.participant_id == participant_id)
    if not include_unpublished:
        query = query.where(MediaTrack.unpublish_time.is_(None))
    return query


async def published_tracks(
    session: AsyncSession, tenant_id: str, session_id: str
) -> list[MediaTrack]:
    rows = await session.scalars(
        tracks(tenant_id, session_id).order_by(MediaTrack.publish_time, MediaTrack.id)
    )
    return list(rows.all())


async def subscriber_counts(
    session: AsyncSession, tenant_id: str, track_ids: Sequence[str]
) -> dict[str, int]:
    if not track_ids:
        return {}
    rows = await session.execute(
        select(MediaSubscription.track_id, func.count())
        .where(
            MediaSubscription.tenant_id == tenant_id,
            MediaSubscription.track_id.in_(list(track_ids)),
            MediaSubscription.unsubscribe_time.is_(None),
        )
        .group_by(MediaSubscription.track_id)
    )
    return {track_id: count for track_id, count in rows.all()}


def subscriptions(
    tenant_id: str, session_id: str, track_id: str = "", subscriber_participant_id: str = ""
) -> Select:
    query = select(MediaSubscription).where(
        MediaSubscription.tenant_id == tenant_id,
        MediaSubscription.session_id == session_id,
        MediaSubscription.unsubscribe_time.is_(None),
    )
    if track_id:
        query = query.where(MediaSubscription.track_id == track_id)
    if subscriber_participant_id:
        query = query.where(
            MediaSubscription.subscriber_participant_id == subscriber_participant_id
        )
    return query


async def active_subscription(
    session: AsyncSession, tenant_id: str, track_id: str, subscriber_participant_id: str
) -> MediaSubscription | None:
    return await session.scalar(
        select(MediaSubscription).where(
            MediaSubscription.tenant_id == tenant_id,
            MediaSubscription.track_id == track_id,
            MediaSubscription.subscriber_participant_id == subscriber_participant_id,
            MediaSubscription.unsubscribe_time.is_(None),
        )
    )


async def active_subscriptions_of_track(
    session: AsyncSession, tenant_id: str, track_id: str
) -> list[MediaSubscription]:
    rows = await session.scalars(
        select(MediaSubscription).where(
            MediaSubscription.tenant_id == tenant_id,
            MediaSubscription.track_id == track_id,
            MediaSubscription.unsubscribe_time.is_(None),
        )
    )
    return list(rows.all())


async def active_subscriptions_of_subscriber(
    session: AsyncSession, tenant_id: str, session_id: str, subscriber_participant_id: str
) -> list[MediaSubscription]:
    query = subscriptions(tenant_id, session_id, "", subscriber_participant_id)
    rows = await session.scalars(query)
    return list(rows.all())


async def count_active_subscriptions(session: AsyncSession, tenant_id: str, session_id: str):
    """(subscriber participant id -> count) of the room's current subscriptions."""
    rows = await session.execute(
        select(MediaSubscription.subscriber_participant_id, func.count())
        .where(
            MediaSubscription.tenant_id == tenant_id,
            MediaSubscription.session_id == session_id,
            MediaSubscription.unsubscribe_time.is_(None),
        )
        .group_by(MediaSubscription.subscriber_participant_id)
    )
    return dict(rows.all())


def speaking_intervals(tenant_id: str, session_id: str, participant_id: str = "") -> Select:
    query = select(SpeakingIntervalRow).where(
        SpeakingIntervalRow.tenant_id == tenant_id, SpeakingIntervalRow.session_id == session_id
    )
    if participant_id:
        query = query.where(SpeakingIntervalRow.participant_id == participant_id)
    return query


async def talk_rows(
    session: AsyncSession, tenant_id: str, session_id: str, include_breakouts: bool
) -> list[tuple[str, datetime, datetime]]:
    """(participant id, start, end) of every speaking interval of the room, or of the session
    and its breakout rooms. Durations are summed by the caller: interval arithmetic differs
    between SQLite and PostgreSQL."""
    column = (
        SpeakingIntervalRow.main_session_id if include_breakouts else SpeakingIntervalRow.session_id
    )
    rows = await session.execute(
        select(
            SpeakingIntervalRow.participant_id,
            SpeakingIntervalRow.start_time,
            SpeakingIntervalRow.end_time,
        ).where(SpeakingIntervalRow.tenant_id == tenant_id, column == session_id)
    )
    return [tuple(r) for r in rows.all()]


def quality_samples(
    tenant_id: str,
    session_id: str,
    participant_id: str = "",
    direction: int = 0,
    time_from: datetime | None = None,
    time_to: datetime | None = None,
) -> Select:
    query = select(QualitySampleRow).where(
        QualitySampleRow.tenant_id == tenant_id, QualitySampleRow.session_id == session_id
    )
    if participant_id:
        query = query.where(QualitySampleRow.participant_id == participant_id)
    if direction:
        query = query.where(QualitySampleRow.direction == direction)
    if time_from is not None:
        query = query.where(QualitySampleRow.sample_time >= time_from)
    if time_to is not None:
        query = query.where(QualitySampleRow.sample_time < time_to)
    return query


async def all_quality_samples(
    session: AsyncSession, tenant_id: str, session_id: str
) -> list[QualitySampleRow]:
    rows = await session.scalars(
        quality_samples(tenant_id, session_id).order_by(
            QualitySampleRow.sample_time, QualitySampleRow.id
        )
    )
    return list(rows.all())
