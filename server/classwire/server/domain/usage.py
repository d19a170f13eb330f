"""Usage metering per tenant and UTC day (PlatformService.GetUsage).

- API calls: counted in memory per (tenant, UTC day) by the platform's `ApiCallMeter` and added
  to the `usage_days` rollup by a background flush, so the hot path never writes to the database.
  The count is fed by the RPC interceptor (one call per authenticated RPC); counts not yet
  flushed when a process is killed are lost (at most one flush interval).
- Session minutes (wall-clock minutes with at least one main session live, overlaps counted
  once) and participant minutes (the sum of attendance intervals) come from the session
  lifecycle rows (`sessions.live_time/end_time`, `attendance_intervals`) that the session events
  are written with; days before those capabilities record them read as zero. A session or
  participant still live counts up to now.
- Recording minutes: each recording's duration (the `Recording.duration` the API reports, its
  start-to-stop wall-clock span), split over UTC days by that span; a recording still running
  counts up to now. Metering is what was consumed, so every recording counts, whatever became of
  it: failed ones from the `recordings` rows (their stop time), deleted ones from their
  RecordingStopped event in the durable log (it carries the stop time and the duration, and
  deleting a recording removes its rows but never the log). Concurrent recordings (a session and
  its breakout rooms) each count. Known gap: a recording whose recorder was lost by a server
  restart and that is then deleted never had a stop event, so it no longer counts.
- Transcription minutes: the audio minutes the engine turned into final text, per audio track:
  the wall-clock spans of the stored transcript segments (`transcript_segments`; the recognizer
  maps the audio it was fed to wall-clock time), overlaps within one track counted once, tracks
  summed. Segments are what the store really holds per track: a room's `transcriptions` row
  keeps only its latest start/stop (a restart overwrites it) and knows no tracks, and
  `transcription_tracks` rows have no start time. Silence between utterances is therefore not
  metered, and segments are never deleted, so a track's minutes never shrink.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

import structlog
from google.protobuf.message import DecodeError

from classwire.api.events.v1 import event_pb2
from classwire.api.events.v1 import media_events_pb2 as mev

from ..store import data_repositories as data_repo
from ..store.engine import Database
from ..store.types import utcnow
from .auth import Principal
from .errors import FieldViolation, InvalidArgument, Violations

MAX_DAYS = 400
RECORDING_STOPPED = mev.RecordingStopped.DESCRIPTOR.full_name
log = structlog.get_logger(__name__)


def day_of(moment: datetime) -> datetime:
    return datetime.combine(moment.astimezone(UTC).date(), time(), tzinfo=UTC)


class ApiCallMeter:
    """In-memory API call counts, flushed into the rollup table."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, datetime]] = Counter()

    def count(self, tenant_id: str) -> None:
        if tenant_id:
            self._counts[(tenant_id, day_of(utcnow()))] += 1

    async def flush(self, db: Database) -> None:
        if not self._counts:
            return
        counts, self._counts = self._counts, Counter()
        try:
            async with db.writer() as session, session.begin():
                for (tenant_id, day), n in sorted(counts.items()):
                    await data_repo.add_api_calls(session, tenant_id, day, n)
        except Exception:
            self._counts.update(counts)  # kept for the next flush
            raise

    async def run(self, db: Database, interval: float = 5.0) -> None:
        try:
            while True:
                await asyncio.sleep(interval)
                try:
                    await self.flush(db)
                except Exception:
                    log.warning("usage flush failed; retrying", exc_info=True)
        finally:
            with contextlib.suppress(Exception):
                await self.flush(db)


@dataclass
class UsageDayView:
    day: datetime
    session_minutes: float = 0.0
    participant_minutes: float = 0.0
    recording_minutes: float = 0.0
    transcription_minutes: float = 0.0
    api_calls: int = 0


def _minutes_per_day(
    spans: list[tuple[datetime, datetime]], days: dict[datetime, UsageDayView], attr: str
) -> None:
    for start, end in spans:
        day = day_of(start)
        while day < end:
            view = days.get(day)
            following = day + timedelta(days=1)
            if view is not None:
                overlap = (min(end, following) - max(start, day)).total_seconds()
                if overlap > 0:
                    setattr(view, attr, getattr(view, attr) + overlap / 60)
            day = following


