"""SchedulingService over real gRPC: availability across DST, bookings and the double-booking
guarantee under concurrency, recurring series, slot search and calendar feeds."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import grpc
import icalendar
import pytest
import recurring_ical_events
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from classwire.api.roster.v1 import resources_pb2 as rpb
from classwire.api.roster.v1 import service_pb2 as rapi
from classwire.api.roster.v1 import service_pb2_grpc as rgrpc
from classwire.api.scheduling.v1 import resources_pb2 as pb
from classwire.api.scheduling.v1 import service_pb2 as api
from classwire.api.scheduling.v1 import service_pb2_grpc

NY, BERLIN = ZoneInfo("America/New_York"), ZoneInfo("Europe/Berlin")
LEARNER, INSTRUCTOR = rpb.PERSON_ROLE_LEARNER, rpb.PERSON_ROLE_INSTRUCTOR


def details(exc):
    info, bad = None, None
    for detail in rpc_status.from_call(exc).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
    return info, bad


async def call(server, method, request, stub=service_pb2_grpc.SchedulingServiceStub):
    async with grpc.aio.insecure_channel(server.address) as channel:
        return await getattr(stub(channel), method)(
            request, metadata=(("authorization", f"Bearer {server.api_key}"),)
        )


async def expect_error(awaitable, code, reason=None):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    assert caught.value.code() == code, caught.value.details()
    if reason is not None:
        assert details(caught.value)[0].reason == reason, details(caught.value)[0]
    return caught.value


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def window(start: datetime, end: datetime) -> pb.TimeInterval:
    return pb.TimeInterval(start_time=ts(start), end_time=ts(end))


async def instructor(server, zone="America/New_York", subject="math", **profile):
    person = rpb.Person(
        roles=[INSTRUCTOR],
        given_name="Iris",
        time_zone=zone,
        instructor_profile=rpb.InstructorProfile(
            qualifications=[rpb.SubjectQualification(subject=subject)], **profile
        ),
    )
    response = await call(
        server, "CreatePerson", rapi.CreatePersonRequest(person=person), rgrpc.RosterServiceStub
    )
    return response.person.id


async def learner(server, zone="Europe/Berlin"):
    person = rpb.Person(roles=[LEARNER], given_name="Lea", time_zone=zone)
    response = await call(
        server, "CreatePerson", rapi.CreatePersonRequest(person=person), rgrpc.RosterServiceStub
    )
    return response.person.id


def rule(day: int, start: int, end: int) -> pb.WeeklyRule:
    return pb.WeeklyRule(
        weekday=day,
        range=pb.LocalTimeRange(start=rpb.LocalTime(hours=start), end=rpb.LocalTime(hours=end)),
    )


async def always_available(server, person_id, zone="America/New_York", **policy):
    await call(
        server,
        "SetAvailability",
        api.SetAvailabilityRequest(
            availability=pb.AvailabilitySchedule(
                person_id=person_id,
                time_zone=zone,
                weekly_rules=[rule(d, 0, 24) for d in range(1, 8)],
                booking_policy=pb.BookingPolicy(**policy),
            )
        ),
    )


def next_weekday(weekday: int, hour: int, tz, weeks_ahead=1) -> datetime:
    today = datetime.now(tz).date() + timedelta(days=7 * weeks_ahead)
    day = today + timedelta(days=(weekday - today.isoweekday()) % 7)
    return datetime(day.year, day.month, day.day, hour, tzinfo=tz).astimezone(UTC)


# Availability ---------------------------------------------------------------------------------


async def test_availability_validation_reports_every_problem(server):
    iid = await instructor(server)
    bad = pb.WeeklyRule(
        weekday=1,
        range=pb.LocalTimeRange(start=rpb.LocalTime(hours=17), end=rpb.LocalTime(hours=9)),
    )
    err = await expect_error(
        call(
            server,
            "SetAvailability",
            api.SetAvailabilityRequest(
                availability=pb.AvailabilitySchedule(
                    person_id=iid, time_zone="Mars/Olympus", weekly_rules=[bad, rule(9, 1, 2)]
                )
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    fields = {v.field for v in details(err)[1].field_violations}
    assert {
        "availability.time_zone",
        "availability.weekly_rules[0].range.end",
        "availability.weekly_rules[1].weekday",
    } <= fields
    await expect_error(
        call(server, "GetAvailability", api.GetAvailabilityRequest(person_id="nobody")),
        grpc.StatusCode.NOT_FOUND,
        "PERSON_NOT_FOUND",
    )


async def test_weekly_rules_keep_wall_clock_across_us_dst(server):
    iid = await instructor(server)
    await call(
        server,
        "SetAvailability",
        api.SetAvailabilityRequest(
            availability=pb.AvailabilitySchedule(
                person_id=iid,
                time_zone="America/New_York",
                weekly_rules=[rule(6, 9, 12), rule(1, 9, 12)],
                time_off=[
                    pb.TimeOff(
                        interval=window(
                            datetime(2030, 3, 11, 14, tzinfo=UTC),
                            datetime(2030, 3, 11, 15, tzinfo=UTC),
                        ),
                        reason="dentist",
                    )
                ],
            )
        ),
    )
    got = await call(server, "GetAvailability", api.GetAvailabilityRequest(person_id=iid))
    assert got.availability.time_off[0].id and got.availability.etag
    # US DST starts on Sunday 10 March 2030: Saturday is EST (UTC-5), Monday EDT (UTC-4).
    fb = await call(
        server,
        "GetFreeBusy",
        api.GetFreeBusyRequest(
            person_ids=[iid],
            window=window(datetime(2030, 3, 9, tzinfo=UTC), datetime(2030, 3, 12, tzinfo=UTC)),
        ),
    )
    free = [(i.start_time.ToDatetime(UTC), i.end_time.ToDatetime(UTC)) for i in fb.people[0].free]
    assert free == [
        (datetime(2030, 3, 9, 14, tzinfo=UTC), datetime(2030, 3, 9, 17, tzinfo=UTC)),
        (datetime(2030, 3, 11, 13, tzinfo=UTC), datetime(2030, 3, 11, 14, tzinfo=UTC)),
        (datetime(2030, 3, 11, 15, tzinfo=UTC), datetime(2030, 3, 11, 16, tzinfo=UTC)),
    ]
    assert fb.people[0].busy[0].kind == pb.BUSY_KIND_TIME_OFF


# Bookings ---------------------------------------------------------------------------------------


async def test_booking_outside_availability_and_lifecycle(server):
    iid = await instructor(server)
    lid = await learner(server)
    await call(
        server,
        "SetAvailability",
        api.SetAvailabilityRequest(
            availability=pb.AvailabilitySchedule(person_id=iid, weekly_rules=[rule(2, 9, 12)])
        ),
    )
    start = next_weekday(2, 10, NY)
    outside = next_weekday(2, 13, NY)
    err = await expect_error(
        call(
            server,
            "CreateBooking",
            api.CreateBookingRequest(
                booking=pb.Booking(
                    subject="math",
                    instructor_id=iid,
                    learner_ids=[lid],
                    start_time=ts(outside),
                    end_time=ts(outside + timedelta(hours=1)),
                )
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "SLOT_OUTSIDE_AVAILABILITY",
    )
    assert details(err)[1].field_violations[0].field == "booking.start_time"
    request = api.CreateBookingRequest(
        booking=pb.Booking(
            subject="math",
            instructor_id=iid,
            learner_ids=[lid],
            capacity=3,
            start_time=ts(start),
            end_time=ts(start + timedelta(hours=1)),
        ),
        request_id="create-1",
    )
    created = (await call(server, "CreateBooking", request)).booking
    again = (await call(server, "CreateBooking", request)).booking
    assert again.id == created.id and created.seats_available == 2
    assert created.assignment.method == pb.ASSIGNMENT_METHOD_MANUAL
    # A seat for a second learner, then the same learner again.
    other = await learner(server)
    seated = await call(
        server,
        "ReserveSeat",
        api.ReserveSeatRequest(booking=pb.BookingRef(booking_id=created.id), learner_id=other),
    )
    assert seated.booking.seats_available == 1
    await expect_error(
        call(
            server,
            "ReserveSeat",
            api.ReserveSeatRequest(booking=pb.BookingRef(booking_id=created.id), learner_id=other),
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "SEAT_ALREADY_RESERVED",
    )
    moved = await call(
        server,
        "RescheduleBooking",
        api.RescheduleBookingRequest(
            booking=pb.BookingRef(booking_id=created.id),
            new_start_time=ts(start + timedelta(hours=1)),
            reason="clash",
            initiator=pb.Initiator(person_id=lid, role=pb.INITIATOR_ROLE_LEARNER),
        ),
    )
    assert moved.outcome == pb.CUTOFF_OUTCOME_ON_TIME
    assert moved.booking.reschedules[0].previous_start_time == ts(start)
    await expect_error(
        call(
            server,
            "RescheduleBooking",
            api.RescheduleBookingRequest(
                booking=pb.BookingRef(booking_id=created.id),
                new_start_time=ts(start + timedelta(hours=3)),
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "SLOT_OUTSIDE_AVAILABILITY",
    )
    cancelled = await call(
        server,
        "CancelBooking",
        api.CancelBookingRequest(booking=pb.BookingRef(booking_id=created.id), reason="ill"),
    )
    assert cancelled.booking.state == pb.BOOKING_STATE_CANCELLED
    assert cancelled.booking.cancellation.reason == "ill"
    listed = await call(
        server,
        "ListBookings",
        api.ListBookingsRequest(
            window=window(start - timedelta(days=1), start + timedelta(days=1)),
            person_id=lid,
            states=[pb.BOOKING_STATE_CANCELLED],
        ),
    )
    assert [b.id for b in listed.bookings] == [created.id]


async def test_cancellation_cutoff_rejects_unless_waived(server):
    await call(
        server,
        "UpdateSchedulingSettings",
        api.UpdateSchedulingSettingsRequest(
            settings=pb.SchedulingSettings(
                cancellation_policy=pb.CancellationPolicy(
                    cancellation_cutoff=duration_pb2.Duration(seconds=365 * 86400),
                    late_action=pb.LATE_CHANGE_ACTION_REJECT,
                )
            ),
            update_mask={"paths": ["cancellation_policy"]},
        ),
    )
    try:
        iid, lid = await instructor(server), await learner(server)
        await always_available(server, iid)
        start = next_weekday(3, 10, NY)
        booking = (
            await call(
                server,
                "CreateBooking",
                api.CreateBookingRequest(
                    booking=pb.Booking(
                        subject="math",
                        instructor_id=iid,
                        learner_ids=[lid],
                        start_time=ts(start),
                        end_time=ts(start + timedelta(hours=1)),
                    )
                ),
            )
        ).booking
        ref = pb.BookingRef(booking_id=booking.id)
        await expect_error(
            call(server, "CancelBooking", api.CancelBookingRequest(booking=ref)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "CANCELLATION_CUTOFF_PASSED",
        )
        done = await call(
            server, "CancelBooking", api.CancelBookingRequest(booking=ref, waive_cutoff=True)
        )
        assert done.outcome == pb.CUTOFF_OUTCOME_LATE_WAIVED
    finally:
        await call(
            server,
            "UpdateSchedulingSettings",
            api.UpdateSchedulingSettingsRequest(
                settings=pb.SchedulingSettings(), update_mask={"paths": ["cancellation_policy"]}
            ),
        )


async def test_fifty_concurrent_bookings_of_one_slot_give_one_success(server):
    iid = await instructor(server)
    await always_available(server, iid)
    learners = [await learner(server) for _ in range(50)]
    start = next_weekday(4, 10, NY)

    async def book(lid):
        try:
            await call(
                server,
                "CreateBooking",
                api.CreateBookingRequest(
                    booking=pb.Booking(
                        subject="math",
                        instructor_id=iid,
                        learner_ids=[lid],
                        start_time=ts(start),
                        end_time=ts(start + timedelta(minutes=45)),
                    )
                ),
            )
            return "ok"
        except grpc.aio.AioRpcError as exc:
            return (exc.code(), details(exc)[0].reason)

    results = await asyncio.gather(*(book(lid) for lid in learners))
    assert results.count("ok") == 1
    assert all(r == (grpc.StatusCode.ABORTED, "SLOT_TAKEN") for r in results if r != "ok")


async def test_buffers_and_limits(server):
    iid = await instructor(server, weekly_load_limit=duration_pb2.Duration(seconds=7200))
    await always_available(server, iid, buffer_after=duration_pb2.Duration(seconds=900))
    lid = await learner(server)
    start = next_weekday(5, 10, NY)

    async def book(at, minutes=60):
        return await call(
            server,
            "CreateBooking",
            api.CreateBookingRequest(
                booking=pb.Booking(
                    subject="math",
                    instructor_id=iid,
                    learner_ids=[lid],
                    start_time=ts(at),
                    end_time=ts(at + timedelta(minutes=minutes)),
                )
            ),
        )

    await book(start)
    err = await expect_error(
        book(start + timedelta(minutes=70)), grpc.StatusCode.ABORTED, "SLOT_TAKEN"
    )
    assert details(err)[0].metadata["conflicting_booking_id"]
    await book(start + timedelta(minutes=75))
    await expect_error(
        book(start + timedelta(hours=4)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "WEEKLY_LIMIT_REACHED",
    )


# Series ---------------------------------------------------------------------------------------


async def create_series(server, iid, lid, **fields):
    response = await call(
        server,
        "CreateSeries",
        api.CreateSeriesRequest(
            series=pb.Series(
                subject="math",
                instructor_id=iid,
                learner_ids=[lid],
                duration=duration_pb2.Duration(seconds=3600),
                **fields,
            )
        ),
    )
    return response


async def occurrences(server, series_id, include_cancelled=False):
    response = await call(
        server,
        "ListOccurrences",
        api.ListOccurrencesRequest(
            series_id=series_id,
            window=window(datetime.now(UTC), datetime.now(UTC) + timedelta(days=365)),
            include_cancelled=include_cancelled,
            page_size=500,
        ),
    )
    return list(response.occurrences)


def first_date_after(days: int, month: int, day: int) -> int:
    """A year in which month/day is at least `days` days ahead."""
    today = date.today()
    year = today.year
    while date(year, month, day) - today < timedelta(days=days):
        year += 1
    return year


async def test_series_rejects_count_and_until_and_bad_exdate(server):
    iid, lid = await instructor(server), await learner(server)
    start = next_weekday(1, 9, NY)
    err = await expect_error(
        create_series(
            server,
            iid,
            lid,
            time_zone="America/New_York",
            start_time=ts(start),
            rrule="FREQ=WEEKLY;COUNT=3;UNTIL=20990101T000000Z",
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "RRULE_COUNT_AND_UNTIL",
    )
    assert details(err)[1].field_violations[0].field == "series.rrule"
    await expect_error(
        create_series(
            server, iid, lid, time_zone="Nowhere/City", start_time=ts(start), rrule="FREQ=WEEKLY"
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UNKNOWN_TIME_ZONE",
    )
    await expect_error(
        create_series(
            server,
            iid,
            lid,
            time_zone="America/New_York",
            start_time=ts(start),
            rrule="FREQ=WEEKLY;COUNT=3",
            exdates=[ts(start + timedelta(hours=1))],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "EXDATE_NOT_AN_OCCURRENCE",
    )


async def test_series_across_dst_with_exdate_moved_occurrence_and_feed(server):
    iid, lid = await instructor(server), await learner(server)
    await always_available(server, iid)
    # Weekly on Mondays and Wednesdays at 17:30 in New York across the US (second Sunday of
    # March) and EU (last Sunday of March) transitions: New York keeps 17:30, Berlin moves.
    year = first_date_after(7, 3, 1)
    start = datetime(year, 3, 2, 17, 30, tzinfo=NY)
    while start.isoweekday() != 1:
        start += timedelta(days=1)
    exdate = start + timedelta(days=9)  # the second Wednesday
    created = await create_series(
        server,
        iid,
        lid,
        time_zone="America/New_York",
        start_time=ts(start.astimezone(UTC)),
        rrule="FREQ=WEEKLY;BYDAY=MO,WE;COUNT=10",
        exdates=[ts(exdate.astimezone(UTC))],
    )
    series = created.series
    occ = await occurrences(server, series.id)
    assert len(occ) == 9
    local = [o.start_time.ToDatetime(UTC).astimezone(NY) for o in occ]
    assert {(t.hour, t.minute) for t in local} == {(17, 30)}
    offsets = {t.utcoffset() for t in local}
    assert offsets == {timedelta(hours=-5), timedelta(hours=-4)}
    assert exdate not in local
    # Move one occurrence by its original start (OccurrenceKey), cancel another.
    moved_key = pb.OccurrenceKey(series_id=series.id, original_start_time=occ[3].start_time)
    moved = await call(
        server,
        "RescheduleBooking",
        api.RescheduleBookingRequest(
            booking=pb.BookingRef(occurrence=moved_key),
            new_start_time=ts(occ[3].start_time.ToDatetime(UTC) + timedelta(hours=2)),
        ),
    )
    assert moved.booking.series_id == series.id
    assert moved.booking.original_start_time == occ[3].start_time
    await call(
        server,
        "CancelBooking",
        api.CancelBookingRequest(booking=pb.BookingRef(booking_id=occ[5].id), reason="holiday"),
    )
    got = await call(
        server, "GetBooking", api.GetBookingRequest(booking=pb.BookingRef(occurrence=moved_key))
    )
    assert got.booking.id == occ[3].id
    expected = sorted(o.start_time.ToDatetime(UTC) for o in await occurrences(server, series.id))
    assert len(expected) == 8

    # The learner's iCalendar feed, re-read by two independent parsers.
    feed = await call(server, "GetCalendarFeed", api.GetCalendarFeedRequest(person_id=lid))
    assert feed.content_type.startswith("text/calendar")
    calendar = icalendar.Calendar.from_ical(feed.ics)
    assert any(c.name == "VTIMEZONE" for c in calendar.walk())
    events = recurring_ical_events.of(calendar).between(
        datetime.now(UTC), datetime.now(UTC) + timedelta(days=365)
    )
    parsed = sorted(e.decoded("dtstart").astimezone(UTC) for e in events)
    assert parsed == expected


async def test_until_in_another_zone_and_series_cancel(server):
    iid, lid = await instructor(server, zone="Europe/Berlin"), await learner(server)
    await always_available(server, iid, zone="Europe/Berlin")
    year = first_date_after(7, 10, 1)
    start = datetime(year, 10, 20, 8, 0, tzinfo=BERLIN)
    # UNTIL is 07:00 UTC on 3 November: 08:00 Berlin is 07:00 UTC after the EU change on the
    # last Sunday of October, so the 3 November occurrence is included.
    until = datetime(year, 11, 3, 7, 0, tzinfo=UTC)
    created = await create_series(
        server,
        iid,
        lid,
        time_zone="Europe/Berlin",
        start_time=ts(start.astimezone(UTC)),
        rrule=f"FREQ=DAILY;INTERVAL=7;UNTIL={until:%Y%m%dT%H%M%SZ}",
    )
    occ = await occurrences(server, created.series.id)
    local = [o.start_time.ToDatetime(UTC).astimezone(BERLIN) for o in occ]
    assert [t.date() for t in local] == [date(year, 10, 20), date(year, 10, 27), date(year, 11, 3)]
    assert {t.hour for t in local} == {8}
    cancelled = await call(
        server,
        "CancelSeries",
        api.CancelSeriesRequest(series_id=created.series.id, reason="term over"),
    )
    assert cancelled.series.state == pb.SERIES_STATE_CANCELLED
    assert await occurrences(server, created.series.id) == []
    assert len(await occurrences(server, created.series.id, include_cancelled=True)) == 3


# Slot search ----------------------------------------------------------------------------------


async def test_find_slots_respects_bookings_buffers_and_learner_zone(server):
    subject = "chemistry-slots"
    a = await instructor(server, subject=subject)
    b = await instructor(server, subject=subject)
    await call(
        server,
        "SetAvailability",
        api.SetAvailabilityRequest(
            availability=pb.AvailabilitySchedule(
                person_id=a,
                weekly_rules=[rule(2, 9, 11)],
                booking_policy=pb.BookingPolicy(
                    buffer_after=duration_pb2.Duration(seconds=900),
                    slot_interval=duration_pb2.Duration(seconds=1800),
                ),
            )
        ),
    )
    await call(
        server,
        "SetAvailability",
        api.SetAvailabilityRequest(
            availability=pb.AvailabilitySchedule(
                person_id=b,
                weekly_rules=[rule(2, 10, 11)],
                booking_policy=pb.BookingPolicy(slot_interval=duration_pb2.Duration(seconds=1800)),
            )
        ),
    )
    lid = await learner(server, zone="Europe/Berlin")
    day = next_weekday(2, 9, NY)
    await call(
        server,
        "CreateBooking",
        api.CreateBookingRequest(
            booking=pb.Booking(
                subject=subject,
                instructor_id=a,
                learner_ids=[await learner(server)],
                start_time=ts(day),
                end_time=ts(day + timedelta(minutes=30)),
            )
        ),
    )
    found = await call(
        server,
        "FindSlots",
        api.FindSlotsRequest(
            subject=subject,
            duration=duration_pb2.Duration(seconds=1800),
            learner_id=lid,
            window=window(day - timedelta(hours=1), day + timedelta(hours=3)),
        ),
    )
    assert found.time_zone == "Europe/Berlin"
    by_start = {
        s.start_time.ToDatetime(UTC): [c.instructor_id for c in s.candidates] for s in found.slots
    }
    # a: 9:00 booked, 9:30 in its 15-min buffer, 10:00 and 10:30 free; b: 10:00 and 10:30.
    assert sorted(by_start) == [day + timedelta(hours=1), day + timedelta(minutes=90)]
    assert set(by_start[day + timedelta(hours=1)]) == {a, b}
    slot = found.slots[0]
    assert slot.local_start.hours == day.astimezone(BERLIN).hour + 1
    assert slot.utc_offset.seconds == int(day.astimezone(BERLIN).utcoffset().total_seconds())
