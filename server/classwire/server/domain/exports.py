"""Record exports (ExportRecords): events, attendance, engagement, transcript segments, session
reports and ratings streamed as JSON Lines or CSV.

Records are read in pages and serialized as they go, so an export of any size streams in bounded
memory. Chunks end on record boundaries. JSON Lines records are the proto3 JSON mapping of the
resource; CSV columns come from the resource's descriptor (nested fields dotted, repeated and map
fields as JSON in one cell), so the column order is fixed by the contract, not by the data.
Events are the exception: their payload varies by type, so an event's CSV row carries the
envelope's fields and the payload as JSON in one `payload` cell.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.events.v1 import data_events_pb2 as dev
from classwire.api.events.v1 import event_pb2

from ..convert.analytics import rating as rating_proto
from ..convert.transcription import segment_to_proto
from ..events.catalogue import unwrap
from ..events.outbox import UnitOfWorkFactory
from ..store import events as events_repo
from ..store import export_repositories as repo
from ..store.engine import Database
from ..store.events import TENANT_STREAM
from .auth import Principal
from .errors import InvalidArgument, OutOfRange, Violations
from .event_log import EventFilter, resolve_filter
from .ids import new_id
from .platform import actor_of

KIND = dev.ExportRecordKind
FORMAT = dev.ExportFormat
CHUNK_BYTES = 64 * 1024
PAGE = 500
MAX_FILTER_VALUES = 500
MEDIA_TYPES = {
    FORMAT.EXPORT_FORMAT_JSON_LINES: "application/jsonl",
    FORMAT.EXPORT_FORMAT_CSV: "text/csv",
}
EVENT_COLUMNS = [
    "id",
    "sequence",
    "session_sequence",
    "type",
    "tenant_id",
    "session_id",
    "occur_time",
    "actor.kind",
    "actor.id",
    "actor.identity",
    "payload",
]
_WELL_KNOWN = {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.Struct"}


def columns_of(descriptor: Descriptor, prefix: str = "") -> list[str]:
    """Dotted CSV columns of a message, in field-number order, with JSON names."""
    out: list[str] = []
    for f in sorted(descriptor.fields, key=lambda f: f.number):
        name = prefix + f.json_name
        if (
            f.type == FieldDescriptor.TYPE_MESSAGE
            and not _is_repeated(f)
            and f.message_type.full_name not in _WELL_KNOWN
        ):
            out.extend(columns_of(f.message_type, name + "."))
        else:
            out.append(name)
    return out


def _is_repeated(f: FieldDescriptor) -> bool:
    # protobuf deprecates `label` for `is_repeated`; runtimes older than that only have `label`.
    repeated = getattr(f, "is_repeated", None)
    if repeated is None:
        return f.label == FieldDescriptor.LABEL_REPEATED
    return bool(repeated() if callable(repeated) else repeated)


def flatten(data: dict, columns: frozenset[str], prefix: str = "") -> dict[str, str]:
    """A JSON record as CSV cells: nested messages dotted down to the known columns; lists,
    maps and the event payload as JSON in one cell."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = prefix + key
        if isinstance(value, dict) and name not in columns:
            out.update(flatten(value, columns, name + "."))
        elif isinstance(value, list | dict):
            out[name] = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        elif isinstance(value, bool):
            out[name] = "true" if value else "false"
        else:
            out[name] = str(value)
    return out


def to_json(message: Message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=False)


@dataclass(frozen=True)
class ExportRequest:
    kind: int
    format: int
    start: datetime | None
    end: datetime | None
    session_ids: tuple[str, ...]
    class_ids: tuple[str, ...]
    identities: tuple[str, ...]
    event_filter: EventFilter
    has_event_filter: bool
    after_sequence: int


@dataclass
class Header:
    export_id: str
    media_type: str
    columns: list[str]


@dataclass
class Trailer:
    record_count: int
    byte_count: int
    sha256: str
    last_sequence: int


