"""Automated workflows: the built-in ones, their per-tenant configuration, and what each does with
its trigger event (the recipients and notices it asks for).

A built-in workflow is a plain function of (event, settings, roster reads) to notice requests;
the runner (events/workflow_runner.py) feeds it committed events and performs its requests in a
unit of work. Every notice carries a per-recipient-per-cause key, so a redelivered event asks for
the same notices and gets none twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from google.protobuf import json_format

from classwire.api.common.v1 import common_pb2
from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.events.v1 import data_events_pb2 as dev
from classwire.api.events.v1 import event_pb2
from classwire.api.events.v1 import scheduling_events_pb2 as sev
from classwire.api.events.v1 import session_events_pb2 as ses
from classwire.api.roster.v1 import resources_pb2 as roster_pb

from ..events.catalogue import unwrap
from ..events.outbox import UnitOfWork
from ..store import notification_repositories as repo
from ..store import report_repositories as report_repo
from ..store import scheduling_repositories as scheduling_repo
from ..store.types import utcnow
from .errors import FieldViolation, InvalidArgument, NotFound, Violations
from .notifications import NoticeRequest, TrustedHtml, display_name
from .reports_render import guardian_mail

C = roster_pb.NotificationCause
LEARNER_ROLE_BIT = 1 << roster_pb.PERSON_ROLE_LEARNER
STAFF_ROLE_BIT = 1 << roster_pb.PERSON_ROLE_STAFF
ACTIVE = roster_pb.RECORD_STATE_ACTIVE
E_ACTIVE = roster_pb.ENROLLMENT_STATE_ACTIVE
E_LEARNER = roster_pb.ENROLLMENT_ROLE_LEARNER
P_LEARNER = common_pb2.PARTICIPANT_ROLE_LEARNER
MAX_STAFF = 50


@dataclass(frozen=True)
class Setting:
    type: str  # boolean, string, string_list
    default: Any
    description: str = ""


Handler = Callable[["Run", Any], Awaitable[list[NoticeRequest]]]


@dataclass(frozen=True)
class BuiltinWorkflow:
    name: str
    description: str
    trigger: type | tuple[type, ...]  # the event message(s) that start a run
    handler: Handler
    settings: Mapping[str, Setting] = field(default_factory=dict)
    enabled_by_default: bool = True

    @property
    def trigger_types(self) -> tuple[str, ...]:
        triggers = self.trigger if isinstance(self.trigger, tuple) else (self.trigger,)
        return tuple(t.DESCRIPTOR.full_name for t in triggers)

    def schema(self) -> dict:
        types = {"boolean": "boolean", "string": "string", "string_list": "array"}
        properties = {}
        for name, s in self.settings.items():
            prop: dict[str, Any] = {"type": types[s.type], "description": s.description}
            if s.type == "string_list":
                prop["items"] = {"type": "string"}
            prop["default"] = s.default
            properties[name] = prop
        return {"type": "object", "additionalProperties": False, "properties": properties}

    def defaults(self) -> dict:
        return {name: s.default for name, s in self.settings.items()}


@dataclass
class Run:
    """What a built-in handler sees: the envelope, its tenant's roster through the unit of
    work, and the workflow's effective settings."""

    uow: UnitOfWork
    envelope: event_pb2.Event
    workflow: BuiltinWorkflow
    settings: Mapping[str, Any]

    @property
    def session(self):
        return self.uow.session

    @property
    def tenant_id(self) -> str:
        return self.uow.tenant_id

    def notice(
        self, recipient_id: str, cause: str, kind: int, template: str, **kw
    ) -> NoticeRequest:
        return NoticeRequest(
            recipient_id=recipient_id,
            cause=cause,
            cause_kind=kind,
            template=template,
            workflow=self.workflow.name,
            require_consent=bool(self.settings.get("require_consent")),
            allow_unverified=bool(self.settings.get("allow_unverified_channels")),
            **kw,
        )


def _when(ts) -> str:
    if not ts.seconds and not ts.nanos:
        return ""
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M") + " UTC"


