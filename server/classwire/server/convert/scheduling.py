"""scheduling.v1 protos <-> scheduling domain values and rows.

Schedules and policies cross as their proto JSON form (proto field names, integer enums), the
form the domain validates and the store keeps, so they read back exactly as written.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import json_format

from classwire.api.scheduling.v1 import resources_pb2 as pb

from ..domain import scheduling as d
from ..domain.scheduling_time import Interval
from .common import set_time, time_or_none


def _dict(message) -> dict:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, use_integers_for_enums=True
    )


def _parse(data, message):
    return json_format.ParseDict(data or {}, message, ignore_unknown_fields=True)


def _optional(message, name: str) -> dict | None:
    return _dict(getattr(message, name)) if message.HasField(name) else None


def interval(message, name: str) -> Interval | None:
    if not message.HasField(name):
        return None
    value = getattr(message, name)
    start, end = time_or_none(value, "start_time"), time_or_none(value, "end_time")
    if start is None or end is None:
        return None
    return Interval(start, end)


def _ts(value: str | None, target) -> None:
    if value:
        target.FromDatetime(datetime.fromisoformat(value))


# Settings ---------------------------------------------------------------------------------------


def settings_to_proto(data: dict, version: int, update_time) -> pb.SchedulingSettings:
    out = _parse(data, pb.SchedulingSettings())
    set_time(out.update_time, update_time)
    out.etag = str(version) if version else ""
    return out


def settings_from_proto(message: pb.SchedulingSettings) -> dict:
    data = _dict(message)
    data.pop("update_time", None)
    data.pop("etag", None)
    return data


# Availability -----------------------------------------------------------------------------------


def availability_from_proto(a: pb.AvailabilitySchedule) -> d.AvailabilityInput:
    time_off = []
    for item in a.time_off:
        start = time_or_none(item.interval, "start_time") if item.HasField("interval") else None
        end = time_or_none(item.interval, "end_time") if item.HasField("interval") else None
        time_off.append(
            {
                "id": item.id,
                "start": start.isoformat() if start else None,
                "end": end.isoformat() if end else None,
                "reason": item.reason,
            }
        )
    return d.AvailabilityInput(
        person_id=a.person_id,
        time_zone=a.time_zone,
        weekly_rules=[_dict(r) for r in a.weekly_rules],
        date_overrides=[_dict(o) for o in a.date_overrides],
        time_off=time_off,
        booking_policy=_optional(a, "booking_policy") or {},
    )


def availability_to_proto(v: d.AvailabilityView) -> pb.AvailabilitySchedule:
    out = pb.AvailabilitySchedule(person_id=v.person_id, time_zone=v.time_zone)
    for rule in v.weekly_rules:
        _parse(rule, out.weekly_rules.add())
    for item in v.date_overrides:
        _parse(item, out.date_overrides.add())
    for item in v.time_off:
        off = out.time_off.add(id=item["id"], reason=item.get("reason", ""))
        _ts(item["start"], off.interval.start_time)
        _ts(item["end"], off.interval.end_time)
    if v.booking_policy:
        _parse(v.booking_policy, out.booking_policy)
    set_time(out.update_time, v.update_time)
    out.etag = str(v.version) if v.version else ""
    return out


def free_busy_to_proto(v: d.FreeBusyView) -> pb.FreeBusy:
    out = pb.FreeBusy(person_id=v.person_id)
    for item in v.free:
        i = out.free.add()
        i.start_time.FromDatetime(item.start)
        i.end_time.FromDatetime(item.end)
    for item, kind, booking_id in v.busy:
        b = out.busy.add(kind=kind, booking_id=booking_id)
        b.interval.start_time.FromDatetime(item.start)
        b.interval.end_time.FromDatetime(item.end)
    return out


# Bookings ---------------------------------------------------------------------------------------


def ref_from_proto(message, field: str = "booking") -> d.BookingRef:
    kind = message.WhichOneof("ref")
    if kind == "booking_id":
        return d.BookingRef(booking_id=message.booking_id, field=field)
    if kind == "occurrence":
        return d.BookingRef(
            series_id=message.occurrence.series_id,
            original_start_time=time_or_none(message.occurrence, "original_start_time"),
            field=field,
        )
    return d.BookingRef(field=field)


def initiator_from_proto(message) -> d.Initiator:
    return d.Initiator(person_id=message.person_id, role=message.role)


def booking_from_proto(b: pb.Booking) -> d.BookingInput:
    return d.BookingInput(
        external_id=b.external_id,
        title=b.title,
        class_id=b.class_id,
        subject=b.subject,
        level=b.level,
        start_time=time_or_none(b, "start_time"),
        end_time=time_or_none(b, "end_time"),
        time_zone=b.time_zone,
        instructor_id=b.instructor_id,
        learner_ids=tuple(b.learner_ids),
        capacity=b.capacity,
        reminder_policy=_optional(b, "reminder_policy"),
        metadata=dict(b.metadata),
    )


def _initiator(data: dict, target) -> None:
    target.person_id = data.get("person_id", "")
    target.role = int(data.get("role", 0))


def booking_to_proto(row) -> pb.Booking:
    out = pb.Booking(
        id=row.id,
        external_id=row.external_id or "",
        series_id=row.series_id or "",
        title=row.title,
        class_id=row.class_id,
        subject=row.subject,
        level=row.level,
        time_zone=row.time_zone,
        instructor_id=row.instructor_id,
        substituted_instructor_id=row.substituted_instructor_id,
        learner_ids=list(row.learner_ids),
        capacity=row.capacity,
        seats_available=max(0, row.capacity - len(row.learner_ids)),
        state=row.state,
        session_id=row.session_id,
        metadata=dict(row.labels),
        etag=str(row.version),
    )
    set_time(out.original_start_time, row.original_start_time)
    out.start_time.FromDatetime(row.start_time)
    out.end_time.FromDatetime(row.end_time)
    set_time(out.provision_time, row.provision_time)
    if row.assignment:
        a = row.assignment
        out.assignment.instructor_id = a.get("instructor_id", "")
        out.assignment.method = int(a.get("method", 0))
        out.assignment.matcher = a.get("matcher", "")
        out.assignment.plan_id = a.get("plan_id", "")
        _ts(a.get("assign_time"), out.assignment.assign_time)
        if a.get("explanation"):
            out.assignment.explanation.CopyFrom(explanation_to_proto(a["explanation"]))
    if row.cancellation:
        c = row.cancellation
        out.cancellation.reason = c.get("reason", "")
        _initiator(c.get("initiator", {}), out.cancellation.initiator)
        _ts(c.get("cancel_time"), out.cancellation.cancel_time)
        out.cancellation.outcome = int(c.get("outcome", 0))
    for r in row.reschedules:
        m = out.reschedules.add(reason=r.get("reason", ""), outcome=int(r.get("outcome", 0)))
        _ts(r["previous_start_time"], m.previous_start_time)
        _ts(r["previous_end_time"], m.previous_end_time)
        _ts(r["start_time"], m.start_time)
        _ts(r["end_time"], m.end_time)
        _ts(r.get("reschedule_time"), m.reschedule_time)
        _initiator(r.get("initiator", {}), m.initiator)
    for n in row.no_shows:
        m = out.no_shows.add(
            person_id=n["person_id"], source=int(n.get("source", 0)), note=n.get("note", "")
        )
        _ts(n.get("record_time"), m.record_time)
    if row.reminder_policy is not None:
        _parse(row.reminder_policy, out.reminder_policy)
    out.create_time.FromDatetime(row.create_time)
    out.update_time.FromDatetime(row.update_time)
    return out


# Series -----------------------------------------------------------------------------------------


def series_from_proto(s: pb.Series) -> d.SeriesInput:
    return d.SeriesInput(
        external_id=s.external_id,
        title=s.title,
        class_id=s.class_id,
        subject=s.subject,
        level=s.level,
        time_zone=s.time_zone,
        start_time=time_or_none(s, "start_time"),
        duration=s.duration.ToTimedelta() if s.HasField("duration") else None,
        rrule=s.rrule,
        exdates=tuple(t.ToDatetime(tzinfo=UTC) for t in s.exdates),
        rdates=tuple(t.ToDatetime(tzinfo=UTC) for t in s.rdates),
        instructor_id=s.instructor_id,
        learner_ids=tuple(s.learner_ids),
        capacity=s.capacity,
        reminder_policy=_optional(s, "reminder_policy"),
        metadata=dict(s.metadata),
    )


def series_to_proto(row) -> pb.Series:
    from datetime import timedelta

    out = pb.Series(
        id=row.id,
        external_id=row.external_id or "",
        title=row.title,
        class_id=row.class_id,
        subject=row.subject,
        level=row.level,
        time_zone=row.time_zone,
        rrule=row.rrule,
        instructor_id=row.instructor_id,
        learner_ids=list(row.learner_ids),
        capacity=row.capacity,
        state=row.state,
        metadata=dict(row.labels),
        etag=str(row.version),
    )
    out.start_time.FromDatetime(row.start_time)
    out.duration.FromTimedelta(timedelta(seconds=row.duration_seconds))
    for value in row.exdates:
        out.exdates.add().FromDatetime(datetime.fromisoformat(value))
    for value in row.rdates:
        out.rdates.add().FromDatetime(datetime.fromisoformat(value))
    if row.reminder_policy is not None:
        _parse(row.reminder_policy, out.reminder_policy)
    set_time(out.last_start_time, row.last_start_time)
    if row.cancellation:
        c = row.cancellation
        out.cancellation.reason = c.get("reason", "")
        _initiator(c.get("initiator", {}), out.cancellation.initiator)
        _ts(c.get("cancel_time"), out.cancellation.cancel_time)
        out.cancellation.outcome = int(c.get("outcome", 0))
    set_time(out.cancel_from_time, row.cancel_from_time)
    out.create_time.FromDatetime(row.create_time)
    out.update_time.FromDatetime(row.update_time)
    return out


def conflict_to_proto(c: d.Conflict) -> pb.OccurrenceConflict:
    out = pb.OccurrenceConflict(
        reason=c.reason, conflicting_booking_id=c.conflicting_booking_id, detail=c.detail
    )
    out.original_start_time.FromDatetime(c.original_start_time)
    return out


# Slots ------------------------------------------------------------------------------------------


def candidate_to_proto(c: d.Candidate) -> pb.Candidate:
    out = pb.Candidate(instructor_id=c.instructor_id, rank=c.rank)
    e = out.explanation
    for name, ok, detail in c.constraints:
        e.constraints.add(name=name, satisfied=ok, detail=detail)
    for name, weight, value, detail in c.terms:
        e.terms.add(
            name=name, weight=weight, value=value, contribution=weight * value, detail=detail
        )
    e.score = c.score
    e.summary = c.summary
    return out


def slots_to_proto(slots) -> list[pb.Slot]:
    """Slots whose candidates share explanations: each instructor's explanation is built once
    (it does not depend on the slot) and copied."""
    memo: dict[str, pb.MatchExplanation] = {}
    return [slot_to_proto(s, memo) for s in slots]


def slot_to_proto(s: d.SlotView, memo: dict | None = None) -> pb.Slot:
    from ..domain.scheduling_time import zone

    local = s.start.astimezone(zone(s.time_zone))
    out = pb.Slot(booking_id=s.booking_id, seats_available=s.seats_available)
    out.start_time.FromDatetime(s.start)
    out.end_time.FromDatetime(s.end)
    out.local_date.year, out.local_date.month, out.local_date.day = (
        local.year,
        local.month,
        local.day,
    )
    out.local_start.hours, out.local_start.minutes = local.hour, local.minute
    out.utc_offset.FromTimedelta(local.utcoffset())
    if memo is None:
        out.candidates.extend(candidate_to_proto(c) for c in s.candidates)
        return out
    for c in s.candidates:
        explained = memo.get(c.instructor_id)
        if explained is None:
            explained = memo[c.instructor_id] = candidate_to_proto(c).explanation
        out.candidates.add(instructor_id=c.instructor_id, rank=c.rank).explanation.CopyFrom(
            explained
        )
    return out


# Matching, substitutes, feed tokens -------------------------------------------------------------


def match_options_from_proto(message, name: str = "match"):
    """MatchOptions of a request as the domain's input; the default options when unset."""
    from ..domain.scheduling_matching import MatchOptionsInput

    if not message.HasField(name):
        return MatchOptionsInput()
    m = getattr(message, name)
    weights = None
    if m.HasField("weights"):
        w = m.weights
        weights = {
            "continuity": w.continuity,
            "language": w.language,
            "preference": w.preference,
            "load_balance": w.load_balance,
            **dict(w.custom),
        }
    return MatchOptionsInput(
        matcher=m.matcher,
        weights=weights,
        excluded_instructor_ids=tuple(m.excluded_instructor_ids),
        instructor_ids=tuple(m.instructor_ids),
    )


