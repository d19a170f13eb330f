"""Day of the lesson: durable timers that provision each booking's live session ahead of its
start, send reminders at the configured offsets and detect instructor no-shows.

Every timer is keyed by its booking and the start it was scheduled for, and its handler
re-reads the booking: a timer left behind by a move or a cancellation finds a different start
(or a cancelled booking) and does nothing, so a stale timer can never act on the wrong lesson.
Moves and cancellations also cancel the timers they make stale.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select

from classwire.api.events.v1 import scheduling_events_pb2 as ev
from classwire.api.events.v1 import session_events_pb2 as session_ev
from classwire.api.scheduling.v1 import resources_pb2 as pb

from ..events.outbox import UnitOfWork
from ..store import repositories as repo
from ..store import scheduling_repositories as srepo
from ..store.models import LiveSession, SessionInstructor, SessionParticipant
from ..store.roster_models import RosterGuardianLink
from ..store.scheduling_models import SchedBooking
from ..store.types import utcnow
from .errors import FailedPrecondition
from .ids import new_id
from .platform import TenantSettings

TIMER_PROVISION = "scheduling.provision"
TIMER_REMINDER = "scheduling.reminder"
TIMER_NO_SHOW = "scheduling.no_show"

DEFAULT_LEAD_TIME = timedelta(minutes=15)
DEFAULT_GRACE = timedelta(minutes=5)
SCHEDULED_BOOKING = pb.BOOKING_STATE_SCHEDULED
LEARNERS, GUARDIANS, INSTRUCTORS = (
    pb.REMINDER_AUDIENCE_LEARNERS,
    pb.REMINDER_AUDIENCE_GUARDIANS,
    pb.REMINDER_AUDIENCE_INSTRUCTORS,
)


def _seconds(value) -> timedelta | None:
    if value is None:
        return None
    return timedelta(seconds=float(str(value).rstrip("s")))


def lead_time(settings: dict) -> timedelta:
    return _seconds((settings.get("provisioning") or {}).get("lead_time")) or DEFAULT_LEAD_TIME


def reminder_policy(row: SchedBooking, settings: dict) -> dict:
    """The booking's own policy when it has one, else the tenant's."""
    return row.reminder_policy or settings.get("reminder_policy") or {}


def _key(row: SchedBooking, start: datetime) -> str:
    return f"{row.id}@{start.isoformat()}"


class ProvisioningMixin:
    """Part of SchedulingDomain (db, uow, timers, _settings, _resolve come from it)."""

    def register_timers(self, timers) -> None:
        """Registers the timer kinds of scheduling; called before the runner starts."""
        self.timers = timers
        timers.register(TIMER_PROVISION, self._fire_provision)
        timers.register(TIMER_REMINDER, self._fire_reminder)
        timers.register(TIMER_NO_SHOW, self._fire_no_show)

    # Scheduling and cancelling the timers of a booking ------------------------------------

    async def schedule_booking_timers(
        self, uow: UnitOfWork, row: SchedBooking, settings: dict | None = None
    ) -> None:
        if self.timers is None or row.state != SCHEDULED_BOOKING:
            return
        if settings is None:
            settings = await self._settings(uow.session, row.tenant_id)
        at = row.start_time.isoformat()
        payload = {"b": row.id, "at": at}
        if not row.session_id:
            # Due in the past when the lesson is nearer than the lead time: it fires at once.
            await self.timers.schedule(
                uow,
                TIMER_PROVISION,
                _key(row, row.start_time),
                row.start_time - lead_time(settings),
                payload,
            )
        elif row.instructor_id:
            # A provisioned booking that moved: its no-show check moves with it.
            await self._schedule_no_show(uow, row, settings)
        now = utcnow()
        for offset in reminder_policy(row, settings).get("offsets", []):
            span = _seconds(offset)
            if span is None or row.start_time - span <= now:
                continue  # a reminder whose moment has passed is not sent late
            await self.timers.schedule(
                uow,
                TIMER_REMINDER,
                f"{_key(row, row.start_time)}@{int(span.total_seconds())}",
                row.start_time - span,
                {**payload, "offset": span.total_seconds()},
            )

    async def cancel_booking_timers(
        self, uow: UnitOfWork, row: SchedBooking, start: datetime, settings: dict | None = None
    ) -> None:
        """Cancels the timers scheduled for the booking at `start` (before a move or on
        cancellation). Timers of offsets changed since are stale and do nothing when due."""
        if self.timers is None:
            return
        if settings is None:
            settings = await self._settings(uow.session, row.tenant_id)
        key = _key(row, start)
        await self.timers.cancel(uow, TIMER_PROVISION, key)
        await self.timers.cancel(uow, TIMER_NO_SHOW, key)
        for offset in reminder_policy(row, settings).get("offsets", []):
            span = _seconds(offset)
            if span is not None:
                await self.timers.cancel(uow, TIMER_REMINDER, f"{key}@{int(span.total_seconds())}")

    async def _current(self, uow: UnitOfWork, timer) -> SchedBooking | None:
        row = await srepo.booking(uow.session, timer.tenant_id, timer.payload["b"], lock=True)
        if row is None or row.state != SCHEDULED_BOOKING:
            return None
        if row.start_time.isoformat() != timer.payload["at"]:
            return None  # moved since: the move scheduled its own timers
        return row

    # Provisioning ------------------------------------------------------------------------

    async def _fire_provision(self, timer, uow: UnitOfWork) -> None:
        row = await self._current(uow, timer)
        if row is not None:
            await self.provision_in(uow, row)

    async def provision_in(self, uow: UnitOfWork, row: SchedBooking) -> None:
        """Creates the booking's live session in the caller's unit of work (once)."""
        if row.session_id:
            return
        session_id = await self._create_live_session(uow, row)
        now = utcnow()
        row.session_id = session_id
        row.provision_time = now
        row.version += 1
        row.update_time = now
        await uow.session.flush()
        event = ev.SessionProvisioned(
            booking_id=row.id, series_id=row.series_id or "", session_id=session_id
        )
        if row.original_start_time is not None:
            event.original_start_time.FromDatetime(row.original_start_time)
        event.start_time.FromDatetime(row.start_time)
        event.end_time.FromDatetime(row.end_time)
        uow.emit(event)
        if self.timers is not None and row.instructor_id:
            await self._schedule_no_show(uow, row)

    async def _schedule_no_show(
        self, uow: UnitOfWork, row: SchedBooking, settings: dict | None = None
    ) -> None:
        if settings is None:
            settings = await self._settings(uow.session, row.tenant_id)
        grace = _seconds((settings.get("no_show_policy") or {}).get("grace")) or DEFAULT_GRACE
        await self.timers.schedule(
            uow,
            TIMER_NO_SHOW,
            _key(row, row.start_time),
            row.start_time + grace,
            {"b": row.id, "at": row.start_time.isoformat()},
        )

    # The live session follows its booking -----------------------------------------------
    #
    # The sessions domain changes a session only in its own unit of work; a booking's move or
    # cancellation must change its session in the booking's transaction, so these write the
    # same rows, events and timers as SessionsDomain.update_session and cancel_session do.

    async def _lock_live(self, uow: UnitOfWork, row: SchedBooking) -> LiveSession | None:
        if not row.session_id:
            return None
        return await repo.lock_live_session(uow.session, row.tenant_id, row.session_id)

    @staticmethod
    def _refuse_live(live: LiveSession, action: str) -> None:
        from .sessions import LIVE

        if live.state == LIVE:
            raise FailedPrecondition(
                f"the lesson's live session is in progress: end it instead of {action}",
                reason="SESSION_ALREADY_LIVE",
                metadata={"session_id": live.id},
            )

    async def _cancel_open_timer(self, uow: UnitOfWork, live: LiveSession) -> None:
        from .sessions import DEFAULT_JOIN_WINDOW, TIMER_OPEN, SessionSettings

        if self.timers is None:
            return
        window = SessionSettings.from_json(live.settings).join_window or DEFAULT_JOIN_WINDOW
        due = live.scheduled_start_time - window
        await self.timers.cancel(uow, TIMER_OPEN, f"{live.id}@{due.isoformat()}")

    async def move_live_session(self, uow: UnitOfWork, row: SchedBooking) -> None:
        """Moves the provisioned session of a rescheduled booking to the booking's new times,
        with its open timer. A session already closed (ended or cancelled early) stays as it
        was; the booking lets go of it and is provisioned afresh for its new start."""
        from .sessions import CANCELLED, ENDED, SCHEDULED, SessionSettings

        live = await self._lock_live(uow, row)
        if live is None:
            return
        self._refuse_live(live, "rescheduling")
        if live.state in (ENDED, CANCELLED):
            row.session_id = ""
            row.provision_time = None
            return
        await self._cancel_open_timer(uow, live)
        now = utcnow()
        live.scheduled_start_time, live.scheduled_end_time = row.start_time, row.end_time
        live.update_time = now
        if live.state == SCHEDULED and self.timers is not None:
            await self.sessions._schedule_open(uow, live, SessionSettings.from_json(live.settings))
        event = session_ev.SessionUpdated(title=live.title, capacity=live.capacity)
        event.update_mask.paths.extend(["scheduled_start_time", "scheduled_end_time"])
        event.scheduled_start_time.FromDatetime(live.scheduled_start_time)
        event.scheduled_end_time.FromDatetime(live.scheduled_end_time)
        uow.emit(event, session_id=live.id, occur_time=now)
        await uow.session.flush()

    async def cancel_live_session(self, uow: UnitOfWork, row: SchedBooking, reason: str) -> None:
        """Cancels the provisioned session of a cancelled booking: everyone in its room
        leaves, and a session not yet open never opens."""
        from .sessions import CANCELLED, ENDED, LR_SESSION_ENDED, PRESENT

        live = await self._lock_live(uow, row)
        if live is None:
            return
        self._refuse_live(live, "cancelling the booking")
        if live.state in (ENDED, CANCELLED):
            return
        await self._cancel_open_timer(uow, live)
        now = utcnow()
        # Announced first, so open connections close with the reason at once.
        uow.emit(session_ev.SessionCancelled(reason=reason), session_id=live.id, occur_time=now)
        for p in await repo.participants_list(uow.session, row.tenant_id, live.id, states=PRESENT):
            await self.sessions._leave(uow, live, p, LR_SESSION_ENDED, now, check_empty=False)
        live.state = CANCELLED
        live.end_time = live.update_time = now
        live.end_message = reason
        await uow.session.flush()

    async def _create_live_session(self, uow: UnitOfWork, row: SchedBooking) -> str:
        """The live session of a booking, created in this unit of work. The sessions domain
        offers creation only in its own unit of work; when it offers `create_in(uow, ...)`
        this delegates to it (see the report), until then it writes the same rows the same way.
        """
        sessions = self.sessions
        if sessions is None:
            raise RuntimeError("no sessions domain to provision live sessions with")
        from .sessions import OPEN, SCHEDULED, SessionSettings

        tenant = await repo.get_tenant(uow.session, row.tenant_id)
        settings = SessionSettings().with_defaults(
            TenantSettings.from_json(tenant.settings) if tenant else TenantSettings()
        )
        now = utcnow()
        is_open = now >= row.start_time - settings.join_window
        live = LiveSession(
            id=new_id("ses"),
            tenant_id=row.tenant_id,
            parent_session_id=None,
            breakout_name="",
            title=(row.title or row.subject or "Lesson")[:200],
            class_id=row.class_id,
            course_id="",
            state=OPEN if is_open else SCHEDULED,
            scheduled_start_time=row.start_time,
            scheduled_end_time=row.end_time,
            capacity=max(row.capacity, len(row.learner_ids)) + 1,
            settings=settings.to_json(),
            labels={"booking_id": row.id},
            room_locked=False,
            create_time=now,
            update_time=now,
            open_time=now if is_open else None,
            live_time=None,
            end_time=None,
            end_reason=0,
            end_message="",
        )
        uow.session.add(live)
        await uow.session.flush()
        if row.instructor_id:
            uow.session.add(
                SessionInstructor(
                    session_id=live.id,
                    identity=row.instructor_id,
                    tenant_id=row.tenant_id,
                    position=0,
                )
            )
        if not is_open and getattr(sessions, "timers", None) is not None:
            await sessions._schedule_open(uow, live, settings)
        created = session_ev.SessionCreated(
            title=live.title,
            class_id=live.class_id,
            course_id="",
            capacity=live.capacity,
            state=live.state,
        )
        created.scheduled_start_time.FromDatetime(live.scheduled_start_time)
        created.scheduled_end_time.FromDatetime(live.scheduled_end_time)
        uow.emit(created, session_id=live.id, occur_time=now)
        return live.id

    # Reminders ---------------------------------------------------------------------------

    async def _fire_reminder(self, timer, uow: UnitOfWork) -> None:
        row = await self._current(uow, timer)
        if row is None:
            return
        settings = await self._settings(uow.session, row.tenant_id)
        audiences = set(reminder_policy(row, settings).get("audiences", [])) or {
            LEARNERS,
            GUARDIANS,
            INSTRUCTORS,
        }
        recipients: list[str] = []
        if LEARNERS in audiences:
            recipients.extend(row.learner_ids)
        if GUARDIANS in audiences and row.learner_ids:
            guardians = await uow.session.scalars(
                select(RosterGuardianLink.guardian_id)
                .where(
                    RosterGuardianLink.tenant_id == row.tenant_id,
                    RosterGuardianLink.learner_id.in_(list(row.learner_ids)),
                    RosterGuardianLink.receives_notices.is_(True),
                )
                .order_by(RosterGuardianLink.guardian_id)
            )
            recipients.extend(guardians)
        if INSTRUCTORS in audiences and row.instructor_id:
            recipients.append(row.instructor_id)
        event = ev.ReminderDue(
            booking_id=row.id,
            series_id=row.series_id or "",
            recipient_person_ids=list(dict.fromkeys(recipients)),
        )
        event.start_time.FromDatetime(row.start_time)
        event.offset.FromTimedelta(timedelta(seconds=float(timer.payload["offset"])))
        uow.emit(event)

    # No-shows ----------------------------------------------------------------------------

    async def _fire_no_show(self, timer, uow: UnitOfWork) -> None:
        row = await self._current(uow, timer)
        if row is None or not row.session_id or not row.instructor_id:
            return
        joined = await uow.session.scalar(
            select(SessionParticipant.id).where(
                SessionParticipant.session_id == row.session_id,
                SessionParticipant.identity == row.instructor_id,
                SessionParticipant.first_join_time.is_not(None),
            )
        )
        if joined is not None:
            return
        settings = await self._settings(uow.session, row.tenant_id)
        policy = settings.get("no_show_policy") or {}
        grace = _seconds(policy.get("grace")) or DEFAULT_GRACE
        action = int(policy.get("action", 0)) or pb.NO_SHOW_ACTION_PROPOSE_SUBSTITUTE
        event = ev.InstructorNoShowDetected(
            booking_id=row.id,
            series_id=row.series_id or "",
            session_id=row.session_id,
            instructor_id=row.instructor_id,
            action=pb.NoShowAction.Name(action),
        )
        event.start_time.FromDatetime(row.start_time)
        event.grace.FromTimedelta(grace)
        uow.emit(event)
        await self.run_no_show_policy(uow, row, action)
