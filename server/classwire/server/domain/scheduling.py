"""Scheduling: tenant settings, availability, free/busy, bookings (one-off and group), recurring
series, slot search and calendar feeds.

Double booking is refused by the database: every booking change first takes the person-lock
rows of its instructor and learners (store/scheduling_repositories.lock_people), then checks
for overlaps and writes, all in one transaction. Policies and schedules are kept in their proto
JSON form (field names, integer enums, "Ns" durations) and read here field by field, so unset
fields inherit the tenant's defaults by presence.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from classwire.api.events.v1 import scheduling_events_pb2 as ev
from classwire.api.roster.v1 import resources_pb2 as roster_pb
from classwire.api.scheduling.v1 import resources_pb2 as pb

from ..events.outbox import UnitOfWork, UnitOfWorkFactory
from ..store import scheduling_repositories as srepo
from ..store.engine import Database
from ..store.scheduling_models import SchedAvailability, SchedBooking, SchedSeries, SchedSettings
from ..store.types import utcnow
from . import paging
from .auth import Principal
from .errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
    Violations,
)
from .idempotency import IdempotencyKey, run_idempotent
from .ids import new_id
from .platform import actor_of
from .roster import qualification_pairs
from .scheduling_feeds import FeedTokensMixin, feed_scope
from .scheduling_matching import MatchingMixin
from .scheduling_provision import ProvisioningMixin
from .scheduling_substitutes import SubstitutesMixin
from .scheduling_time import (
    Interval,
    RuleError,
    Schedule,
    WeeklyWindow,
    expand,
    is_bounded,
    is_time_zone,
    local_day_bounds,
    local_week_bounds,
    merge,
    parse_rule,
    subtract,
)

READ = "scheduling:read"
WRITE = "scheduling:write"
ADMIN = "admin"

SCHEDULED, COMPLETED, CANCELLED = (
    pb.BOOKING_STATE_SCHEDULED,
    pb.BOOKING_STATE_COMPLETED,
    pb.BOOKING_STATE_CANCELLED,
)
SERIES_ACTIVE, SERIES_ENDED, SERIES_CANCELLED = (
    pb.SERIES_STATE_ACTIVE,
    pb.SERIES_STATE_ENDED,
    pb.SERIES_STATE_CANCELLED,
)
LEARNER, INSTRUCTOR = roster_pb.PERSON_ROLE_LEARNER, roster_pb.PERSON_ROLE_INSTRUCTOR
ACTIVE = roster_pb.RECORD_STATE_ACTIVE

DEFAULT_SLOT_INTERVAL = timedelta(minutes=15)
# An unbounded series is materialised this far ahead when no booking window bounds it.
DEFAULT_HORIZON = timedelta(days=180)
MAX_FREEBUSY_WINDOW = timedelta(days=62)
MAX_LIST_WINDOW = timedelta(days=366)
MAX_FEED_WINDOW = timedelta(days=732)
MAX_TITLE = 200
MAX_LEARNERS = 500

AVAILABILITY_PATHS = {"weekly_rules", "date_overrides", "time_off", "booking_policy", "time_zone"}
BOOKING_PATHS = {
    "title",
    "subject",
    "level",
    "capacity",
    "time_zone",
    "reminder_policy",
    "metadata",
    "external_id",
}
SERIES_PATHS = {"title", "instructor_id", "learner_ids", "capacity", "reminder_policy", "metadata"}
SETTINGS_PATHS = {
    "default_booking_policy",
    "cancellation_policy",
    "provisioning",
    "reminder_policy",
    "no_show_policy",
    "matching",
}


# Values -----------------------------------------------------------------------------------------


def seconds(value: Any) -> timedelta | None:
    """A proto JSON duration ("90s", "1.5s") as a timedelta; None when absent."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    return timedelta(seconds=float(str(value).rstrip("s")))


def json_seconds(value: timedelta) -> str:
    total = value.total_seconds()
    return f"{int(total)}s" if total == int(total) else f"{total}s"


@dataclass(frozen=True)
class AvailabilityInput:
    person_id: str
    time_zone: str = ""
    # proto JSON lists and dict (integer enums)
    weekly_rules: list[dict] = field(default_factory=list)
    date_overrides: list[dict] = field(default_factory=list)
    time_off: list[dict] = field(default_factory=list)
    booking_policy: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AvailabilityView:
    person_id: str
    time_zone: str
    weekly_rules: list
    date_overrides: list
    time_off: list
    booking_policy: dict
    update_time: datetime | None
    version: int


@dataclass(frozen=True)
class Initiator:
    person_id: str = ""
    role: int = 0

    def to_json(self) -> dict:
        return {"person_id": self.person_id, "role": self.role}

    @property
    def role_name(self) -> str:
        return pb.InitiatorRole.Name(self.role) if self.role in pb.InitiatorRole.values() else ""


@dataclass(frozen=True)
class BookingInput:
    external_id: str = ""
    title: str = ""
    class_id: str = ""
    subject: str = ""
    level: str = ""
    start_time: datetime | None = None
    end_time: datetime | None = None
    time_zone: str = ""
    instructor_id: str = ""
    learner_ids: tuple[str, ...] = ()
    capacity: int = 0
    reminder_policy: dict | None = None
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SeriesInput:
    external_id: str = ""
    title: str = ""
    class_id: str = ""
    subject: str = ""
    level: str = ""
    time_zone: str = ""
    start_time: datetime | None = None
    duration: timedelta | None = None
    rrule: str = ""
    exdates: tuple[datetime, ...] = ()
    rdates: tuple[datetime, ...] = ()
    instructor_id: str = ""
    learner_ids: tuple[str, ...] = ()
    capacity: int = 0
    reminder_policy: dict | None = None
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class BookingRef:
    booking_id: str = ""
    series_id: str = ""
    original_start_time: datetime | None = None
    field: str = "booking"


@dataclass(frozen=True)
class Conflict:
    original_start_time: datetime
    reason: str
    conflicting_booking_id: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Candidate:
    instructor_id: str
    rank: int
    score: float
    terms: tuple[tuple[str, float, float, str], ...]  # name, weight, value, detail
    constraints: tuple[tuple[str, bool, str], ...]
    summary: str


@dataclass(frozen=True)
class SlotView:
    start: datetime
    end: datetime
    time_zone: str
    candidates: tuple[Candidate, ...]
    booking_id: str = ""
    seats_available: int = 0


@dataclass(frozen=True)
class FreeBusyView:
    person_id: str
    free: list[Interval]
    busy: list[tuple[Interval, int, str]]  # interval, BusyKind, booking id


@dataclass(frozen=True)
class FindSlotsQuery:
    subject: str
    level: str
    duration: timedelta | None
    window: Interval | None
    learner_id: str = ""
    time_zone: str = ""
    instructor_ids: tuple[str, ...] = ()
    include_group_seats: bool = False
    max_candidates: int = 0
    max_slots: int = 0
    weights: dict | None = None
    excluded_instructor_ids: tuple[str, ...] = ()


# Validation helpers -----------------------------------------------------------------------------


def _minutes(problems: Violations, path: str, value: dict | None, *, end: bool) -> int | None:
    value = value or {}
    hours, minutes = int(value.get("hours", 0)), int(value.get("minutes", 0))
    if not 0 <= minutes <= 59 or not 0 <= hours <= 24 or (hours == 24 and (minutes or not end)):
        problems.add(path, "is not a valid time of day (00:00 to 24:00)")
        return None
    return hours * 60 + minutes


def _window(
    problems: Violations, path: str, value: Interval | None, limit: timedelta | None = None
) -> None:
    if value is None:
        problems.add(path, "is required")
        return
    if value.end <= value.start:
        problems.add(f"{path}.end_time", "must be after the start")
        problems.reason = "END_BEFORE_START"  # type: ignore[attr-defined]
    elif limit is not None and value.end - value.start > limit:
        problems.add(path, f"must be at most {limit.days} days long")
        problems.reason = "WINDOW_TOO_LARGE"  # type: ignore[attr-defined]


def _raise(problems: Violations) -> None:
    if problems.items:
        raise InvalidArgument(problems.items, reason=getattr(problems, "reason", None))


def _zone_check(problems: Violations, path: str, name: str, required: bool = False) -> None:
    if not name:
        if required:
            problems.add(path, "is required")
        return
    if not is_time_zone(name):
        problems.add(path, f"{name!r} is not an IANA time zone")
        problems.reason = "UNKNOWN_TIME_ZONE"  # type: ignore[attr-defined]


def _duration_field(problems: Violations, path: str, value: Any) -> None:
    if value is not None and seconds(value) < timedelta(0):
        problems.add(path, "must not be negative")


def validate_policy(problems: Violations, prefix: str, policy: dict) -> None:
    for name in (
        "buffer_before",
        "buffer_after",
        "minimum_notice",
        "booking_window",
        "slot_interval",
    ):
        _duration_field(problems, f"{prefix}.{name}", policy.get(name))
    interval = seconds(policy.get("slot_interval"))
    if interval is not None and interval < timedelta(minutes=1):
        problems.add(f"{prefix}.slot_interval", "must be at least one minute")
    for name in ("daily_limit", "weekly_limit"):
        limit = policy.get(name) or {}
        if int(limit.get("max_bookings", 0)) < 0:
            problems.add(f"{prefix}.{name}.max_bookings", "must not be negative")
        _duration_field(problems, f"{prefix}.{name}.max_booked_time", limit.get("max_booked_time"))


def _local_date(problems: Violations, path: str, value: dict | None) -> date | None:
    value = value or {}
    try:
        return date(int(value.get("year", 0)), int(value.get("month", 0)), int(value.get("day", 0)))
    except ValueError:
        problems.add(path, "is not a valid date")
        return None