def _union(spans: list[tuple[datetime, datetime]]) -> list[tuple[datetime, datetime]]:
    merged: list[tuple[datetime, datetime]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _stopped_recordings(
    stops: list[tuple[datetime, bytes]],
) -> dict[str, tuple[datetime, datetime]]:
    """Recording id -> (start, stop) from RecordingStopped events (stop minus duration)."""
    spans: dict[str, tuple[datetime, datetime]] = {}
    for occur_time, payload in stops:
        try:
            stopped = event_pb2.Event.FromString(payload).media.recording_stopped
        except DecodeError:
            log.warning("unreadable RecordingStopped event skipped in usage")
            continue
        if stopped.recording_id:
            duration = stopped.duration.ToTimedelta()
            spans[stopped.recording_id] = (occur_time - duration, occur_time)
    return spans


class UsageDomain:
    def __init__(self, db: Database, meter: ApiCallMeter) -> None:
        self.db = db
        self.meter = meter

    async def get_usage(
        self, principal: Principal, start: datetime | None, end: datetime | None
    ) -> list[UsageDayView]:
        principal.require("platform:read")
        problems = Violations()
        if start is None:
            problems.add("start_time", "is required")
        if end is None:
            problems.add("end_time", "is required")
        problems.raise_if_any()
        first, last = day_of(start), day_of(end)
        if last <= first:
            raise InvalidArgument(FieldViolation("end_time", "must be on a later UTC day"))
        if (last - first).days > MAX_DAYS:
            raise InvalidArgument(
                FieldViolation("end_time", f"the range may cover at most {MAX_DAYS} days")
            )
        # This replica's latest counts are included; other replicas' within a flush interval.
        with contextlib.suppress(Exception):
            await self.meter.flush(self.db)
        days = {
            first + timedelta(days=n): UsageDayView(first + timedelta(days=n))
            for n in range((last - first).days)
        }
        now = utcnow()
        async with self.db.reader() as session:
            for row in await data_repo.usage_days(session, principal.tenant_id, first, last):
                days[day_of(row.day)].api_calls = row.api_calls
            live = await data_repo.live_spans(session, principal.tenant_id, first, last)
            attended = await data_repo.attendance_spans(session, principal.tenant_id, first, last)
            recorded = await data_repo.recording_spans(session, principal.tenant_id, first, last)
            deleted = await self._deleted_recordings(
                session, principal.tenant_id, first, last, {r[0] for r in recorded}
            )
            transcribed = await data_repo.transcribed_spans(
                session, principal.tenant_id, first, last
            )
        clip = min(now, last)
        live_spans = [(s, min(e or clip, last)) for s, e in live]
        _minutes_per_day(
            _union([(max(s, first), e) for s, e in live_spans]), days, "session_minutes"
        )
        _minutes_per_day(
            [(max(s, first), min(e or clip, last)) for s, e in attended],
            days,
            "participant_minutes",
        )
        _minutes_per_day(
            [(max(s, first), min(e or clip, last)) for _, s, e in recorded] + deleted,
            days,
            "recording_minutes",
        )
        per_track: defaultdict[tuple[str, str], list[tuple[datetime, datetime]]] = defaultdict(list)
        for room_id, track_id, s, e in transcribed:
            per_track[(room_id, track_id)].append((max(s, first), min(e, last)))
        for spans in per_track.values():
            _minutes_per_day(_union(spans), days, "transcription_minutes")
        return [days[d] for d in sorted(days)]

    @staticmethod
    async def _deleted_recordings(
        session, tenant_id: str, first: datetime, last: datetime, kept: set[str]
    ) -> list[tuple[datetime, datetime]]:
        """Spans inside [first, last) of the recordings deleted since: only their stop events
        are left. Every stop after `first` is read, as a start is known only from the payload."""
        stops = await data_repo.event_payloads_after(session, tenant_id, RECORDING_STOPPED, first)
        candidates = {
            recording_id: span
            for recording_id, span in _stopped_recordings(stops).items()
            if recording_id not in kept and span[0] < last
        }
        existing = await data_repo.existing_recording_ids(session, tenant_id, candidates)
        return [
            (max(start, first), min(stop, last))
            for recording_id, (start, stop) in candidates.items()
            if recording_id not in existing
        ]
