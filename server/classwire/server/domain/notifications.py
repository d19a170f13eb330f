"""Notifications: one notice per recipient per cause, rendered from templates, sent through
notification-channel providers, with the recipient's preferences, consent and quiet hours
respected.

A notice is asked for inside a unit of work (a workflow run): the recipient is resolved from the
roster, the notice is rendered (so every retry sends the same text) and stored under the unique
(recipient, cause) key. A second request for the same key finds the row and does nothing, so a
redelivered event never becomes a second notice. A notice held by quiet hours is DEFERRED with a
durable timer that releases it when the quiet hours end. The sender claims due PENDING notices
with a lease, sends them outside any transaction (network I/O must not hold the writer), and
records each outcome in a unit of work with its event: NotificationSent, NotificationFailed
(retried with backoff until the last attempt), NotificationSuppressed.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import random
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog

from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.events.v1 import data_events_pb2 as ev
from classwire.api.roster.v1 import resources_pb2 as roster_pb

from ..events.outbox import UnitOfWork, UnitOfWorkFactory, system_actor
from ..plugins.types import DeliveryResult, DeliveryStatus, NotificationChannel, NotificationMessage
from ..store import notification_repositories as repo
from ..store.engine import Database
from ..store.types import utcnow
from . import paging
from .errors import FieldViolation, InvalidArgument, NotFound, Violations
from .ids import new_id

log = structlog.get_logger(__name__)

PENDING = data_pb.NOTIFICATION_STATE_PENDING
DEFERRED = data_pb.NOTIFICATION_STATE_DEFERRED
SENT = data_pb.NOTIFICATION_STATE_SENT
FAILED = data_pb.NOTIFICATION_STATE_FAILED
SUPPRESSED = data_pb.NOTIFICATION_STATE_SUPPRESSED

OPTED_OUT = ev.NOTIFICATION_SUPPRESSION_REASON_OPTED_OUT
NO_CONSENT = ev.NOTIFICATION_SUPPRESSION_REASON_NO_CONSENT
NO_ADDRESS = ev.NOTIFICATION_SUPPRESSION_REASON_NO_ADDRESS
EXPIRED = ev.NOTIFICATION_SUPPRESSION_REASON_EXPIRED
DISABLED = ev.NOTIFICATION_SUPPRESSION_REASON_DISABLED

RELEASE_TIMER = "notification.release"
DEFAULT_LOCALE = "en"
MAX_ATTEMPTS = 8

# Contact channel kinds by the JSON key of their address in a roster ContactChannel.
ADDRESS_KEYS = {"email": "email", "sms": "phone_number", "webhook": "webhook_url", "chat": "chat"}
KIND_NAMES = {
    "CONTACT_CHANNEL_KIND_EMAIL": "email",
    "CONTACT_CHANNEL_KIND_SMS": "sms",
    "CONTACT_CHANNEL_KIND_WEBHOOK": "webhook",
    "CONTACT_CHANNEL_KIND_CHAT": "chat",
}
# Without a preference for the cause, a notice goes by e-mail.
DEFAULT_KINDS = ("email",)


# -------------------------------------------------------------------------------------------
# Templates
# -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    name: str
    locale: str
    subject: str
    html_body: str
    text_body: str
    variables: tuple[str, ...]
    overridden: bool = False
    update_time: datetime | None = None


_COMMON = ("recipient_name", "tenant_name")
# A variable whose name ends so holds HTML the server built itself (see TrustedHtml).
HTML_SUFFIX = "_html"


@dataclass(frozen=True)
class TrustedHtml:
    """HTML the server rendered itself, with every piece of user text in it already escaped.

    Only a value of this type, given to a variable whose name ends in `_html`, goes into a
    template's HTML body unescaped; any other value of such a variable is escaped like the rest,
    so a string that reached the variables from user input cannot become markup. In the subject
    and the text body a `_html` variable renders empty: the text goes in its own variable.
    """

    html: str


def _builtin(name: str, subject: str, text: str, html_body: str, variables: tuple[str, ...]):
    return Template(name, DEFAULT_LOCALE, subject, html_body, text, _COMMON + variables)


BUILTIN_TEMPLATES: dict[tuple[str, str], Template] = {
    (t.name, t.locale): t
    for t in (
        _builtin(
            "reminder",
            "Reminder: ${title} at ${start_time}",
            "Hello ${recipient_name},\n\n${title} starts at ${start_time} (${time_zone}).\n",
            "<p>Hello ${recipient_name},</p><p><b>${title}</b> starts at ${start_time} "
            "(${time_zone}).</p>",
            ("title", "start_time", "time_zone", "booking_id"),
        ),
        _builtin(
            "schedule_change",
            "Schedule change: ${title}",
            "Hello ${recipient_name},\n\n${title} has changed: ${change}.\n"
            "It now starts at ${start_time} (${time_zone}).\n",
            "<p>Hello ${recipient_name},</p><p><b>${title}</b> has changed: ${change}.</p>"
            "<p>It now starts at ${start_time} (${time_zone}).</p>",
            ("title", "change", "start_time", "time_zone", "booking_id"),
        ),
        # The schedule_change text says when the lesson now starts; a cancelled one does not.
        _builtin(
            "booking_cancelled",
            "Cancelled: ${title} at ${start_time}",
            "Hello ${recipient_name},\n\n${title}, planned for ${start_time} (${time_zone}), "
            "is ${change}.\n",
            "<p>Hello ${recipient_name},</p><p><b>${title}</b>, planned for ${start_time} "
            "(${time_zone}), is ${change}.</p>",
            ("title", "change", "start_time", "time_zone", "booking_id"),
        ),
        _builtin(
            "absence_notice",
            "${learner_name} missed ${title}",
            "Hello ${recipient_name},\n\n${learner_name} did not attend ${title} "
            "on ${start_time} (${time_zone}).\n",
            "<p>Hello ${recipient_name},</p><p>${learner_name} did not attend <b>${title}</b> "
            "on ${start_time} (${time_zone}).</p>",
            ("learner_name", "title", "start_time", "time_zone", "session_id"),
        ),
        _builtin(
            "session_report",
            "Session report: ${title}",
            "Hello ${recipient_name},\n\nThe report of ${title} for ${learner_name} is ready "
            "(revision ${revision}).\nParticipants: ${participant_count}. "
            "Transcript: ${transcript}.\n\n${report_text}\n",
            "<p>Hello ${recipient_name},</p><p>The report of <b>${title}</b> for "
            "${learner_name} is ready (revision ${revision}).</p><ul><li>Participants: "
            "${participant_count}</li><li>Transcript: ${transcript}</li></ul>${report_html}",
            (
                "learner_name",
                "title",
                "revision",
                "participant_count",
                "transcript",
                "session_id",
                "report_text",
                "report_html",
            ),
        ),
        _builtin(
            "instructor_no_show",
            "Instructor no-show: ${title}",
            "Hello ${recipient_name},\n\nThe instructor ${instructor_name} had not joined "
            "${title} (starting ${start_time}) by the end of the grace period. "
            "Next step: ${action}.\n",
            "<p>Hello ${recipient_name},</p><p>The instructor ${instructor_name} had not "
            "joined <b>${title}</b> (starting ${start_time}) by the end of the grace period. "
            "Next step: ${action}.</p>",
            ("instructor_name", "title", "start_time", "action", "booking_id", "session_id"),
        ),
        _builtin(
            "substitute_assignment",
            "You are substituting: ${title} at ${start_time}",
            "Hello ${recipient_name},\n\nYou are now the instructor of ${title} on "
            "${start_time} (${time_zone}), in place of ${absent_instructor_name}.\n",
            "<p>Hello ${recipient_name},</p><p>You are now the instructor of <b>${title}</b> "
            "on ${start_time} (${time_zone}), in place of ${absent_instructor_name}.</p>",
            (
                "title",
                "start_time",
                "time_zone",
                "absent_instructor_name",
                "booking_id",
                "session_id",
            ),
        ),
        _builtin(
            "low_engagement",
            "Engagement flag: ${learner_name}",
            "Hello ${recipient_name},\n\n${learner_name} was flagged: ${detail} "
            "(observed ${observed}, threshold ${threshold}).\n",
            "<p>Hello ${recipient_name},</p><p>${learner_name} was flagged: ${detail} "
            "(observed ${observed}, threshold ${threshold}).</p>",
            ("learner_name", "detail", "observed", "threshold", "session_id", "flag_id"),
        ),
    )
}
TEMPLATE_NAMES = sorted({name for name, _ in BUILTIN_TEMPLATES})
TEMPLATE_FIELDS = ("subject", "html_body", "text_body")


def _check_template(text: str, variables: tuple[str, ...], path: str, problems: Violations):
    template = string.Template(text)
    if not template.is_valid():
        problems.add(path, "is not a valid template: use $name or ${name}, and $$ for a dollar")
        return
    for name in template.get_identifiers():
        if name not in variables:
            problems.add(path, f"uses the unknown variable {name!r}")
        elif name.endswith(HTML_SUFFIX) and not path.endswith("html_body"):
            problems.add(path, f"{name!r} holds HTML and can only be used in html_body")


def _html_value(name: str, value: Any) -> str:
    if name.endswith(HTML_SUFFIX) and isinstance(value, TrustedHtml):
        return value.html
    return html.escape(value.html if isinstance(value, TrustedHtml) else str(value))


def render(template: Template, variables: Mapping[str, Any]) -> tuple[str, str, str]:
    """(subject, text, html); HTML gets escaped values except TrustedHtml in `_html` variables,
    missing variables render empty."""
    plain = {
        name: "" if name.endswith(HTML_SUFFIX) else str(variables.get(name, ""))
        for name in template.variables
    }
    escaped = {name: _html_value(name, variables.get(name, "")) for name in template.variables}
    subject = string.Template(template.subject).safe_substitute(plain).replace("\n", " ")
    text = string.Template(template.text_body).safe_substitute(plain)
    body = string.Template(template.html_body).safe_substitute(escaped)
    return subject.strip(), text, body


# -------------------------------------------------------------------------------------------
# Recipients: preferences, consent, quiet hours
# -------------------------------------------------------------------------------------------


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def quiet_hours_end(person_settings: Mapping[str, Any], person_zone: str, now: datetime):
    """When the person's quiet hours end, if `now` falls inside them; else None."""
    quiet = person_settings.get("quiet_hours") or {}
    if not quiet:
        return None
    start = quiet.get("start") or {}
    end = quiet.get("end") or {}
    start_min = int(start.get("hours", 0)) * 60 + int(start.get("minutes", 0))
    end_min = int(end.get("hours", 0)) * 60 + int(end.get("minutes", 0))
    if start_min == end_min:
        return None
    zone = _zone(quiet.get("time_zone") or person_zone)
    local = now.astimezone(zone)
    minute = local.hour * 60 + local.minute
    if start_min < end_min:
        inside = start_min <= minute < end_min
        end_day = local.date()
    else:  # spans midnight
        inside = minute >= start_min or minute < end_min
        end_day = local.date() + timedelta(days=1 if minute >= start_min else 0)
    if not inside:
        return None
    hours, minutes = divmod(end_min, 60)
    if hours == 24:
        end_day, hours = end_day + timedelta(days=1), 0
    # Wall-clock end in the zone (a DST gap resolves forward through fold handling).
    local_end = datetime.combine(end_day, time(hours, minutes), tzinfo=zone)
    return local_end.astimezone(now.tzinfo)