def schedule_of(row: SchedAvailability | None, person_zone: str) -> Schedule:
    """The computable schedule of a stored availability (never available without one)."""
    tz = (row.time_zone if row else "") or person_zone or "UTC"
    if row is None:
        return Schedule(tz)
    problems = Violations()
    weekly = []
    for rule in row.weekly_rules:
        rng = rule.get("range") or {}
        start = _minutes(problems, "", rng.get("start"), end=False)
        end = _minutes(problems, "", rng.get("end"), end=True)
        if start is not None and end is not None:
            weekly.append(WeeklyWindow(int(rule.get("weekday", 0)), start, end))
    overrides = {}
    for item in row.date_overrides:
        day = _local_date(problems, "", item.get("date"))
        if day is None:
            continue
        overrides[day] = tuple(
            (
                _minutes(problems, "", r.get("start"), end=False) or 0,
                _minutes(problems, "", r.get("end"), end=True) or 0,
            )
            for r in item.get("ranges", [])
        )
    time_off = tuple(
        Interval(datetime.fromisoformat(t["start"]), datetime.fromisoformat(t["end"]))
        for t in row.time_off
    )
    return Schedule(tz, tuple(weekly), overrides, time_off)


def effective_policy(tenant: dict, person: dict | None) -> dict:
    return {**(tenant.get("default_booking_policy") or {}), **(person or {})}


def _not_found(kind: str, reason: str, ident: str) -> NotFound:
    return NotFound(f"{kind} {ident!r} not found", reason=reason)


def _check_etag(version: int, etag: str) -> None:
    if etag and etag != str(version):
        raise Aborted(
            "the resource changed since it was read",
            reason="ETAG_MISMATCH",
            metadata={"current_etag": str(version)},
        )


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


# Candidate scoring (the built-in terms, also used to rank slot candidates) ---------------------

DEFAULT_WEIGHTS = {"continuity": 1.0, "language": 0.5, "preference": 0.5, "load_balance": 0.25}


def score_candidate(
    instructor_id: str,
    profile: dict,
    learner_profile: dict,
    previous: set[str],
    load_minutes: float,
    target_minutes: float,
    weights: dict,
) -> tuple[float, tuple[tuple[str, float, float, str], ...]]:
    langs = set(profile.get("languages", []))
    wanted = set(learner_profile.get("languages", []))
    values = {
        "continuity": (1.0 if instructor_id in previous else 0.0, "taught this learner before"),
        "language": (1.0 if not wanted or langs & wanted else 0.0, "shares a language"),
        "preference": (
            1.0 if instructor_id in learner_profile.get("preferred_instructor_ids", []) else 0.0,
            "preferred by the learner",
        ),
        "load_balance": (
            max(0.0, 1.0 - load_minutes / target_minutes) if target_minutes > 0 else 1.0,
            f"weekly load {int(load_minutes)} min",
        ),
    }
    terms = []
    total = 0.0
    for name, (value, detail) in values.items():
        weight = float(weights.get(name, DEFAULT_WEIGHTS[name]))
        terms.append((name, weight, value, detail))
        total += weight * value
    return total, tuple(terms)


# The domain -------------------------------------------------------------------------------------