def explanation_to_proto(data: dict | None) -> pb.MatchExplanation:
    return _parse(data, pb.MatchExplanation())


def match_candidate_to_proto(c, rank: int | None = None) -> pb.Candidate:
    """A matcher provider's MatchCandidate (or a chosen MatchAssignment) as a Candidate."""
    from ..domain.scheduling_matching import explanation_json

    return pb.Candidate(
        instructor_id=c.instructor_id,
        rank=c.rank if rank is None else rank,
        explanation=explanation_to_proto(explanation_json(c.explanation)),
    )


def plan_to_proto(row) -> pb.AssignmentPlan:
    out = pb.AssignmentPlan(
        id=row.id,
        state=row.state,
        matcher=row.matcher,
        status=row.status,
        objective=row.objective,
        best_bound=row.best_bound,
        gap=row.gap,
        assigned_count=row.assigned_count,
        unassigned_count=row.unassigned_count,
        changed_count=row.changed_count,
    )
    out.solve_duration.FromTimedelta(timedelta(seconds=row.solve_seconds))
    for e in row.assignments:
        out.assignments.add(
            booking_id=e["booking_id"],
            instructor_id=e["instructor_id"],
            previous_instructor_id=e["previous_instructor_id"],
            explanation=explanation_to_proto(e.get("explanation")),
        )
    set_time(out.create_time, row.create_time)
    set_time(out.apply_time, row.apply_time)
    set_time(out.expire_time, row.expire_time)
    return out


def proposal_to_proto(row) -> pb.SubstituteProposal:
    out = pb.SubstituteProposal(
        id=row.id,
        booking_id=row.booking_id,
        absent_instructor_id=row.absent_instructor_id,
        matcher=row.matcher,
        state=row.state,
        assigned_instructor_id=row.assigned_instructor_id,
    )
    for c in row.candidates:
        out.candidates.add(
            instructor_id=c["instructor_id"],
            rank=c["rank"],
            explanation=explanation_to_proto(c.get("explanation")),
        )
    set_time(out.create_time, row.create_time)
    return out


def feed_token_to_proto(row, secret: str = "", base_url: str = "") -> pb.CalendarFeedToken:
    out = pb.CalendarFeedToken(id=row.id, person_id=row.person_id, label=row.label, token=secret)
    if secret and base_url:
        out.url = f"{base_url.rstrip('/')}/calendar/v1/{secret}.ics"
    set_time(out.create_time, row.create_time)
    set_time(out.last_use_time, row.last_use_time)
    return out