@dataclass(frozen=True)
class Route:
    """Where a notice for a person and cause goes, or why it goes nowhere."""

    kind: str = ""
    address: str = ""
    channel: str = ""
    suppression: int = 0
    detail: str = ""
    ignore_quiet_hours: bool = False


def _consent(person, cause_consent: str = "CONSENT_KIND_NOTIFICATIONS") -> str | None:
    for consent in person.consents or []:
        if consent.get("kind") == cause_consent:
            return consent.get("decision")
    return None


def route(
    person,
    cause_kind: int,
    channels_by_kind: Mapping[str, str],
    *,
    require_consent: bool = False,
    allow_unverified: bool = False,
) -> Route:
    """Chooses the channel and address for a notice, or the suppression reason."""
    if person is None or person.state != roster_pb.RECORD_STATE_ACTIVE:
        return Route(suppression=NO_ADDRESS, detail="the recipient is not an active person")
    decision = _consent(person)
    if decision == "CONSENT_DECISION_DENIED":
        return Route(suppression=NO_CONSENT, detail="notification consent is withdrawn")
    if require_consent and decision != "CONSENT_DECISION_GRANTED":
        return Route(suppression=NO_CONSENT, detail="notification consent is required")
    cause_name = roster_pb.NotificationCause.Name(cause_kind)
    settings = person.notification_settings or {}
    kinds: tuple[str, ...] = DEFAULT_KINDS
    ignore_quiet = False
    for preference in settings.get("preferences") or []:
        if preference.get("cause") == cause_name:
            kinds = tuple(
                KIND_NAMES[k] for k in preference.get("channel_kinds") or [] if k in KIND_NAMES
            )
            ignore_quiet = bool(preference.get("ignore_quiet_hours"))
            if not kinds:
                return Route(suppression=OPTED_OUT, detail=f"opted out of {cause_name}")
            break
    for kind in kinds:
        channel = channels_by_kind.get(kind)
        if not channel:
            continue
        candidates = [
            c
            for c in person.contact_channels or []
            if ADDRESS_KEYS[kind] in c and (c.get("verified") or allow_unverified)
        ]
        if not candidates:
            continue
        chosen = next((c for c in candidates if c.get("primary")), candidates[0])
        address = chosen[ADDRESS_KEYS[kind]]
        if kind == "chat":
            address = f"{address.get('service', '')}:{address.get('address', '')}"
        return Route(kind, address, channel, ignore_quiet_hours=ignore_quiet)
    return Route(suppression=NO_ADDRESS, detail="no verified address on a configured channel")