class ExportsDomain:
    def __init__(self, db: Database, uow: UnitOfWorkFactory) -> None:
        self.db = db
        self.uow = uow

    def _validate(self, req: ExportRequest):
        problems = Violations()
        if req.kind not in KIND.values() or req.kind == KIND.EXPORT_RECORD_KIND_UNSPECIFIED:
            problems.add("kind", "set one of the ExportRecordKind values")
        if req.format not in MEDIA_TYPES:
            problems.add("format", "set EXPORT_FORMAT_JSON_LINES or EXPORT_FORMAT_CSV")
        if req.start is not None and req.end is not None and req.end <= req.start:
            problems.add("time_range.end_time", "must be after time_range.start_time")
        for name in ("session_ids", "class_ids", "identities"):
            values = getattr(req, name)
            if len(values) > MAX_FILTER_VALUES:
                problems.add(name, f"at most {MAX_FILTER_VALUES} values")
            for i, value in enumerate(values):
                if not value or len(value) > 128:
                    problems.add(f"{name}[{i}]", "must be 1 to 128 characters")
        if req.kind != KIND.EXPORT_RECORD_KIND_EVENTS:
            if req.has_event_filter:
                problems.add("event_filter", "only for kind EXPORT_RECORD_KIND_EVENTS")
            if req.after_sequence:
                problems.add("after_sequence", "only for kind EXPORT_RECORD_KIND_EVENTS")
        resolved = None
        try:
            resolved = resolve_filter(req.event_filter, "event_filter")
        except InvalidArgument as exc:  # merged, so one answer lists every problem
            problems.items.extend(exc.violations)
        problems.raise_if_any()
        return resolved

    async def export(
        self, principal: Principal, req: ExportRequest
    ) -> AsyncIterator[Header | bytes | Trailer]:
        principal.require("data:read")
        resolved = self._validate(req)
        tenant_id = principal.tenant_id
        session_ids = set(req.session_ids)
        async with self.db.reader() as session:
            if req.class_ids:
                of_classes = set(await repo.sessions_of_classes(session, tenant_id, req.class_ids))
                session_ids = (session_ids & of_classes) if session_ids else of_classes
                if not session_ids:
                    session_ids = {""}  # no session matches: export nothing
            head = await events_repo.last_sequence(session, tenant_id, TENANT_STREAM)
        if req.kind == KIND.EXPORT_RECORD_KIND_EVENTS and req.after_sequence > head:
            raise OutOfRange(
                f"after_sequence {req.after_sequence} is beyond the log's last sequence {head}",
                reason="CURSOR_AHEAD_OF_LOG",
                metadata={"head_sequence": str(head)},
            )
        csv_mode = req.format == FORMAT.EXPORT_FORMAT_CSV
        records, columns = self._source(req, tenant_id, tuple(sorted(session_ids)), resolved, head)
        header = Header(new_id("exp"), MEDIA_TYPES[req.format], columns if csv_mode else [])
        yield header
        digest = hashlib.sha256()
        count = size = 0
        state = {"last": req.after_sequence}
        buffer = io.StringIO()
        writer = (
            csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\r\n")
            if csv_mode
            else None
        )
        known = frozenset(columns)
        events_kind = req.kind == KIND.EXPORT_RECORD_KIND_EVENTS
        if writer is not None:
            writer.writeheader()
        async for record in records(state):
            if writer is not None:
                writer.writerow(
                    event_cells(record, known) if events_kind else flatten(record, known)
                )
            else:
                buffer.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False))
                buffer.write("\n")
            count += 1
            if buffer.tell() >= CHUNK_BYTES:
                chunk = buffer.getvalue().encode()
                buffer.seek(0)
                buffer.truncate()
                digest.update(chunk)
                size += len(chunk)
                yield chunk
        chunk = buffer.getvalue().encode()
        if chunk:
            digest.update(chunk)
            size += len(chunk)
            yield chunk
        last = (
            max(state["last"], head)
            if req.kind == KIND.EXPORT_RECORD_KIND_EVENTS and req.end is None
            else state["last"]
        )
        async with self.uow(tenant_id, actor_of(principal)) as uow:
            event = dev.ExportCompleted(
                export_id=header.export_id,
                kind=req.kind,
                format=req.format,
                record_count=count,
                byte_count=size,
            )
            if req.start is not None:
                event.range_start_time.FromDatetime(req.start)
            if req.end is not None:
                event.range_end_time.FromDatetime(req.end)
            uow.emit(event)
        yield Trailer(
            count,
            size,
            digest.hexdigest(),
            last if req.kind == KIND.EXPORT_RECORD_KIND_EVENTS else 0,
        )

    # -- record sources -------------------------------------------------------------------------

    def _source(
        self, req: ExportRequest, tenant_id: str, session_ids: tuple[str, ...], resolved, head: int
    ) -> tuple[Callable[[dict], AsyncIterator[dict]], list[str]]:
        who = set(req.identities)
        kind = req.kind

        if kind == KIND.EXPORT_RECORD_KIND_EVENTS:
            # Both the request's and the event filter's sessions apply: their intersection
            # (no session at all when it is empty).
            scoped = tuple(session_ids or resolved.session_ids)
            if session_ids and resolved.session_ids:
                scoped = tuple(set(session_ids) & set(resolved.session_ids)) or ("",)

            async def fetch_events(session, after: int) -> list:
                rows = await repo.events_page(
                    session,
                    tenant_id,
                    after,
                    PAGE,
                    types=resolved.types,
                    session_ids=scoped,
                    occur_from=req.start,
                    occur_to=req.end,
                )
                # The head read at the start bounds the export: a short page ends it.
                return [r for r in rows if r.sequence <= head]

            async def events(state: dict) -> AsyncIterator[dict]:
                pages = self._pages(fetch_events, lambda row: row.sequence, req.after_sequence)
                async for row in pages:
                    state["last"] = row.sequence
                    envelope = resolved.passes(row)
                    if envelope is None or (who and not _about(envelope, who)):
                        continue
                    yield _event_record(envelope)

            return events, list(EVENT_COLUMNS)

        if kind in (
            KIND.EXPORT_RECORD_KIND_ATTENDANCE,
            KIND.EXPORT_RECORD_KIND_ENGAGEMENT,
            KIND.EXPORT_RECORD_KIND_SESSION_REPORTS,
        ):
            by_end = kind == KIND.EXPORT_RECORD_KIND_SESSION_REPORTS
            if kind == KIND.EXPORT_RECORD_KIND_SESSION_REPORTS:
                columns = columns_of(data_pb.SessionReport.DESCRIPTOR)
            elif kind == KIND.EXPORT_RECORD_KIND_ATTENDANCE:
                columns = ["sessionId", *columns_of(data_pb.ParticipantAttendance.DESCRIPTOR)]
            else:
                columns = ["sessionId", *columns_of(data_pb.ParticipantEngagement.DESCRIPTOR)]

            def fetch_reports(session, after: str):
                return repo.session_reports_page(
                    session,
                    tenant_id,
                    session_ids=session_ids,
                    end_from=req.start if by_end else None,
                    end_to=req.end if by_end else None,
                    after_session_id=after,
                    limit=PAGE,
                )

            async def reports(state: dict) -> AsyncIterator[dict]:
                async for row in self._pages(fetch_reports, lambda row: row.session_id, ""):
                    report = data_pb.SessionReport.FromString(row.content)
                    if kind == KIND.EXPORT_RECORD_KIND_SESSION_REPORTS:
                        yield to_json(report)
                        continue
                    if kind == KIND.EXPORT_RECORD_KIND_ATTENDANCE:
                        keyed = report.scheduled_start_time
                        items = report.attendance
                    else:
                        keyed = report.start_time
                        items = report.engagement
                    if not _in_range(keyed, req.start, req.end):
                        continue
                    for item in items:
                        if who and item.identity not in who:
                            continue
                        yield {"sessionId": report.session_id, **to_json(item)}

            return reports, columns

        # Ratings and transcript segments page by (time, id) with the same filters.
        if kind == KIND.EXPORT_RECORD_KIND_RATINGS:
            source, convert, descriptor = repo.RATINGS, rating_proto, data_pb.Rating.DESCRIPTOR
        else:
            source, convert = repo.TRANSCRIPT_SEGMENTS, segment_to_proto
            descriptor = data_pb.TranscriptSegment.DESCRIPTOR

        def fetch_rows(session, after: tuple[datetime, str] | None):
            return repo.time_keyed_page(
                session,
                source,
                tenant_id,
                session_ids=session_ids,
                identities=who,
                start=req.start,
                end=req.end,
                after=after,
                limit=PAGE,
            )

        async def rows(state: dict) -> AsyncIterator[dict]:
            async for row in self._pages(fetch_rows, source.position, None):
                yield to_json(convert(row))

        return rows, columns_of(descriptor)

    async def _pages(self, fetch, position, after) -> AsyncIterator:
        """Rows page after page, each page read in its own short read transaction: `fetch`
        reads the page after a position, `position` gives where a row leaves the next page to
        start, `after` is the first position. Every export kind reads through this one pager."""
        while True:
            async with self.db.reader() as session:
                rows = await fetch(session, after)
            for row in rows:
                after = position(row)
                yield row
            if len(rows) < PAGE:
                return


