"""Queries of the data-and-integrations area: batched appends to the event log, ingest
deduplication, webhook cursors, deliveries and attempts, usage. Never commits: the caller owns
the transaction. Tenant-owned lookups filter on tenant_id."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Select, Table, and_, delete, insert, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from .data_models import (
    IngestedEvent,
    UsageDay,
    WebhookAttemptRow,
    WebhookCursor,
    WebhookDeliveryRow,
)
from .documentation_models import TranscriptSegmentRow
from .models import AttendanceInterval, Event, EventCounter, LiveSession, WebhookEndpoint
from .recording_models import RecordingRow
from .types import UTCDateTime


def _upsert(session: AsyncSession):
    return pg_insert if session.bind.dialect.name == "postgresql" else sqlite_insert


# The event log, in batches ---------------------------------------------------------------------


async def existing_sessions(
    session: AsyncSession, tenant_id: str, session_ids: Collection[str]
) -> set[str]:
    if not session_ids:
        return set()
    query = select(LiveSession.id).where(
        LiveSession.tenant_id == tenant_id, LiveSession.id.in_(list(session_ids))
    )
    return set((await session.scalars(query)).all())


async def ingested(
    session: AsyncSession, tenant_id: str, client_event_ids: Collection[str]
) -> dict[str, IngestedEvent]:
    if not client_event_ids:
        return {}
    query = select(IngestedEvent).where(
        IngestedEvent.tenant_id == tenant_id,
        IngestedEvent.client_event_id.in_(list(client_event_ids)),
    )
    return {row.client_event_id: row for row in (await session.scalars(query)).all()}


async def append_events(session: AsyncSession, rows: Sequence[tuple]) -> None:
    """Inserts event rows, tuples in the column order of `events` (EVENT_COLUMNS)."""
    await _insert_many(session, Event.__table__, rows)


async def record_ingested(session: AsyncSession, rows: Sequence[tuple]) -> None:
    """Inserts deduplication records, tuples in the column order of `ingested_events`
    (INGESTED_COLUMNS)."""
    await _insert_many(session, IngestedEvent.__table__, rows)


EVENT_COLUMNS = tuple(c.name for c in Event.__table__.columns)
INGESTED_COLUMNS = tuple(c.name for c in IngestedEvent.__table__.columns)
# (dialect name, table name) -> the compiled INSERT, and (index, converter) of its UTC columns
_INSERTS: dict[tuple[str, str], tuple[str, list[tuple[int, Any]]]] = {}


async def _insert_many(session: AsyncSession, table: Table, rows: Sequence[tuple]) -> None:
    """One executemany of plain tuples, the path of bulk appends (ingest, imports, every unit
    of work's events).

    The INSERT is compiled once per dialect. The other values go to the driver as they are;
    only UTC datetimes go through their column type's conversion, once per distinct value (a
    batch shares one timestamp). SQLAlchemy's executemany of dictionaries rebuilt and converted
    every parameter of every row, which cost more than the database's own work.
    """
    if not rows:
        return
    dialect = session.bind.dialect
    key = (dialect.name, table.name)
    prepared = _INSERTS.get(key)
    if prepared is None:
        compiled = insert(table).compile(dialect=dialect)
        if compiled.positiontup != [c.name for c in table.columns]:
            raise RuntimeError(f"{dialect.name}: positional INSERT expected for {table.name}")
        converting = [
            (i, c.type.dialect_impl(dialect).bind_processor(dialect))
            for i, c in enumerate(table.columns)
            if isinstance(c.type, UTCDateTime)
        ]
        prepared = _INSERTS[key] = (str(compiled), converting)
    sql, converting = prepared
    if converting:
        memo: dict = {}
        converted = []
        for row in rows:
            values = list(row)
            for i, process in converting:
                value = values[i]
                try:
                    values[i] = memo[value]
                except KeyError:
                    values[i] = memo[value] = process(value)
            converted.append(tuple(values))
        rows = converted
    connection = await session.connection()
    await connection.exec_driver_sql(sql, list(rows))


async def purge_ingested(session: AsyncSession, before: datetime, limit: int) -> int:
    """Deletes at most `limit` deduplication records committed before `before`, oldest first.

    Bounded so that one transaction never holds SQLite's write lock for long. SKIP LOCKED lets
    replicas purging at the same time take disjoint rows on PostgreSQL (SQLite ignores it).
    """
    oldest = (
        select(IngestedEvent.tenant_id, IngestedEvent.client_event_id)
        .where(IngestedEvent.create_time < before)
        .order_by(IngestedEvent.create_time)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    result = await session.execute(
        delete(IngestedEvent).where(
            tuple_(IngestedEvent.tenant_id, IngestedEvent.client_event_id).in_(oldest)
        )
    )
    return result.rowcount or 0


# Webhook delivery -------------------------------------------------------------------------------


async def endpoints_without_cursor(session: AsyncSession, limit: int) -> list[WebhookEndpoint]:
    query = (
        select(WebhookEndpoint)
        .outerjoin(WebhookCursor, WebhookCursor.endpoint_id == WebhookEndpoint.id)
        .where(WebhookCursor.endpoint_id.is_(None), WebhookEndpoint.enabled.is_(True))
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


async def events_of_type_desc(
    session: AsyncSession, tenant_id: str, event_type: str, limit: int
) -> list[Event]:
    query = (
        select(Event)
        .where(Event.tenant_id == tenant_id, Event.type == event_type)
        .order_by(Event.sequence.desc())
        .limit(limit)
    )
    return list((await session.scalars(query)).all())


async def create_cursor(
    session: AsyncSession, endpoint_id: str, tenant_id: str, last_sequence: int, now: datetime
) -> None:
    await session.execute(
        _upsert(session)(WebhookCursor)
        .values(
            endpoint_id=endpoint_id,
            tenant_id=tenant_id,
            last_sequence=last_sequence,
            next_attempt_time=now,
        )
        .on_conflict_do_nothing()
    )


async def claim_endpoints(
    session: AsyncSession,
    owner: str,
    now: datetime,
    lease_until: datetime,
    limit: int,
    exclude: Collection[str] = (),
) -> list[str]:
    """Leases up to `limit` enabled endpoints that have work: events past their cursor, or a
    delivery due. SKIP LOCKED lets replicas claim disjoint endpoints on PostgreSQL; SQLite has
    one writer, so the plain update is already exclusive."""
    query = (
        select(WebhookCursor.endpoint_id)
        .join(
            WebhookEndpoint,
            and_(WebhookEndpoint.id == WebhookCursor.endpoint_id, WebhookEndpoint.enabled),
        )
        .outerjoin(
            EventCounter,
            and_(EventCounter.tenant_id == WebhookCursor.tenant_id, EventCounter.stream == ""),
        )
        .where(
            or_(WebhookCursor.lease_until.is_(None), WebhookCursor.lease_until < now),
            or_(
                EventCounter.last_sequence > WebhookCursor.last_sequence,
                WebhookCursor.next_attempt_time <= now,
            ),
        )
        .limit(limit)
        .with_for_update(skip_locked=True, of=WebhookCursor)
    )
    if exclude:
        query = query.where(WebhookCursor.endpoint_id.not_in(list(exclude)))
    ids = list((await session.scalars(query)).all())
    if ids:
        await session.execute(
            update(WebhookCursor)
            .where(WebhookCursor.endpoint_id.in_(ids))
            .values(lease_owner=owner, lease_until=lease_until)
        )
    return ids


async def owned_cursor(session: AsyncSession, endpoint_id: str, owner: str) -> WebhookCursor | None:
    """The cursor if `owner` still holds its lease, locked until the caller's commit."""
    query = (
        select(WebhookCursor)
        .where(WebhookCursor.endpoint_id == endpoint_id, WebhookCursor.lease_owner == owner)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return await session.scalar(query)


async def release_cursors(
    session: AsyncSession, owner: str, endpoint_ids: Collection[str] | None = None
) -> None:
    query = update(WebhookCursor).where(WebhookCursor.lease_owner == owner)
    if endpoint_ids is not None:
        query = query.where(WebhookCursor.endpoint_id.in_(list(endpoint_ids)))
    await session.execute(query.values(lease_owner=None, lease_until=None))


async def get_cursor(session: AsyncSession, endpoint_id: str) -> WebhookCursor | None:
    return await session.get(WebhookCursor, endpoint_id)


async def tenant_heads(session: AsyncSession) -> dict[str, int]:
    """The log head of every tenant that has a webhook cursor."""
    query = select(EventCounter.tenant_id, EventCounter.last_sequence).where(
        EventCounter.stream == "",
        EventCounter.tenant_id.in_(select(WebhookCursor.tenant_id).distinct()),
    )
    return {tenant: head for tenant, head in (await session.execute(query)).all()}


async def events_for_endpoint(
    session: AsyncSession, tenant_id: str, after: int, types: Collection[str], limit: int
) -> list[tuple[str, str, int]]:
    """(id, type, sequence) of the events after a cursor that pass an endpoint's filter."""
    query = select(Event.id, Event.type, Event.sequence).where(
        Event.tenant_id == tenant_id, Event.sequence > after
    )
    if types:
        query = query.where(Event.type.in_(list(types)))
    rows = await session.execute(query.order_by(Event.sequence).limit(limit))
    return [tuple(r) for r in rows.all()]


async def insert_deliveries(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        await session.execute(insert(WebhookDeliveryRow.__table__), list(rows))


async def head_of_line(
    session: AsyncSession, endpoint_id: str, pending: int
) -> WebhookDeliveryRow | None:
    """The endpoint's oldest pending delivery: deliveries go out in event sequence order."""
    query = (
        select(WebhookDeliveryRow)
        .where(WebhookDeliveryRow.endpoint_id == endpoint_id, WebhookDeliveryRow.state == pending)
        .order_by(
            WebhookDeliveryRow.event_sequence,
            WebhookDeliveryRow.create_time,
            WebhookDeliveryRow.id,
        )
        .limit(1)
        .execution_options(populate_existing=True)
    )
    return await session.scalar(query)


async def get_delivery(session: AsyncSession, delivery_id: str) -> WebhookDeliveryRow | None:
    query = (
        select(WebhookDeliveryRow)
        .where(WebhookDeliveryRow.id == delivery_id)
        .execution_options(populate_existing=True)
    )
    return await session.scalar(query)


async def fail_pending(
    session: AsyncSession, endpoint_id: str, pending: int, failed: int, now: datetime
) -> None:
    await session.execute(
        update(WebhookDeliveryRow)
        .where(WebhookDeliveryRow.endpoint_id == endpoint_id, WebhookDeliveryRow.state == pending)
        .values(state=failed, next_attempt_time=None, update_time=now)
    )


async def add_attempt(session: AsyncSession, **values: Any) -> None:
    await session.execute(insert(WebhookAttemptRow).values(**values))


async def get_event_row(session: AsyncSession, tenant_id: str, event_id: str) -> Event | None:
    return await session.scalar(
        select(Event).where(Event.tenant_id == tenant_id, Event.id == event_id)
    )


def deliveries(tenant_id: str, endpoint_id: str, state: int = 0) -> Select:
    query = select(WebhookDeliveryRow).where(
        WebhookDeliveryRow.tenant_id == tenant_id, WebhookDeliveryRow.endpoint_id == endpoint_id
    )
    if state:
        query = query.where(WebhookDeliveryRow.state == state)
    return query


async def attempts_of(
    session: AsyncSession, delivery_ids: Collection[str]
) -> dict[str, list[WebhookAttemptRow]]:
    found: dict[str, list[WebhookAttemptRow]] = {d: [] for d in delivery_ids}
    if not delivery_ids:
        return found
    query = (
        select(WebhookAttemptRow)
        .where(WebhookAttemptRow.delivery_id.in_(list(delivery_ids)))
        .order_by(WebhookAttemptRow.delivery_id, WebhookAttemptRow.attempt_time)
    )
    for row in (await session.scalars(query)).all():
        found[row.delivery_id].append(row)
    return found


# Usage ------------------------------------------------------------------------------------------


async def add_api_calls(session: AsyncSession, tenant_id: str, day: datetime, count: int) -> None:
    stmt = _upsert(session)(UsageDay).values(tenant_id=tenant_id, day=day, api_calls=count)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["tenant_id", "day"],
            set_={"api_calls": UsageDay.api_calls + stmt.excluded.api_calls},
        )
    )


