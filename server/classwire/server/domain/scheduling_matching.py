"""Instructor matching: one booking (MatchInstructor, AssignInstructor), many at once
(AssignInstructors, stored plans applied by ApplyAssignmentPlan) and unassignment.

The matcher is a provider (`matcher` kind, `cpsat` by default) created lazily by name. Its
problem is built from the tenant's data: roster qualifications and languages, availability
(time off, overrides, buffers), the instructors' other bookings, load limits, the learners'
previous instructors (continuity), preferences and exclusions.

The database stays the judge of the hard rules: every assignment is written after taking the
person locks and re-running the placement checks bookings use, so a plan or a match computed
on data that changed since can never double-book anyone. A plan also records the versions of
the bookings and the person locks it read; applying it refuses (PLAN_STALE) once any changed.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog

from classwire.api.events.v1 import scheduling_events_pb2 as ev
from classwire.api.roster.v1 import resources_pb2 as roster_pb
from classwire.api.scheduling.v1 import resources_pb2 as pb

from ..events.outbox import UnitOfWork
from ..plugins.types import (
    DEFAULT_MATCH_WEIGHTS,
    MATCH_TERMS,
    InstructorCandidate,
    LessonRequest,
    MatchAssignment,
    MatchExplanation,
    MatchPlan,
    MatchProblem,
    MatchStatus,
    TimeInterval,
)
from ..store import scheduling_repositories as srepo
from ..store.scheduling_models import SchedAssignmentPlan, SchedBooking
from ..store.types import utcnow
from .auth import Principal
from .errors import (
    Aborted,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
    Violations,
)
from .idempotency import IdempotencyKey, run_idempotent
from .ids import new_id
from .roster import qualification_pairs
from .scheduling_time import Interval, local_day_bounds, local_week_bounds

log = structlog.get_logger(__name__)

READ, WRITE = "scheduling:read", "scheduling:write"
SCHEDULED, COMPLETED, CANCELLED = (
    pb.BOOKING_STATE_SCHEDULED,
    pb.BOOKING_STATE_COMPLETED,
    pb.BOOKING_STATE_CANCELLED,
)
INSTRUCTOR_BIT = 1 << roster_pb.PERSON_ROLE_INSTRUCTOR
ACTIVE = roster_pb.RECORD_STATE_ACTIVE

MAX_BULK_BOOKINGS = 20_000
MAX_BULK_WINDOW = timedelta(days=31)
MAX_TIME_LIMIT = timedelta(minutes=10)
DEFAULT_TIME_LIMIT = timedelta(seconds=60)
# How long a dry-run plan may still be applied.
PLAN_TTL = timedelta(hours=24)
MAX_ALTERNATIVES = 50

_STATUS = {
    MatchStatus.OPTIMAL: pb.SOLVER_STATUS_OPTIMAL,
    MatchStatus.FEASIBLE: pb.SOLVER_STATUS_FEASIBLE,
    MatchStatus.INFEASIBLE: pb.SOLVER_STATUS_INFEASIBLE,
    MatchStatus.UNKNOWN: pb.SOLVER_STATUS_UNKNOWN,
}


def _seconds(value: Any) -> timedelta | None:
    if value is None:
        return None
    return timedelta(seconds=float(str(value).rstrip("s")))


@dataclass(frozen=True)
class MatchOptionsInput:
    """MatchOptions of a request; `weights` None means the tenant's."""

    matcher: str = ""
    weights: dict[str, float] | None = None
    excluded_instructor_ids: tuple[str, ...] = ()
    instructor_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class LessonSpec:
    """What the matcher needs of a booking (existing or prospective)."""

    booking_id: str
    learner_ids: tuple[str, ...]
    start: datetime
    end: datetime
    subject: str
    level: str


@dataclass
class MatchResult:
    matcher: str
    assignment: MatchAssignment


@dataclass
class Built:
    problem: MatchProblem
    matcher: str
    # instructor id -> (schedule time zone, daily load limit, weekly load limit, busy rows)
    limits: dict[str, tuple] = field(default_factory=dict)
    # person-lock versions of the instructors, read with the data the problem was built from
    versions: dict[str, int] = field(default_factory=dict)


def explanation_json(e: MatchExplanation) -> dict:
    """The explanation in proto JSON form (pb.MatchExplanation field names)."""
    return {
        "constraints": [
            {"name": c.name, "satisfied": c.satisfied, "detail": c.detail} for c in e.constraints
        ]
        or [{"name": name, "satisfied": True, "detail": ""} for name in e.constraints_met],
        "terms": [
            {
                "name": t.name,
                "weight": t.weight,
                "value": t.value,
                "contribution": t.contribution,
                "detail": t.detail,
            }
            for t in e.terms
        ]
        or [
            {"name": k, "weight": 0.0, "value": 0.0, "contribution": v, "detail": ""}
            for k, v in e.score_terms.items()
        ],
        "score": e.score or sum(e.score_terms.values()),
        "summary": e.reason,
    }


