"""The schedule_change workflow over real gRPC and a real SMTP server: a booking made, moved twice
and cancelled through SchedulingService tells its learner, the learner's guardian and the
instructor, each in their own time zone, never the person who made the change, never a recipient
who opted out, and never twice for one change, even when the whole log is replayed."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import test_notifications
from sqlalchemy import update
from test_notifications import (
    SENT,
    SUPPRESSED,
    data,
    emit,
    eventually,
    guardian_of,
    notices,
    person,
    settled,
)
from test_scheduling_notices import available, lesson, scheduling, teacher
from test_workflows import update as update_workflow

from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.events.v1 import data_events_pb2 as dev
from classwire.api.events.v1 import scheduling_events_pb2 as sev
from classwire.api.roster.v1 import resources_pb2 as roster_pb
from classwire.api.scheduling.v1 import resources_pb2 as pb
from classwire.api.scheduling.v1 import service_pb2 as api
from classwire.server.store.notification_models import WorkflowCursor

# The same loopback server, SMTP sink and wiring as the notification tests (a module fixture).
env = test_notifications.env

TOKYO, BERLIN, NEW_YORK = "Asia/Tokyo", "Europe/Berlin", "America/New_York"


def local(moment: datetime, zone: str) -> str:
    return moment.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


def staff() -> pb.Initiator:
    return pb.Initiator(role=pb.INITIATOR_ROLE_STAFF)


async def reschedule(env, booking_id: str, start: datetime, reason: str, initiator):
    request = api.RescheduleBookingRequest(
        booking=pb.BookingRef(booking_id=booking_id), reason=reason, initiator=initiator
    )
    request.new_start_time.FromDatetime(start)
    return (await scheduling(env, "RescheduleBooking", request)).booking


def plain(mail) -> str:
    return mail.get_body(("plain",)).get_content().replace("\r\n", "\n")


async def mails(env, prefix: str, count: int) -> list:
    async def arrived():
        found = env.sink.to(prefix)
        return found if len(found) >= count else None

    return await eventually(arrived)


def schedule_mails(env, prefix: str) -> list:
    return [
        m
        for m in env.sink.to(prefix)
        if m["Subject"].startswith(("Schedule change:", "Cancelled:"))
    ]


async def test_moves_and_a_cancellation_reach_learner_guardian_and_instructor(env):
    tag = uuid.uuid4().hex[:6]
    instructor = await teacher(env, f"Ian{tag}", f"ian-{tag}@example.org", time_zone=NEW_YORK)
    learner = await person(
        env,
        f"Lea{tag}",
        roster_pb.PERSON_ROLE_LEARNER,
        email_address=f"lea-{tag}@example.org",
        time_zone=TOKYO,
    )
    guardian = await guardian_of(env, learner.id, "Gus", f"gus-{tag}@example.org", time_zone=BERLIN)
    opted_out = await guardian_of(
        env,
        learner.id,
        "Oda",
        f"oda-{tag}@example.org",
        notification_settings=roster_pb.NotificationSettings(
            preferences=[
                roster_pb.NotificationPreference(
                    cause=roster_pb.NOTIFICATION_CAUSE_SCHEDULE_CHANGE, channel_kinds=[]
                )
            ]
        ),
    )
    await available(env, instructor.id)
    first = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=4)
    second, third = first + timedelta(days=1), first + timedelta(days=2, hours=3)
    booking = await lesson(env, instructor.id, learner.id, first)
    assert schedule_mails(env, f"-{tag}@") == []  # a new booking is no schedule change

    # The instructor moves it: everyone else is told, the instructor is not.
    await reschedule(
        env,
        booking.id,
        second,
        "instructor travelling",
        pb.Initiator(person_id=instructor.id, role=pb.INITIATOR_ROLE_INSTRUCTOR),
    )
    [moved] = await mails(env, f"lea-{tag}@", 1)
    assert moved["Subject"] == "Schedule change: Algebra II"
    assert (
        f"Algebra II has changed: moved from {local(first, TOKYO)} to {local(second, TOKYO)} "
        "(instructor travelling)." in plain(moved)
    )
    assert f"It now starts at {local(second, TOKYO)} ({TOKYO})." in plain(moved)
    [moved] = await mails(env, f"gus-{tag}@", 1)
    assert f"from {local(first, BERLIN)} to {local(second, BERLIN)}" in plain(moved)
    assert f"It now starts at {local(second, BERLIN)} ({BERLIN})." in plain(moved)

    # Staff move it again: a second change is a second notice, for the instructor too.
    await reschedule(env, booking.id, third, "", staff())
    [_, moved_again] = await mails(env, f"lea-{tag}@", 2)
    assert f"moved from {local(second, TOKYO)} to {local(third, TOKYO)}.\n" in plain(moved_again)
    [told] = await mails(env, f"ian-{tag}@", 1)
    assert f"It now starts at {local(third, NEW_YORK)} ({NEW_YORK})." in plain(told)

    # Staff cancel it: the cancellation says so, and not when it "now starts".
    cancel = api.CancelBookingRequest(
        booking=pb.BookingRef(booking_id=booking.id), reason="no room", initiator=staff()
    )
    await scheduling(env, "CancelBooking", cancel)
    await scheduling(env, "CancelBooking", cancel)  # cancelling twice changes nothing
    for prefix, zone in (
        (f"lea-{tag}@", TOKYO),
        (f"gus-{tag}@", BERLIN),
        (f"ian-{tag}@", NEW_YORK),
    ):
        cancelled = (await mails(env, prefix, 3 if zone != NEW_YORK else 2))[-1]
        assert cancelled["Subject"] == f"Cancelled: Algebra II at {local(third, zone)}"
        text = plain(cancelled)
        assert (
            f"Algebra II, planned for {local(third, zone)} ({zone}), is cancelled (no room)."
            in text
        )
        assert "now starts" not in text
        assert "<b>Algebra II</b>, planned for" in cancelled.get_body(("html",)).get_content()

    await settled(env)
    await env.platform.notifications.send_due()
    rows = await notices(env, workflow="schedule_change", recipient_id=learner.id)
    assert sorted(r.template for r in rows) == [
        "booking_cancelled",
        "schedule_change",
        "schedule_change",
    ]
    assert all(r.state == SENT for r in rows)
    assert len({r.cause for r in rows}) == 3
    # The instructor made the first change: no notice of it was even stored.
    assert len(await notices(env, workflow="schedule_change", recipient_id=instructor.id)) == 2
    # The guardian who opted out of schedule changes: three notices, all suppressed, no mail.
    held = await notices(env, workflow="schedule_change", recipient_id=opted_out.id)
    assert len(held) == 3 and {r.state for r in held} == {SUPPRESSED}
    assert {r.suppression_reason for r in held} == {dev.NOTIFICATION_SUPPRESSION_REASON_OPTED_OUT}
    assert env.sink.to(f"oda-{tag}@") == []

    # Replaying the whole log (every change delivered again) sends nothing twice.
    before = len(env.sink.messages)
    async with env.platform.db.writer() as session, session.begin():
        await session.execute(
            update(WorkflowCursor)
            .where(WorkflowCursor.tenant_id == env.running.tenant_id)
            .values(last_sequence=0)
        )
    env.platform.workflow_runner.wake()
    await settled(env)
    await env.platform.notifications.send_due()
    assert len(env.sink.messages) == before
    assert len(await notices(env, workflow="schedule_change", recipient_id=guardian.id)) == 3
    assert len(schedule_mails(env, f"gus-{tag}@")) == 3


async def test_a_change_handled_after_the_lesson_began_expires(env):
    tag = uuid.uuid4().hex[:6]
    instructor = await teacher(env, f"Ivo{tag}", f"ivo-{tag}@example.org")
    learner = await person(
        env, f"Lou{tag}", roster_pb.PERSON_ROLE_LEARNER, email_address=f"lou-{tag}@example.org"
    )
    await available(env, instructor.id)
    start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=5)
    booking = await lesson(env, instructor.id, learner.id, start)
    # A move whose notice comes too late (the runner was behind): the new start has passed.
    late = sev.BookingRescheduled(booking_id=booking.id, instructor_id=instructor.id)
    late.previous_start_time.FromDatetime(start)
    late.start_time.FromDatetime(datetime.now(UTC) - timedelta(minutes=5))
    await emit(env, late)

    async def recorded():
        return await notices(env, workflow="schedule_change", recipient_id=learner.id)

    [row] = await eventually(recorded)
    assert row.state == SUPPRESSED
    assert row.suppression_reason == dev.NOTIFICATION_SUPPRESSION_REASON_EXPIRED
    await env.platform.notifications.send_due()
    assert env.sink.to(f"lou-{tag}@") == []


async def test_the_workflow_lists_its_triggers_and_can_leave_the_instructor_out(env):
    got = await data(env, "GetWorkflow", data_api.GetWorkflowRequest(name="schedule_change"))
    assert got.workflow.built_in and got.workflow.enabled
    assert list(got.workflow.trigger_event_types) == [
        t.DESCRIPTOR.full_name
        for t in (
            sev.BookingRescheduled,
            sev.OccurrenceMoved,
            sev.BookingCancelled,
            sev.OccurrenceCancelled,
        )
    ]
    assert "notify_instructor" in got.workflow.settings_schema["properties"]

    await update_workflow(env, "schedule_change", "settings", settings={"notify_instructor": False})
    try:
        tag = uuid.uuid4().hex[:6]
        instructor = await teacher(env, f"Ina{tag}", f"ina-{tag}@example.org")
        learner = await person(
            env, f"Liv{tag}", roster_pb.PERSON_ROLE_LEARNER, email_address=f"liv-{tag}@example.org"
        )
        await available(env, instructor.id)
        start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=6)
        booking = await lesson(env, instructor.id, learner.id, start)
        await reschedule(env, booking.id, start + timedelta(hours=2), "", staff())
        await mails(env, f"liv-{tag}@", 1)
        await settled(env)
        assert await notices(env, workflow="schedule_change", recipient_id=instructor.id) == []
    finally:
        await update_workflow(env, "schedule_change", "settings", settings={})
