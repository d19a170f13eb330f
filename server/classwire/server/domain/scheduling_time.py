"""Wall-clock arithmetic of the scheduling area: availability expanded in a person's IANA zone,
interval sets, and RFC 5545 recurrence expanded in a series' zone.

Pure functions over timezone-aware UTC datetimes; the zone database (zoneinfo) converts local
times, never a fixed offset, so daylight-saving transitions move nothing by accident.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from dateutil.rrule import rrulestr

MINUTES_PER_DAY = 24 * 60
FREQS = {"DAILY", "WEEKLY", "MONTHLY", "YEARLY"}
# Unbounded rules and huge COUNTs are materialised up to this many occurrences.
MAX_OCCURRENCES = 1000


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def is_time_zone(name: str) -> bool:
    return name in _zones()


@lru_cache(maxsize=512)
def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def local_instant(day: date, minutes: int, tz: ZoneInfo) -> datetime:
    """The UTC instant of a wall-clock time (minutes after midnight, 1440 = next midnight).

    fold=0: an ambiguous time takes its first instant; a nonexistent one (spring forward) is
    read with the offset before the gap, which lands it after the gap as RFC 5545 says."""
    if minutes >= MINUTES_PER_DAY:
        day, minutes = day + timedelta(days=1), minutes - MINUTES_PER_DAY
    local = datetime.combine(day, time(minutes // 60, minutes % 60), tzinfo=tz)
    return local.astimezone(UTC)


@dataclass(frozen=True)
class Interval:
    start: datetime
    end: datetime

    def overlaps(self, other: Interval) -> bool:
        return self.start < other.end and other.start < self.end

    def contains(self, other: Interval) -> bool:
        return self.start <= other.start and other.end <= self.end


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for item in sorted(intervals, key=lambda i: i.start):
        if out and item.start <= out[-1].end:
            if item.end > out[-1].end:
                out[-1] = Interval(out[-1].start, item.end)
        else:
            out.append(item)
    return out


def subtract(base: Sequence[Interval], holes: Iterable[Interval]) -> list[Interval]:
    """`base` (merged) minus `holes`."""
    holes = merge(holes)
    out: list[Interval] = []
    for piece in base:
        start = piece.start
        for hole in holes:
            if hole.end <= start or hole.start >= piece.end:
                continue
            if hole.start > start:
                out.append(Interval(start, hole.start))
            start = max(start, hole.end)
            if start >= piece.end:
                break
        if start < piece.end:
            out.append(Interval(start, piece.end))
    return out


@dataclass(frozen=True)
class WeeklyWindow:
    weekday: int  # ISO: Monday 1
    start: int  # minutes after local midnight
    end: int


@dataclass(frozen=True)
class Schedule:
    """A person's availability in their zone: weekly windows, per-date replacements, time off."""

    time_zone: str
    weekly: tuple[WeeklyWindow, ...] = ()
    overrides: dict[date, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    time_off: tuple[Interval, ...] = ()
    # Local date -> that day's windows as UTC intervals. A schedule is immutable, so its
    # expansion of a day never changes; slot search asks for the same days again and again.
    _days: dict[date, tuple[Interval, ...]] = field(
        default_factory=dict, compare=False, repr=False, hash=False
    )
    _windows: dict[Interval, tuple[Interval, ...]] = field(
        default_factory=dict, compare=False, repr=False, hash=False
    )

    def windows_of(self, day: date) -> tuple[tuple[int, int], ...]:
        if day in self.overrides:
            return self.overrides[day]
        weekday = day.isoweekday()
        return tuple((w.start, w.end) for w in self.weekly if w.weekday == weekday)

    def day_intervals(self, day: date) -> tuple[Interval, ...]:
        found = self._days.get(day)
        if found is None:
            tz = zone(self.time_zone)
            pieces = []
            for start, end in self.windows_of(day):
                piece = Interval(local_instant(day, start, tz), local_instant(day, end, tz))
                if piece.start < piece.end:
                    pieces.append(piece)
            found = tuple(pieces)
            if len(self._days) > 1024:  # bounded: long-lived schedules see many windows
                self._days.clear()
            self._days[day] = found
        return found

    def open_intervals(self, window: Interval) -> list[Interval]:
        """Availability in `window`, as UTC intervals, time off removed."""
        # Slot search asks twice for the same window (prefilter, then slots): keep the last.
        found = self._windows.get(window)
        if found is None:
            if len(self._windows) > 64:
                self._windows.clear()
            found = self._windows[window] = tuple(self._open_intervals(window))
        return list(found)

    def _open_intervals(self, window: Interval) -> list[Interval]:
        tz = zone(self.time_zone)
        first = window.start.astimezone(tz).date() - timedelta(days=1)
        last = window.end.astimezone(tz).date() + timedelta(days=1)
        pieces = []
        day = first
        while day <= last:
            for piece in self.day_intervals(day):
                if piece.overlaps(window):
                    pieces.append(
                        Interval(max(piece.start, window.start), min(piece.end, window.end))
                    )
            day += timedelta(days=1)
        if not pieces:
            return []
        return subtract(merge(pieces), [t for t in self.time_off if t.overlaps(window)])


@lru_cache(maxsize=8192)
def day_bounds(day: date, tz_name: str) -> Interval:
    """The UTC interval of a local day (23 or 25 hours across a DST change)."""
    tz = zone(tz_name)
    return Interval(local_instant(day, 0, tz), local_instant(day, MINUTES_PER_DAY, tz))


@lru_cache(maxsize=8192)
def week_bounds(monday: date, tz_name: str) -> Interval:
    tz = zone(tz_name)
    return Interval(local_instant(monday, 0, tz), local_instant(monday + timedelta(days=7), 0, tz))


def local_day_bounds(instant: datetime, tz_name: str) -> Interval:
    return day_bounds(instant.astimezone(zone(tz_name)).date(), tz_name)


def local_week_bounds(instant: datetime, tz_name: str) -> Interval:
    day = instant.astimezone(zone(tz_name)).date()
    return week_bounds(day - timedelta(days=day.isoweekday() - 1), tz_name)


# Recurrence -------------------------------------------------------------------------------------


class RuleError(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def parse_rule(rule: str) -> tuple[dict[str, str], datetime | None]:
    """The rule's parts and its UNTIL as a UTC instant; RuleError when it breaks the contract."""
    parts: dict[str, str] = {}
    for chunk in rule.strip().removeprefix("RRULE:").split(";"):
        name, sep, value = chunk.partition("=")
        if not sep or not name:
            raise RuleError("RRULE_INVALID", f"{chunk!r} is not NAME=VALUE")
        parts[name.strip().upper()] = value.strip().upper()
    if parts.get("FREQ") not in FREQS:
        raise RuleError("RRULE_INVALID", "FREQ must be DAILY, WEEKLY, MONTHLY or YEARLY")
    if "COUNT" in parts and "UNTIL" in parts:
        raise RuleError("RRULE_COUNT_AND_UNTIL", "a rule may have COUNT or UNTIL, not both")
    until = None
    if "UNTIL" in parts:
        value = parts["UNTIL"]
        if not value.endswith("Z"):
            raise RuleError("RRULE_INVALID", "UNTIL must be in UTC form (20260630T220000Z)")
        try:
            until = datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise RuleError("RRULE_INVALID", "UNTIL is not a UTC date-time") from None
    if "COUNT" in parts and (not parts["COUNT"].isdigit() or int(parts["COUNT"]) < 1):
        raise RuleError("RRULE_INVALID", "COUNT must be a positive integer")
    return parts, until


def expand(
    rule: str,
    start: datetime,
    tz_name: str,
    *,
    until: datetime | None = None,
    rdates: Sequence[datetime] = (),
    exdates: Sequence[datetime] = (),
    limit: int = MAX_OCCURRENCES,
) -> list[datetime]:
    """Original starts (UTC) of a rule expanded in `tz_name` from DTSTART `start`, wall-clock
    times kept across DST; at most `limit`, none after `until` (UTC) when given."""
    tz = zone(tz_name)
    local_start = start.astimezone(tz).replace(tzinfo=None)
    starts: set[datetime] = set()
    if rule:
        parts, rule_until = parse_rule(rule)
        # The rule is expanded on floating wall-clock times; UNTIL (UTC) is compared on instants.
        floating = ";".join(f"{k}={v}" for k, v in parts.items() if k != "UNTIL")
        try:
            recurrence = rrulestr(floating, dtstart=local_start)
        except (ValueError, TypeError) as exc:
            raise RuleError("RRULE_INVALID", str(exc) or "unparseable rule") from None
        bounds = [b for b in (rule_until, until) if b is not None]
        bound = min(bounds) if bounds else None
        for naive in recurrence:
            instant = naive.replace(tzinfo=tz).astimezone(UTC)
            if bound is not None and instant > bound:
                break
            starts.add(instant)
            if len(starts) >= limit:
                break
    else:
        starts.add(start.astimezone(UTC))
    starts.update(r.astimezone(UTC) for r in rdates if until is None or r <= until)
    starts.difference_update(e.astimezone(UTC) for e in exdates)
    return sorted(starts)[:limit]


def is_bounded(rule: str) -> bool:
    if not rule:
        return True
    parts, _ = parse_rule(rule)
    return "COUNT" in parts or "UNTIL" in parts