async def usage_days(
    session: AsyncSession, tenant_id: str, start: datetime, end: datetime
) -> list[UsageDay]:
    query = select(UsageDay).where(
        UsageDay.tenant_id == tenant_id, UsageDay.day >= start, UsageDay.day < end
    )
    return list((await session.scalars(query)).all())


async def live_spans(
    session: AsyncSession, tenant_id: str, start: datetime, end: datetime
) -> list[tuple[datetime, datetime | None]]:
    """(live_time, end_time) of the tenant's main sessions that were live inside [start, end)."""
    query = select(LiveSession.live_time, LiveSession.end_time).where(
        LiveSession.tenant_id == tenant_id,
        LiveSession.parent_session_id.is_(None),
        LiveSession.live_time.is_not(None),
        LiveSession.live_time < end,
        or_(LiveSession.end_time.is_(None), LiveSession.end_time > start),
    )
    return [tuple(r) for r in (await session.execute(query)).all()]


async def attendance_spans(
    session: AsyncSession, tenant_id: str, start: datetime, end: datetime
) -> list[tuple[datetime, datetime | None]]:
    """(join_time, leave_time) of every attendance interval overlapping [start, end)."""
    query = select(AttendanceInterval.join_time, AttendanceInterval.leave_time).where(
        AttendanceInterval.tenant_id == tenant_id,
        AttendanceInterval.join_time < end,
        or_(AttendanceInterval.leave_time.is_(None), AttendanceInterval.leave_time > start),
    )
    return [tuple(r) for r in (await session.execute(query)).all()]


