"""Day of the lesson over real gRPC and the durable timers: provisioning ahead of the start
(and on demand), reminders to the booking's people, instructor no-show detection."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2
from test_connect import join
from test_scheduling_core import (
    always_available,
    call,
    create_series,
    expect_error,
    instructor,
    learner,
    occurrences,
    ts,
)

from classwire.api.common.v1 import common_pb2
from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.data.v1 import service_pb2_grpc as data_grpc
from classwire.api.scheduling.v1 import resources_pb2 as pb
from classwire.api.scheduling.v1 import service_pb2 as api
from classwire.api.session.v1 import resources_pb2 as session_pb
from classwire.api.session.v1 import service_pb2 as session_api
from classwire.api.session.v1 import service_pb2_grpc as session_grpc
from classwire.server.domain.scheduling_provision import DEFAULT_GRACE, TIMER_NO_SHOW
from classwire.server.domain.sessions import DEFAULT_JOIN_WINDOW, TIMER_OPEN
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


async def session_events(server, session_id: str, payload: str):
    async with grpc.aio.insecure_channel(server.address) as channel:
        listed = await data_grpc.DataServiceStub(channel).ListEvents(
            data_api.ListEventsRequest(filter=data_pb.EventFilter(session_ids=[session_id])),
            metadata=(("authorization", f"Bearer {server.api_key}"),),
        )
    return [
        getattr(e.session, payload)
        for e in listed.events
        if e.WhichOneof("payload") == "session" and e.session.WhichOneof("payload") == payload
    ]


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


# A provisioned session follows its booking ------------------------------------------------------


async def session_of(server, session_id: str) -> session_pb.Session:
    async with grpc.aio.insecure_channel(server.address) as channel:
        got = await session_grpc.SessionServiceStub(channel).GetSession(
            session_api.GetSessionRequest(session_id=session_id),
            metadata=(("authorization", f"Bearer {server.api_key}"),),
        )
    return got.session


async def timer_pending(server, kind: str, key: str) -> datetime | None:
    """The due time of a pending timer, or None when there is none (cancelled or fired)."""
    platform = server.server.platform
    async with platform.db.reader() as session:
        row = await timer_store.get(session, server.tenant_id, kind, key)
    return row.due_time if row is not None and row.fire_time is None else None


async def provisioned(server, booking) -> str:
    ref = pb.BookingRef(booking_id=booking.id)
    got = await call(server, "ProvisionSession", api.ProvisionSessionRequest(booking=ref))
    assert got.booking.session_id
    return got.booking.session_id


def reschedule(booking_id: str, start: datetime, reason="moved") -> api.RescheduleBookingRequest:
    return api.RescheduleBookingRequest(
        booking=pb.BookingRef(booking_id=booking_id), new_start_time=ts(start), reason=reason
    )


async def test_rescheduling_moves_the_provisioned_session_and_its_timers(server):
    iid, lid = await instructor(server), await learner(server)
    await always_available(server, iid)
    now = datetime.now(UTC).replace(microsecond=0)
    start = now + timedelta(days=3)
    booking = await book(server, iid, lid, start)
    session_id = await provisioned(server, booking)
    live = await session_of(server, session_id)
    assert live.state == common_pb2.SESSION_STATE_SCHEDULED
    window = timedelta(seconds=live.settings.join_window.seconds) or DEFAULT_JOIN_WINDOW
    old_key = f"{booking.id}@{start.isoformat()}"
    assert await timer_pending(server, TIMER_NO_SHOW, old_key) is not None
    assert await timer_pending(server, TIMER_OPEN, f"{session_id}@{(start - window).isoformat()}")

    new_start = start + timedelta(days=1, hours=2)
    moved = await call(server, "RescheduleBooking", reschedule(booking.id, new_start))
    assert moved.booking.session_id == session_id
    live = await session_of(server, session_id)
    assert live.scheduled_start_time.ToDatetime(UTC) == new_start
    assert live.scheduled_end_time.ToDatetime(UTC) == new_start + timedelta(minutes=30)
    assert live.state == common_pb2.SESSION_STATE_SCHEDULED
    # The old timers are gone and the new ones are due at the new times, in one transaction.
    assert await timer_pending(server, TIMER_NO_SHOW, old_key) is None
    new_key = f"{booking.id}@{new_start.isoformat()}"
    assert await timer_pending(server, TIMER_NO_SHOW, new_key) == new_start + DEFAULT_GRACE
    old_open = f"{session_id}@{(start - window).isoformat()}"
    assert await timer_pending(server, TIMER_OPEN, old_open) is None
    new_open = f"{session_id}@{(new_start - window).isoformat()}"
    assert await timer_pending(server, TIMER_OPEN, new_open) == new_start - window
    # Told through the session's log as well as the booking's.
    [updated] = await session_events(server, session_id, "session_updated")
    assert updated.scheduled_start_time.ToDatetime(UTC) == new_start
    assert set(updated.update_mask.paths) == {"scheduled_start_time", "scheduled_end_time"}
    [rescheduled] = await events(server, "BookingRescheduled", booking.id)
    assert rescheduled.start_time.ToDatetime(UTC) == new_start


async def test_participants_in_an_open_room_see_the_move_and_the_cancellation(server):
    iid, lid = await instructor(server), await learner(server)
    await always_available(server, iid)
    now = datetime.now(UTC).replace(microsecond=0)
    # Inside the join window: the session opens as it is provisioned.
    start = now + timedelta(minutes=5)
    booking = await book(server, iid, lid, start)
    session_id = await provisioned(server, booking)
    assert (await session_of(server, session_id)).state == common_pb2.SESSION_STATE_OPEN
    # Learners in the room before the instructor (who would make it live); a second learner
    # stands for the rest of the class.
    async with grpc.aio.insecure_channel(server.address) as channel:
        await session_grpc.SessionServiceStub(channel).UpdateSession(
            session_api.UpdateSessionRequest(
                session=session_pb.Session(
                    id=session_id,
                    settings=session_pb.SessionSettings(learners_join_before_instructor=True),
                ),
                update_mask={"paths": ["settings.learners_join_before_instructor"]},
            ),
            metadata=(("authorization", f"Bearer {server.api_key}"),),
        )
    other = await join(server, session_id, await learner(server))
    kid = await join(server, session_id, lid)
    try:
        later = start + timedelta(minutes=3)
        await call(server, "RescheduleBooking", reschedule(booking.id, later))
        for client in (other, kid):
            pushed = await client.event("session_updated")
            assert pushed.scheduled_start_time.ToDatetime(UTC) == later

        await call(
            server,
            "CancelBooking",
            api.CancelBookingRequest(booking=pb.BookingRef(booking_id=booking.id), reason="ill"),
        )
        for client in (other, kid):
            bye = await client.next("disconnect")
            assert bye.disconnect.reason == common_pb2.LEAVE_REASON_SESSION_ENDED
        live = await session_of(server, session_id)
        assert live.state == common_pb2.SESSION_STATE_CANCELLED and live.end_message == "ill"
        no_show = f"{booking.id}@{later.isoformat()}"
        assert await timer_pending(server, TIMER_NO_SHOW, no_show) is None
        [cancelled] = await events(server, "BookingCancelled", booking.id)
        assert cancelled.session_id == session_id
        # The cancelled session admits nobody any more.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await join(server, session_id, lid)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        await other.close()
        await kid.close()


async def test_a_live_session_is_neither_moved_nor_cancelled_with_its_booking(server):
    iid, lid = await instructor(server), await learner(server)
    await always_available(server, iid)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    booking = await book(server, iid, lid, start)
    session_id = await provisioned(server, booking)
    async with grpc.aio.insecure_channel(server.address) as channel:
        await session_grpc.SessionServiceStub(channel).StartSession(
            session_api.StartSessionRequest(session_id=session_id),
            metadata=(("authorization", f"Bearer {server.api_key}"),),
        )
    await expect_error(
        call(server, "RescheduleBooking", reschedule(booking.id, start + timedelta(hours=1))),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_ALREADY_LIVE",
    )
    ref = pb.BookingRef(booking_id=booking.id)
    await expect_error(
        call(server, "CancelBooking", api.CancelBookingRequest(booking=ref)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_ALREADY_LIVE",
    )
    # Nothing changed: the refusals rolled back whole.
    got = (await call(server, "GetBooking", api.GetBookingRequest(booking=ref))).booking
    assert got.state == pb.BOOKING_STATE_SCHEDULED and got.start_time.ToDatetime(UTC) == start
    live = await session_of(server, session_id)
    assert live.state == common_pb2.SESSION_STATE_LIVE
    assert live.scheduled_start_time.ToDatetime(UTC) == start


async def test_series_occurrences_carry_their_sessions_along(server):
    iid, lid = await instructor(server), await learner(server)
    await always_available(server, iid)
    first = datetime.now(UTC).replace(microsecond=0, second=0) + timedelta(days=2)
    created = await create_series(
        server, iid, lid, time_zone="UTC", start_time=ts(first), rrule="FREQ=DAILY;COUNT=3"
    )
    occ = await occurrences(server, created.series.id)
    assert len(occ) == 3
    moved_id = await provisioned(server, occ[0])
    cancelled_id = await provisioned(server, occ[1])

    # A new instructor for the series is expected in the provisioned sessions too.
    other = await instructor(server)
    await always_available(server, other)
    await call(
        server,
        "UpdateSeries",
        api.UpdateSeriesRequest(
            series=pb.Series(id=created.series.id, instructor_id=other),
            update_mask={"paths": ["instructor_id"]},
        ),
    )
    for session_id in (moved_id, cancelled_id):
        assert list((await session_of(server, session_id)).instructor_identities) == [other]

    new_start = first + timedelta(hours=3)
    await call(server, "RescheduleBooking", reschedule(occ[0].id, new_start))
    assert (await session_of(server, moved_id)).scheduled_start_time.ToDatetime(UTC) == new_start
    [moved] = await events(server, "OccurrenceMoved", occ[0].id)
    assert moved.start_time.ToDatetime(UTC) == new_start

    await call(
        server,
        "CancelSeries",
        api.CancelSeriesRequest(series_id=created.series.id, reason="term over"),
    )
    for session_id in (moved_id, cancelled_id):
        live = await session_of(server, session_id)
        assert live.state == common_pb2.SESSION_STATE_CANCELLED
        assert live.end_message == "term over"
    for o, start in ((occ[0], new_start), (occ[1], occ[1].start_time.ToDatetime(UTC))):
        assert await timer_pending(server, TIMER_NO_SHOW, f"{o.id}@{start.isoformat()}") is None