def _weights(options: MatchOptionsInput, settings: dict) -> dict[str, float]:
    """The request's weights, else the tenant's, else the matcher defaults. Within a given set
    of weights a missing term is 0 (disabled), as in the proto."""
    chosen = options.weights
    if chosen is None:
        stored = (settings.get("matching") or {}).get("weights")
        if stored is not None:
            chosen = {t: float(stored.get(t, 0.0)) for t in MATCH_TERMS}
            chosen.update({k: float(v) for k, v in (stored.get("custom") or {}).items()})
    if chosen is None:
        return dict(DEFAULT_MATCH_WEIGHTS)
    return {"unassigned": DEFAULT_MATCH_WEIGHTS["unassigned"], **chosen}


def _interval_minutes(start: datetime, end: datetime) -> int:
    return int((end - start).total_seconds() // 60)


class MatchingMixin:
    """Part of SchedulingDomain (db, uow, _scope, _settings, _resolve, _check_placement,
    _person, matcher_factory come from it)."""

    default_matcher = "cpsat"

    # Matcher providers ---------------------------------------------------------------------

    async def matcher(self, name: str, field_path: str = "match.matcher"):
        """The started provider called `name`; created on first use."""
        cache = self.__dict__.setdefault("_matchers", {})
        lock = self.__dict__.setdefault("_matchers_lock", asyncio.Lock())
        if name in cache:
            return cache[name]
        if self.matcher_factory is None:
            raise _matcher_unavailable(name)
        async with lock:
            if name in cache:
                return cache[name]
            try:
                provider = self.matcher_factory(name)
            except LookupError:
                raise InvalidArgument(
                    FieldViolation(field_path, f"no matcher provider {name!r} is installed"),
                    reason="UNKNOWN_MATCHER",
                ) from None
            except Exception:
                log.exception("matcher provider could not be created", matcher=name)
                raise _matcher_unavailable(name) from None
            try:
                await provider.start()
            except Exception:
                log.exception("matcher provider could not start", matcher=name)
                raise _matcher_unavailable(name) from None
            cache[name] = provider
            return provider

    def _matcher_name(self, options: MatchOptionsInput, settings: dict) -> str:
        return (
            options.matcher
            or (settings.get("matching") or {}).get("matcher", "")
            or self.default_matcher
        )

    # Building the problem -----------------------------------------------------------------

    async def _build(
        self,
        session,
        tenant: str,
        lessons: Sequence[LessonSpec],
        options: MatchOptionsInput,
        *,
        reconsidered: Sequence[str] = (),
        excluded: Sequence[str] = (),
        time_limit: timedelta | None = None,
        max_alternatives: int = 5,
    ) -> Built:
        from .scheduling import effective_policy, schedule_of

        settings = await self._settings(session, tenant)
        first = min(lesson.start for lesson in lessons)
        last = max(lesson.end for lesson in lessons)
        # Whole local weeks and days around the lessons, for load limits and buffers.
        span = Interval(first - timedelta(days=8), last + timedelta(days=8))

        learner_ids = sorted({lid for lesson in lessons for lid in lesson.learner_ids})
        learners = {p.id: p for p in await srepo.people(session, tenant, learner_ids)}
        history = await srepo.lesson_history(session, tenant, learner_ids, last)
        # (learner, subject) -> instructor id -> lessons; and the most recent instructor.
        counts: dict[tuple[str, str], Counter] = defaultdict(Counter)
        latest: dict[tuple[str, str], tuple[datetime, str]] = {}
        for lid, subject, iid, start in history:
            key = (lid, subject.strip().lower())
            counts[key][iid] += 1
            if key not in latest or start > latest[key][0]:
                latest[key] = (start, iid)

        wanted = set(options.instructor_ids)
        request_excluded = set(options.excluded_instructor_ids) | set(excluded)
        subjects = {lesson.subject.strip().lower() for lesson in lessons}
        people = [
            p
            for p in await srepo.instructors(session, tenant, INSTRUCTOR_BIT, ACTIVE)
            if (not wanted or p.id in wanted)
            and {s for s, _ in qualification_pairs(p.instructor_profile)} & subjects
        ]
        ids = [p.id for p in people]
        availability = {a.person_id: a for a in await srepo.availabilities(session, tenant, ids)}
        reconsidered_set = set(reconsidered)
        busy_rows: dict[str, list] = defaultdict(list)
        for r in await srepo.busy(session, tenant, ids, span.start, span.end, role=2):
            if r.booking_id not in reconsidered_set:
                busy_rows[r.person_id].append(r)

        limits: dict[str, tuple] = {}
        candidates = []
        for p in people:
            avail = availability.get(p.id)
            schedule = schedule_of(avail, p.time_zone)
            policy = effective_policy(settings, avail.booking_policy if avail else None)
            gap = max(
                _seconds(policy.get("buffer_before")) or timedelta(0),
                _seconds(policy.get("buffer_after")) or timedelta(0),
            )
            profile = p.instructor_profile or {}
            rows = busy_rows.get(p.id, [])
            week = local_week_bounds(first, schedule.time_zone)
            weekly = [
                v
                for v in (
                    _seconds(profile.get("weekly_load_limit")),
                    _seconds((policy.get("weekly_limit") or {}).get("max_booked_time")),
                )
                if v is not None
            ]
            daily = [
                v
                for v in (
                    _seconds(profile.get("daily_load_limit")),
                    _seconds((policy.get("daily_limit") or {}).get("max_booked_time")),
                )
                if v is not None
            ]
            current = sum(
                _interval_minutes(r.start_time, r.end_time)
                for r in rows
                if week.start <= r.start_time < week.end
            )
            weekly_limit = min(weekly) if weekly else None
            limits[p.id] = (
                schedule.time_zone,
                min(daily) if daily else None,
                weekly_limit,
                rows,
                gap,
            )
            target = _seconds(profile.get("weekly_load_target"))
            candidates.append(
                InstructorCandidate(
                    instructor_id=p.id,
                    qualifications=frozenset(qualification_pairs(profile)),
                    available=[TimeInterval(i.start, i.end) for i in schedule.open_intervals(span)],
                    busy=[TimeInterval(r.start_time - gap, r.end_time + gap) for r in rows],
                    languages=frozenset(str(x).lower() for x in profile.get("languages", [])),
                    # Multi-week windows are checked week by week after solving (_repair).
                    load_limit_minutes=int(weekly_limit.total_seconds() // 60)
                    if weekly_limit is not None and (last - first) <= timedelta(days=7)
                    else None,
                    current_load_minutes=current,
                    load_target_minutes=int(target.total_seconds() // 60) if target else None,
                )
            )

        requests = []
        for lesson in lessons:
            subject = lesson.subject.strip().lower()
            languages: list[str] = []
            preferred: list[str] = []
            excluded_ids = set(request_excluded)
            lesson_counts: Counter = Counter()
            previous: tuple[datetime, str] | None = None
            for lid in lesson.learner_ids:
                profile = (learners[lid].learner_profile if lid in learners else None) or {}
                languages.extend(str(x).lower() for x in profile.get("languages", []))
                preferred.extend(profile.get("preferred_instructor_ids", []))
                excluded_ids.update(profile.get("excluded_instructor_ids", []))
                lesson_counts.update(counts.get((lid, subject), Counter()))
                found = latest.get((lid, subject))
                if found and (previous is None or found[0] > previous[0]):
                    previous = found
            languages = list(dict.fromkeys(languages))
            requests.append(
                LessonRequest(
                    booking_id=lesson.booking_id,
                    learner_ids=list(lesson.learner_ids),
                    interval=TimeInterval(lesson.start, lesson.end),
                    subject=subject,
                    level=lesson.level,
                    language=languages[0] if languages else "",
                    other_languages=tuple(languages[1:]),
                    previous_instructor_id=previous[1] if previous else None,
                    preferred_instructor_ids=tuple(dict.fromkeys(preferred)),
                    lesson_history=dict(lesson_counts),
                    excluded_instructor_ids=tuple(sorted(excluded_ids)),
                )
            )
        limit = (
            time_limit
            or _seconds((settings.get("matching") or {}).get("bulk_time_limit"))
            or DEFAULT_TIME_LIMIT
        )
        problem = MatchProblem(
            lessons=requests,
            instructors=candidates,
            weights=_weights(options, settings),
            time_limit_seconds=limit.total_seconds(),
            max_alternatives=max_alternatives,
        )
        previous_ids = await srepo.bookings_by_ids(session, tenant, list(reconsidered))
        versions = await srepo.person_lock_versions(
            session,
            tenant,
            sorted(set(ids) | {r.instructor_id for r in previous_ids if r.instructor_id}),
        )
        return Built(problem, self._matcher_name(options, settings), limits, versions)

    async def _solve_one(self, built: Built) -> MatchAssignment:
        provider = await self.matcher(built.matcher)
        lesson = built.problem.lessons[0]
        try:
            return await provider.match(lesson, built.problem)
        except DomainError:
            raise
        except Exception:
            log.exception("matcher failed", matcher=built.matcher)
            raise _matcher_unavailable(built.matcher) from None

    # MatchInstructor -----------------------------------------------------------------------

    async def match_instructor(
        self,
        principal: Principal,
        ref,
        prospective,
        options: MatchOptionsInput,
        max_alternatives: int,
        include_ineligible: bool,
    ) -> tuple[MatchAssignment, str]:
        principal.require(READ)
        problems = Violations()
        if max_alternatives < 0:
            problems.add("max_alternatives", "must not be negative")
        if ref is None and prospective is None:
            problems.add("target", "name a booking or describe a prospective one")
        if prospective is not None:
            self._validate_prospective(problems, prospective)
        if problems.items:
            raise InvalidArgument(problems.items, reason=getattr(problems, "reason", None))
        tenant = principal.tenant_id
        async with self.db.reader() as session:
            if ref is not None:
                row = await self._resolve(session, tenant, ref)
                lesson = _lesson_of(row)
            else:
                await self._learners(
                    session, tenant, prospective.learner_ids, "prospective_booking.learner_ids"
                )
                lesson = LessonSpec(
                    "",
                    tuple(prospective.learner_ids),
                    prospective.start_time,
                    prospective.end_time,
                    prospective.subject,
                    prospective.level,
                )
            built = await self._build(
                session,
                tenant,
                [lesson],
                options,
                reconsidered=[lesson.booking_id] if lesson.booking_id else [],
                max_alternatives=min(max_alternatives or 5, MAX_ALTERNATIVES),
            )
        result = await self._solve_one(built)
        if not include_ineligible:
            result = MatchAssignment(
                result.booking_id, result.instructor_id, result.explanation, result.alternatives
            )
        else:
            result = MatchAssignment(
                result.booking_id,
                result.instructor_id,
                result.explanation,
                result.alternatives,
                tuple(result.ineligible)[:MAX_ALTERNATIVES],
            )
        return result, built.matcher

    @staticmethod
    def _validate_prospective(problems: Violations, b) -> None:
        prefix = "prospective_booking"
        if b.start_time is None:
            problems.add(f"{prefix}.start_time", "is required")
        if b.end_time is None:
            problems.add(f"{prefix}.end_time", "is required")
        elif b.start_time is not None and b.end_time <= b.start_time:
            problems.add(f"{prefix}.end_time", "must be after the start")
            problems.reason = "END_BEFORE_START"  # type: ignore[attr-defined]
        if not b.subject:
            problems.add(f"{prefix}.subject", "is required")
        if b.class_id:
            problems.add(f"{prefix}.class_id", "class lessons are not supported yet")
        if len(set(b.learner_ids)) != len(b.learner_ids):
            problems.add(f"{prefix}.learner_ids", "lists a learner twice")

    # AssignInstructor / UnassignInstructor --------------------------------------------------

    async def assign_instructor(
        self,
        principal: Principal,
        ref,
        series_id: str,
        instructor_id: str,
        options: MatchOptionsInput | None,
        reason: str,
    ):
        """Returns (booking or series row, explanation dict or None)."""
        principal.require(WRITE)
        tenant = principal.tenant_id
        if series_id:
            if options is not None:
                raise InvalidArgument(
                    FieldViolation(
                        "match", "the matcher assigns bookings, not series; name an instructor"
                    )
                )
            return await self._assign_series(principal, series_id, instructor_id), None
        explanation = None
        matcher = ""
        if options is not None:
            async with self.db.reader() as session:
                row = await self._resolve(session, tenant, ref)
                self._require_open(row)
                built = await self._build(
                    session, tenant, [_lesson_of(row)], options, reconsidered=[row.id]
                )
            result = await self._solve_one(built)
            if not result.instructor_id:
                raise FailedPrecondition(
                    f"no eligible instructor: {result.explanation.reason}".strip(": "),
                    reason="NO_ELIGIBLE_INSTRUCTOR",
                )
            instructor_id, matcher = result.instructor_id, built.matcher
            explanation = explanation_json(result.explanation)
        method = pb.ASSIGNMENT_METHOD_MATCHER if matcher else pb.ASSIGNMENT_METHOD_MANUAL
        async with self._scope(principal) as uow:
            row = await self._resolve(uow.session, tenant, ref, lock=True)
            self._require_open(row)
            await self._assign_in(
                uow,
                row,
                instructor_id,
                method=method,
                matcher=matcher,
                explanation=explanation,
                reason=reason,
                field_prefix="instructor_id",
            )
            return row, explanation

    async def _assign_series(self, principal: Principal, series_id: str, instructor_id: str):
        tenant = principal.tenant_id
        async with self._scope(principal) as uow:
            series = await srepo.series(uow.session, tenant, series_id, lock=True)
            if series is None:
                raise NotFound(f"series {series_id!r} not found", reason="SERIES_NOT_FOUND")
            if series.state != pb.SERIES_STATE_ACTIVE:
                raise FailedPrecondition("the series is not active", reason="SERIES_CANCELLED")
            now = utcnow()
            previous = series.instructor_id
            for row in await srepo.series_occurrences(uow.session, series.id):
                if row.state != SCHEDULED or row.start_time <= now:
                    continue
                if row.instructor_id == instructor_id:
                    continue
                await self._assign_in(
                    uow,
                    row,
                    instructor_id,
                    method=pb.ASSIGNMENT_METHOD_SERIES,
                    field_prefix="instructor_id",
                )
            series.instructor_id = instructor_id
            series.version += 1
            series.update_time = now
            await uow.session.flush()
            event = ev.InstructorAssigned(
                series_id=series.id,
                instructor_id=instructor_id,
                previous_instructor_id=previous,
                method=pb.AssignmentMethod.Name(pb.ASSIGNMENT_METHOD_MANUAL),
            )
            event.start_time.FromDatetime(series.start_time)
            uow.emit(event)
            return series

    async def _assign_in(
        self,
        uow: UnitOfWork,
        row: SchedBooking,
        instructor_id: str,
        *,
        method: int,
        matcher: str = "",
        plan_id: str = "",
        explanation: dict | None = None,
        reason: str = "",
        field_prefix: str = "instructor_id",
        substitute: bool = False,
    ) -> None:
        """Makes `instructor_id` the booking's instructor after the placement checks, in the
        caller's unit of work (the booking row is locked by the caller)."""
        session, tenant = uow.session, row.tenant_id
        person = await self._person(session, tenant, instructor_id, field_prefix)
        from .scheduling import INSTRUCTOR

        self._require_role(person, INSTRUCTOR, field_prefix)
        profiles = {
            p.id: p.learner_profile or {}
            for p in await srepo.people(session, tenant, list(row.learner_ids))
        }
        await srepo.lock_people(session, tenant, [instructor_id])
        await self._check_placement(
            session,
            tenant,
            instructor_id=instructor_id,
            learner_ids=[],
            subject=row.subject,
            level=row.level,
            start=row.start_time,
            end=row.end_time,
            exclude_booking=row.id,
            one_off=False,
            field_prefix="booking",
            learner_profiles=profiles,
        )
        previous = row.instructor_id
        now = utcnow()
        if substitute:
            row.substituted_instructor_id = row.substituted_instructor_id or previous
        row.instructor_id = instructor_id
        assignment: dict[str, Any] = {
            "instructor_id": instructor_id,
            "method": method,
            "assign_time": now.isoformat(),
        }
        if matcher:
            assignment["matcher"] = matcher
        if plan_id:
            assignment["plan_id"] = plan_id
        if explanation:
            assignment["explanation"] = explanation
        row.assignment = assignment
        row.version += 1
        row.update_time = now
        await session.flush()
        await srepo.set_participants(session, row)
        await self._session_instructor(uow, row, previous, instructor_id)
        if previous and not substitute:
            gone = ev.InstructorUnassigned(
                booking_id=row.id,
                series_id=row.series_id or "",
                instructor_id=previous,
                reason=reason,
            )
            uow.emit(gone)
        if not substitute:
            event = ev.InstructorAssigned(
                booking_id=row.id,
                series_id=row.series_id or "",
                instructor_id=instructor_id,
                previous_instructor_id=previous,
                method=pb.AssignmentMethod.Name(method),
                matcher=matcher,
                plan_id=plan_id,
            )
            event.start_time.FromDatetime(row.start_time)
            uow.emit(event)

    @staticmethod
    async def _session_instructor(
        uow: UnitOfWork, row: SchedBooking, previous: str, current: str
    ) -> None:
        """A provisioned booking's live session expects its new instructor."""
        if not row.session_id or previous == current:
            return
        await srepo.replace_session_instructor(
            uow.session, row.tenant_id, row.session_id, previous, current
        )

    async def unassign_instructor(self, principal: Principal, ref, series_id: str, reason: str):
        principal.require(WRITE)
        tenant = principal.tenant_id
        async with self._scope(principal) as uow:
            if series_id:
                series = await srepo.series(uow.session, tenant, series_id, lock=True)
                if series is None:
                    raise NotFound(f"series {series_id!r} not found", reason="SERIES_NOT_FOUND")
                if not series.instructor_id:
                    raise FailedPrecondition(
                        "the series has no instructor", reason="NO_INSTRUCTOR_ASSIGNED"
                    )
                now = utcnow()
                for row in await srepo.series_occurrences(uow.session, series.id):
                    if row.state == SCHEDULED and row.start_time > now and row.instructor_id:
                        await self._unassign_in(uow, row, reason)
                removed = series.instructor_id
                series.instructor_id = ""
                series.version += 1
                series.update_time = now
                await uow.session.flush()
                uow.emit(
                    ev.InstructorUnassigned(
                        series_id=series.id, instructor_id=removed, reason=reason
                    )
                )
                return series
            row = await self._resolve(uow.session, tenant, ref, lock=True)
            self._require_open(row)
            if not row.instructor_id:
                raise FailedPrecondition(
                    "the booking has no instructor", reason="NO_INSTRUCTOR_ASSIGNED"
                )
            await self._unassign_in(uow, row, reason)
            return row

    async def _unassign_in(self, uow: UnitOfWork, row: SchedBooking, reason: str) -> None:
        previous = row.instructor_id
        await srepo.lock_people(uow.session, row.tenant_id, [previous])
        row.instructor_id = ""
        row.substituted_instructor_id = ""
        row.assignment = None
        row.version += 1
        row.update_time = utcnow()
        await uow.session.flush()
        await srepo.set_participants(uow.session, row)
        await self._session_instructor(uow, row, previous, "")
        uow.emit(
            ev.InstructorUnassigned(
                booking_id=row.id,
                series_id=row.series_id or "",
                instructor_id=previous,
                reason=reason,
            )
        )

    # AssignInstructors / plans ----------------------------------------------------------------

    async def assign_instructors(
        self,
        principal: Principal,
        *,
        booking_ids: Sequence[str] | None,
        window: Interval | None,
        class_ids: Sequence[str],
        subjects: Sequence[str],
        include_assigned: bool,
        apply: bool,
        options: MatchOptionsInput,
        time_limit: timedelta | None,
        key: IdempotencyKey | None,
    ) -> SchedAssignmentPlan:
        principal.require(WRITE)
        problems = Violations()
        if booking_ids is not None:
            if not booking_ids:
                problems.add("bookings.booking_ids", "name at least one booking")
            elif len(booking_ids) > MAX_BULK_BOOKINGS:
                problems.add("bookings.booking_ids", f"at most {MAX_BULK_BOOKINGS:,}")
            elif len(set(booking_ids)) != len(booking_ids):
                problems.add("bookings.booking_ids", "lists a booking twice")
        elif window is None:
            problems.add("scope", "name bookings or a selection")
        else:
            if window.end <= window.start:
                problems.add("selection.window.end_time", "must be after the start")
                problems.reason = "END_BEFORE_START"  # type: ignore[attr-defined]
            elif window.end - window.start > MAX_BULK_WINDOW:
                problems.add("selection.window", "must be at most 31 days long")
                problems.reason = "WINDOW_TOO_LARGE"  # type: ignore[attr-defined]
        if time_limit is not None and (time_limit <= timedelta(0) or time_limit > MAX_TIME_LIMIT):
            problems.add("time_limit", "must be positive and at most 10 minutes")
        if problems.items:
            raise InvalidArgument(problems.items, reason=getattr(problems, "reason", None))
        tenant = principal.tenant_id
        now = utcnow()
        async with self.db.reader() as session:
            if booking_ids is not None:
                rows = await srepo.bookings_by_ids(session, tenant, list(booking_ids))
                found = {r.id for r in rows}
                for i, bid in enumerate(booking_ids):
                    if bid not in found:
                        raise NotFound(
                            f"booking {bid!r} not found",
                            reason="BOOKING_NOT_FOUND",
                            metadata={"field": f"bookings.booking_ids[{i}]"},
                        )
            else:
                assert window is not None
                rows = await srepo.selection(
                    session,
                    tenant,
                    window.start,
                    window.end,
                    class_ids,
                    [s for s in subjects],
                    include_assigned,
                    MAX_BULK_BOOKINGS + 1,
                )
                if len(rows) > MAX_BULK_BOOKINGS:
                    raise InvalidArgument(
                        FieldViolation("selection", f"selects over {MAX_BULK_BOOKINGS:,} bookings")
                    )
            # Cancelled and started bookings are never considered.
            rows = [
                r
                for r in rows
                if r.state == SCHEDULED
                and r.start_time > now
                and (include_assigned or not r.instructor_id)
            ]
            rows.sort(key=lambda r: (r.start_time, r.id))
            built = None
            if rows:
                built = await self._build(
                    session,
                    tenant,
                    [_lesson_of(r) for r in rows],
                    options,
                    reconsidered=[r.id for r in rows],
                    time_limit=time_limit,
                )
        matcher = (
            built.matcher
            if built
            else self._matcher_name(options, await self._read_settings(tenant))
        )
        plan = await self._solve_many(built) if built else None
        entries, counts = self._plan_entries(rows, plan, built)
        stored = SchedAssignmentPlan(
            id=new_id("pln"),
            tenant_id=tenant,
            state=pb.PLAN_STATE_PROPOSED,
            matcher=matcher,
            status=_solver_status(plan),
            objective=plan.objective if plan else 0.0,
            best_bound=(plan.bound if plan and plan.bound is not None else 0.0),
            gap=(plan.gap or 0.0) if plan else 0.0,
            solve_seconds=plan.solve_seconds if plan else 0.0,
            assignments=entries,
            person_versions={},
            assigned_count=counts[0],
            unassigned_count=counts[1],
            changed_count=counts[2],
            create_time=now,
            apply_time=None,
            expire_time=now + PLAN_TTL,
        )

        async def body(uow: UnitOfWork):
            involved = sorted(
                {e["instructor_id"] for e in entries if e["instructor_id"]}
                | {e["previous_instructor_id"] for e in entries if e["previous_instructor_id"]}
            )
            known = built.versions if built else {}
            stored.person_versions = {p: known.get(p, 0) for p in involved}
            uow.session.add(stored)
            await uow.session.flush()
            if apply:
                stale = await self._apply_in(uow, stored)
                if stale:
                    raise Aborted(
                        f"{stale[1]} while solving; retry",
                        reason="PLAN_STALE",
                        metadata={"booking_id": stale[0]} if stale[0] else {},
                    )
            return stored

        return await run_idempotent(lambda: self._scope(principal), key, body)

    async def _read_settings(self, tenant: str) -> dict:
        async with self.db.reader() as session:
            return await self._settings(session, tenant)

    async def _solve_many(self, built: Built) -> MatchPlan:
        provider = await self.matcher(built.matcher)
        try:
            plan = await provider.assign(built.problem)
        except DomainError:
            raise
        except Exception:
            log.exception("matcher failed", matcher=built.matcher)
            raise _matcher_unavailable(built.matcher) from None
        return _repair(plan, built)

    @staticmethod
    def _plan_entries(rows, plan: MatchPlan | None, built: Built | None):
        by_booking = {a.booking_id: a for a in plan.assignments} if plan else {}
        entries = []
        assigned = unassigned = changed = 0
        for r in rows:
            a = by_booking.get(r.id)
            chosen = (a.instructor_id if a else None) or ""
            if chosen:
                assigned += 1
            else:
                unassigned += 1
            if chosen and chosen != r.instructor_id:
                changed += 1
            entries.append(
                {
                    "booking_id": r.id,
                    "instructor_id": chosen,
                    "previous_instructor_id": r.instructor_id,
                    "version": r.version,
                    "explanation": explanation_json(a.explanation)
                    if a
                    else {"summary": "not considered"},
                }
            )
        return entries, (assigned, unassigned, changed)

    async def get_plan(self, principal: Principal, plan_id: str) -> SchedAssignmentPlan:
        principal.require(READ)
        async with self.db.reader() as session:
            row = await srepo.plan(session, principal.tenant_id, plan_id)
        if row is None:
            raise NotFound(f"plan {plan_id!r} not found", reason="ASSIGNMENT_PLAN_NOT_FOUND")
        return row

    async def apply_plan(
        self, principal: Principal, plan_id: str, key: IdempotencyKey | None
    ) -> SchedAssignmentPlan:
        principal.require(WRITE)
        tenant = principal.tenant_id

        async def body(uow: UnitOfWork):
            row = await srepo.plan(uow.session, tenant, plan_id, lock=True)
            if row is None:
                raise NotFound(f"plan {plan_id!r} not found", reason="ASSIGNMENT_PLAN_NOT_FOUND")
            if row.state == pb.PLAN_STATE_APPLIED:
                raise FailedPrecondition(
                    "the plan was already applied", reason="PLAN_ALREADY_APPLIED"
                )
            if row.state == pb.PLAN_STATE_EXPIRED or row.expire_time <= utcnow():
                raise _Stale("", "expired")
            found = await self._apply_in(uow, row)
            if found:
                # Nothing of the plan is applied: this unit of work rolls back.
                raise _Stale(*found)
            return row

        try:
            return await run_idempotent(lambda: self._scope(principal), key, body)
        except _Stale as stale:
            await self._expire(principal, plan_id)
            if stale.why == "expired":
                raise FailedPrecondition("the plan expired", reason="PLAN_EXPIRED") from None
            raise Aborted(
                f"the plan is stale: {stale.why}; compute a new one",
                reason="PLAN_STALE",
                metadata={"booking_id": stale.booking_id} if stale.booking_id else {},
            ) from None

    async def _expire(self, principal: Principal, plan_id: str) -> None:
        async with self._scope(principal) as uow:
            row = await srepo.plan(uow.session, principal.tenant_id, plan_id, lock=True)
            if row is not None and row.state == pb.PLAN_STATE_PROPOSED:
                row.state = pb.PLAN_STATE_EXPIRED

    async def _apply_in(self, uow: UnitOfWork, plan: SchedAssignmentPlan):
        """Applies the plan; returns (booking id, why) instead when anything it read changed."""
        session, tenant = uow.session, plan.tenant_id
        versions = plan.person_versions or {}
        # Taking the locks bumps each version once: unchanged means stored + 1 now.
        await srepo.lock_people(session, tenant, list(versions))
        current = await srepo.person_lock_versions(session, tenant, list(versions))
        for person_id, version in versions.items():
            if current.get(person_id, 0) != int(version) + 1:
                return "", f"the bookings of instructor {person_id!r} changed"
        rows = {
            r.id: r
            for r in await srepo.bookings_by_ids(
                session, tenant, [e["booking_id"] for e in plan.assignments]
            )
        }
        now = utcnow()
        for e in plan.assignments:
            row = rows.get(e["booking_id"])
            if row is None:
                return e["booking_id"], "the booking was deleted"
            if row.version != e["version"]:
                return row.id, f"booking {row.id!r} changed"
            if row.state != SCHEDULED or row.start_time <= now:
                return row.id, f"booking {row.id!r} is no longer open"
        changed = 0
        for e in plan.assignments:
            row = rows[e["booking_id"]]
            if not e["instructor_id"] or e["instructor_id"] == row.instructor_id:
                continue
            changed += 1
            await self._assign_in(
                uow,
                row,
                e["instructor_id"],
                method=pb.ASSIGNMENT_METHOD_BULK_PLAN,
                matcher=plan.matcher,
                plan_id=plan.id,
                explanation=e.get("explanation"),
                field_prefix=f"assignments[{e['booking_id']}]",
            )
        plan.state = pb.PLAN_STATE_APPLIED
        plan.apply_time = now
        await session.flush()
        uow.emit(
            ev.BulkAssignmentApplied(
                plan_id=plan.id,
                matcher=plan.matcher,
                solver_status=pb.SolverStatus.Name(plan.status),
                objective=plan.objective,
                best_bound=plan.best_bound,
                gap=plan.gap,
                booking_count=len(plan.assignments),
                assigned_count=plan.assigned_count,
                unassigned_count=plan.unassigned_count,
                changed_count=changed,
            )
        )
        return None


class _Stale(Exception):
    def __init__(self, booking_id: str, why: str) -> None:
        super().__init__(why)
        self.booking_id, self.why = booking_id, why


def _solver_status(plan: MatchPlan | None) -> int:
    if plan is None or plan.optimal:
        return pb.SOLVER_STATUS_OPTIMAL
    if plan.status is not None:
        return _STATUS[plan.status]
    return pb.SOLVER_STATUS_FEASIBLE


def _lesson_of(row: SchedBooking) -> LessonSpec:
    return LessonSpec(
        row.id, tuple(row.learner_ids), row.start_time, row.end_time, row.subject, row.level
    )


def _repair(plan: MatchPlan, built: Built) -> MatchPlan:
    """Daily limits, and weekly limits of windows longer than a week, are per local day and
    week, which the matcher's single load period cannot express: assignments past a limit
    (in start order) are dropped here, with the reason, so a plan never breaks one."""
    lessons = {lesson.booking_id: lesson for lesson in built.problem.lessons}
    used: dict[tuple[str, str, datetime], int] = defaultdict(int)
    out = []
    dropped = 0
    order = sorted(
        plan.assignments,
        key=lambda a: (lessons[a.booking_id].interval.start, a.booking_id),
    )
    for a in order:
        iid = a.instructor_id
        if not iid or iid not in built.limits:
            out.append(a)
            continue
        zone, daily, weekly, rows, _gap = built.limits[iid]
        lesson = lessons[a.booking_id]
        start, minutes = lesson.interval.start, lesson.minutes
        ok = True
        for kind, limit, bounds in (
            ("day", daily, local_day_bounds(start, zone)),
            ("week", weekly, local_week_bounds(start, zone)),
        ):
            if limit is None:
                continue
            key = (iid, kind, bounds.start)
            if key not in used:
                used[key] = sum(
                    _interval_minutes(r.start_time, r.end_time)
                    for r in rows
                    if bounds.start <= r.start_time < bounds.end
                )
            if used[key] + minutes > limit.total_seconds() / 60:
                ok = False
        if ok:
            for kind, bounds in (
                ("day", local_day_bounds(start, zone)),
                ("week", local_week_bounds(start, zone)),
            ):
                key = (iid, kind, bounds.start)
                if key in used:
                    used[key] += minutes
            out.append(a)
        else:
            dropped += 1
            out.append(
                MatchAssignment(
                    a.booking_id,
                    None,
                    MatchExplanation(
                        reason=f"{iid} was best but would exceed a daily or weekly load limit"
                    ),
                )
            )
    if not dropped:
        return plan
    penalty = float(built.problem.weights.get("unassigned", DEFAULT_MATCH_WEIGHTS["unassigned"]))
    by_id = {a.booking_id: a for a in plan.assignments}
    lost = sum(
        by_id[a.booking_id].explanation.score + penalty
        for a in out
        if a.instructor_id is None and by_id[a.booking_id].instructor_id
    )
    return MatchPlan(
        out,
        plan.objective - lost,
        plan.bound,
        False,
        MatchStatus.FEASIBLE,
        plan.solve_seconds,
    )


def _matcher_unavailable(name: str) -> Unavailable:
    return Unavailable(
        f"the matcher provider {name!r} is not available; retry",
        reason="MATCHER_UNAVAILABLE",
        metadata={"matcher": name},
    )


def options_from(mapping: Mapping[str, Any] | None) -> MatchOptionsInput | None:
    """Options from a proto JSON-like dict (settings), None when absent."""
    if mapping is None:
        return None
    return MatchOptionsInput(
        matcher=mapping.get("matcher", ""),
        weights=mapping.get("weights"),
        excluded_instructor_ids=tuple(mapping.get("excluded_instructor_ids", [])),
        instructor_ids=tuple(mapping.get("instructor_ids", [])),
    )
