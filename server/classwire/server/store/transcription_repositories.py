"""Queries of live transcription and its transcripts (the documentation area's `transcriptions`,
`transcription_tracks` and `transcript_segments`), and the clean-up of partial captions in the
event log. Repositories never commit: the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from .documentation_models import TranscriptionRow, TranscriptionTrackRow, TranscriptSegmentRow
from .models import Event, LiveSession


async def get_transcription(
    session: AsyncSession, room_id: str, *, lock: bool = False
) -> TranscriptionRow | None:
    """The room's transcription row (rooms have globally unique ids); callers check the tenant
    or have checked the room."""
    return await session.get(TranscriptionRow, room_id, with_for_update=lock or None)


async def get_track(
    session: AsyncSession, room_id: str, track_id: str, *, lock: bool = False
) -> TranscriptionTrackRow | None:
    return await session.get(
        TranscriptionTrackRow, (room_id, track_id), with_for_update=lock or None
    )


async def tracks_of(
    session: AsyncSession, tenant_id: str, room_id: str
) -> list[TranscriptionTrackRow]:
    """The room's recognized tracks, by track id."""
    rows = await session.scalars(
        select(TranscriptionTrackRow)
        .where(
            TranscriptionTrackRow.tenant_id == tenant_id,
            TranscriptionTrackRow.session_id == room_id,
        )
        .order_by(TranscriptionTrackRow.track_id)
    )
    return list(rows.all())


async def count_final_caption(
    session: AsyncSession, room_id: str, track_id: str, now: datetime
) -> None:
    """One more final caption on the track; the room's transcription changed at `now`."""
    await session.execute(
        update(TranscriptionTrackRow)
        .where(
            TranscriptionTrackRow.session_id == room_id,
            TranscriptionTrackRow.track_id == track_id,
        )
        .values(final_caption_count=TranscriptionTrackRow.final_caption_count + 1, update_time=now)
    )
    await session.execute(
        update(TranscriptionRow)
        .where(TranscriptionRow.session_id == room_id)
        .values(update_time=now)
    )


async def delete_caption_events(
    session: AsyncSession, tenant_id: str, event_ids: Collection[str]
) -> None:
    """Deletes partial captions a final caption replaced."""
    await session.execute(
        delete(Event).where(Event.tenant_id == tenant_id, Event.id.in_(list(event_ids)))
    )


async def delete_room_events_of_type(
    session: AsyncSession, tenant_id: str, room_id: str, event_type: str
) -> None:
    """Deletes the room's events of one type (partial captions left over at the end)."""
    await session.execute(
        delete(Event).where(
            Event.tenant_id == tenant_id, Event.session_id == room_id, Event.type == event_type
        )
    )


async def in_progress_of_ended_rooms(
    session: AsyncSession, in_progress: int, ended_states: Sequence[int]
) -> list[tuple[str, str]]:
    """(tenant id, room id) of every tenant's transcripts still `in_progress` whose room is in
    one of `ended_states` (start-up catch-up)."""
    rows = await session.execute(
        select(TranscriptionRow.tenant_id, TranscriptionRow.session_id)
        .join(LiveSession, LiveSession.id == TranscriptionRow.session_id)
        .where(
            TranscriptionRow.transcript_state == in_progress,
            LiveSession.state.in_(list(ended_states)),
        )
    )
    return [(tenant_id, room_id) for tenant_id, room_id in rows.all()]


async def rooms_without_transcription(session: AsyncSession, state: int) -> list[tuple[str, str]]:
    """(tenant id, room id) of every tenant's rooms in `state` that never ran transcription."""
    rows = await session.execute(
        select(LiveSession.tenant_id, LiveSession.id)
        .outerjoin(TranscriptionRow, TranscriptionRow.session_id == LiveSession.id)
        .where(LiveSession.state == state, TranscriptionRow.session_id.is_(None))
    )
    return [(tenant_id, room_id) for tenant_id, room_id in rows.all()]


async def segments_page(
    session: AsyncSession,
    tenant_id: str,
    room_id: str,
    identities: Collection[str],
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[TranscriptSegmentRow]:
    """The room's segments by (start time, id) after the cursor `after`, of these speakers
    only when `identities` is not empty."""
    query = select(TranscriptSegmentRow).where(
        TranscriptSegmentRow.tenant_id == tenant_id,
        TranscriptSegmentRow.session_id == room_id,
    )
    if identities:
        query = query.where(TranscriptSegmentRow.identity.in_(sorted(set(identities))))
    if after is not None:
        at, last_id = after
        query = query.where(
            (TranscriptSegmentRow.start_time > at)
            | ((TranscriptSegmentRow.start_time == at) & (TranscriptSegmentRow.id > last_id))
        )
    query = query.order_by(TranscriptSegmentRow.start_time, TranscriptSegmentRow.id).limit(limit)
    return list((await session.scalars(query)).all())


async def segment_totals(
    session: AsyncSession, tenant_id: str, room_id: str
) -> tuple[int, int, list[str]]:
    """(segment count, milliseconds of speech, distinct languages) of the room's transcript."""
    of_room = (
        TranscriptSegmentRow.tenant_id == tenant_id,
        TranscriptSegmentRow.session_id == room_id,
    )
    speech = func.sum(TranscriptSegmentRow.end_offset_ms - TranscriptSegmentRow.start_offset_ms)
    totals = select(func.count(TranscriptSegmentRow.id), func.coalesce(speech, 0))
    count, speech_ms = (await session.execute(totals.where(*of_room))).one()
    languages = await session.scalars(
        select(TranscriptSegmentRow.language).where(*of_room).distinct()
    )
    return int(count or 0), int(speech_ms or 0), list(languages.all())
