"""Queries of the recording area. Repositories never commit: the caller owns the transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import Select, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from .models import LiveSession
from .recording_models import RecordingFileRow, RecordingRow


async def get_recording(
    session: AsyncSession, tenant_id: str, recording_id: str, *, lock: bool = False
) -> RecordingRow | None:
    query = select(RecordingRow).where(
        RecordingRow.tenant_id == tenant_id, RecordingRow.id == recording_id
    )
    if lock:
        query = query.with_for_update()
    return await session.scalar(query)


async def active_recording(
    session: AsyncSession, tenant_id: str, room_id: str, active_states: Sequence[int]
) -> RecordingRow | None:
    return await session.scalar(
        select(RecordingRow)
        .where(
            RecordingRow.tenant_id == tenant_id,
            RecordingRow.session_id == room_id,
            RecordingRow.state.in_(list(active_states)),
        )
        .order_by(RecordingRow.start_time.desc())
        .limit(1)
    )


def recordings(
    tenant_id: str,
    session_id: str,
    states: Sequence[int],
    start_from: datetime | None,
    start_to: datetime | None,
) -> Select:
    query = select(RecordingRow).where(RecordingRow.tenant_id == tenant_id)
    if session_id:
        query = query.where(RecordingRow.session_id == session_id)
    if states:
        query = query.where(RecordingRow.state.in_(sorted(set(states))))
    if start_from is not None:
        query = query.where(RecordingRow.start_time >= start_from)
    if start_to is not None:
        query = query.where(RecordingRow.start_time < start_to)
    return query


async def files_of(
    session: AsyncSession, tenant_id: str, recording_ids: Sequence[str]
) -> dict[str, list[RecordingFileRow]]:
    out: dict[str, list[RecordingFileRow]] = {r: [] for r in recording_ids}
    if not recording_ids:
        return out
    rows = await session.scalars(
        select(RecordingFileRow)
        .where(
            RecordingFileRow.tenant_id == tenant_id,
            RecordingFileRow.recording_id.in_(list(recording_ids)),
        )
        .order_by(RecordingFileRow.start_time, RecordingFileRow.id)
    )
    for row in rows:
        out[row.recording_id].append(row)
    return out


async def get_file(
    session: AsyncSession, tenant_id: str, recording_id: str, file_id: str
) -> RecordingFileRow | None:
    return await session.scalar(
        select(RecordingFileRow).where(
            RecordingFileRow.tenant_id == tenant_id,
            RecordingFileRow.recording_id == recording_id,
            RecordingFileRow.id == file_id,
        )
    )


async def delete_files(session: AsyncSession, files: Iterable[RecordingFileRow]) -> None:
    """Deletes file rows already loaded (files never finalized)."""
    for row in files:
        await session.delete(row)


async def delete_recording(session: AsyncSession, tenant_id: str, recording_id: str) -> None:
    await session.execute(
        delete(RecordingFileRow).where(
            RecordingFileRow.tenant_id == tenant_id,
            RecordingFileRow.recording_id == recording_id,
        )
    )
    await session.execute(
        delete(RecordingRow).where(
            RecordingRow.tenant_id == tenant_id, RecordingRow.id == recording_id
        )
    )


async def unfinished(session: AsyncSession, states: Sequence[int]) -> list[RecordingRow]:
    """Recordings of every tenant still in one of `states` (start-up recovery)."""
    return list(
        await session.scalars(select(RecordingRow).where(RecordingRow.state.in_(list(states))))
    )


async def recording_ids_of_session(
    session: AsyncSession, tenant_id: str, session_id: str, states: Sequence[int]
) -> list[str]:
    """Ids of the recordings in one of `states` of the session and of its breakout rooms."""
    rows = await session.scalars(
        select(RecordingRow.id)
        .join(LiveSession, LiveSession.id == RecordingRow.session_id)
        .where(
            RecordingRow.tenant_id == tenant_id,
            RecordingRow.state.in_(list(states)),
            (LiveSession.id == session_id) | (LiveSession.parent_session_id == session_id),
        )
    )
    return list(rows.all())