async def recording_spans(
    session: AsyncSession, tenant_id: str, start: datetime, end: datetime
) -> list[tuple[str, datetime, datetime | None]]:
    """(id, start_time, stop_time) of the tenant's recordings that ran inside [start, end)."""
    query = select(RecordingRow.id, RecordingRow.start_time, RecordingRow.stop_time).where(
        RecordingRow.tenant_id == tenant_id,
        RecordingRow.start_time < end,
        or_(RecordingRow.stop_time.is_(None), RecordingRow.stop_time > start),
    )
    return [tuple(r) for r in (await session.execute(query)).all()]


async def existing_recording_ids(
    session: AsyncSession, tenant_id: str, recording_ids: Collection[str]
) -> set[str]:
    if not recording_ids:
        return set()
    query = select(RecordingRow.id).where(
        RecordingRow.tenant_id == tenant_id, RecordingRow.id.in_(list(recording_ids))
    )
    return set((await session.scalars(query)).all())


async def event_payloads_after(
    session: AsyncSession, tenant_id: str, event_type: str, after: datetime
) -> list[tuple[datetime, bytes]]:
    """(occur_time, payload) of the tenant's events of `event_type` that occurred after `after`."""
    query = select(Event.occur_time, Event.payload).where(
        Event.tenant_id == tenant_id, Event.type == event_type, Event.occur_time > after
    )
    return [tuple(r) for r in (await session.execute(query)).all()]


async def transcribed_spans(
    session: AsyncSession, tenant_id: str, start: datetime, end: datetime
) -> list[tuple[str, str, datetime, datetime]]:
    """(room id, track id, start_time, end_time) of the final transcript segments overlapping
    [start, end)."""
    seg = TranscriptSegmentRow
    query = select(seg.session_id, seg.track_id, seg.start_time, seg.end_time).where(
        seg.tenant_id == tenant_id, seg.start_time < end, seg.end_time > start
    )
    return [tuple(r) for r in (await session.execute(query)).all()]