def _in_range(keyed, start: datetime | None, end: datetime | None) -> bool:
    if start is None and end is None:
        return True
    if not keyed.seconds and not keyed.nanos:
        return False
    at = keyed.ToDatetime(tzinfo=UTC)
    return (start is None or at >= start) and (end is None or at < end)


def _about(envelope: event_pb2.Event, who: set[str]) -> bool:
    """Whether an event concerns one of these identities (its actor, or the identity fields of
    its payload)."""
    if envelope.actor.identity in who:
        return True
    payload = unwrap(envelope)
    for f in payload.DESCRIPTOR.fields:
        if (
            f.name.endswith("identity")
            and f.type == FieldDescriptor.TYPE_STRING
            and not _is_repeated(f)
        ):
            if getattr(payload, f.name) in who:
                return True
    return False


def _event_record(envelope: event_pb2.Event) -> dict:
    return to_json(envelope)


def event_cells(record: dict, columns: frozenset[str]) -> dict[str, str]:
    """An event's CSV row: the envelope's fields, and its payload (the one area wrapper, for
    example `{"session": {"participantJoined": {...}}}`) as JSON in the `payload` cell."""
    areas = event_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields
    payload = {f.json_name: record.pop(f.json_name) for f in areas if f.json_name in record}
    cells = flatten(record, columns)
    cells["payload"] = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return cells