async def _session_facts(run: Run, session_id: str) -> dict[str, str]:
    row = await repo.live_session(run.session, run.tenant_id, session_id) if session_id else None
    if row is None:
        return {"title": "your lesson", "start_time": "", "time_zone": "UTC"}
    return {
        "title": row.title or "your lesson",
        "start_time": row.scheduled_start_time.strftime("%Y-%m-%d %H:%M") + " UTC",
        "time_zone": "UTC",
    }


async def expected_learners(run: Run, session_id: str) -> tuple[dict[str, Any], set[str]]:
    """The roster learners a session expected, and those of them who attended. Expected means:
    on a booking of the session, enrolled in its class, or invited as a learner participant."""
    learners: dict[str, Any] = {}
    for booking in await repo.bookings_of_session(run.session, run.tenant_id, session_id):
        for person in (await repo.people(run.session, run.tenant_id, booking.learner_ids)).values():
            learners[person.id] = person
    live = await repo.live_session(run.session, run.tenant_id, session_id)
    if live is not None and live.class_id:
        ids = await repo.class_learners(
            run.session, run.tenant_id, live.class_id, E_ACTIVE, E_LEARNER
        )
        for person in (await repo.people(run.session, run.tenant_id, ids)).values():
            learners[person.id] = person
    participants = await repo.session_participants(run.session, run.tenant_id, session_id)
    attended_ids = await repo.attended_participant_ids(run.session, run.tenant_id, session_id)
    by_identity = await repo.people_by_identity(
        run.session, run.tenant_id, {p.identity for p in participants}
    )
    attended: set[str] = set()
    for participant in participants:
        person = by_identity.get(participant.identity)
        if person is None:
            continue
        if participant.id in attended_ids or participant.first_join_time is not None:
            attended.add(person.id)
        if participant.role == P_LEARNER or person.role_bits & LEARNER_ROLE_BIT:
            learners.setdefault(person.id, person)
    return learners, attended


async def _guardians(run: Run, learner_ids) -> list[tuple[str, str]]:
    """(learner id, guardian id) pairs of guardians who receive the learners' notices."""
    return [
        (link.learner_id, link.guardian_id)
        for link in await repo.guardian_links(run.session, run.tenant_id, learner_ids)
        if link.receives_notices
    ]


async def _staff(run: Run) -> list[str]:
    chosen = list(run.settings.get("staff_person_ids") or [])
    if chosen:
        return chosen
    people = await repo.people_with_role(
        run.session, run.tenant_id, STAFF_ROLE_BIT, ACTIVE, MAX_STAFF
    )
    return [p.id for p in people]


# -- the built-in handlers ---------------------------------------------------------------------


async def booking_reminder(run: Run, event: sev.ReminderDue) -> list[NoticeRequest]:
    offset = event.offset.ToTimedelta()
    start = event.start_time.ToDatetime(tzinfo=UTC) if event.HasField("start_time") else None
    variables = {
        "title": "your lesson",
        "start_time": _when(event.start_time),
        "time_zone": "UTC",
        "booking_id": event.booking_id,
    }
    cause = f"reminder:{event.booking_id}:{int(offset.total_seconds())}"
    return [
        run.notice(
            pid,
            cause,
            C.NOTIFICATION_CAUSE_REMINDER,
            "reminder",
            variables=variables,
            expire_time=start,
        )
        for pid in dict.fromkeys(event.recipient_person_ids)
    ]


async def learner_absent(run: Run, event: ses.AttendanceFinalized) -> list[NoticeRequest]:
    session_id = run.envelope.session_id
    learners, attended = await expected_learners(run, session_id)
    absent = {pid: p for pid, p in learners.items() if pid not in attended}
    if not absent:
        return []
    facts = await _session_facts(run, session_id)
    notices = []
    for learner_id, guardian_id in await _guardians(run, sorted(absent)):
        variables = {
            **facts,
            "learner_name": display_name(absent[learner_id]),
            "session_id": session_id,
        }
        notices.append(
            run.notice(
                guardian_id,
                f"absence_notice:{session_id}:{learner_id}",
                C.NOTIFICATION_CAUSE_ABSENCE_NOTICE,
                "absence_notice",
                variables=variables,
                session_id=session_id,
            )
        )
    if run.settings.get("notify_learners"):
        for learner_id, person in absent.items():
            notices.append(
                run.notice(
                    learner_id,
                    f"absence_notice:{session_id}:{learner_id}",
                    C.NOTIFICATION_CAUSE_ABSENCE_NOTICE,
                    "absence_notice",
                    variables={
                        **facts,
                        "learner_name": display_name(person),
                        "session_id": session_id,
                    },
                    session_id=session_id,
                )
            )
    return notices