class SchedulingDomain(ProvisioningMixin, MatchingMixin, SubstitutesMixin, FeedTokensMixin):
    def __init__(
        self,
        db: Database,
        uow: UnitOfWorkFactory,
        timers=None,
        sessions=None,
        matcher_factory=None,
    ) -> None:
        self.db = db
        self.uow = uow
        self.timers = timers
        self.sessions = sessions
        # name -> Matcher provider, raising LookupError when none of that name is installed.
        self.matcher_factory = matcher_factory

    def _scope(self, principal: Principal):
        return self.uow(principal.tenant_id, actor_of(principal))

    # Settings ------------------------------------------------------------------------------

    async def _settings(self, session, tenant_id: str) -> dict:
        row = await srepo.settings(session, tenant_id)
        return dict(row.data) if row else {}

    async def get_settings(self, principal: Principal) -> tuple[dict, int, datetime | None]:
        principal.require(READ)
        async with self.db.reader() as session:
            row = await srepo.settings(session, principal.tenant_id)
        return (dict(row.data), row.version, row.update_time) if row else ({}, 0, None)

    async def update_settings(
        self, principal: Principal, data: dict, paths: list[str], etag: str
    ) -> tuple[dict, int, datetime | None]:
        principal.require(ADMIN)
        problems = Violations()
        if "default_booking_policy" in paths:
            validate_policy(
                problems, "settings.default_booking_policy", data.get("default_booking_policy", {})
            )
        offsets = (data.get("reminder_policy") or {}).get("offsets", [])
        if "reminder_policy" in paths:
            seen = set()
            for i, offset in enumerate(offsets):
                value = seconds(offset)
                if value < timedelta(0):
                    problems.add(f"settings.reminder_policy.offsets[{i}]", "must not be negative")
                if value in seen:
                    problems.add(f"settings.reminder_policy.offsets[{i}]", "is listed twice")
                seen.add(value)
        matcher = (data.get("matching") or {}).get("matcher", "")
        if "matching" in paths and matcher and self.matcher_factory is not None:
            try:
                self.matcher_factory(matcher)
            except LookupError:
                problems.add("settings.matching.matcher", f"no matcher provider {matcher!r}")
                problems.reason = "UNKNOWN_MATCHER"  # type: ignore[attr-defined]
        _raise(problems)
        async with self._scope(principal) as uow:
            row = await srepo.settings(uow.session, principal.tenant_id)
            if row is None:
                row = SchedSettings(
                    tenant_id=principal.tenant_id, data={}, version=0, update_time=utcnow()
                )
                uow.session.add(row)
            _check_etag(row.version, etag)
            merged = dict(row.data)
            for path in paths:
                if path in data:
                    merged[path] = data[path]
                else:
                    merged.pop(path, None)
            row.data = merged
            row.version += 1
            row.update_time = utcnow()
            await uow.session.flush()
            return dict(row.data), row.version, row.update_time

    # People --------------------------------------------------------------------------------

    async def _person(self, session, tenant_id: str, person_id: str, path: str):
        rows = await srepo.people(session, tenant_id, [person_id]) if person_id else []
        if not rows:
            raise NotFound(
                f"person {person_id!r} not found",
                reason="PERSON_NOT_FOUND",
                metadata={"field": path},
            )
        return rows[0]

    @staticmethod
    def _require_role(person, role: int, path: str) -> None:
        if role not in list(person.roles):
            raise FailedPrecondition(
                f"{path}: person {person.id!r} is not a {roster_pb.PersonRole.Name(role)}",
                reason="ROLE_REQUIRED",
                metadata={"field": path, "person_id": person.id},
            )
        if person.state != ACTIVE:
            raise FailedPrecondition(
                f"{path}: person {person.id!r} is inactive",
                reason="RECORD_INACTIVE",
                metadata={"field": path},
            )

    # Availability --------------------------------------------------------------------------

    def _validate_availability(self, data: AvailabilityInput, paths: set[str]) -> None:
        problems = Violations()
        prefix = "availability"
        if "time_zone" in paths:
            _zone_check(problems, f"{prefix}.time_zone", data.time_zone)
        if "weekly_rules" in paths:
            spans: dict[int, list[tuple[int, int, int]]] = defaultdict(list)
            for i, rule in enumerate(data.weekly_rules):
                path = f"{prefix}.weekly_rules[{i}]"
                weekday = int(rule.get("weekday", 0))
                if weekday not in range(1, 8):
                    problems.add(f"{path}.weekday", "must be a day of the week")
                rng = rule.get("range") or {}
                start = _minutes(problems, f"{path}.range.start", rng.get("start"), end=False)
                end = _minutes(problems, f"{path}.range.end", rng.get("end"), end=True)
                if start is not None and end is not None:
                    if end <= start:
                        problems.add(f"{path}.range.end", "must be after the start")
                        problems.reason = "END_BEFORE_START"  # type: ignore[attr-defined]
                    else:
                        spans[weekday].append((start, end, i))
            for items in spans.values():
                items.sort()
                for (_, end_a, _), (start_b, _, j) in zip(items, items[1:], strict=False):
                    if start_b < end_a:
                        problems.add(
                            f"{prefix}.weekly_rules[{j}].range", "overlaps another window that day"
                        )
        if "date_overrides" in paths:
            seen: set[date] = set()
            for i, item in enumerate(data.date_overrides):
                path = f"{prefix}.date_overrides[{i}]"
                day = _local_date(problems, f"{path}.date", item.get("date"))
                if day is not None:
                    if day in seen:
                        problems.add(f"{path}.date", "has another override")
                    seen.add(day)
                for j, rng in enumerate(item.get("ranges", [])):
                    start = _minutes(
                        problems, f"{path}.ranges[{j}].start", rng.get("start"), end=False
                    )
                    end = _minutes(problems, f"{path}.ranges[{j}].end", rng.get("end"), end=True)
                    if start is not None and end is not None and end <= start:
                        problems.add(f"{path}.ranges[{j}].end", "must be after the start")
                        problems.reason = "END_BEFORE_START"  # type: ignore[attr-defined]
        if "time_off" in paths:
            for i, item in enumerate(data.time_off):
                path = f"{prefix}.time_off[{i}].interval"
                start, end = item.get("start"), item.get("end")
                if start is None or end is None:
                    problems.add(path, "needs a start and an end time")
                elif end <= start:
                    problems.add(f"{path}.end_time", "must be after the start")
                    problems.reason = "END_BEFORE_START"  # type: ignore[attr-defined]
                if len(item.get("reason", "")) > MAX_TITLE:
                    problems.add(f"{prefix}.time_off[{i}].reason", "is too long")
        if "booking_policy" in paths:
            validate_policy(problems, f"{prefix}.booking_policy", data.booking_policy)
        _raise(problems)

    @staticmethod
    def _availability_view(person_id: str, row: SchedAvailability | None) -> AvailabilityView:
        if row is None:
            return AvailabilityView(person_id, "", [], [], [], {}, None, 0)
        return AvailabilityView(
            row.person_id,
            row.time_zone,
            list(row.weekly_rules),
            list(row.date_overrides),
            list(row.time_off),
            dict(row.booking_policy),
            row.update_time,
            row.version,
        )

    async def get_availability(self, principal: Principal, person_id: str) -> AvailabilityView:
        principal.require(READ)
        async with self.db.reader() as session:
            await self._person(session, principal.tenant_id, person_id, "person_id")
            row = await srepo.availability(session, principal.tenant_id, person_id)
        return self._availability_view(person_id, row)

    async def set_availability(
        self, principal: Principal, data: AvailabilityInput, paths: list[str] | None, etag: str
    ) -> AvailabilityView:
        principal.require(WRITE)
        wanted = set(paths) if paths else set(AVAILABILITY_PATHS)
        self._validate_availability(data, wanted)
        async with self._scope(principal) as uow:
            await self._person(
                uow.session, principal.tenant_id, data.person_id, "availability.person_id"
            )
            row = await srepo.availability(uow.session, principal.tenant_id, data.person_id)
            if row is None:
                row = SchedAvailability(
                    person_id=data.person_id,
                    tenant_id=principal.tenant_id,
                    time_zone="",
                    weekly_rules=[],
                    date_overrides=[],
                    time_off=[],
                    booking_policy={},
                    version=0,
                    update_time=utcnow(),
                )
                uow.session.add(row)
            _check_etag(row.version, etag)
            if "time_zone" in wanted:
                row.time_zone = data.time_zone
            if "weekly_rules" in wanted:
                row.weekly_rules = data.weekly_rules
            if "date_overrides" in wanted:
                row.date_overrides = data.date_overrides
            if "time_off" in wanted:
                kept = {t["id"] for t in row.time_off}
                row.time_off = [
                    {**t, "id": t.get("id") if t.get("id") in kept else new_id("off")}
                    for t in data.time_off
                ]
            if "booking_policy" in wanted:
                row.booking_policy = data.booking_policy
            row.version += 1
            row.update_time = utcnow()
            await uow.session.flush()
            uow.emit(
                ev.AvailabilityChanged(person_id=data.person_id, changed_fields=sorted(wanted))
            )
            return self._availability_view(data.person_id, row)

    async def list_availabilities(
        self, principal: Principal, person_ids: list[str], size: int, token: str
    ) -> tuple[list[AvailabilityView], str]:
        principal.require(READ)
        if len(person_ids) > 500:
            raise InvalidArgument(FieldViolation("person_ids", "at most 500"))
        limit = paging.page_size(size)
        filters = {"people": sorted(person_ids)}
        after = paging.decode(token, filters)
        async with self.db.reader() as session:
            rows = await srepo.list_availabilities(
                session, principal.tenant_id, person_ids, after[1] if after else "", limit
            )
        views = [self._availability_view(r.person_id, r) for r in rows]
        next_token = (
            paging.encode(datetime(1970, 1, 1, tzinfo=UTC), rows[-1].person_id, filters)
            if len(rows) == limit
            else ""
        )
        return views, next_token

    async def free_busy(
        self, principal: Principal, person_ids: list[str], window: Interval | None
    ) -> list[FreeBusyView]:
        principal.require(READ)
        problems = Violations()
        if not person_ids or len(person_ids) > 100:
            problems.add("person_ids", "name 1 to 100 people")
        _window(problems, "window", window, MAX_FREEBUSY_WINDOW)
        _raise(problems)
        assert window is not None
        tenant = principal.tenant_id
        async with self.db.reader() as session:
            people = {p.id: p for p in await srepo.people(session, tenant, person_ids)}
            for i, pid in enumerate(person_ids):
                if pid not in people:
                    raise NotFound(
                        f"person {pid!r} not found",
                        reason="PERSON_NOT_FOUND",
                        metadata={"field": f"person_ids[{i}]"},
                    )
            settings = await self._settings(session, tenant)
            avail = {
                a.person_id: a for a in await srepo.availabilities(session, tenant, person_ids)
            }
            pad = timedelta(days=1)
            busy_rows = await srepo.busy(
                session, tenant, person_ids, window.start - pad, window.end + pad
            )
        out = []
        for pid in person_ids:
            row = avail.get(pid)
            schedule = schedule_of(row, people[pid].time_zone)
            policy = effective_policy(settings, row.booking_policy if row else None)
            before = seconds(policy.get("buffer_before")) or timedelta(0)
            after = seconds(policy.get("buffer_after")) or timedelta(0)
            busy: list[tuple[Interval, int, str]] = []
            for b in busy_rows:
                if b.person_id != pid:
                    continue
                lesson = Interval(b.start_time, b.end_time)
                if lesson.overlaps(window):
                    busy.append((lesson, pb.BUSY_KIND_BOOKING, b.booking_id))
                if b.role == 2:
                    for buffer in (
                        Interval(b.start_time - before, b.start_time),
                        Interval(b.end_time, b.end_time + after),
                    ):
                        if buffer.start < buffer.end and buffer.overlaps(window):
                            busy.append((buffer, pb.BUSY_KIND_BUFFER, b.booking_id))
            for off in schedule.time_off:
                if off.overlaps(window):
                    busy.append((off, pb.BUSY_KIND_TIME_OFF, ""))
            busy.sort(key=lambda x: (x[0].start, x[1]))
            free = subtract(schedule.open_intervals(window), [b[0] for b in busy])
            out.append(FreeBusyView(pid, free, busy))
        return out

    # Booking checks ------------------------------------------------------------------------

    async def _instructor_context(self, session, tenant: str, instructor_id: str):
        person = await self._person(session, tenant, instructor_id, "booking.instructor_id")
        row = await srepo.availability(session, tenant, instructor_id)
        settings = await self._settings(session, tenant)
        return person, row, effective_policy(settings, row.booking_policy if row else None)

    async def _check_placement(
        self,
        session,
        tenant: str,
        *,
        instructor_id: str,
        learner_ids: Sequence[str],
        subject: str,
        level: str,
        start: datetime,
        end: datetime,
        exclude_booking: str = "",
        one_off: bool = True,
        field_prefix: str = "booking",
        learner_profiles: dict | None = None,
    ) -> None:
        """Raises the error a booking of [start, end) would meet; run after lock_people."""
        now = utcnow()
        if instructor_id:
            person, avail, policy = await self._instructor_context(session, tenant, instructor_id)
            self._require_role(person, INSTRUCTOR, f"{field_prefix}.instructor_id")
            pairs = qualification_pairs(person.instructor_profile)
            subj = subject.strip().lower()
            if subj and (subj, level) not in pairs and (subj, "") not in pairs:
                raise FailedPrecondition(
                    f"instructor {instructor_id!r} is not qualified for {subject} {level}".strip(),
                    reason="INSTRUCTOR_NOT_QUALIFIED",
                )
            for lid, profile in (learner_profiles or {}).items():
                if instructor_id in (profile or {}).get("excluded_instructor_ids", []):
                    raise FailedPrecondition(
                        f"learner {lid!r} excludes instructor {instructor_id!r}",
                        reason="INSTRUCTOR_EXCLUDED",
                    )
            schedule = schedule_of(avail, person.time_zone)
            lesson = Interval(start, end)
            if not any(i.contains(lesson) for i in schedule.open_intervals(lesson)):
                raise InvalidArgument(
                    FieldViolation(
                        f"{field_prefix}.start_time",
                        "the instructor is not available for the whole lesson",
                    ),
                    reason="SLOT_OUTSIDE_AVAILABILITY",
                )
            if one_off:
                notice = seconds(policy.get("minimum_notice"))
                if notice is not None and start - now < notice:
                    raise FailedPrecondition(
                        "the lesson starts sooner than the minimum notice",
                        reason="MINIMUM_NOTICE_NOT_MET",
                    )
                horizon = seconds(policy.get("booking_window"))
                if horizon is not None and start - now > horizon:
                    raise FailedPrecondition(
                        "the lesson starts beyond the booking window",
                        reason="OUTSIDE_BOOKING_WINDOW",
                    )
            before = seconds(policy.get("buffer_before")) or timedelta(0)
            after = seconds(policy.get("buffer_after")) or timedelta(0)
            pad = before + after
            week = local_week_bounds(start, schedule.time_zone)
            day = local_day_bounds(start, schedule.time_zone)
            rows = await srepo.busy(
                session,
                tenant,
                [instructor_id],
                min(start - pad, week.start),
                max(end + pad, week.end),
            )
            rows = [r for r in rows if r.booking_id != exclude_booking]
            # Buffers on both sides stay free: the gap between two lessons is the larger one.
            gap = max(before, after)
            for r in rows:
                if start < r.end_time + gap and r.start_time - gap < end:
                    self._taken(r.booking_id)
            length = end - start
            profile = person.instructor_profile or {}
            for bounds, name, reason, load in (
                (day, "daily_limit", "DAILY_LIMIT_REACHED", profile.get("daily_load_limit")),
                (week, "weekly_limit", "WEEKLY_LIMIT_REACHED", profile.get("weekly_load_limit")),
            ):
                inside = [r for r in rows if bounds.start <= r.start_time < bounds.end]
                limit = policy.get(name) or {}
                booked = sum((r.end_time - r.start_time for r in inside), timedelta(0)) + length
                max_count = int(limit.get("max_bookings", 0))
                max_time = seconds(limit.get("max_booked_time"))
                max_load = seconds(load)
                if (
                    (max_count and len(inside) + 1 > max_count)
                    or (max_time is not None and booked > max_time)
                    or (max_load is not None and booked > max_load)
                ):
                    raise FailedPrecondition(
                        f"the instructor's {name.replace('_', ' ')} would be exceeded",
                        reason=reason,
                    )
        if learner_ids:
            rows = await srepo.busy(session, tenant, list(learner_ids), start, end)
            for r in rows:
                if r.booking_id != exclude_booking:
                    self._taken(r.booking_id)

    @staticmethod
    def _taken(booking_id: str) -> None:
        raise Aborted(
            "the time is already booked",
            reason="SLOT_TAKEN",
            metadata={"conflicting_booking_id": booking_id},
        )

    async def _learners(self, session, tenant: str, ids: Sequence[str], path: str) -> dict:
        rows = {p.id: p for p in await srepo.people(session, tenant, list(ids))}
        for i, lid in enumerate(ids):
            if lid not in rows:
                raise NotFound(
                    f"person {lid!r} not found",
                    reason="PERSON_NOT_FOUND",
                    metadata={"field": f"{path}[{i}]"},
                )
            self._require_role(rows[lid], LEARNER, f"{path}[{i}]")
        return {lid: rows[lid].learner_profile or {} for lid in ids}

    # Bookings ------------------------------------------------------------------------------

    def _validate_booking(self, data: BookingInput, prefix: str = "booking") -> None:
        problems = Violations()
        if data.start_time is None:
            problems.add(f"{prefix}.start_time", "is required")
        if data.end_time is None:
            problems.add(f"{prefix}.end_time", "is required")
        elif data.start_time is not None and data.end_time <= data.start_time:
            problems.add(f"{prefix}.end_time", "must be after the start")
            problems.reason = "END_BEFORE_START"  # type: ignore[attr-defined]
        _zone_check(problems, f"{prefix}.time_zone", data.time_zone)
        if not data.learner_ids and not data.class_id:
            problems.add(f"{prefix}.learner_ids", "name a learner or a class")
        if not data.subject and not data.class_id:
            problems.add(f"{prefix}.subject", "is required without a class")
        if len(set(data.learner_ids)) != len(data.learner_ids):
            problems.add(f"{prefix}.learner_ids", "lists a learner twice")
        if len(data.learner_ids) > MAX_LEARNERS:
            problems.add(f"{prefix}.learner_ids", f"at most {MAX_LEARNERS}")
        if data.capacity < 0:
            problems.add(f"{prefix}.capacity", "must not be negative")
        elif data.capacity and data.capacity < len(data.learner_ids):
            problems.add(f"{prefix}.capacity", "is below the number of learners")
        if len(data.title) > MAX_TITLE:
            problems.add(f"{prefix}.title", f"must be at most {MAX_TITLE} characters")
        if data.class_id:
            # Classes are the roster's; their enrollments are not followed yet.
            problems.add(f"{prefix}.class_id", "class lessons are not supported yet")
        _raise(problems)

    async def create_booking(
        self, principal: Principal, data: BookingInput, key: IdempotencyKey | None
    ) -> SchedBooking:
        principal.require(WRITE)
        self._validate_booking(data)
        assert data.start_time is not None and data.end_time is not None
        tenant = principal.tenant_id

        async def body(uow: UnitOfWork) -> SchedBooking:
            session = uow.session
            profiles = await self._learners(
                session, tenant, data.learner_ids, "booking.learner_ids"
            )
            await srepo.lock_people(session, tenant, [data.instructor_id, *data.learner_ids])
            await self._check_placement(
                session,
                tenant,
                instructor_id=data.instructor_id,
                learner_ids=data.learner_ids,
                subject=data.subject,
                level=data.level,
                start=data.start_time,
                end=data.end_time,
                learner_profiles=profiles,
            )
            await self._check_external(session, SchedBooking, tenant, data.external_id)
            row = self._new_booking(tenant, data, series_id=None, original=None)
            session.add(row)
            await session.flush()
            await srepo.set_participants(session, row)
            self._emit_created(uow, row)
            await self.schedule_booking_timers(uow, row)
            return row

        return await run_idempotent(lambda: self._scope(principal), key, body)

    @staticmethod
    async def _check_external(session, model, tenant: str, external_id: str) -> None:
        if not external_id:
            return
        found = await srepo.external_taken(session, model, tenant, external_id)
        if found:
            raise AlreadyExists(
                f"external id {external_id!r} is taken",
                reason="EXTERNAL_ID_TAKEN",
                metadata={"external_id": external_id},
            )

    @staticmethod
    def _new_booking(
        tenant: str,
        data: BookingInput,
        *,
        series_id: str | None,
        original: datetime | None,
        method: int = pb.ASSIGNMENT_METHOD_MANUAL,
    ) -> SchedBooking:
        now = utcnow()
        assignment = (
            {"instructor_id": data.instructor_id, "method": method, "assign_time": _iso(now)}
            if data.instructor_id
            else None
        )
        return SchedBooking(
            id=new_id("bkg"),
            tenant_id=tenant,
            external_id=data.external_id or None,
            series_id=series_id,
            original_start_time=original,
            title=data.title,
            class_id=data.class_id,
            subject=data.subject,
            level=data.level,
            start_time=data.start_time,
            end_time=data.end_time,
            time_zone=data.time_zone,
            instructor_id=data.instructor_id,
            substituted_instructor_id="",
            learner_ids=list(data.learner_ids),
            capacity=data.capacity or len(data.learner_ids),
            state=SCHEDULED,
            session_id="",
            provision_time=None,
            assignment=assignment,
            cancellation=None,
            reschedules=[],
            no_shows=[],
            reminder_policy=data.reminder_policy,
            labels=dict(data.metadata),
            version=1,
            create_time=now,
            update_time=now,
        )

    @staticmethod
    def _emit_created(uow: UnitOfWork, row: SchedBooking) -> None:
        created = ev.BookingCreated(
            booking_id=row.id,
            series_id=row.series_id or "",
            instructor_id=row.instructor_id,
            learner_ids=list(row.learner_ids),
            class_id=row.class_id,
            subject=row.subject,
            level=row.level,
            capacity=row.capacity,
        )
        created.start_time.FromDatetime(row.start_time)
        created.end_time.FromDatetime(row.end_time)
        if row.original_start_time:
            created.original_start_time.FromDatetime(row.original_start_time)
        uow.emit(created)
        if row.instructor_id:
            assigned = ev.InstructorAssigned(
                booking_id=row.id,
                series_id=row.series_id or "",
                instructor_id=row.instructor_id,
                method=pb.AssignmentMethod.Name((row.assignment or {}).get("method", 1)),
            )
            assigned.start_time.FromDatetime(row.start_time)
            uow.emit(assigned)

    async def _resolve(self, session, tenant: str, ref: BookingRef, *, lock=False) -> SchedBooking:
        if ref.booking_id:
            row = await srepo.booking(session, tenant, ref.booking_id, lock=lock)
            if row is None:
                raise _not_found("booking", "BOOKING_NOT_FOUND", ref.booking_id)
            return row
        if ref.series_id and ref.original_start_time is not None:
            series = await srepo.series(session, tenant, ref.series_id)
            if series is None:
                raise _not_found("series", "SERIES_NOT_FOUND", ref.series_id)
            row = await srepo.occurrence(
                session, tenant, ref.series_id, ref.original_start_time, lock=lock
            )
            if row is None:
                raise NotFound(
                    "the series has no occurrence at that original start",
                    reason="OCCURRENCE_NOT_FOUND",
                )
            return row
        raise InvalidArgument(FieldViolation(ref.field, "name a booking id or an occurrence"))

    async def get_booking(self, principal: Principal, ref: BookingRef) -> SchedBooking:
        principal.require(READ)
        async with self.db.reader() as session:
            return await self._resolve(session, principal.tenant_id, ref)

    async def list_bookings(
        self,
        principal: Principal,
        window: Interval | None,
        *,
        states: list[int],
        size: int,
        token: str,
        **filters,
    ) -> tuple[list[SchedBooking], str]:
        principal.require(READ)
        problems = Violations()
        _window(problems, "window", window, MAX_LIST_WINDOW)
        for i, state in enumerate(states):
            if state not in (SCHEDULED, COMPLETED, CANCELLED):
                problems.add(f"states[{i}]", "is not a booking state")
        _raise(problems)
        assert window is not None
        limit = paging.page_size(size)
        fingerprint = {
            "w": [_iso(window.start), _iso(window.end)],
            "s": sorted(states),
            **filters,
        }
        after = paging.decode(token, fingerprint)
        async with self.db.reader() as session:
            rows = await srepo.list_bookings(
                session,
                principal.tenant_id,
                start=window.start,
                end=window.end,
                states=states or [SCHEDULED, COMPLETED],
                after=after,
                limit=limit,
                **filters,
            )
        return rows, paging.next_token(rows, limit, "start_time", fingerprint)

    async def update_booking(
        self, principal: Principal, booking_id: str, data: BookingInput, paths: list[str], etag: str
    ) -> SchedBooking:
        principal.require(WRITE)
        problems = Violations()
        if "time_zone" in paths:
            _zone_check(problems, "booking.time_zone", data.time_zone)
        if "title" in paths and len(data.title) > MAX_TITLE:
            problems.add("booking.title", "is too long")
        if "capacity" in paths and data.capacity < 0:
            problems.add("booking.capacity", "must not be negative")
        _raise(problems)
        async with self._scope(principal) as uow:
            row = await self._resolve(
                uow.session, principal.tenant_id, BookingRef(booking_id=booking_id), lock=True
            )
            _check_etag(row.version, etag)
            self._require_open(row)
            if "capacity" in paths:
                capacity = data.capacity or len(row.learner_ids)
                if capacity < len(row.learner_ids):
                    raise FailedPrecondition(
                        "capacity is below the learners holding a seat",
                        reason="CAPACITY_BELOW_LEARNERS",
                    )
                row.capacity = capacity
            if "external_id" in paths and data.external_id != (row.external_id or ""):
                await self._check_external(
                    uow.session, SchedBooking, principal.tenant_id, data.external_id
                )
                row.external_id = data.external_id or None
            for name in ("title", "subject", "level", "time_zone", "reminder_policy"):
                if name in paths:
                    setattr(row, name, getattr(data, name))
            if "metadata" in paths:
                row.labels = dict(data.metadata)
            row.version += 1
            row.update_time = utcnow()
            await uow.session.flush()
            return row

    @staticmethod
    def _require_open(row: SchedBooking) -> None:
        if row.state == CANCELLED:
            raise FailedPrecondition("the booking is cancelled", reason="BOOKING_CANCELLED")
        if row.state == COMPLETED or row.end_time <= utcnow():
            raise FailedPrecondition("the booking is over", reason="BOOKING_COMPLETED")

    async def _cutoff(
        self, session, tenant: str, start: datetime, name: str, waive: bool, reason: str
    ) -> int:
        policy = (await self._settings(session, tenant)).get("cancellation_policy") or {}
        cutoff = seconds(policy.get(name))
        if cutoff is None or start - utcnow() >= cutoff:
            return pb.CUTOFF_OUTCOME_ON_TIME
        if int(policy.get("late_action", 0)) == pb.LATE_CHANGE_ACTION_REJECT:
            if not waive:
                raise FailedPrecondition(
                    f"the {name.replace('_', ' ')} has passed",
                    reason=reason,
                    metadata={"cutoff": json_seconds(cutoff)},
                )
            return pb.CUTOFF_OUTCOME_LATE_WAIVED
        return pb.CUTOFF_OUTCOME_LATE

    async def reschedule(
        self,
        principal: Principal,
        ref: BookingRef,
        new_start: datetime | None,
        new_end: datetime | None,
        reason: str,
        initiator: Initiator,
        waive: bool,
        etag: str,
    ) -> tuple[SchedBooking, int]:
        principal.require(WRITE)
        if new_start is None:
            raise InvalidArgument(FieldViolation("new_start_time", "is required"))
        if new_end is not None and new_end <= new_start:
            raise InvalidArgument(
                FieldViolation("new_end_time", "must be after the new start"),
                reason="END_BEFORE_START",
            )
        tenant = principal.tenant_id
        async with self._scope(principal) as uow:
            session = uow.session
            row = await self._resolve(session, tenant, ref, lock=True)
            _check_etag(row.version, etag)
            if row.state == CANCELLED:
                raise FailedPrecondition("the booking is cancelled", reason="BOOKING_CANCELLED")
            if row.start_time <= utcnow():
                raise FailedPrecondition(
                    "the booking has already started", reason="BOOKING_ALREADY_STARTED"
                )
            end = new_end or new_start + (row.end_time - row.start_time)
            outcome = await self._cutoff(
                session,
                tenant,
                row.start_time,
                "reschedule_cutoff",
                waive,
                "RESCHEDULE_CUTOFF_PASSED",
            )
            await srepo.lock_people(session, tenant, [row.instructor_id, *row.learner_ids])
            try:
                await self._check_placement(
                    session,
                    tenant,
                    instructor_id=row.instructor_id,
                    learner_ids=row.learner_ids,
                    subject=row.subject,
                    level=row.level,
                    start=new_start,
                    end=end,
                    exclude_booking=row.id,
                )
            except InvalidArgument as exc:
                exc.violations = [
                    FieldViolation("new_start_time", v.description) for v in exc.violations
                ]
                raise
            previous = (row.start_time, row.end_time)
            now = utcnow()
            row.reschedules = [
                *row.reschedules,
                {
                    "previous_start_time": _iso(previous[0]),
                    "previous_end_time": _iso(previous[1]),
                    "start_time": _iso(new_start),
                    "end_time": _iso(end),
                    "reason": reason,
                    "initiator": initiator.to_json(),
                    "reschedule_time": _iso(now),
                    "outcome": outcome,
                },
            ]
            await self.cancel_booking_timers(uow, row, previous[0])
            row.start_time, row.end_time = new_start, end
            row.version += 1
            row.update_time = now
            await session.flush()
            await srepo.set_participants(session, row)
            # Before the timers: a closed session is let go of and a new one provisioned.
            await self.move_live_session(uow, row)
            await self.schedule_booking_timers(uow, row)
            outcome_name = pb.CutoffOutcome.Name(outcome)
            if row.series_id:
                moved = ev.OccurrenceMoved(
                    series_id=row.series_id,
                    booking_id=row.id,
                    reason=reason,
                    initiator_person_id=initiator.person_id,
                    initiator_role=initiator.role_name,
                    cutoff_outcome=outcome_name,
                )
                moved.original_start_time.FromDatetime(row.original_start_time)
                moved.previous_start_time.FromDatetime(previous[0])
                moved.start_time.FromDatetime(new_start)
                moved.end_time.FromDatetime(end)
                uow.emit(moved)
            else:
                moved = ev.BookingRescheduled(
                    booking_id=row.id,
                    reason=reason,
                    initiator_person_id=initiator.person_id,
                    initiator_role=initiator.role_name,
                    cutoff_outcome=outcome_name,
                    instructor_id=row.instructor_id,
                )
                moved.previous_start_time.FromDatetime(previous[0])
                moved.previous_end_time.FromDatetime(previous[1])
                moved.start_time.FromDatetime(new_start)
                moved.end_time.FromDatetime(end)
                uow.emit(moved)
            return row, outcome

    async def cancel(
        self,
        principal: Principal,
        ref: BookingRef,
        reason: str,
        initiator: Initiator,
        waive: bool,
        etag: str,
    ) -> tuple[SchedBooking, int]:
        principal.require(WRITE)
        tenant = principal.tenant_id
        async with self._scope(principal) as uow:
            session = uow.session
            row = await self._resolve(session, tenant, ref, lock=True)
            if row.state == CANCELLED:
                return row, int((row.cancellation or {}).get("outcome", 0))
            _check_etag(row.version, etag)
            if row.state == COMPLETED or row.end_time <= utcnow():
                raise FailedPrecondition("the booking is over", reason="BOOKING_COMPLETED")
            outcome = await self._cutoff(
                session,
                tenant,
                row.start_time,
                "cancellation_cutoff",
                waive,
                "CANCELLATION_CUTOFF_PASSED",
            )
            self._mark_cancelled(row, reason, initiator, outcome)
            await self.cancel_booking_timers(uow, row, row.start_time)
            await session.flush()
            await srepo.set_participants(session, row)
            await self.cancel_live_session(uow, row, reason)
            fields = dict(
                booking_id=row.id,
                reason=reason,
                initiator_person_id=initiator.person_id,
                initiator_role=initiator.role_name,
                cutoff_outcome=pb.CutoffOutcome.Name(outcome),
                session_id=row.session_id,
            )
            if row.series_id:
                cancelled = ev.OccurrenceCancelled(series_id=row.series_id, **fields)
                cancelled.original_start_time.FromDatetime(row.original_start_time)
            else:
                cancelled = ev.BookingCancelled(**fields)
            cancelled.start_time.FromDatetime(row.start_time)
            uow.emit(cancelled)
            return row, outcome

    @staticmethod
    def _mark_cancelled(row: SchedBooking, reason: str, initiator: Initiator, outcome: int) -> None:
        now = utcnow()
        row.state = CANCELLED
        row.cancellation = {
            "reason": reason,
            "initiator": initiator.to_json(),
            "cancel_time": _iso(now),
            "outcome": outcome,
        }
        row.version += 1
        row.update_time = now

    async def reserve_seat(
        self, principal: Principal, ref: BookingRef, learner_id: str, key
    ) -> SchedBooking:
        principal.require(WRITE)
        if not learner_id:
            raise InvalidArgument(FieldViolation("learner_id", "is required"))
        tenant = principal.tenant_id

        async def body(uow: UnitOfWork) -> SchedBooking:
            session = uow.session
            row = await self._resolve(session, tenant, ref, lock=True)
            if row.state == CANCELLED:
                raise FailedPrecondition("the booking is cancelled", reason="BOOKING_CANCELLED")
            if row.start_time <= utcnow():
                raise FailedPrecondition(
                    "the booking has already started", reason="BOOKING_ALREADY_STARTED"
                )
            await self._learners(session, tenant, [learner_id], "learner_id")
            if learner_id in row.learner_ids:
                raise AlreadyExists(
                    "the learner already holds a seat", reason="SEAT_ALREADY_RESERVED"
                )
            if len(row.learner_ids) >= row.capacity:
                raise FailedPrecondition("no seat is left", reason="BOOKING_FULL")
            await srepo.lock_people(session, tenant, [learner_id])
            for r in await srepo.busy(session, tenant, [learner_id], row.start_time, row.end_time):
                self._taken(r.booking_id)
            row.learner_ids = [*row.learner_ids, learner_id]
            row.version += 1
            row.update_time = utcnow()
            await session.flush()
            await srepo.set_participants(session, row)
            uow.emit(
                ev.BookingSeatReserved(
                    booking_id=row.id,
                    series_id=row.series_id or "",
                    learner_id=learner_id,
                    seats_available=row.capacity - len(row.learner_ids),
                )
            )
            return row

        return await run_idempotent(lambda: self._scope(principal), key, body)

    async def release_seat(
        self,
        principal: Principal,
        ref: BookingRef,
        learner_id: str,
        reason: str,
        initiator: Initiator,
        waive: bool,
    ) -> tuple[SchedBooking, int]:
        principal.require(WRITE)
        tenant = principal.tenant_id
        async with self._scope(principal) as uow:
            session = uow.session
            row = await self._resolve(session, tenant, ref, lock=True)
            if learner_id not in row.learner_ids:
                raise NotFound("the learner holds no seat", reason="SEAT_NOT_FOUND")
            if row.state == COMPLETED or row.end_time <= utcnow():
                raise FailedPrecondition("the booking is over", reason="BOOKING_COMPLETED")
            outcome = await self._cutoff(
                session,
                tenant,
                row.start_time,
                "cancellation_cutoff",
                waive,
                "CANCELLATION_CUTOFF_PASSED",
            )
            row.learner_ids = [x for x in row.learner_ids if x != learner_id]
            row.version += 1
            row.update_time = utcnow()
            await session.flush()
            await srepo.set_participants(session, row)
            uow.emit(
                ev.BookingSeatReleased(
                    booking_id=row.id,
                    series_id=row.series_id or "",
                    learner_id=learner_id,
                )
            )
            return row, outcome

    async def mark_no_show(
        self, principal: Principal, ref: BookingRef, person_ids: list[str], note: str
    ) -> SchedBooking:
        principal.require(WRITE)
        if not person_ids:
            raise InvalidArgument(FieldViolation("person_ids", "name at least one person"))
        async with self._scope(principal) as uow:
            row = await self._resolve(uow.session, principal.tenant_id, ref, lock=True)
            problems = Violations()
            for i, pid in enumerate(person_ids):
                if pid not in row.learner_ids and pid != row.instructor_id:
                    problems.add(f"person_ids[{i}]", "is not a participant of the booking")
            if problems.items:
                raise InvalidArgument(problems.items, reason="NOT_A_PARTICIPANT")
            if row.state == CANCELLED:
                raise FailedPrecondition("the booking is cancelled", reason="BOOKING_CANCELLED")
            if row.start_time > utcnow():
                raise FailedPrecondition(
                    "the booking has not started", reason="BOOKING_NOT_STARTED"
                )
            now = _iso(utcnow())
            marked = {n["person_id"] for n in row.no_shows}
            row.no_shows = [
                *row.no_shows,
                *(
                    {
                        "person_id": p,
                        "source": pb.NO_SHOW_SOURCE_MARKED,
                        "record_time": now,
                        "note": note,
                    }
                    for p in person_ids
                    if p not in marked
                ),
            ]
            row.version += 1
            row.update_time = utcnow()
            await uow.session.flush()
            marked_event = ev.BookingNoShowMarked(
                booking_id=row.id,
                series_id=row.series_id or "",
                learner_ids=[p for p in person_ids if p in row.learner_ids],
                instructor_id=row.instructor_id if row.instructor_id in person_ids else "",
            )
            marked_event.start_time.FromDatetime(row.start_time)
            uow.emit(marked_event)
            if row.instructor_id in person_ids and not row.substituted_instructor_id:
                policy = (await self._settings(uow.session, row.tenant_id)).get(
                    "no_show_policy"
                ) or {}
                action = int(policy.get("action", 0)) or pb.NO_SHOW_ACTION_PROPOSE_SUBSTITUTE
                await self.run_no_show_policy(uow, row, action)
            return row

    # Series --------------------------------------------------------------------------------

    def _validate_series(self, data: SeriesInput) -> None:
        problems = Violations()
        _zone_check(problems, "series.time_zone", data.time_zone, required=True)
        if data.start_time is None:
            problems.add("series.start_time", "is required")
        if data.duration is None or data.duration <= timedelta(0):
            problems.add("series.duration", "must be positive")
        if not data.learner_ids and not data.class_id:
            problems.add("series.learner_ids", "name a learner or a class")
        if not data.subject and not data.class_id:
            problems.add("series.subject", "is required without a class")
        if data.class_id:
            problems.add("series.class_id", "class lessons are not supported yet")
        if data.capacity < 0 or (data.capacity and data.capacity < len(data.learner_ids)):
            problems.add("series.capacity", "must be at least the number of learners")
        if data.rrule:
            try:
                parse_rule(data.rrule)
            except RuleError as exc:
                problems.add("series.rrule", str(exc))
                problems.reason = exc.reason  # type: ignore[attr-defined]
        _raise(problems)
        assert data.start_time is not None
        try:
            occurrences = set(expand(data.rrule, data.start_time, data.time_zone))
        except RuleError as exc:
            raise InvalidArgument(
                FieldViolation("series.rrule", str(exc)), reason=exc.reason
            ) from None
        bad = [
            FieldViolation(f"series.exdates[{i}]", "is not an occurrence of the rule")
            for i, e in enumerate(data.exdates)
            if e.astimezone(UTC) not in occurrences
        ]
        if bad:
            raise InvalidArgument(bad, reason="EXDATE_NOT_AN_OCCURRENCE")

    async def _horizon(self, session, tenant: str, data) -> datetime | None:
        if is_bounded(data.rrule):
            return None
        policy = (await self._settings(session, tenant)).get("default_booking_policy") or {}
        return utcnow() + (seconds(policy.get("booking_window")) or DEFAULT_HORIZON)

    async def create_series(
        self, principal: Principal, data: SeriesInput, conflict_policy: int, key
    ) -> tuple[SchedSeries, list[Conflict]]:
        principal.require(WRITE)
        self._validate_series(data)
        tenant = principal.tenant_id
        policy = conflict_policy or pb.CONFLICT_POLICY_FAIL

        async def body(uow: UnitOfWork):
            session = uow.session
            profiles = await self._learners(session, tenant, data.learner_ids, "series.learner_ids")
            if data.instructor_id:
                person = await self._person(
                    session, tenant, data.instructor_id, "series.instructor_id"
                )
                self._require_role(person, INSTRUCTOR, "series.instructor_id")
            await self._check_external(session, SchedSeries, tenant, data.external_id)
            await srepo.lock_people(session, tenant, [data.instructor_id, *data.learner_ids])
            horizon = await self._horizon(session, tenant, data)
            starts = expand(
                data.rrule,
                data.start_time,
                data.time_zone,
                until=horizon,
                rdates=data.rdates,
                exdates=data.exdates,
            )
            now = utcnow()
            series = SchedSeries(
                id=new_id("ser"),
                tenant_id=tenant,
                external_id=data.external_id or None,
                title=data.title,
                class_id=data.class_id,
                subject=data.subject,
                level=data.level,
                time_zone=data.time_zone,
                start_time=data.start_time,
                duration_seconds=int(data.duration.total_seconds()),
                rrule=data.rrule,
                exdates=[_iso(e) for e in data.exdates],
                rdates=[_iso(r) for r in data.rdates],
                instructor_id=data.instructor_id,
                learner_ids=list(data.learner_ids),
                capacity=data.capacity or len(data.learner_ids),
                reminder_policy=data.reminder_policy,
                state=SERIES_ACTIVE,
                last_start_time=starts[-1] if starts and horizon is None else None,
                cancellation=None,
                cancel_from_time=None,
                labels=dict(data.metadata),
                version=1,
                create_time=now,
                update_time=now,
            )
            session.add(series)
            await session.flush()
            conflicts, booked = await self._book_occurrences(
                uow, series, starts, profiles, policy, data.instructor_id
            )
            created = ev.SeriesCreated(
                series_id=series.id,
                rrule=series.rrule,
                time_zone=series.time_zone,
                instructor_id=series.instructor_id,
                learner_ids=list(series.learner_ids),
                class_id=series.class_id,
                booked_occurrence_count=booked,
            )
            created.start_time.FromDatetime(series.start_time)
            created.duration.FromTimedelta(data.duration)
            for c in conflicts:
                created.conflict_start_times.add().FromDatetime(c.original_start_time)
            uow.emit(created)
            return series, conflicts

        return await run_idempotent(lambda: self._scope(principal), key, body)

    async def _book_occurrences(
        self,
        uow: UnitOfWork,
        series: SchedSeries,
        starts,
        profiles,
        policy: int,
        instructor: str,
        skip: set[datetime] | None = None,
    ) -> tuple[list[Conflict], int]:
        session = uow.session
        conflicts: list[Conflict] = []
        booked = 0
        length = timedelta(seconds=series.duration_seconds)
        timer_settings = await self._settings(session, series.tenant_id)
        for start in starts:
            if skip and start in skip:
                continue
            assigned = instructor
            try:
                await self._check_placement(
                    session,
                    series.tenant_id,
                    instructor_id=instructor,
                    learner_ids=series.learner_ids,
                    subject=series.subject,
                    level=series.level,
                    start=start,
                    end=start + length,
                    one_off=False,
                    field_prefix="series",
                    learner_profiles=profiles,
                )
            except (Aborted, FailedPrecondition, InvalidArgument) as exc:
                if exc.reason in ("ROLE_REQUIRED", "RECORD_INACTIVE", "INSTRUCTOR_NOT_QUALIFIED"):
                    raise
                if policy == pb.CONFLICT_POLICY_FAIL:
                    exc.metadata["original_start_time"] = _iso(start)
                    raise
                conflict = Conflict(
                    start, exc.reason, exc.metadata.get("conflicting_booking_id", ""), exc.message
                )
                conflicts.append(conflict)
                learner_clash = False
                if policy == pb.CONFLICT_POLICY_LEAVE_UNASSIGNED and instructor:
                    # Book without the instructor unless a learner is busy too.
                    try:
                        await self._check_placement(
                            session,
                            series.tenant_id,
                            instructor_id="",
                            learner_ids=series.learner_ids,
                            subject=series.subject,
                            level=series.level,
                            start=start,
                            end=start + length,
                            one_off=False,
                        )
                        assigned = ""
                    except Aborted:
                        learner_clash = True
                if policy == pb.CONFLICT_POLICY_SKIP or learner_clash or not instructor:
                    series.exdates = [*series.exdates, _iso(start)]
                    continue
            data = BookingInput(
                title=series.title,
                class_id=series.class_id,
                subject=series.subject,
                level=series.level,
                start_time=start,
                end_time=start + length,
                time_zone=series.time_zone,
                instructor_id=assigned,
                learner_ids=tuple(series.learner_ids),
                capacity=series.capacity,
            )
            row = self._new_booking(
                series.tenant_id,
                data,
                series_id=series.id,
                original=start,
                method=pb.ASSIGNMENT_METHOD_SERIES,
            )
            session.add(row)
            await session.flush()
            await srepo.set_participants(session, row)
            self._emit_created(uow, row)
            await self.schedule_booking_timers(uow, row, timer_settings)
            booked += 1
        return conflicts, booked

    async def get_series(self, principal: Principal, series_id: str) -> SchedSeries:
        principal.require(READ)
        async with self.db.reader() as session:
            row = await srepo.series(session, principal.tenant_id, series_id)
        if row is None:
            raise _not_found("series", "SERIES_NOT_FOUND", series_id)
        return row

    async def list_series(
        self,
        principal: Principal,
        *,
        state: int,
        class_id: str,
        instructor_id: str,
        learner_id: str,
        size: int,
        token: str,
    ) -> tuple[list[SchedSeries], str]:
        principal.require(READ)
        if learner_id:
            raise InvalidArgument(
                FieldViolation("learner_id", "filtering by learner is not supported yet")
            )
        limit = paging.page_size(size)
        filters = {"state": state, "class": class_id, "instructor": instructor_id}
        after = paging.decode(token, filters)
        async with self.db.reader() as session:
            rows = await srepo.list_series(
                session,
                principal.tenant_id,
                state=state or SERIES_ACTIVE,
                class_id=class_id,
                instructor_id=instructor_id,
                after=after[1] if after else "",
                limit=limit,
            )
        token_out = (
            paging.encode(datetime(1970, 1, 1, tzinfo=UTC), rows[-1].id, filters)
            if len(rows) == limit
            else ""
        )
        return rows, token_out

    async def list_occurrences(
        self,
        principal: Principal,
        series_id: str,
        window: Interval | None,
        include_cancelled: bool,
        size: int,
        token: str,
    ) -> tuple[list[SchedBooking], str]:
        principal.require(READ)
        await self.get_series(principal, series_id)
        states = [SCHEDULED, COMPLETED] + ([CANCELLED] if include_cancelled else [])
        return await self.list_bookings(
            principal, window, states=states, size=size, token=token, series_id=series_id
        )

    async def update_series(
        self,
        principal: Principal,
        series_id: str,
        data: SeriesInput,
        paths: list[str],
        apply_from: datetime | None,
        etag: str,
    ) -> SchedSeries:
        principal.require(WRITE)
        problems = Violations()
        if "title" in paths and len(data.title) > MAX_TITLE:
            problems.add("series.title", "is too long")
        if "capacity" in paths and data.capacity < len(
            data.learner_ids if "learner_ids" in paths else ()
        ):
            problems.add("series.capacity", "is below the number of learners")
        _raise(problems)
        tenant = principal.tenant_id
        async with self._scope(principal) as uow:
            session = uow.session
            series = await srepo.series(session, tenant, series_id, lock=True)
            if series is None:
                raise _not_found("series", "SERIES_NOT_FOUND", series_id)
            _check_etag(series.version, etag)
            if series.state == SERIES_CANCELLED:
                raise FailedPrecondition("the series is cancelled", reason="SERIES_CANCELLED")
            since = apply_from or utcnow()
            occurrences = [
                o
                for o in await srepo.series_occurrences(session, series.id)
                if o.original_start_time >= since
                and o.state == SCHEDULED
                and o.start_time > utcnow()
            ]
            if "instructor_id" in paths and data.instructor_id:
                person = await self._person(
                    session, tenant, data.instructor_id, "series.instructor_id"
                )
                self._require_role(person, INSTRUCTOR, "series.instructor_id")
            if "learner_ids" in paths:
                await self._learners(session, tenant, data.learner_ids, "series.learner_ids")
            people = [data.instructor_id if "instructor_id" in paths else series.instructor_id]
            people += list(data.learner_ids if "learner_ids" in paths else series.learner_ids)
            await srepo.lock_people(session, tenant, people)
            for name in ("title", "reminder_policy"):
                if name in paths:
                    setattr(series, name, getattr(data, name))
            if "metadata" in paths:
                series.labels = dict(data.metadata)
            if "learner_ids" in paths:
                series.learner_ids = list(data.learner_ids)
            if "capacity" in paths:
                series.capacity = data.capacity or len(series.learner_ids)
            if "instructor_id" in paths:
                series.instructor_id = data.instructor_id
            for occ in occurrences:
                if "title" in paths:
                    occ.title = series.title
                if "learner_ids" in paths or "capacity" in paths:
                    occ.learner_ids = list(series.learner_ids)
                    occ.capacity = series.capacity
                if "instructor_id" in paths and occ.instructor_id != series.instructor_id:
                    await self._check_placement(
                        session,
                        tenant,
                        instructor_id=series.instructor_id,
                        learner_ids=(),
                        subject=occ.subject,
                        level=occ.level,
                        start=occ.start_time,
                        end=occ.end_time,
                        exclude_booking=occ.id,
                        one_off=False,
                        field_prefix="series",
                    )
                    await self._session_instructor(
                        uow, occ, occ.instructor_id, series.instructor_id
                    )
                    occ.instructor_id = series.instructor_id
                    occ.assignment = (
                        {
                            "instructor_id": series.instructor_id,
                            "method": pb.ASSIGNMENT_METHOD_SERIES,
                            "assign_time": _iso(utcnow()),
                        }
                        if series.instructor_id
                        else None
                    )
                if "learner_ids" in paths:
                    for r in await srepo.busy(
                        session, tenant, occ.learner_ids, occ.start_time, occ.end_time
                    ):
                        if r.booking_id != occ.id:
                            self._taken(r.booking_id)
                occ.version += 1
                occ.update_time = utcnow()
                await session.flush()
                await srepo.set_participants(session, occ)
            series.version += 1
            series.update_time = utcnow()
            await session.flush()
            updated = ev.SeriesUpdated(
                series_id=series.id, changed_fields=sorted(paths), rrule=series.rrule
            )
            updated.apply_from_time.FromDatetime(since)
            uow.emit(updated)
            return series

    async def cancel_series(
        self,
        principal: Principal,
        series_id: str,
        from_time: datetime | None,
        reason: str,
        initiator: Initiator,
        waive: bool,
        etag: str,
    ) -> tuple[SchedSeries, int]:
        principal.require(WRITE)
        tenant = principal.tenant_id
        async with self._scope(principal) as uow:
            session = uow.session
            series = await srepo.series(session, tenant, series_id, lock=True)
            if series is None:
                raise _not_found("series", "SERIES_NOT_FOUND", series_id)
            _check_etag(series.version, etag)
            if series.state == SERIES_CANCELLED:
                raise FailedPrecondition("the series is cancelled", reason="SERIES_CANCELLED")
            now = utcnow()
            since = from_time or now
            targets = [
                o
                for o in await srepo.series_occurrences(session, series.id)
                if o.original_start_time >= since and o.state == SCHEDULED and o.start_time > now
            ]
            outcome = pb.CUTOFF_OUTCOME_ON_TIME
            if targets:
                outcome = await self._cutoff(
                    session,
                    tenant,
                    min(t.start_time for t in targets),
                    "cancellation_cutoff",
                    waive,
                    "CANCELLATION_CUTOFF_PASSED",
                )
            settings = await self._settings(session, tenant)
            for occ in targets:
                self._mark_cancelled(occ, reason, initiator, outcome)
                await self.cancel_booking_timers(uow, occ, occ.start_time, settings)
                await session.flush()
                await srepo.set_participants(session, occ)
                await self.cancel_live_session(uow, occ, reason)
            series.state = SERIES_CANCELLED
            series.cancellation = {
                "reason": reason,
                "initiator": initiator.to_json(),
                "cancel_time": _iso(now),
                "outcome": outcome,
            }
            series.cancel_from_time = since
            series.version += 1
            series.update_time = now
            await session.flush()
            cancelled = ev.SeriesCancelled(
                series_id=series.id,
                reason=reason,
                initiator_person_id=initiator.person_id,
                initiator_role=initiator.role_name,
                cancelled_occurrence_count=len(targets),
            )
            cancelled.from_time.FromDatetime(since)
            uow.emit(cancelled)
            return series, outcome

    # Provisioning ---------------------------------------------------------------------------

    async def provision(self, principal: Principal, ref: BookingRef) -> SchedBooking:
        """Provisions the booking's live session now (idempotent: once provisioned, the
        booking comes back unchanged)."""
        principal.require(WRITE)
        async with self._scope(principal) as uow:
            row = await self._resolve(uow.session, principal.tenant_id, ref, lock=True)
            if row.state == CANCELLED:
                raise FailedPrecondition("the booking is cancelled", reason="BOOKING_CANCELLED")
            if row.state == COMPLETED:
                raise FailedPrecondition("the booking is completed", reason="BOOKING_COMPLETED")
            await self.provision_in(uow, row)
            return row

    # Slot search ---------------------------------------------------------------------------

    async def find_slots(
        self, principal: Principal, q: FindSlotsQuery
    ) -> tuple[list[SlotView], str, bool]:
        principal.require(READ)
        problems = Violations()
        if not q.subject:
            problems.add("subject", "is required")
        if q.duration is None or q.duration <= timedelta(0):
            problems.add("duration", "must be positive")
        _window(problems, "window", q.window, MAX_FREEBUSY_WINDOW)
        _zone_check(problems, "time_zone", q.time_zone, required=not q.learner_id)
        if q.max_candidates < 0 or q.max_slots < 0:
            problems.add(
                "max_slots" if q.max_slots < 0 else "max_candidates", "must not be negative"
            )
        if q.include_group_seats:
            problems.add("include_group_seats", "group seats in slot search are not supported yet")
        _raise(problems)
        assert q.window is not None and q.duration is not None
        tenant = principal.tenant_id
        async with self.db.reader() as session:
            learner_profile: dict = {}
            tz_name = q.time_zone
            level = q.level
            if q.learner_id:
                learner = await self._person(session, tenant, q.learner_id, "learner_id")
                learner_profile = learner.learner_profile or {}
                tz_name = tz_name or learner.time_zone or "UTC"
                if not level:
                    for item in learner_profile.get("levels", []):
                        if item.get("subject", "").lower() == q.subject.lower():
                            level = item.get("level", "")
            if q.instructor_ids:
                wanted = set(q.instructor_ids)
                named = await srepo.people(session, tenant, list(wanted))
                if len(named) != len(wanted):
                    missing = sorted(wanted - {p.id for p in named})[0]
                    raise _not_found("person", "PERSON_NOT_FOUND", missing)
            excluded = set(q.excluded_instructor_ids) | set(
                learner_profile.get("excluded_instructor_ids", [])
            )
            instructors = [
                i
                for i in await slot_instructors(
                    session, tenant, q.subject.strip().lower(), level, q.instructor_ids
                )
                if i.id not in excluded
            ]
            # Nobody without availability in the window needs their bookings read.
            instructors = [i for i in instructors if i.schedule.open_intervals(q.window)]
            settings = await self._settings(session, tenant)
            # Limits look at whole local weeks around the window.
            span = Interval(q.window.start - timedelta(days=8), q.window.end + timedelta(days=8))
            busy_rows = await srepo.busy_times(
                session, tenant, [i.id for i in instructors], span.start, span.end
            )
            learner_busy = (
                await srepo.busy(session, tenant, [q.learner_id], q.window.start, q.window.end)
                if q.learner_id
                else []
            )
            previous = set()
            if q.learner_id:
                previous = set(
                    await srepo.previous_instructors(session, tenant, q.learner_id, q.subject)
                )
        max_candidates = min(q.max_candidates or 5, 50)
        slots = compute_slots(
            instructors=instructors,
            settings=settings,
            busy_rows=busy_rows,
            learner_busy=[Interval(b.start_time, b.end_time) for b in learner_busy],
            window=q.window,
            duration=q.duration,
            now=utcnow(),
            learner_profile=learner_profile,
            previous=previous,
            weights={
                **DEFAULT_WEIGHTS,
                **(settings.get("matching", {}).get("weights") or {}),
                **(q.weights or {}),
            },
            max_candidates=max_candidates,
        )
        max_slots = min(q.max_slots or 200, 2000)
        out = [
            SlotView(start, start + q.duration, tz_name, tuple(cands[:max_candidates]))
            for start, cands in slots[:max_slots]
        ]
        return out, tz_name, len(slots) > max_slots

    # Calendar ------------------------------------------------------------------------------

    async def calendar_feed(
        self, principal: Principal, person_id: str, window: Interval | None, include_cancelled: bool
    ) -> str:
        # A calendar feed token reads its own person's feed and nothing else.
        if not principal.has_scope(feed_scope(person_id)):
            principal.require(READ)
        now = utcnow()
        window = window or Interval(now - timedelta(days=30), now + timedelta(days=365))
        problems = Violations()
        _window(problems, "window", window, MAX_FEED_WINDOW)
        _raise(problems)
        tenant = principal.tenant_id
        async with self.db.reader() as session:
            await self._person(session, tenant, person_id, "person_id")
            series_rows = await srepo.person_series(session, tenant, person_id)
            occurrences = {s.id: await srepo.series_occurrences(session, s.id) for s in series_rows}
            one_offs = await srepo.list_bookings(
                session,
                tenant,
                start=window.start,
                end=window.end,
                states=[SCHEDULED, COMPLETED, CANCELLED]
                if include_cancelled
                else [SCHEDULED, COMPLETED],
                person_id=person_id,
                limit=10_000,
            )
        from .scheduling_calendar import build_feed

        return build_feed(
            person_id,
            series_rows,
            occurrences,
            [b for b in one_offs if not b.series_id],
            include_cancelled,
        )


