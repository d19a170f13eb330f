"""RFC 5545 feeds of a person's lessons, built with the `icalendar` package.

One VEVENT per series (DTSTART in the series' zone, RRULE, EXDATE for excluded and cancelled
occurrences, RDATE), one per moved occurrence (same UID, RECURRENCE-ID = original start), one
per one-off booking; a VTIMEZONE for every zone used. UIDs are the ids, so they are stable.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from icalendar import Calendar, Event

from .scheduling_time import zone

PRODID = "-//classwire//scheduling//EN"
CANCELLED = 3


def _uid(ident: str) -> str:
    return f"{ident}@classwire"


def _summary(row) -> str:
    return row.title or " ".join(x for x in (row.subject, row.level) if x) or "Lesson"


def build_feed(person_id, series_rows, occurrences, one_offs, include_cancelled: bool) -> str:
    cal = Calendar()
    cal.add("prodid", PRODID)
    cal.add("version", "2.0")
    cal.add("calscale", "GREGORIAN")
    stamp = datetime.now(UTC).replace(microsecond=0)
    for series in series_rows:
        tz = zone(series.time_zone)
        event = Event()
        event.add("uid", _uid(series.id))
        event.add("dtstamp", stamp)
        event.add("summary", _summary(series))
        event.add("dtstart", series.start_time.astimezone(tz))
        event.add("duration", timedelta(seconds=series.duration_seconds))
        if series.rrule:
            event.add("rrule", _rrule(series.rrule))
        excluded = {datetime.fromisoformat(e) for e in series.exdates}
        moved = []
        for occ in occurrences.get(series.id, []):
            if occ.state == CANCELLED:
                excluded.add(occ.original_start_time)
            elif occ.start_time != occ.original_start_time or (
                occ.end_time - occ.start_time
            ) != timedelta(seconds=series.duration_seconds):
                moved.append(occ)
            elif person_id not in (occ.instructor_id, *occ.learner_ids):
                excluded.add(occ.original_start_time)
        for value in sorted(excluded):
            event.add("exdate", value.astimezone(tz))
        for value in series.rdates:
            event.add("rdate", datetime.fromisoformat(value).astimezone(tz))
        cal.add_component(event)
        for occ in moved:
            override = Event()
            override.add("uid", _uid(series.id))
            override.add("dtstamp", stamp)
            override.add("summary", _summary(occ))
            override.add("recurrence-id", occ.original_start_time.astimezone(tz))
            override.add("dtstart", occ.start_time.astimezone(tz))
            override.add("dtend", occ.end_time.astimezone(tz))
            cal.add_component(override)
    for row in one_offs:
        tz = zone(row.time_zone or "UTC")
        event = Event()
        event.add("uid", _uid(row.id))
        event.add("dtstamp", stamp)
        event.add("summary", _summary(row))
        event.add("dtstart", row.start_time.astimezone(tz))
        event.add("dtend", row.end_time.astimezone(tz))
        if row.state == CANCELLED and include_cancelled:
            event.add("status", "CANCELLED")
        cal.add_component(event)
    cal.add_missing_timezones()
    return cal.to_ical().decode()


def _rrule(rule: str) -> dict:
    parts = {}
    for chunk in rule.split(";"):
        name, _, value = chunk.partition("=")
        parts[name.upper()] = value.split(",") if name.upper() == "BYDAY" else value
    return {
        k: (datetime.strptime(v, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC) if k == "UNTIL" else v)
        for k, v in parts.items()
    }