def display_name(person) -> str:
    if person is None:
        return ""
    return person.display_name or " ".join(p for p in (person.given_name, person.family_name) if p)


# -------------------------------------------------------------------------------------------
# The domain
# -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoticeRequest:
    """A workflow's request for one notice."""

    recipient_id: str
    cause: str
    cause_kind: int
    template: str
    variables: Mapping[str, Any] = field(default_factory=dict)
    workflow: str = ""
    session_id: str = ""
    expire_time: datetime | None = None
    urgent: bool = False
    require_consent: bool = False
    allow_unverified: bool = False


def context_of(row) -> ev.NotificationContext:
    return ev.NotificationContext(
        notification_id=row.id,
        channel=row.channel,
        recipient_id=row.recipient_id,
        template=row.template,
        cause=row.cause,
        workflow=row.workflow,
        session_id=row.session_id,
    )


class NotificationsDomain:
    def __init__(
        self,
        db: Database,
        uow: UnitOfWorkFactory,
        timers=None,
        *,
        lease: timedelta = timedelta(seconds=60),
        poll_interval: float = 1.0,
        backoff_base: float = 30.0,
        backoff_max: float = 3600.0,
        batch: int = 20,
    ) -> None:
        self.db = db
        self.uow = uow
        self.timers = timers
        self.lease = lease
        self.poll_interval = poll_interval
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.batch = batch
        self.owner = new_id("nts")
        # Provider name -> provider; contact-channel kind -> provider name.
        self.channels: dict[str, NotificationChannel] = {}
        self.channels_by_kind: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        if timers is not None:
            timers.register(RELEASE_TIMER, self._release_deferred)

    # -- channels -------------------------------------------------------------------------

    def add_channel(self, name: str, channel: NotificationChannel, kinds=None) -> None:
        """Makes a started channel provider available for the contact-channel kinds it serves
        (its `contact_kinds` attribute unless given)."""
        self.channels[name] = channel
        for kind in kinds or getattr(channel, "contact_kinds", ()) or ():
            self.channels_by_kind[kind] = name

    # -- asking for notices -----------------------------------------------------------------

    async def request(self, uow: UnitOfWork, notice: NoticeRequest, person=None, template=None):
        """Stores a notice (or finds the one already stored for the recipient and cause).
        Returns (row, created)."""
        existing = await repo.notification_by_cause(
            uow.session, uow.tenant_id, notice.recipient_id, notice.cause
        )
        if existing is not None:
            return existing, False
        if person is None:
            person = (await repo.people(uow.session, uow.tenant_id, [notice.recipient_id])).get(
                notice.recipient_id
            )
        locale = (person.locale if person is not None else "") or DEFAULT_LOCALE
        if template is None:
            template = await self.template_for(uow.session, uow.tenant_id, notice.template, locale)
        now = utcnow()
        variables = {"recipient_name": display_name(person), **notice.variables}
        subject, text, body = render(template, variables)
        chosen = route(
            person,
            notice.cause_kind,
            self.channels_by_kind,
            require_consent=notice.require_consent,
            allow_unverified=notice.allow_unverified,
        )
        state, due = PENDING, now
        if chosen.suppression:
            state, due = SUPPRESSED, None
        elif notice.expire_time is not None and notice.expire_time <= now:
            state, due = SUPPRESSED, None
            chosen = Route(chosen.kind, chosen.address, chosen.channel, EXPIRED, "too late")
        elif not (notice.urgent or chosen.ignore_quiet_hours):
            quiet_end = quiet_hours_end(person.notification_settings or {}, person.time_zone, now)
            if quiet_end is not None:
                state, due = DEFERRED, quiet_end
        values = dict(
            id=new_id("ntf"),
            tenant_id=uow.tenant_id,
            recipient_id=notice.recipient_id,
            cause=notice.cause,
            cause_kind=notice.cause_kind,
            channel=chosen.channel,
            contact_kind=chosen.kind,
            address=chosen.address,
            recipient_name=display_name(person),
            template=template.name,
            locale=template.locale,
            workflow=notice.workflow,
            session_id=notice.session_id,
            state=state,
            suppression_reason=chosen.suppression,
            failure_reason="",
            attempt_count=0,
            subject=subject,
            text_body=text,
            html_body=body,
            provider_message_id="",
            create_time=now,
            send_time=None,
            next_attempt_time=due,
            expire_time=notice.expire_time,
            lease_owner=None,
            lease_until=None,
        )
        if not await repo.insert_notification(uow.session, values):
            # Another run stored it first (a concurrent replica): that one is the notice.
            row = await repo.notification_by_cause(
                uow.session, uow.tenant_id, notice.recipient_id, notice.cause
            )
            return row, False
        row = await repo.get_notification(uow.session, uow.tenant_id, values["id"])
        if state == SUPPRESSED:
            uow.emit(
                ev.NotificationSuppressed(
                    notification=context_of(row), reason=chosen.suppression, detail=chosen.detail
                ),
                session_id=notice.session_id or None,
            )
        elif state == DEFERRED and self.timers is not None:
            await self.timers.schedule(uow, RELEASE_TIMER, row.id, due, {"n": row.id})
        else:
            self._wake.set()
        return row, True

    async def _release_deferred(self, timer, uow: UnitOfWork) -> None:
        row = await repo.get_notification(uow.session, uow.tenant_id, timer.payload["n"], lock=True)
        if row is None or row.state != DEFERRED:
            return
        row.state = PENDING
        row.next_attempt_time = utcnow()
        self._wake.set()

    async def queue_message(
        self, uow: UnitOfWork, channel: str, message: NotificationMessage, workflow: str
    ) -> DeliveryResult:
        """A plugin workflow's notice to an address it chose itself, through the outbox."""
        if channel not in self.channels:
            return DeliveryResult(DeliveryStatus.REJECTED, detail=f"no channel {channel!r}")
        now = utcnow()
        values = dict(
            id=new_id("ntf"),
            tenant_id=uow.tenant_id,
            recipient_id="",
            cause=message.idempotency_key[:300],
            cause_kind=0,
            channel=channel,
            contact_kind="",
            address=message.recipient,
            recipient_name=message.recipient_name or "",
            template="",
            locale="",
            workflow=workflow,
            session_id="",
            state=PENDING,
            suppression_reason=0,
            failure_reason="",
            attempt_count=0,
            subject=message.subject,
            text_body=message.text,
            html_body=message.html or "",
            provider_message_id="",
            create_time=now,
            send_time=None,
            next_attempt_time=now,
            expire_time=None,
            lease_owner=None,
            lease_until=None,
        )
        inserted = await repo.insert_notification(uow.session, values)
        row = await repo.notification_by_cause(uow.session, uow.tenant_id, "", values["cause"])
        if inserted:
            self._wake.set()
        # Accepted into the outbox; the sender reports the channel's answer as an event.
        return DeliveryResult(DeliveryStatus.SENT, provider_message_id=row.id if row else None)

    # -- the sender -------------------------------------------------------------------------

    def start(self) -> asyncio.Task:
        self._task = asyncio.create_task(self._run(), name="notification-sender")
        return self._task

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        try:
            while True:
                try:
                    sent = await self.send_due()
                    if sent:
                        continue
                    wait = self.poll_interval
                    async with self.db.reader() as session:
                        upcoming = await repo.next_due_time(session, PENDING)
                    if upcoming is not None:
                        wait = max(0.0, min(wait, (upcoming - utcnow()).total_seconds()))
                    self._wake.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), wait)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("notification sender pass failed")
                    await asyncio.sleep(self.poll_interval)
        finally:
            with contextlib.suppress(Exception):
                async with self.db.writer() as session, session.begin():
                    await repo.release_all(session, self.owner)

    async def send_due(self) -> int:
        """Claims the due notices, sends them, records the outcomes; returns how many."""
        now = utcnow()
        async with self.db.writer() as session, session.begin():
            ids = await repo.claim_due(
                session, PENDING, self.owner, now, now + self.lease, self.batch
            )
            rows = await repo.load_owned(session, ids, self.owner)
            work = [(r.id, r.tenant_id, r.channel, r.expire_time, self._message(r)) for r in rows]
        for notification_id, tenant_id, channel_name, expire_time, message in work:
            if expire_time is not None and expire_time <= utcnow():
                await self._record(tenant_id, notification_id, None, expired=True)
                continue
            channel = self.channels.get(channel_name)
            if channel is None:
                result = DeliveryResult(
                    DeliveryStatus.FAILED, detail=f"channel {channel_name!r} is not configured"
                )
            else:
                try:
                    result = await channel.send(message)
                except Exception as exc:  # a provider bug must not stop the sender
                    log.exception("notification channel failed", channel=channel_name)
                    result = DeliveryResult(DeliveryStatus.FAILED, detail=type(exc).__name__)
            await self._record(tenant_id, notification_id, result)
        return len(work)

    @staticmethod
    def _message(row) -> NotificationMessage:
        return NotificationMessage(
            recipient=row.address,
            subject=row.subject,
            text=row.text_body,
            html=row.html_body or None,
            recipient_name=row.recipient_name or None,
            # Stable across attempts: the channel passes it on (Message-ID, Idempotency-Key).
            idempotency_key=row.id,
        )

    def backoff(self, attempts: int) -> float:
        delay = min(self.backoff_max, self.backoff_base * 2 ** max(0, attempts - 1))
        return delay / 2 + random.uniform(0, delay / 2)

    async def _record(
        self,
        tenant_id: str,
        notification_id: str,
        result: DeliveryResult | None,
        *,
        expired: bool = False,
    ) -> None:
        now = utcnow()
        async with self.uow(tenant_id, system_actor("notifications")) as uow:
            row = await repo.get_notification(uow.session, tenant_id, notification_id, lock=True)
            if row is None or row.state != PENDING or row.lease_owner != self.owner:
                return
            row.lease_owner = None
            row.lease_until = None
            session_id = row.session_id or None
            if expired:
                row.state = SUPPRESSED
                row.suppression_reason = EXPIRED
                row.next_attempt_time = None
                uow.emit(
                    ev.NotificationSuppressed(
                        notification=context_of(row), reason=EXPIRED, detail="no longer relevant"
                    ),
                    session_id=session_id,
                )
                return
            row.attempt_count += 1
            if result.status is DeliveryStatus.SENT:
                row.state = SENT
                row.send_time = now
                row.next_attempt_time = None
                row.provider_message_id = (result.provider_message_id or "")[:300]
                uow.emit(
                    ev.NotificationSent(
                        notification=context_of(row),
                        attempt_count=row.attempt_count,
                        provider_message_id=row.provider_message_id,
                    ),
                    session_id=session_id,
                )
                return
            rejected = result.status is DeliveryStatus.REJECTED
            reason = "ADDRESS_REJECTED" if rejected else "CHANNEL_UNAVAILABLE"
            row.failure_reason = reason
            failed = ev.NotificationFailed(
                notification=context_of(row),
                attempt_count=row.attempt_count,
                reason=reason,
                message=(result.detail or "")[:500],
            )
            if rejected or row.attempt_count >= MAX_ATTEMPTS:
                row.state = FAILED
                row.next_attempt_time = None
            else:
                delay = result.retry_after_seconds or self.backoff(row.attempt_count)
                row.next_attempt_time = now + timedelta(seconds=delay)
                failed.next_attempt_time.FromDatetime(row.next_attempt_time)
            uow.emit(failed, session_id=session_id)

    # -- reading ----------------------------------------------------------------------------

    async def get_notification(self, tenant_id: str, notification_id: str):
        async with self.db.reader() as session:
            row = await repo.get_notification(session, tenant_id, notification_id)
        if row is None:
            raise NotFound(
                f"notification {notification_id!r} not found",
                reason="NOTIFICATION_NOT_FOUND",
                metadata={"notification_id": notification_id},
            )
        return row

    async def list_notifications(
        self,
        tenant_id: str,
        *,
        recipient_id: str = "",
        session_id: str = "",
        workflow: str = "",
        state: int = 0,
        start: datetime | None = None,
        end: datetime | None = None,
        page_size: int = 0,
        page_token: str = "",
    ):
        problems = Violations()
        if state and state not in data_pb.NotificationState.values():
            problems.add("state", "is not a NotificationState")
        if start is not None and end is not None and end < start:
            problems.add("create_time_range", "ends before it starts")
        if page_size < 0:
            problems.add("page_size", "must not be negative")
        problems.raise_if_any()
        limit = paging.page_size(page_size)
        filters = [recipient_id, session_id, workflow, state, str(start), str(end)]
        after = paging.decode(page_token, filters)
        query = repo.notifications(
            tenant_id,
            recipient_id=recipient_id,
            session_id=session_id,
            workflow=workflow,
            state=state,
            start=start,
            end=end,
        )
        async with self.db.reader() as session:
            rows = await repo.page_newest_first(session, query, limit, after)
        return rows, paging.next_token(rows, limit, "create_time", filters)

    # -- templates --------------------------------------------------------------------------

    @staticmethod
    def _builtin_for(name: str, locale: str) -> Template | None:
        if (name, locale) in BUILTIN_TEMPLATES:
            return BUILTIN_TEMPLATES[(name, locale)]
        language = locale.split("-")[0].lower()
        return BUILTIN_TEMPLATES.get((name, language)) or BUILTIN_TEMPLATES.get(
            (name, DEFAULT_LOCALE)
        )

    async def template_for(self, session, tenant_id: str, name: str, locale: str) -> Template:
        """The template a notice in `locale` uses: the tenant's override, else the built-in."""
        builtin = self._builtin_for(name, locale or DEFAULT_LOCALE)
        if builtin is None:
            raise NotFound(f"template {name!r} not found", reason="TEMPLATE_NOT_FOUND")
        override = await repo.get_template_override(session, tenant_id, name, builtin.locale)
        return _merge(builtin, override)

    def _known(self, name: str, locale: str) -> Template:
        template = BUILTIN_TEMPLATES.get((name, locale or DEFAULT_LOCALE))
        if template is None:
            raise NotFound(
                f"template {name!r} in locale {locale or DEFAULT_LOCALE!r} not found",
                reason="TEMPLATE_NOT_FOUND",
                metadata={"name": name, "locale": locale or DEFAULT_LOCALE},
            )
        return template

    async def list_templates(self, tenant_id: str, locale: str, page_size: int, page_token: str):
        limit = paging.page_size(page_size)
        keys = sorted(k for k in BUILTIN_TEMPLATES if not locale or k[1] == locale)
        start = 0
        if page_token:
            # The offset is in the token's id; the time is a fixed epoch (templates are static).
            _, last = paging.decode(page_token, [locale])
            start = next((i + 1 for i, k in enumerate(keys) if "/".join(k) == last), len(keys))
        chosen = keys[start : start + limit]
        async with self.db.reader() as session:
            overrides = {
                (r.name, r.locale): r
                for r in await repo.template_overrides(session, tenant_id, locale=locale)
            }
        templates = [_merge(BUILTIN_TEMPLATES[k], overrides.get(k)) for k in chosen]
        token = ""
        if start + limit < len(keys) and chosen:
            token = paging.encode(datetime(1970, 1, 1, tzinfo=UTC), "/".join(chosen[-1]), [locale])
        return templates, token

    async def get_template(self, tenant_id: str, name: str, locale: str) -> Template:
        builtin = self._known(name, locale)
        async with self.db.reader() as session:
            override = await repo.get_template_override(session, tenant_id, name, builtin.locale)
        return _merge(builtin, override)

    async def update_template(
        self, uow: UnitOfWork, name: str, locale: str, values: Mapping[str, str], paths: list[str]
    ) -> Template:
        builtin = self._known(name, locale)
        problems = Violations()
        for path in paths:
            if path not in TEMPLATE_FIELDS:
                problems.add("update_mask", f"{path!r} cannot be updated")
                continue
            text = values.get(path, "")
            if not text.strip():
                problems.add(f"template.{path}", "must not be empty")
                continue
            if len(text) > 64 * 1024:
                problems.add(f"template.{path}", "must be at most 64 KiB")
                continue
            _check_template(text, builtin.variables, f"template.{path}", problems)
        if problems.items:
            raise InvalidArgument(problems.items, reason="TEMPLATE_INVALID")
        now = utcnow()
        row = await repo.get_template_override(uow.session, uow.tenant_id, name, builtin.locale)
        if row is None:
            row = repo.NotificationTemplateRow(
                tenant_id=uow.tenant_id,
                name=name,
                locale=builtin.locale,
                subject=builtin.subject,
                html_body=builtin.html_body,
                text_body=builtin.text_body,
                update_time=now,
            )
            uow.session.add(row)
        for path in paths:
            setattr(row, path, values[path])
        row.update_time = now
        uow.emit(
            ev.NotificationTemplateUpdated(
                template=name, locale=builtin.locale, changed_fields=paths
            )
        )
        return _merge(builtin, row)

    async def reset_template(self, uow: UnitOfWork, name: str, locale: str) -> Template:
        builtin = self._known(name, locale)
        row = await repo.get_template_override(uow.session, uow.tenant_id, name, builtin.locale)
        if row is not None:
            await repo.delete_template_override(uow.session, row)
            uow.emit(
                ev.NotificationTemplateUpdated(template=name, locale=builtin.locale, reset=True)
            )
        return builtin


def _merge(builtin: Template, override) -> Template:
    if override is None:
        return builtin
    return Template(
        builtin.name,
        builtin.locale,
        override.subject,
        override.html_body,
        override.text_body,
        builtin.variables,
        overridden=True,
        update_time=override.update_time,
    )


def check_template_request(name: str, locale: str) -> None:
    problems = Violations()
    if not name:
        problems.add("template.name", "is required")
    if locale and len(locale) > 35:
        problems.add("template.locale", "is too long")
    problems.raise_if_any()


__all__ = [
    "BUILTIN_TEMPLATES",
    "FieldViolation",
    "NoticeRequest",
    "NotificationsDomain",
    "Template",
    "TrustedHtml",
    "quiet_hours_end",
    "render",
    "route",
]