async def session_report(run: Run, event: dev.SessionReportReady) -> list[NoticeRequest]:
    session_id = event.session_id or run.envelope.session_id
    learners, _ = await expected_learners(run, session_id)
    facts = await _session_facts(run, session_id)
    recipients: dict[str, list[Any]] = {}  # recipient id -> the learners they hear about
    for learner_id, guardian_id in await _guardians(run, sorted(learners)):
        recipients.setdefault(guardian_id, []).append(learners[learner_id])
    if run.settings.get("notify_learners"):
        for learner_id, person in learners.items():
            recipients.setdefault(learner_id, [person])
    common = {
        **facts,
        "revision": str(event.revision),
        "participant_count": str(event.participant_count),
        "transcript": "included" if event.has_transcript else "not included",
        "session_id": session_id,
    }
    # The stored report of this revision, if it is still the stored one (a rebuild may have
    # replaced it): without it the notice only says that the report is ready.
    row = await report_repo.get(run.session, run.tenant_id, session_id)
    report = data_pb.SessionReport.FromString(row.content) if row and row.content else None
    if report is not None and report.revision != event.revision:
        report = None
    people = await repo.people(run.session, run.tenant_id, list(recipients))
    notices = []
    for recipient, shown in recipients.items():
        variables = {**common, "learner_name": ", ".join(display_name(p) for p in shown)}
        ids = {i for p in shown for i in (p.id, p.external_id) if i}
        identities = [a.identity for a in report.attendance if a.identity in ids] if report else []
        if identities:
            # Each learner's guardian view only: no other learner's name reaches this mail.
            zone = getattr(people.get(recipient), "time_zone", "") or "UTC"
            try:
                ZoneInfo(zone)
            except (ZoneInfoNotFoundError, ValueError):
                zone = "UTC"
            view_html, view_text = guardian_mail(report, identities, time_zone=zone)
            variables.update(report_html=TrustedHtml(view_html), report_text=view_text)
        # One notice per recipient per report: a rebuilt report (a new revision) is a new cause.
        notices.append(
            run.notice(
                recipient,
                f"session_report:{session_id}:{event.revision}",
                C.NOTIFICATION_CAUSE_SESSION_REPORT,
                "session_report",
                variables=variables,
                session_id=session_id,
            )
        )
    return notices


async def instructor_no_show(run: Run, event: sev.InstructorNoShowDetected) -> list[NoticeRequest]:
    instructor = (await repo.people(run.session, run.tenant_id, [event.instructor_id])).get(
        event.instructor_id
    )
    facts = await _session_facts(run, event.session_id)
    variables = {
        **facts,
        "instructor_name": display_name(instructor) or event.instructor_id,
        "start_time": _when(event.start_time) or facts["start_time"],
        "action": event.action or "none",
        "booking_id": event.booking_id,
        "session_id": event.session_id,
    }
    urgent = bool(run.settings.get("ignore_quiet_hours", True))
    return [
        run.notice(
            staff_id,
            f"instructor_no_show:{event.booking_id or event.session_id}",
            C.NOTIFICATION_CAUSE_INSTRUCTOR_NO_SHOW,
            "instructor_no_show",
            variables=variables,
            session_id=event.session_id,
            urgent=urgent,
        )
        for staff_id in await _staff(run)
    ]