@dataclass(frozen=True)
class SlotInstructor:
    """What slot search needs of one instructor: their schedule, own booking policy (the
    tenant's defaults fill its gaps) and instructor profile."""

    id: str
    schedule: Schedule
    policy: dict
    profile: dict


# (person id, availability version, zones) -> Schedule, so weekly rules are parsed and their
# days expanded once per version, not on every search. Versions only grow, so an entry is never
# stale; bounded so a large tenant cannot grow it without limit.
_SCHEDULES: OrderedDict[tuple, Schedule] = OrderedDict()
_SCHEDULES_MAX = 20_000


def _cached_schedule(key: tuple) -> Schedule | None:
    found = _SCHEDULES.get(key)
    if found is not None:
        _SCHEDULES.move_to_end(key)
    return found


def _remember_schedule(key: tuple, schedule: Schedule) -> None:
    _SCHEDULES[key] = schedule
    while len(_SCHEDULES) > _SCHEDULES_MAX:
        _SCHEDULES.popitem(last=False)


async def slot_instructors(
    session, tenant: str, subject: str, level: str, only: Sequence[str] = ()
) -> list[SlotInstructor]:
    """Active, qualified instructors with an availability: one query for all of them, and one
    more for the weekly rules of schedules not cached at their current version."""
    rows = await srepo.slot_instructors(
        session, tenant, subject, level, 1 << INSTRUCTOR, ACTIVE, only
    )
    schedules: dict[str, Schedule] = {}
    missing = []
    for r in rows:
        found = _cached_schedule((r.id, r.version, r.availability_zone, r.time_zone))
        if found is None:
            missing.append(r.id)
        else:
            schedules[r.id] = found
    if missing:
        zones = {r.id: r.time_zone for r in rows}
        for a in await srepo.availabilities(session, tenant, missing):
            person_zone = zones[a.person_id]
            schedule = schedule_of(a, person_zone)
            _remember_schedule((a.person_id, a.version, a.time_zone, person_zone), schedule)
            schedules[a.person_id] = schedule
    return [
        SlotInstructor(r.id, schedules[r.id], r.booking_policy or {}, r.instructor_profile or {})
        for r in rows
        if r.id in schedules
    ]


