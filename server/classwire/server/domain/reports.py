"""Post-session reports: the durable build job, reads, rebuilds and rendering.

How a report comes to be, and why it survives restarts:

1. A cursor per tenant over the durable event log (`report_cursors`) finds SessionEnded events.
   In one short transaction it inserts the report row in state PENDING and advances the cursor,
   so a session's end yields exactly one report even across crashes and replicas (the cursor row
   is locked with SKIP LOCKED; the insert ignores an existing row). A cursor is used rather than
   a durable timer because the end of a session is written by the sessions domain's own unit of
   work, and the log already records every way a session ends (request, empty room, overrun,
   parent ended), with no hook to maintain in each of those paths.
2. The report row is the build job. A runner leases due rows (SKIP LOCKED), computes the report
   outside any write transaction (reads only: the single SQLite writer and the tenant's event
   counter are not held while a summarizer runs), and commits the result with
   SessionReportReady in one unit of work. A failure retries with backoff, each attempt
   announced by SessionReportFailed; after MAX_ATTEMPTS the report is FAILED until
   RebuildSessionReport. A builder that dies leaves its lease to lapse and another takes over.
3. A build waits for the session's transcript to be final: transcription flushes its
   recognizers after the end, so building at once could miss the last captions. While any room
   of the session has a transcript IN_PROGRESS, a claimed job goes back to PENDING (not counted
   as an attempt) and is retried shortly. The wait is bounded by `transcript_wait_until`, stored
   on the row at the first such claim, so a restart neither resets nor forgets it; past it the
   report is built with the captions that exist and its note says so.

Everything is computed from the event log and tables, never from a replica's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from classwire.api.common.v1 import common_pb2
from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.events.v1 import data_events_pb2 as dev
from classwire.api.events.v1 import event_pb2

from ..events.outbox import system_actor
from ..plugins.manager import call_provider
from ..plugins.types import ProviderKind, TranscriptSegment
from ..store import report_repositories as rrepo
from ..store import repositories as repo
from ..store.types import utcnow
from . import paging
from .auth import Principal
from .errors import FailedPrecondition, NotFound, Violations
from .ids import new_id
from .reports_build import EVENT_TYPES, HOSTS, LEARNER, Inputs, build, report_people

log = structlog.get_logger(__name__)

PENDING = data_pb.SESSION_REPORT_STATE_PENDING
BUILDING = data_pb.SESSION_REPORT_STATE_BUILDING
READY = data_pb.SESSION_REPORT_STATE_READY
FAILED = data_pb.SESSION_REPORT_STATE_FAILED
SESSION_ENDED = "classwire.api.events.v1.SessionEnded"
ENDED = common_pb2.SESSION_STATE_ENDED
CANCELLED = common_pb2.SESSION_STATE_CANCELLED
MAX_ATTEMPTS = 5
MAX_BACKOFF = timedelta(minutes=10)
TRANSCRIPT_WAIT = timedelta(seconds=60)
TRANSCRIPT_POLL = timedelta(seconds=1)
T_IN_PROGRESS = data_pb.TRANSCRIPT_STATE_IN_PROGRESS
DEFAULT_SUMMARIZER = "extractive"
LEARNER_ROLES = (LEARNER,)
READ, WRITE = "data:read", "data:write"


def _session_not_found(session_id: str) -> NotFound:
    return NotFound(
        f"session {session_id!r} not found",
        reason="SESSION_NOT_FOUND",
        metadata={"session_id": session_id},
    )


@dataclass
class ListFilter:
    class_id: str = ""
    course_id: str = ""
    instructor_identity: str = ""
    learner_identity: str = ""
    state: int = 0
    end_from: datetime | None = None
    end_to: datetime | None = None

    def validate(self) -> None:
        problems = Violations()
        if self.end_from and self.end_to and self.end_from >= self.end_to:
            problems.add("end_time_range", "start_time must be before end_time")
        if self.state and self.state not in (PENDING, BUILDING, READY, FAILED):
            problems.add("state", "not a SessionReportState")
        problems.raise_if_any()

    def fingerprint(self) -> dict:
        return {k: str(v) for k, v in self.__dict__.items()}


class ReportsDomain:
    def __init__(
        self,
        db,
        uow,
        plugins=None,
        config=None,
        *,
        poll_interval: float = 1.0,
        lease: timedelta = timedelta(minutes=2),
        transcript_wait: timedelta = TRANSCRIPT_WAIT,
    ) -> None:
        self.db = db
        self.uow = uow
        self.plugins = plugins
        self.config = config
        self.poll_interval = poll_interval
        self.lease = lease
        self.transcript_wait = transcript_wait
        self.owner = new_id("rpt")
        self._wake = asyncio.Event()
        self._summarizer: Any = None
        self._summarizer_error = ""

    # -- reads --------------------------------------------------------------------------------

    async def _ended_session(self, session, tenant_id: str, session_id: str):
        row = await repo.get_live_session(session, tenant_id, session_id) if session_id else None
        if row is None:
            raise _session_not_found(session_id)
        if row.state == CANCELLED:
            raise FailedPrecondition(
                "the session was cancelled and has no report", reason="SESSION_CANCELLED"
            )
        if row.state != ENDED:
            raise FailedPrecondition("the session has not ended", reason="SESSION_NOT_ENDED")
        return row

    async def get(self, principal: Principal, session_id: str) -> data_pb.SessionReport:
        principal.require(READ)
        async with self.db.reader() as session:
            live = await self._ended_session(session, principal.tenant_id, session_id)
            row = await rrepo.get(session, principal.tenant_id, session_id)
            breakouts = [c.id for c in await repo.child_sessions(session, live.tenant_id, live.id)]
        return _view(live, row, breakouts)

    async def list(
        self, principal: Principal, filters: ListFilter, page_size: int, page_token: str
    ) -> tuple[list[data_pb.SessionReport], str]:
        principal.require(READ)
        filters.validate()
        limit = paging.page_size(page_size)
        after = paging.decode(page_token, filters.fingerprint())
        async with self.db.reader() as session:
            rows = await rrepo.page(
                session,
                principal.tenant_id,
                class_id=filters.class_id,
                course_id=filters.course_id,
                instructor_identity=filters.instructor_identity,
                instructor_roles=HOSTS,
                learner_identity=filters.learner_identity,
                learner_roles=LEARNER_ROLES,
                state=filters.state,
                end_from=filters.end_from,
                end_to=filters.end_to,
                after=after,
                limit=limit,
            )
            lives = await rrepo.sessions_by_id(
                session, principal.tenant_id, [r.session_id for r in rows]
            )
        reports = [_view(lives[r.session_id], r, None) for r in rows if r.session_id in lives]
        token = ""
        if len(rows) == limit:
            token = paging.encode(rows[-1].end_time, rows[-1].session_id, filters.fingerprint())
        return reports, token

    async def ready(self, principal: Principal, session_id: str) -> data_pb.SessionReport:
        """The READY report, for rendering."""
        report = await self.get(principal, session_id)
        if report.state != READY:
            raise FailedPrecondition(
                "the report is not ready yet",
                reason="REPORT_NOT_READY",
                metadata={"state": data_pb.SessionReportState.Name(report.state)},
            )
        return report

    # -- rebuild ------------------------------------------------------------------------------

    async def rebuild(self, principal: Principal, session_id: str) -> data_pb.SessionReport:
        principal.require(WRITE)
        async with self.uow(principal.tenant_id, system_actor("reports")) as uow:
            live = await self._ended_session(uow.session, principal.tenant_id, session_id)
            row = await rrepo.get(uow.session, principal.tenant_id, session_id, lock=True)
            now = utcnow()
            if row is None:
                await rrepo.add_pending(uow.session, _pending_values(live, now))
                row = await rrepo.get(uow.session, principal.tenant_id, session_id)
            elif row.state not in (PENDING, BUILDING):
                row.revision += 1
                row.state = PENDING
                row.attempts = 0
                row.next_attempt_time = now
                row.lease_owner = row.lease_until = None
                row.transcript_wait_until = None
                row.failure_reason = row.failure_message = ""
                row.update_time = now
            breakouts = [
                c.id for c in await repo.child_sessions(uow.session, live.tenant_id, live.id)
            ]
            view = _view(live, row, breakouts)
        self._wake.set()
        return view

    # -- the runner ---------------------------------------------------------------------------

    def start(self) -> asyncio.Task:
        return asyncio.create_task(self.run(), name="session-reports")

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self.run_once()
                    await self._sleep()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("report runner pass failed")
                    await asyncio.sleep(self.poll_interval)
        finally:
            if self._summarizer is not None:
                with contextlib.suppress(Exception):
                    await self._summarizer.close()

    async def _sleep(self) -> None:
        wait = self.poll_interval
        async with self.db.reader() as session:
            upcoming = await rrepo.next_due_time(session, (PENDING,))
        if upcoming is not None:
            wait = max(0.0, min(wait, (upcoming - utcnow()).total_seconds()))
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), wait)

    async def run_once(self) -> int:
        """One pass: new session ends become pending reports, due reports are built."""
        await self.scan()
        built = 0
        while True:
            now = utcnow()
            async with self.db.writer() as session, session.begin():
                claimed = await rrepo.claim_due(
                    session, self.owner, now, now + self.lease, (PENDING, BUILDING), 4
                )
                for row in claimed:
                    row.state = BUILDING
                jobs = [(r.tenant_id, r.session_id, r.revision, r.attempts) for r in claimed]
            if not jobs:
                return built
            for job in jobs:
                await self._build(*job)
                built += 1

    async def scan(self) -> None:
        async with self.db.writer() as session, session.begin():
            heads = await rrepo.tenant_heads(session)
            known = await rrepo.cursors(session)
            await rrepo.ensure_cursors(session, [t for t in heads if t not in known])
        for tenant_id, head in heads.items():
            if head <= known.get(tenant_id, 0):
                continue
            async with self.db.writer() as session, session.begin():
                cursor = await rrepo.lock_cursor(session, tenant_id)
                if cursor is None or cursor.last_sequence >= head:
                    continue  # another replica has it, or got there first
                ended = await rrepo.events_of_type(
                    session, tenant_id, SESSION_ENDED, cursor.last_sequence, head, 500
                )
                now = utcnow()
                ids = {e.session_id for e in ended if e.session_id}
                lives = await rrepo.sessions_by_id(session, tenant_id, ids)
                for event in ended:
                    live = lives.get(event.session_id or "")
                    if live is not None and live.state == ENDED:
                        await rrepo.add_pending(session, _pending_values(live, now))
                cursor.last_sequence = ended[-1].sequence if len(ended) == 500 else head
            self._wake.set()

    async def _transcript_gate(self, tenant_id: str, session_id: str, revision: int):
        """False: the transcript is final (or none ran), build. None: the job was put back to
        wait for it. True: the wait is over and the transcript is still not final."""
        async with self.db.reader() as session:
            children = [c.id for c in await repo.child_sessions(session, tenant_id, session_id)]
            waiting = await rrepo.transcripts_in_state(
                session, tenant_id, [session_id, *children], T_IN_PROGRESS
            )
        if not waiting:
            return False
        async with self.db.writer() as session, session.begin():
            row = await rrepo.get(session, tenant_id, session_id, lock=True)
            if row is None or row.lease_owner != self.owner or row.revision != revision:
                return None
            now = utcnow()
            if row.transcript_wait_until is None:
                row.transcript_wait_until = now + self.transcript_wait
            if now >= row.transcript_wait_until:
                log.warning(
                    "building a report without a final transcript",
                    tenant_id=tenant_id,
                    session_id=session_id,
                    rooms=waiting,
                )
                return True
            row.state = PENDING
            row.attempts = max(0, row.attempts - 1)  # waiting is not a failed attempt
            row.lease_owner = row.lease_until = None
            row.next_attempt_time = min(now + TRANSCRIPT_POLL, row.transcript_wait_until)
            row.update_time = now
        return None

    async def _build(self, tenant_id: str, session_id: str, revision: int, attempt: int) -> None:
        try:
            not_final = await self._transcript_gate(tenant_id, session_id, revision)
            if not_final is None:
                return
            report, note = await self._compute(tenant_id, session_id)
            if not_final:
                note = _transcript_not_final(report, note, self.transcript_wait)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("report build failed", tenant_id=tenant_id, session_id=session_id)
            await self._failed(tenant_id, session_id, revision, attempt, exc)
            return
        async with self.uow(tenant_id, system_actor("reports")) as uow:
            row = await rrepo.get(uow.session, tenant_id, session_id, lock=True)
            if row is None or row.lease_owner != self.owner or row.revision != revision:
                return  # lost the lease, or a rebuild asked for a newer revision
            now = utcnow()
            report.state = READY
            report.revision = revision
            report.generate_time.FromDatetime(now)
            if note is not None:
                report.failure.CopyFrom(note)
                report.failure.attempt_count = attempt
            row.content = report.SerializeToString()
            row.state = READY
            row.generate_time = row.update_time = now
            row.lease_owner = row.lease_until = None
            row.next_attempt_time = None
            row.failure_reason = row.failure_message = ""
            await rrepo.set_people(uow.session, tenant_id, session_id, report_people(report))
            ready = dev.SessionReportReady(
                session_id=session_id,
                revision=revision,
                participant_count=len(report.attendance),
                has_transcript=len(report.transcript.excerpt) > 0,
                summarizer=report.summary.summarizer,
            )
            ready.generate_time.FromDatetime(now)
            uow.emit(ready, session_id=session_id, occur_time=now)

    async def _failed(self, tenant_id, session_id, revision, attempt, exc) -> None:
        message = f"building the report failed ({type(exc).__name__})"
        async with self.uow(tenant_id, system_actor("reports")) as uow:
            row = await rrepo.get(uow.session, tenant_id, session_id, lock=True)
            if row is None or row.lease_owner != self.owner or row.revision != revision:
                return
            now = utcnow()
            row.failure_reason, row.failure_message = "BUILD_FAILED", message
            row.lease_owner = row.lease_until = None
            row.update_time = row.generate_time = now
            event = dev.SessionReportFailed(
                session_id=session_id,
                reason="BUILD_FAILED",
                message=message,
                attempt_count=attempt,
            )
            if attempt >= MAX_ATTEMPTS:
                row.state = FAILED
                row.next_attempt_time = None
            else:
                row.state = PENDING
                backoff = min(MAX_BACKOFF, timedelta(seconds=2**attempt))
                row.next_attempt_time = now + backoff
                event.next_attempt_time.FromDatetime(row.next_attempt_time)
            uow.emit(event, session_id=session_id, occur_time=now)

    async def _compute(self, tenant_id: str, session_id: str):
        async with self.db.reader() as session:
            live = await repo.get_live_session(session, tenant_id, session_id)
            if live is None:
                raise LookupError("the session no longer exists")
            main_id = live.parent_session_id or live.id
            children = [c.id for c in await repo.child_sessions(session, tenant_id, live.id)]
            participants = await repo.participants_list(session, tenant_id, main_id)
            intervals = await repo.attendance_intervals(session, tenant_id, main_id)
            if live.parent_session_id:
                intervals = [i for i in intervals if i.room_session_id == live.id]
                present = {i.participant_id for i in intervals}
                participants = [p for p in participants if p.id in present]
            events: list[event_pb2.Event] = []
            after = 0
            while True:
                batch = await rrepo.session_events(
                    session, tenant_id, [live.id, *children], EVENT_TYPES, after, 2000
                )
                events.extend(event_pb2.Event.FromString(e.payload) for e in batch)
                if len(batch) < 2000:
                    break
                after = batch[-1].sequence
            instructors = (await repo.session_instructors(session, tenant_id, [main_id]))[main_id]
        expected_identities = {p.identity for p in participants}
        expected = {
            identity: (identity, common_pb2.PARTICIPANT_ROLE_INSTRUCTOR)
            for identity in instructors
            if identity not in expected_identities and not live.parent_session_id
        }
        expected_identities |= set(instructors)
        if live.parent_session_id:
            expected_identities = set()  # nobody is expected in a breakout room as such
        from .sessions import SessionSettings  # the sessions domain owns its settings format

        grace = SessionSettings.from_json(live.settings).reconnect_grace or timedelta(seconds=20)
        inputs = Inputs(
            session=live,
            breakout_ids=children,
            participants=participants,
            intervals=intervals,
            events=events,
            reconnect_grace=grace,
            expected=expected,
            expected_identities=expected_identities,
        )
        report, segments = build(inputs, utcnow())
        note = await self._summarize(report, segments)
        return report, note

    # -- the summarizer -------------------------------------------------------------------

    def _summarizer_name(self) -> str:
        providers = getattr(self.config, "providers", None) or {}
        return providers.get(ProviderKind.SUMMARIZER.value) or DEFAULT_SUMMARIZER

    async def _get_summarizer(self):
        """Created on first use, so a server without a summarizer plugin still starts."""
        if self._summarizer is None and self.plugins is not None:
            name = self._summarizer_name()
            config = self.config
            provider = self.plugins.create(
                ProviderKind.SUMMARIZER,
                name,
                data_dir=config.data_dir,
                database_url=config.effective_database_url,
                options=config.provider_options.get(name, {}),
            )
            await provider.start()
            self._summarizer = provider
        return self._summarizer

    async def _summarize(self, report, segments) -> data_pb.SessionReportFailure | None:
        """Fills summary and key terms; a missing or failing summarizer leaves them empty and
        returns a note for the report instead of failing it."""
        if not segments:
            return None
        name = self._summarizer_name()
        language = segments[0].language or "en"
        try:
            summarizer = await self._get_summarizer()
            if summarizer is None:
                raise LookupError("no plugin manager")
            plain = [
                TranscriptSegment(
                    text=s.text,
                    start=s.start_offset.ToTimedelta().total_seconds(),
                    end=s.end_offset.ToTimedelta().total_seconds(),
                    final=True,
                    confidence=s.confidence,
                    language=s.language,
                    speaker=s.display_name or s.identity,
                )
                for s in segments
            ]
            summary = await call_provider(
                ProviderKind.SUMMARIZER, name, "summarize", summarizer.summarize, plain, language
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("summarizer unavailable", summarizer=name, error=str(exc))
            return data_pb.SessionReportFailure(
                reason="SUMMARIZER_FAILED",
                message=f"no summary: the summarizer {name!r} is unavailable or failed",
            )
        text = " ".join(s.text for s in segments).lower()
        terms = list(summary.key_terms)
        for i, term in enumerate(terms):
            report.key_terms.add(
                term=term,
                occurrences=text.count(term.lower()),
                weight=1.0 - i / max(1, len(terms)),
            )
        report.summary.text = summary.text
        report.summary.summarizer = name
        report.summary.language = summary.language or language
        report.summary.generate_time.FromDatetime(utcnow())
        report.summary.highlights.extend(
            s.strip() + "." for s in summary.text.split(".") if s.strip()
        )
        return None


def _transcript_not_final(
    report: data_pb.SessionReport,
    note: data_pb.SessionReportFailure | None,
    waited: timedelta,
) -> data_pb.SessionReportFailure:
    report.transcript.state = T_IN_PROGRESS
    message = (
        f"the transcript was still being recognized {int(waited.total_seconds())} s after the "
        "build first waited for it; the report holds the captions recognized by then"
    )
    if note is not None:
        message += f"; {note.message}"
    return data_pb.SessionReportFailure(reason="TRANSCRIPT_NOT_FINAL", message=message)


def _pending_values(live, now: datetime) -> dict:
    return {
        "session_id": live.id,
        "tenant_id": live.tenant_id,
        "parent_session_id": live.parent_session_id or "",
        "class_id": live.class_id,
        "course_id": live.course_id,
        "end_time": live.end_time or now,
        "state": PENDING,
        "revision": 1,
        "attempts": 0,
        "next_attempt_time": now,
        "failure_reason": "",
        "failure_message": "",
        "update_time": now,
    }


def _view(live, row, breakouts: list[str] | None) -> data_pb.SessionReport:
    """The report as callers see it: the READY content, or the header while it is built."""
    if row is not None and row.state == READY and row.content:
        return data_pb.SessionReport.FromString(row.content)
    report = data_pb.SessionReport(
        session_id=live.id,
        state=row.state if row is not None else PENDING,
        revision=row.revision if row is not None else 1,
        title=live.title,
        class_id=live.class_id,
        course_id=live.course_id,
        parent_session_id=live.parent_session_id or "",
        breakout_session_ids=breakouts or [],
    )
    report.scheduled_start_time.FromDatetime(live.scheduled_start_time)
    report.scheduled_end_time.FromDatetime(live.scheduled_end_time)
    if live.live_time is not None:
        report.start_time.FromDatetime(live.live_time)
    if live.end_time is not None:
        report.end_time.FromDatetime(live.end_time)
    if row is not None:
        if row.generate_time is not None:
            report.generate_time.FromDatetime(row.generate_time)
        if row.failure_reason:
            report.failure.reason = row.failure_reason
            report.failure.message = row.failure_message
            report.failure.attempt_count = row.attempts
    return report


def check_render(format_: int, time_zone: str, locale: str) -> None:
    problems = Violations()
    if format_ not in (data_pb.REPORT_FORMAT_MARKDOWN, data_pb.REPORT_FORMAT_HTML):
        problems.add("format", "set REPORT_FORMAT_MARKDOWN or REPORT_FORMAT_HTML")
    if time_zone:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.add("time_zone", "not an IANA time zone name")
    if locale:
        import re

        if not re.fullmatch(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*", locale):
            problems.add("locale", "not a BCP-47 language tag")
    problems.raise_if_any()


def learner_not_in_session(identity: str) -> NotFound:
    return NotFound(
        f"{identity!r} neither attended nor was expected",
        reason="LEARNER_NOT_IN_SESSION",
        metadata={"learner_identity": identity},
    )