async def substitute_assigned(run: Run, event: sev.SubstituteAssigned) -> list[NoticeRequest]:
    booking = await scheduling_repo.booking(run.session, run.tenant_id, event.booking_id)
    people = await repo.people(
        run.session,
        run.tenant_id,
        [event.substitute_instructor_id, event.absent_instructor_id],
    )
    substitute = people.get(event.substitute_instructor_id)
    absent = people.get(event.absent_instructor_id)
    if booking is None or substitute is None:
        return []
    # The lesson's time in the substitute's own zone, since they are the one to turn up.
    zone_name = substitute.time_zone or "UTC"
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        zone_name, zone = "UTC", ZoneInfo("UTC")
    variables = {
        "title": booking.title or booking.subject or "the lesson",
        "start_time": booking.start_time.astimezone(zone).strftime("%Y-%m-%d %H:%M"),
        "time_zone": zone_name,
        "absent_instructor_name": display_name(absent) or "the regular instructor",
        "booking_id": event.booking_id,
        "session_id": event.session_id,
    }
    return [
        run.notice(
            event.substitute_instructor_id,
            f"substitute_assignment:{event.booking_id}:{event.substitute_instructor_id}",
            C.NOTIFICATION_CAUSE_SUBSTITUTE_REQUEST,
            "substitute_assignment",
            variables=variables,
            session_id=event.session_id,
            # Useless once the lesson is over; often needed at short notice.
            expire_time=booking.end_time,
            urgent=bool(run.settings.get("ignore_quiet_hours", True)),
        )
    ]


# A one-off booking or one occurrence of a series was moved, or was cancelled.
SCHEDULE_MOVES = (sev.BookingRescheduled, sev.OccurrenceMoved)
SCHEDULE_CANCELLATIONS = (sev.BookingCancelled, sev.OccurrenceCancelled)


def _zone_of(*names: str) -> tuple[str, ZoneInfo]:
    """The first of `names` that is a known IANA zone, else UTC."""
    for name in names:
        if not name:
            continue
        try:
            return name, ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            continue
    return "UTC", ZoneInfo("UTC")


def _local(moment: datetime, zone: ZoneInfo) -> str:
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M")


async def booking_audience(run: Run, learner_ids, instructor_id: str = "") -> list[str]:
    """A booking's learners, their guardians who receive notices, and its instructor if given,
    each once: the people a reminder of the booking reaches by default."""
    recipients = list(learner_ids)
    recipients += [guardian_id for _, guardian_id in await _guardians(run, list(learner_ids))]
    if instructor_id:
        recipients.append(instructor_id)
    return list(dict.fromkeys(recipients))


async def schedule_change(run: Run, event) -> list[NoticeRequest]:
    """A moved or cancelled lesson, told to its learners, their guardians and (unless the
    `notify_instructor` setting is off) its instructor, but not to whoever made the change."""
    booking = await scheduling_repo.booking(run.session, run.tenant_id, event.booking_id)
    if booking is None:
        return []
    cancelled = isinstance(event, SCHEDULE_CANCELLATIONS)
    # The times of this change come from the event: the booking may have moved again since.
    start = event.start_time.ToDatetime(tzinfo=UTC)
    previous = None if cancelled else event.previous_start_time.ToDatetime(tzinfo=UTC)
    instructor_id = getattr(event, "instructor_id", "") or booking.instructor_id
    recipients = await booking_audience(
        run,
        booking.learner_ids or [],
        instructor_id if run.settings.get("notify_instructor", True) else "",
    )
    # Whoever made the change knows of it already.
    recipients = [pid for pid in recipients if pid != event.initiator_person_id]
    people = await repo.people(run.session, run.tenant_id, recipients)
    reason = f" ({event.reason})" if event.reason else ""
    # Per change, not per booking: a second move is news, a redelivered event is not.
    cause = f"schedule_change:{event.booking_id}:{run.envelope.id}"
    notices = []
    for pid in recipients:
        person = people.get(pid)
        # Each recipient reads the times in their own zone, else in the booking's.
        zone_name, zone = _zone_of(person.time_zone if person else "", booking.time_zone)
        if cancelled:
            change = f"cancelled{reason}"
        else:
            change = f"moved from {_local(previous, zone)} to {_local(start, zone)}{reason}"
        notices.append(
            run.notice(
                pid,
                cause,
                C.NOTIFICATION_CAUSE_SCHEDULE_CHANGE,
                "booking_cancelled" if cancelled else "schedule_change",
                variables={
                    "title": booking.title or booking.subject or "your lesson",
                    "change": change,
                    "start_time": _local(start, zone),
                    "time_zone": zone_name,
                    "booking_id": event.booking_id,
                },
                session_id=getattr(event, "session_id", "") or booking.session_id,
                # A notice about a lesson that has begun (or would have) is no use any more.
                expire_time=start,
            )
        )
    return notices


