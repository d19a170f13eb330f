"""Day of the lesson over real gRPC and the durable timers: provisioning ahead of the start
(and on demand), reminders to the booking's people, instructor no-show detection."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import duration_pb2
from test_scheduling_core import always_available, call, expect_error, instructor, learner, ts

from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.data.v1 import service_pb2_grpc as data_grpc
from classwire.api.scheduling.v1 import resources_pb2 as pb
from classwire.api.scheduling.v1 import service_pb2 as api
from classwire.server.domain.scheduling_provision import TIMER_NO_SHOW
from classwire.server.store import timers as timer_store
from classwire.server.store.types import utcnow

EV = "classwire.api.events.v1."


async def events(server, name: str, booking_id: str):
    async with grpc.aio.insecure_channel(server.address) as channel:
        listed = await data_grpc.DataServiceStub(channel).ListEvents(
            data_api.ListEventsRequest(filter=data_pb.EventFilter(types=[EV + name])),
            metadata=(("authorization", f"Bearer {server.api_key}"),),
        )
    out = []
    for e in listed.events:
        payload = getattr(e.scheduling, e.scheduling.WhichOneof("payload"))
        if payload.booking_id == booking_id:
            out.append(payload)
    return out


async def settings(server, **fields):
    await call(
        server,
        "UpdateSchedulingSettings",
        api.UpdateSchedulingSettingsRequest(
            settings=pb.SchedulingSettings(**fields),
            update_mask={"paths": ["provisioning", "reminder_policy", "no_show_policy"]},
        ),
    )


async def book(server, iid, lid, start: datetime, minutes=30):
    return (
        await call(
            server,
            "CreateBooking",
            api.CreateBookingRequest(
                booking=pb.Booking(
                    subject="math",
                    instructor_id=iid,
                    learner_ids=[lid],
                    start_time=ts(start),
                    end_time=ts(start + timedelta(minutes=minutes)),
                )
            ),
        )
    ).booking


async def until(predicate, tries=100):
    for _ in range(tries):
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_provisioning_by_timer_and_on_demand(server):
    platform = server.server.platform
    iid, lid = await instructor(server), await learner(server)
    await always_available(server, iid)
    await settings(server, provisioning=pb.ProvisioningSettings(lead_time={"seconds": 3600}))
    try:
        now = datetime.now(UTC).replace(microsecond=0)
        # Within the lead time: the provisioning timer is already due.
        soon = await book(server, iid, lid, now + timedelta(minutes=20))
        ref = pb.BookingRef(booking_id=soon.id)

        async def provisioned():
            await platform.timers.run_due()
            got = await call(server, "GetBooking", api.GetBookingRequest(booking=ref))
            return bool(got.booking.session_id)

        assert await until(provisioned)
        [event] = await events(server, "SessionProvisioned", soon.id)
        got = (await call(server, "GetBooking", api.GetBookingRequest(booking=ref))).booking
        assert event.session_id == got.session_id and event.start_time == got.start_time

        # Far ahead: nothing yet; ProvisionSession does it now, once.
        later = await book(server, iid, lid, now + timedelta(days=3))
        assert not later.session_id
        lref = pb.BookingRef(booking_id=later.id)
        first = await call(server, "ProvisionSession", api.ProvisionSessionRequest(booking=lref))
        again = await call(server, "ProvisionSession", api.ProvisionSessionRequest(booking=lref))
        assert first.booking.session_id and again.booking.session_id == first.booking.session_id
        assert len(await events(server, "SessionProvisioned", later.id)) == 1

        cancelled = await book(server, iid, lid, now + timedelta(days=4))
        cref = pb.BookingRef(booking_id=cancelled.id)
        await call(server, "CancelBooking", api.CancelBookingRequest(booking=cref))
        await expect_error(
            call(server, "ProvisionSession", api.ProvisionSessionRequest(booking=cref)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "BOOKING_CANCELLED",
        )
        await expect_error(
            call(
                server,
                "ProvisionSession",
                api.ProvisionSessionRequest(booking=pb.BookingRef(booking_id="bkg_missing")),
            ),
            grpc.StatusCode.NOT_FOUND,
            "BOOKING_NOT_FOUND",
        )
    finally:
        await settings(server)


async def test_reminder_and_instructor_no_show(server):
    platform = server.server.platform
    iid, lid = await instructor(server), await learner(server)
    await always_available(server, iid)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=30)
    # The reminder's moment is a second away; grace is irrelevant: the test makes it due.
    offset = start - (utcnow() + timedelta(seconds=1))
    await settings(
        server,
        provisioning=pb.ProvisioningSettings(lead_time={"seconds": 7200}),
        reminder_policy=pb.ReminderPolicy(
            offsets=[duration_pb2.Duration(seconds=int(offset.total_seconds()))],
            audiences=[pb.REMINDER_AUDIENCE_LEARNERS, pb.REMINDER_AUDIENCE_INSTRUCTORS],
        ),
        no_show_policy=pb.NoShowPolicy(grace={"seconds": 120}, action=pb.NO_SHOW_ACTION_ALERT_ONLY),
    )
    try:
        booking = await book(server, iid, lid, start)

        async def reminded():
            await platform.timers.run_due()
            return bool(await events(server, "ReminderDue", booking.id))

        assert await until(reminded)
        [due] = await events(server, "ReminderDue", booking.id)
        assert list(due.recipient_person_ids) == [lid, iid]
        assert due.offset.seconds == int(offset.total_seconds())

        async def provisioned():
            await platform.timers.run_due()
            return bool(await events(server, "SessionProvisioned", booking.id))

        assert await until(provisioned)
        # The no-show timer waits for start + grace; bring it forward instead of waiting.
        key = f"{booking.id}@{start.isoformat()}"
        async with platform.db.writer() as session, session.begin():
            row = await timer_store.get(session, server.tenant_id, TIMER_NO_SHOW, key)
            assert row is not None and row.fire_time is None
            row.due_time = utcnow() - timedelta(seconds=1)

        async def detected():
            await platform.timers.run_due()
            return bool(await events(server, "InstructorNoShowDetected", booking.id))

        assert await until(detected)
        [noshow] = await events(server, "InstructorNoShowDetected", booking.id)
        assert noshow.instructor_id == iid and noshow.action == "NO_SHOW_ACTION_ALERT_ONLY"
        assert noshow.grace.seconds == 120
        # Never twice.
        await platform.timers.run_due()
        assert len(await events(server, "InstructorNoShowDetected", booking.id)) == 1
    finally:
        await settings(server)
