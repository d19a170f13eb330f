"""Scheduling notices through the real SMTP server of the notification tests: a substitute
instructor is told of the lesson they now teach, in their own time zone, and their preferences
hold (an opt-out of substitute requests sends nothing)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import grpc
import test_notifications
from test_notifications import SUPPRESSED, eventually, notices, person, settled

from classwire.api.events.v1 import data_events_pb2 as dev
from classwire.api.roster.v1 import resources_pb2 as roster_pb
from classwire.api.scheduling.v1 import resources_pb2 as pb
from classwire.api.scheduling.v1 import service_pb2 as api
from classwire.api.scheduling.v1 import service_pb2_grpc as sgrpc

# The same loopback server, SMTP sink and wiring as the notification tests (a module fixture).
env = test_notifications.env

TOKYO = "Asia/Tokyo"


async def scheduling(env, method: str, request):
    async with grpc.aio.insecure_channel(env.running.address) as channel:
        return await getattr(sgrpc.SchedulingServiceStub(channel), method)(
            request, metadata=(("authorization", f"Bearer {env.running.api_key}"),)
        )


async def teacher(env, name: str, address: str, **fields):
    return await person(
        env,
        name,
        roster_pb.PERSON_ROLE_INSTRUCTOR,
        email_address=address,
        instructor_profile=roster_pb.InstructorProfile(
            qualifications=[roster_pb.SubjectQualification(subject="math")]
        ),
        **fields,
    )


async def available(env, person_id: str) -> None:
    rules = [
        pb.WeeklyRule(
            weekday=d,
            range=pb.LocalTimeRange(
                start=roster_pb.LocalTime(hours=0), end=roster_pb.LocalTime(hours=24)
            ),
        )
        for d in range(1, 8)
    ]
    await scheduling(
        env,
        "SetAvailability",
        api.SetAvailabilityRequest(
            availability=pb.AvailabilitySchedule(
                person_id=person_id, time_zone="UTC", weekly_rules=rules
            )
        ),
    )


async def lesson(env, regular: str, learner: str, start: datetime) -> pb.Booking:
    booking = pb.Booking(
        subject="math", title="Algebra II", instructor_id=regular, learner_ids=[learner]
    )
    booking.start_time.FromDatetime(start)
    booking.end_time.FromDatetime(start + timedelta(hours=1))
    return (
        await scheduling(env, "CreateBooking", api.CreateBookingRequest(booking=booking))
    ).booking


async def test_the_substitute_is_notified_in_their_own_time_zone(env):
    tag = uuid.uuid4().hex[:6]
    regular = await teacher(env, f"Reg{tag}", f"reg-{tag}@example.org")
    substitute = await teacher(env, f"Sub{tag}", f"sub-{tag}@example.org", time_zone=TOKYO)
    learner = await person(env, f"Kim{tag}", roster_pb.PERSON_ROLE_LEARNER)
    for instructor in (regular, substitute):
        await available(env, instructor.id)
    start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=2)
    booking = await lesson(env, regular.id, learner.id, start)

    await scheduling(
        env,
        "AssignSubstitute",
        api.AssignSubstituteRequest(
            booking=pb.BookingRef(booking_id=booking.id),
            instructor_id=substitute.id,
            reason="regular instructor ill",
        ),
    )

    async def delivered():
        return env.sink.to(f"sub-{tag}@")

    [mail] = await eventually(delivered)
    local = start.astimezone(ZoneInfo(TOKYO)).strftime("%Y-%m-%d %H:%M")
    assert mail["Subject"] == f"You are substituting: Algebra II at {local}"
    text = mail.get_body(("plain",)).get_content()
    assert f"Sub{tag} Test" in text and f"in place of Reg{tag} Test" in text
    assert f"{local} ({TOKYO})" in text
    # The absent instructor is not the one told, and the notice is logged once, as sent.
    assert env.sink.to(f"reg-{tag}@") == []
    [logged] = await notices(env, recipient_id=substitute.id)
    assert logged.template == "substitute_assignment" and logged.workflow == "substitute_assigned"


async def test_a_substitute_who_opted_out_gets_no_mail(env):
    tag = uuid.uuid4().hex[:6]
    regular = await teacher(env, f"Reg{tag}", f"reg-{tag}@example.org")
    opted_out = await teacher(
        env,
        f"Opt{tag}",
        f"opt-{tag}@example.org",
        notification_settings=roster_pb.NotificationSettings(
            preferences=[
                roster_pb.NotificationPreference(
                    cause=roster_pb.NOTIFICATION_CAUSE_SUBSTITUTE_REQUEST
                )
            ]
        ),
    )
    learner = await person(env, f"Kim{tag}", roster_pb.PERSON_ROLE_LEARNER)
    for instructor in (regular, opted_out):
        await available(env, instructor.id)
    start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(days=3)
    booking = await lesson(env, regular.id, learner.id, start)
    await scheduling(
        env,
        "AssignSubstitute",
        api.AssignSubstituteRequest(
            booking=pb.BookingRef(booking_id=booking.id), instructor_id=opted_out.id
        ),
    )
    await settled(env)

    async def recorded():
        return await notices(env, recipient_id=opted_out.id)

    [logged] = await eventually(recorded)
    assert logged.state == SUPPRESSED
    assert logged.suppression_reason == dev.NOTIFICATION_SUPPRESSION_REASON_OPTED_OUT
    assert env.sink.to(f"opt-{tag}@") == []