async def low_engagement(run: Run, event: dev.EngagementFlagRaised) -> list[NoticeRequest]:
    learner = (
        await repo.people_by_identity(run.session, run.tenant_id, {event.learner_identity})
    ).get(event.learner_identity)
    variables = {
        "learner_name": display_name(learner) or event.learner_identity,
        "detail": event.detail or dev.EngagementFlagKind.Name(event.kind),
        "observed": f"{event.observed_value:g}",
        "threshold": f"{event.threshold:g}",
        "session_id": event.session_id,
        "flag_id": event.flag_id,
    }
    return [
        run.notice(
            staff_id,
            f"low_engagement:{event.flag_id}",
            C.NOTIFICATION_CAUSE_LOW_ENGAGEMENT,
            "low_engagement",
            variables=variables,
            session_id=event.session_id,
        )
        for staff_id in await _staff(run)
    ]


_CONSENT = {
    "require_consent": Setting(
        "boolean", False, "notify only recipients who granted notification consent"
    ),
    "allow_unverified_channels": Setting(
        "boolean", False, "also use contact channels the product has not verified"
    ),
}
_STAFF = {
    "staff_person_ids": Setting(
        "string_list", [], "roster people to alert; empty: every active staff member"
    )
}

BUILTINS: dict[str, BuiltinWorkflow] = {
    w.name: w
    for w in (
        BuiltinWorkflow(
            "booking_reminder",
            "Reminds learners, guardians and instructors before a lesson (on ReminderDue).",
            sev.ReminderDue,
            booking_reminder,
            dict(_CONSENT),
        ),
        BuiltinWorkflow(
            "learner_absent",
            "Tells guardians when a learner missed a session (on AttendanceFinalized).",
            ses.AttendanceFinalized,
            learner_absent,
            {**_CONSENT, "notify_learners": Setting("boolean", False, "tell the learner too")},
        ),
        BuiltinWorkflow(
            "session_report",
            "Sends the session report to each learner's guardians (on SessionReportReady).",
            dev.SessionReportReady,
            session_report,
            {**_CONSENT, "notify_learners": Setting("boolean", False, "send it to learners too")},
        ),
        BuiltinWorkflow(
            "instructor_no_show",
            "Alerts staff when an instructor did not join (on InstructorNoShowDetected).",
            sev.InstructorNoShowDetected,
            instructor_no_show,
            {
                **_CONSENT,
                **_STAFF,
                "ignore_quiet_hours": Setting("boolean", True, "alert even during quiet hours"),
            },
        ),
        BuiltinWorkflow(
            "substitute_assigned",
            "Tells the substitute instructor of the lesson they now teach (on SubstituteAssigned).",
            sev.SubstituteAssigned,
            substitute_assigned,
            {
                **_CONSENT,
                "ignore_quiet_hours": Setting("boolean", True, "notify even during quiet hours"),
            },
        ),
        BuiltinWorkflow(
            "schedule_change",
            "Tells learners, their guardians and the instructor (but not whoever made the "
            "change) that a lesson moved or was cancelled (on BookingRescheduled, "
            "BookingCancelled, OccurrenceMoved, OccurrenceCancelled).",
            SCHEDULE_MOVES + SCHEDULE_CANCELLATIONS,
            schedule_change,
            {
                **_CONSENT,
                "notify_instructor": Setting("boolean", True, "tell the instructor too"),
            },
        ),
        BuiltinWorkflow(
            "low_engagement",
            "Flags a learner's low engagement to staff (on EngagementFlagRaised).",
            dev.EngagementFlagRaised,
            low_engagement,
            {**_CONSENT, **_STAFF},
        ),
    )
}


# -- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkflowView:
    """A workflow with the tenant's configuration, as the API shows it."""

    name: str
    description: str
    built_in: bool
    plugin: str
    trigger_event_types: list[str]
    enabled: bool
    settings: dict
    settings_schema: dict
    update_time: datetime | None


@dataclass(frozen=True)
class PluginWorkflowInfo:
    name: str
    description: str
    plugin: str
    event_types: list[str]