def compute_slots(
    *,
    instructors: Sequence[SlotInstructor],
    settings,
    busy_rows,
    learner_busy,
    window: Interval,
    duration: timedelta,
    now: datetime,
    learner_profile: dict,
    previous: set[str],
    weights: dict,
    max_candidates: int | None = None,
) -> list[tuple[datetime, list[Candidate]]]:
    """Open slot starts in `window`, each with its ranked instructor candidates (the best
    `max_candidates`, or all).

    Each instructor's allowed lesson starts are computed as intervals (availability minus
    notice, booking window, bookings with buffers, the learner's bookings and full days or
    weeks), and only then stepped through; instructors are visited best score first, so a
    slot's candidates arrive already ranked and the rest are skipped."""
    by_person: dict[str, list] = defaultdict(list)
    for b in busy_rows:
        if getattr(b, "role", 2) == 2:
            by_person[b.person_id].append(b)
    learner_blocked = _blocked_starts(
        [_Span(i.start, i.end) for i in learner_busy], duration, timedelta(0), timedelta(0)
    )
    one = timedelta(microseconds=1)
    scored = []
    for inst in instructors:
        rows = by_person.get(inst.id, [])
        profile = inst.profile
        week_load = (
            sum((r.end_time - r.start_time for r in rows), timedelta(0)).total_seconds() / 60
        )
        target = seconds(profile.get("weekly_load_target"))
        score, terms = score_candidate(
            inst.id,
            profile,
            learner_profile,
            previous,
            week_load,
            target.total_seconds() / 60 if target else 0.0,
            weights,
        )
        scored.append((-score, inst.id, inst, rows, score, terms))
    scored.sort(key=lambda item: (item[0], item[1]))
    found: dict[datetime, list[Candidate]] = {}
    limit = max_candidates if max_candidates and max_candidates > 0 else None
    for _, _, inst, rows, score, terms in scored:
        schedule = inst.schedule
        pieces = schedule.open_intervals(window)
        if not pieces:
            continue
        policy = effective_policy(settings, inst.policy)
        before = seconds(policy.get("buffer_before")) or timedelta(0)
        after = seconds(policy.get("buffer_after")) or timedelta(0)
        step = seconds(policy.get("slot_interval")) or DEFAULT_SLOT_INTERVAL
        earliest = now + (seconds(policy.get("minimum_notice")) or timedelta(0))
        horizon = seconds(policy.get("booking_window"))
        holes = list(_blocked_starts(rows, duration, before, after))
        holes.extend(learner_blocked)
        if earliest > window.start:
            holes.append(Interval(window.start, earliest))
        if horizon is not None and now + horizon < window.end:
            holes.append(Interval(now + horizon + one, window.end))
        holes.extend(
            _full_periods(policy, inst.profile, rows, schedule.time_zone, window, duration)
        )
        holes = merge(holes)
        candidate = Candidate(
            inst.id,
            0,
            score,
            terms,
            (
                ("qualified", True, ""),
                ("available", True, ""),
                ("no_overlap", True, ""),
                ("within_load_limit", True, ""),
            ),
            f"score {score:.2f}",
        )
        for piece in pieces:
            last = piece.end - duration
            if last < piece.start:
                continue
            # Slot starts are aligned on the step from the start of the open piece.
            origin = piece.start
            for free in subtract([Interval(origin, last + one)], holes):
                start = _next_step(origin, free.start, step)
                while start < free.end:
                    cands = found.get(start)
                    if cands is None:
                        found[start] = [candidate]
                    elif limit is None or len(cands) < limit:
                        cands.append(candidate)
                    start += step
    # One ranked copy per (instructor, rank), shared by every slot that places them there.
    ranked: dict[tuple[str, int], Candidate] = {}
    out = []
    for start in sorted(found):
        cands = []
        for i, c in enumerate(found[start], 1):
            r = ranked.get((c.instructor_id, i))
            if r is None:
                r = ranked[(c.instructor_id, i)] = replace(c, rank=i)
            cands.append(r)
        out.append((start, cands))
    return out