def validate_settings(schema: Mapping[str, Setting], settings: Mapping[str, Any], path: str):
    problems = Violations()
    for key, value in settings.items():
        spec = schema.get(key)
        if spec is None:
            problems.add(f"{path}.{key}", "is not a setting of this workflow")
        elif spec.type == "boolean" and not isinstance(value, bool):
            problems.add(f"{path}.{key}", "must be true or false")
        elif spec.type == "string" and not isinstance(value, str):
            problems.add(f"{path}.{key}", "must be a string")
        elif spec.type == "string_list" and (
            not isinstance(value, list) or not all(isinstance(v, str) and v for v in value)
        ):
            problems.add(f"{path}.{key}", "must be a list of non-empty strings")
    return problems


class Workflows:
    """Per-tenant configuration of the built-in workflows and the plugin ones."""

    def __init__(self, db, plugin_workflows: Callable[[], list[PluginWorkflowInfo]] = list) -> None:
        self.db = db
        self.plugin_workflows = plugin_workflows

    def _catalogue(self) -> dict[str, WorkflowView]:
        views = {}
        for w in BUILTINS.values():
            views[w.name] = WorkflowView(
                w.name,
                w.description,
                True,
                "",
                list(w.trigger_types),
                w.enabled_by_default,
                w.defaults(),
                w.schema(),
                None,
            )
        for p in self.plugin_workflows():
            if p.name in views:
                continue
            views[p.name] = WorkflowView(
                p.name,
                p.description,
                False,
                p.plugin,
                list(p.event_types),
                False,
                {},
                {"type": "object"},
                None,
            )
        return views

    @staticmethod
    def _apply(view: WorkflowView, row) -> WorkflowView:
        if row is None:
            return view
        return WorkflowView(
            view.name,
            view.description,
            view.built_in,
            view.plugin,
            view.trigger_event_types,
            row.enabled,
            {**view.settings, **(row.settings or {})},
            view.settings_schema,
            row.update_time,
        )

    async def effective(self, session, tenant_id: str) -> dict[str, WorkflowView]:
        rows = await repo.workflow_configs(session, tenant_id)
        return {name: self._apply(v, rows.get(name)) for name, v in self._catalogue().items()}

    async def list(self, tenant_id: str) -> list[WorkflowView]:
        async with self.db.reader() as session:
            views = await self.effective(session, tenant_id)
        return [views[name] for name in sorted(views)]

    async def get(self, tenant_id: str, name: str) -> WorkflowView:
        async with self.db.reader() as session:
            views = await self.effective(session, tenant_id)
        return self._found(views, name)

    @staticmethod
    def _found(views, name: str) -> WorkflowView:
        if name not in views:
            raise NotFound(
                f"workflow {name!r} not found",
                reason="WORKFLOW_NOT_FOUND",
                metadata={"name": name},
            )
        return views[name]

    async def update(
        self, uow: UnitOfWork, name: str, enabled: bool, settings: dict, paths: list[str]
    ) -> WorkflowView:
        views = await self.effective(uow.session, uow.tenant_id)
        view = self._found(views, name)
        if "settings" in paths and view.built_in:
            validate_settings(BUILTINS[name].settings, settings, "workflow.settings").raise_if_any()
        row = await repo.get_workflow_config(uow.session, uow.tenant_id, name)
        now = utcnow()
        if row is None:
            row = repo.WorkflowConfigRow(
                tenant_id=uow.tenant_id,
                name=name,
                enabled=view.enabled,
                settings={},
                update_time=now,
            )
            uow.session.add(row)
        if "enabled" in paths:
            row.enabled = enabled
        if "settings" in paths:
            row.settings = dict(settings)
        row.update_time = now
        uow.emit(dev.WorkflowUpdated(workflow=name, enabled=row.enabled, changed_fields=paths))
        return self._apply(view, row)


def check_workflow_name(name: str, field_path: str = "name") -> None:
    if not name:
        raise InvalidArgument(FieldViolation(field_path, "is required"))


def payload_dict(envelope: event_pb2.Event) -> dict:
    payload = unwrap(envelope)
    if payload is None:
        return {}
    return json_format.MessageToDict(payload, preserving_proto_field_name=True)