@dataclass(frozen=True)
class _Span:
    start_time: datetime
    end_time: datetime


def _full_periods(
    policy: dict, profile: dict, rows, tz_name: str, window: Interval, duration: timedelta
) -> list[Interval]:
    """Local days and weeks (the instructor's zone) in which one more lesson of `duration`
    would break a daily or weekly limit: no start in them is offered."""
    daily = policy.get("daily_limit") or {}
    weekly = policy.get("weekly_limit") or {}
    out = []
    for kind, max_count, max_time, max_load in (
        (
            "day",
            int(daily.get("max_bookings", 0)),
            seconds(daily.get("max_booked_time")),
            seconds(profile.get("daily_load_limit")),
        ),
        (
            "week",
            int(weekly.get("max_bookings", 0)),
            seconds(weekly.get("max_booked_time")),
            seconds(profile.get("weekly_load_limit")),
        ),
    ):
        if not max_count and max_time is None and max_load is None:
            continue
        if (max_time is not None and duration > max_time) or (
            max_load is not None and duration > max_load
        ):
            return [window]  # not even one lesson fits
        bounds_of = local_day_bounds if kind == "day" else local_week_bounds
        loads: dict[datetime, tuple[Interval, int, timedelta]] = {}
        for r in rows:
            bounds = bounds_of(r.start_time, tz_name)
            _, count, total = loads.get(bounds.start, (bounds, 0, timedelta(0)))
            loads[bounds.start] = (bounds, count + 1, total + (r.end_time - r.start_time))
        for bounds, count, total in loads.values():
            if not bounds.overlaps(window):
                continue
            total += duration
            if (
                (max_count and count + 1 > max_count)
                or (max_time is not None and total > max_time)
                or (max_load is not None and total > max_load)
            ):
                out.append(bounds)
    return out


def _blocked_starts(
    rows, duration: timedelta, before: timedelta, after: timedelta
) -> list[Interval]:
    """Start times a lesson of `duration` cannot take because of existing bookings (buffers
    on both sides kept free)."""
    pad = max(before, after)
    return merge(
        Interval(r.start_time - pad - duration + timedelta(microseconds=1), r.end_time + pad)
        for r in rows
    )


def _next_step(origin: datetime, at: datetime, step: timedelta) -> datetime:
    steps = -(-(at - origin) // step)
    return origin + steps * step


def matcher_unavailable(name: str) -> Unavailable:
    return Unavailable(
        f"the matcher provider {name!r} is not available",
        reason="MATCHER_UNAVAILABLE",
        metadata={"matcher": name},
    )
