"""Instructor matching over real gRPC with the real CP-SAT matcher: single matches with their
explanations, bulk plans (dry run, apply, stale and concurrent applies), substitutes after a
no-show, calendar feed tokens, tenant isolation and bad input."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import duration_pb2
from test_scheduling_core import always_available, call, details, expect_error, ts, window
from test_scheduling_provision import events

from classwire.api.roster.v1 import resources_pb2 as rpb
from classwire.api.roster.v1 import service_pb2 as rapi
from classwire.api.roster.v1 import service_pb2_grpc as rgrpc
from classwire.api.scheduling.v1 import resources_pb2 as pb
from classwire.api.scheduling.v1 import service_pb2 as api
from classwire.api.scheduling.v1 import service_pb2_grpc
from classwire.server.domain.platform import TenantSettings

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def subject() -> str:
    """A subject of this test alone: the session's tenant has other tests' instructors."""
    return f"s{uuid.uuid4().hex[:10]}"


async def person(server, **fields) -> str:
    response = await call(
        server,
        "CreatePerson",
        rapi.CreatePersonRequest(person=rpb.Person(given_name="P", **fields)),
        rgrpc.RosterServiceStub,
    )
    return response.person.id


async def teacher(server, subj, languages=(), available=True, **profile) -> str:
    iid = await person(
        server,
        roles=[rpb.PERSON_ROLE_INSTRUCTOR],
        time_zone="UTC",
        instructor_profile=rpb.InstructorProfile(
            qualifications=[rpb.SubjectQualification(subject=subj)],
            languages=list(languages),
            **profile,
        ),
    )
    if available:
        await always_available(server, iid, zone="UTC")
    return iid


async def pupil(server, languages=(), **profile) -> str:
    return await person(
        server,
        roles=[rpb.PERSON_ROLE_LEARNER],
        time_zone="UTC",
        learner_profile=rpb.LearnerProfile(languages=list(languages), **profile),
    )


async def lesson(server, subj, lid, start, minutes=60, iid=""):
    return (
        await call(
            server,
            "CreateBooking",
            api.CreateBookingRequest(
                booking=pb.Booking(
                    subject=subj,
                    learner_ids=[lid],
                    instructor_id=iid,
                    start_time=ts(start),
                    end_time=ts(start + timedelta(minutes=minutes)),
                )
            ),
        )
    ).booking


def next_monday(hour=10) -> datetime:
    today = datetime.now(UTC).date() + timedelta(days=7)
    day = today - timedelta(days=today.weekday())
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def ref(booking_id: str) -> pb.BookingRef:
    return pb.BookingRef(booking_id=booking_id)


async def test_single_match_explains_and_respects_qualification_and_availability(server):
    subj = subject()
    speaks = await teacher(server, subj, languages=["de"])
    other = await teacher(server, subj, languages=["fr"])
    unavailable = await teacher(server, subj, languages=["de"], available=False)
    unqualified = await teacher(server, subject(), languages=["de"])
    lid = await pupil(server, languages=["de"])
    booking = await lesson(server, subj, lid, next_monday())

    got = await call(
        server,
        "MatchInstructor",
        api.MatchInstructorRequest(booking=ref(booking.id), include_ineligible=True),
    )
    assert got.matcher == "cpsat"
    assert got.chosen.instructor_id == speaks and got.chosen.rank == 1
    terms = {t.name: t for t in got.chosen.explanation.terms}
    assert {"continuity", "language", "preference", "load_balance"} <= set(terms)
    assert terms["language"].value == 1.0
    assert all(c.satisfied for c in got.chosen.explanation.constraints)
    assert [a.instructor_id for a in got.alternatives] == [other]
    ineligible = {c.instructor_id: c for c in got.ineligible}
    assert unavailable in ineligible and unqualified not in {got.chosen.instructor_id}
    failed = {c.name for c in ineligible[unavailable].explanation.constraints if not c.satisfied}
    assert "available" in failed
    # Explain-only: the booking is still unassigned.
    again = await call(server, "GetBooking", api.GetBookingRequest(booking=ref(booking.id)))
    assert again.booking.instructor_id == ""

    # A prospective booking is matched the same way; excluding the best gives the other.
    prospective = await call(
        server,
        "MatchInstructor",
        api.MatchInstructorRequest(
            prospective_booking=pb.Booking(
                subject=subj,
                learner_ids=[lid],
                start_time=ts(next_monday(14)),
                end_time=ts(next_monday(15)),
            ),
            match=pb.MatchOptions(excluded_instructor_ids=[speaks]),
        ),
    )
    assert prospective.chosen.instructor_id == other

    # AssignInstructor with the matcher's choice, then unassign.
    assigned = await call(
        server,
        "AssignInstructor",
        api.AssignInstructorRequest(booking=ref(booking.id), match=pb.MatchOptions()),
    )
    assert assigned.booking.instructor_id == speaks
    assert assigned.booking.assignment.method == pb.ASSIGNMENT_METHOD_MATCHER
    assert assigned.explanation.terms
    fired = await events(server, "InstructorAssigned", booking.id)
    assert fired and fired[-1].instructor_id == speaks and fired[-1].matcher == "cpsat"
    # A named instructor who is not qualified is refused.
    await expect_error(
        call(
            server,
            "AssignInstructor",
            api.AssignInstructorRequest(booking=ref(booking.id), instructor_id=unqualified),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSTRUCTOR_NOT_QUALIFIED",
    )
    gone = await call(
        server, "UnassignInstructor", api.UnassignInstructorRequest(booking=ref(booking.id))
    )
    assert gone.booking.instructor_id == ""
    assert await events(server, "InstructorUnassigned", booking.id)


async def test_bulk_dry_run_then_apply(server):
    subj = subject()
    first, second = await teacher(server, subj), await teacher(server, subj)
    learners = [await pupil(server) for _ in range(3)]
    start = next_monday(9)
    # Three lessons at the same hour need three instructors: one stays unassigned.
    bookings = [await lesson(server, subj, lid, start) for lid in learners]
    later = await lesson(server, subj, learners[0], start + timedelta(hours=3))
    ids = [b.id for b in bookings] + [later.id]

    dry = (
        await call(
            server,
            "AssignInstructors",
            api.AssignInstructorsRequest(
                bookings=api.BookingIds(booking_ids=ids),
                mode=pb.ASSIGNMENT_MODE_DRY_RUN,
                time_limit=duration_pb2.Duration(seconds=10),
            ),
        )
    ).plan
    assert dry.state == pb.PLAN_STATE_PROPOSED and dry.matcher == "cpsat"
    assert dry.assigned_count == 3 and dry.unassigned_count == 1
    assert dry.status == pb.SOLVER_STATUS_OPTIMAL and dry.gap == 0.0
    assert dry.best_bound >= dry.objective
    chosen = {a.booking_id: a.instructor_id for a in dry.assignments}
    at_nine = [chosen[b.id] for b in bookings if chosen[b.id]]
    assert sorted(at_nine) == sorted([first, second])
    assert all(a.explanation.summary or a.explanation.terms for a in dry.assignments)
    # A dry run changes nothing.
    got = await call(server, "GetBooking", api.GetBookingRequest(booking=ref(later.id)))
    assert got.booking.instructor_id == ""

    stored = await call(server, "GetAssignmentPlan", api.GetAssignmentPlanRequest(plan_id=dry.id))
    assert stored.plan == dry
    applied = (
        await call(
            server,
            "ApplyAssignmentPlan",
            api.ApplyAssignmentPlanRequest(plan_id=dry.id, request_id="apply-1"),
        )
    ).plan
    assert applied.state == pb.PLAN_STATE_APPLIED
    for booking_id, iid in chosen.items():
        got = await call(server, "GetBooking", api.GetBookingRequest(booking=ref(booking_id)))
        assert got.booking.instructor_id == iid
        if iid:
            assert got.booking.assignment.method == pb.ASSIGNMENT_METHOD_BULK_PLAN
            assert got.booking.assignment.plan_id == dry.id
    # A retry of the same request id returns the applied plan; another apply is refused.
    retry = await call(
        server,
        "ApplyAssignmentPlan",
        api.ApplyAssignmentPlanRequest(plan_id=dry.id, request_id="apply-1"),
    )
    assert retry.plan.state == pb.PLAN_STATE_APPLIED
    await expect_error(
        call(server, "ApplyAssignmentPlan", api.ApplyAssignmentPlanRequest(plan_id=dry.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PLAN_ALREADY_APPLIED",
    )

    # Apply mode over a window selection: the remaining unassigned lesson stays unassigned
    # (both instructors are busy at nine), and nothing is double-booked.
    selected = (
        await call(
            server,
            "AssignInstructors",
            api.AssignInstructorsRequest(
                selection=api.BookingSelection(
                    window=window(start - timedelta(hours=1), start + timedelta(hours=6)),
                    subjects=[subj],
                ),
                mode=pb.ASSIGNMENT_MODE_APPLY,
            ),
        )
    ).plan
    assert selected.state == pb.PLAN_STATE_APPLIED
    assert selected.assigned_count == 0 and selected.unassigned_count == 1


async def test_stale_plan_is_refused_and_expires(server):
    subj = subject()
    iid = await teacher(server, subj)
    other = await teacher(server, subj)
    lid = await pupil(server)
    booking = await lesson(server, subj, lid, next_monday(11))
    plan = (
        await call(
            server,
            "AssignInstructors",
            api.AssignInstructorsRequest(bookings=api.BookingIds(booking_ids=[booking.id])),
        )
    ).plan
    assert plan.assigned_count == 1
    # Someone assigns the booking by hand meanwhile.
    await call(
        server,
        "AssignInstructor",
        api.AssignInstructorRequest(
            booking=ref(booking.id),
            instructor_id=other if plan.assignments[0].instructor_id == iid else iid,
        ),
    )
    error = await expect_error(
        call(server, "ApplyAssignmentPlan", api.ApplyAssignmentPlanRequest(plan_id=plan.id)),
        grpc.StatusCode.ABORTED,
        "PLAN_STALE",
    )
    assert "changed" in error.details()
    got = await call(server, "GetAssignmentPlan", api.GetAssignmentPlanRequest(plan_id=plan.id))
    assert got.plan.state == pb.PLAN_STATE_EXPIRED
    await expect_error(
        call(server, "ApplyAssignmentPlan", api.ApplyAssignmentPlanRequest(plan_id=plan.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PLAN_EXPIRED",
    )


async def test_concurrent_applies_never_double_book(server):
    subj = subject()
    iid = await teacher(server, subj)
    start = next_monday(13)
    plans = []
    for _ in range(4):
        lid = await pupil(server)
        booking = await lesson(server, subj, lid, start, minutes=45)
        plan = (
            await call(
                server,
                "AssignInstructors",
                api.AssignInstructorsRequest(bookings=api.BookingIds(booking_ids=[booking.id])),
            )
        ).plan
        # Each plan alone gives the only instructor its lesson; together they overlap.
        assert plan.assignments[0].instructor_id == iid
        plans.append(plan.id)

    async def apply(plan_id):
        try:
            await call(
                server, "ApplyAssignmentPlan", api.ApplyAssignmentPlanRequest(plan_id=plan_id)
            )
            return "ok"
        except grpc.aio.AioRpcError as exc:
            assert exc.code() in (grpc.StatusCode.ABORTED,), exc.details()
            return details(exc)[0].reason

    results = await asyncio.gather(*(apply(p) for p in plans))
    assert results.count("ok") == 1, results
    assert set(results) - {"ok"} <= {"PLAN_STALE", "SLOT_TAKEN"}
    listed = await call(
        server,
        "ListBookings",
        api.ListBookingsRequest(
            window=window(start - timedelta(hours=1), start + timedelta(hours=2)),
            instructor_id=iid,
        ),
    )
    assert len(listed.bookings) == 1


async def test_substitute_after_instructor_no_show(server):
    subj = subject()
    regular = await teacher(server, subj)
    substitute = await teacher(server, subj)
    lid = await pupil(server)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    booking = await lesson(server, subj, lid, start, iid=regular)
    provisioned = await call(
        server, "ProvisionSession", api.ProvisionSessionRequest(booking=ref(booking.id))
    )
    assert provisioned.booking.session_id

    # Marking the instructor absent runs the tenant's policy (default: propose substitutes).
    await call(
        server,
        "MarkNoShow",
        api.MarkNoShowRequest(booking=ref(booking.id), person_ids=[regular]),
    )
    proposed = await events(server, "SubstituteProposed", booking.id)
    assert proposed and proposed[-1].absent_instructor_id == regular
    assert proposed[-1].candidate_instructor_ids[0] == substitute
    assert regular not in proposed[-1].candidate_instructor_ids
    proposal = (
        await call(
            server,
            "GetSubstituteProposal",
            api.GetSubstituteProposalRequest(proposal_id=proposed[-1].proposal_id),
        )
    ).proposal
    assert proposal.state == pb.SUBSTITUTE_PROPOSAL_STATE_OPEN
    assert proposal.candidates[0].explanation.constraints

    # An explicit proposal works too, and assigning from it closes both.
    explicit = (
        await call(
            server, "ProposeSubstitute", api.ProposeSubstituteRequest(booking=ref(booking.id))
        )
    ).proposal
    assert [c.instructor_id for c in explicit.candidates][:1] == [substitute]
    done = await call(
        server,
        "AssignSubstitute",
        api.AssignSubstituteRequest(booking=ref(booking.id), proposal_id=explicit.id),
    )
    assert done.booking.instructor_id == substitute
    assert done.booking.substituted_instructor_id == regular
    assert done.booking.assignment.method == pb.ASSIGNMENT_METHOD_SUBSTITUTE
    assigned = await events(server, "SubstituteAssigned", booking.id)
    assert assigned[-1].substitute_instructor_id == substitute
    assert assigned[-1].session_id == provisioned.booking.session_id
    for pid, state in (
        (explicit.id, pb.SUBSTITUTE_PROPOSAL_STATE_ASSIGNED),
        (proposal.id, pb.SUBSTITUTE_PROPOSAL_STATE_CLOSED),
    ):
        got = await call(
            server, "GetSubstituteProposal", api.GetSubstituteProposalRequest(proposal_id=pid)
        )
        assert got.proposal.state == state
    await expect_error(
        call(
            server,
            "AssignSubstitute",
            api.AssignSubstituteRequest(booking=ref(booking.id), proposal_id=proposal.id),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "PROPOSAL_CLOSED",
    )
    # The live session now expects the substitute.
    from classwire.server.store.models import SessionInstructor

    async with server.server.platform.db.reader() as session:
        identities = {
            r.identity
            for r in (
                await session.execute(
                    SessionInstructor.__table__.select().where(
                        SessionInstructor.session_id == provisioned.booking.session_id
                    )
                )
            )
        }
    assert identities == {substitute}


async def feed(server, credential, person_id):
    async with grpc.aio.insecure_channel(server.address) as channel:
        return await service_pb2_grpc.SchedulingServiceStub(channel).GetCalendarFeed(
            api.GetCalendarFeedRequest(person_id=person_id),
            metadata=(("authorization", f"Bearer {credential}"),),
        )


async def test_calendar_feed_tokens(server):
    subj = subject()
    iid = await teacher(server, subj)
    lid = await pupil(server)
    await lesson(server, subj, lid, next_monday(16), iid=iid)
    created = (
        await call(
            server,
            "CreateCalendarFeedToken",
            api.CreateCalendarFeedTokenRequest(person_id=iid, label="Phone", request_id="t-1"),
        )
    ).token
    assert created.token and created.person_id == iid
    got = await feed(server, created.token, iid)
    assert got.ics.startswith("BEGIN:VCALENDAR") and "BEGIN:VEVENT" in got.ics
    # The token reads its own person's feed and nothing else.
    await expect_error(feed(server, created.token, lid), grpc.StatusCode.PERMISSION_DENIED)
    async with grpc.aio.insecure_channel(server.address) as channel:
        await expect_error(
            service_pb2_grpc.SchedulingServiceStub(channel).GetBooking(
                api.GetBookingRequest(booking=ref("bkg_x")),
                metadata=(("authorization", f"Bearer {created.token}"),),
            ),
            grpc.StatusCode.PERMISSION_DENIED,
        )
    # A retry returns the same token, without the secret (only its hash is kept).
    retry = await call(
        server,
        "CreateCalendarFeedToken",
        api.CreateCalendarFeedTokenRequest(person_id=iid, label="Phone", request_id="t-1"),
    )
    assert retry.token.id == created.id and retry.token.token == ""
    listed = await call(
        server, "ListCalendarFeedTokens", api.ListCalendarFeedTokensRequest(person_id=iid)
    )
    assert [t.id for t in listed.tokens] == [created.id]
    assert listed.tokens[0].token == "" and listed.tokens[0].HasField("last_use_time")
    async with server.server.platform.db.reader() as session:
        from classwire.server.store.scheduling_models import SchedFeedToken

        stored = await session.get(SchedFeedToken, created.id)
    assert created.token not in (stored.secret_hash, stored.label)

    await call(
        server, "DeleteCalendarFeedToken", api.DeleteCalendarFeedTokenRequest(token_id=created.id)
    )
    await expect_error(
        feed(server, created.token, iid),
        grpc.StatusCode.UNAUTHENTICATED,
        "CALENDAR_FEED_TOKEN_INVALID",
    )
    await expect_error(
        call(
            server,
            "DeleteCalendarFeedToken",
            api.DeleteCalendarFeedTokenRequest(token_id=created.id),
        ),
        grpc.StatusCode.NOT_FOUND,
        "CALENDAR_FEED_TOKEN_NOT_FOUND",
    )


async def test_other_tenant_sees_nothing(server):
    subj = subject()
    iid = await teacher(server, subj)
    lid = await pupil(server)
    booking = await lesson(server, subj, lid, next_monday(18))
    plan = (
        await call(
            server,
            "AssignInstructors",
            api.AssignInstructorsRequest(bookings=api.BookingIds(booking_ids=[booking.id])),
        )
    ).plan
    token = (
        await call(
            server,
            "CreateCalendarFeedToken",
            api.CreateCalendarFeedTokenRequest(person_id=iid),
        )
    ).token
    created = await server.server.platform.platform.create_tenant(
        None, f"other {uuid.uuid4().hex[:6]}", TenantSettings(), operator=True
    )
    other = type(server)(
        server=server.server,
        address=server.address,
        tenant_id=created.tenant.tenant.id,
        api_key=created.secret,
        config=server.config,
    )
    for method, request, reason in (
        ("GetAssignmentPlan", api.GetAssignmentPlanRequest(plan_id=plan.id), None),
        ("ApplyAssignmentPlan", api.ApplyAssignmentPlanRequest(plan_id=plan.id), None),
        ("MatchInstructor", api.MatchInstructorRequest(booking=ref(booking.id)), None),
        (
            "AssignInstructor",
            api.AssignInstructorRequest(booking=ref(booking.id), instructor_id=iid),
            "BOOKING_NOT_FOUND",
        ),
        (
            "AssignInstructors",
            api.AssignInstructorsRequest(bookings=api.BookingIds(booking_ids=[booking.id])),
            "BOOKING_NOT_FOUND",
        ),
        ("ProposeSubstitute", api.ProposeSubstituteRequest(booking=ref(booking.id)), None),
        ("DeleteCalendarFeedToken", api.DeleteCalendarFeedTokenRequest(token_id=token.id), None),
        ("ListCalendarFeedTokens", api.ListCalendarFeedTokensRequest(person_id=iid), None),
    ):
        await expect_error(call(other, method, request), grpc.StatusCode.NOT_FOUND, reason)
    got = await call(server, "GetAssignmentPlan", api.GetAssignmentPlanRequest(plan_id=plan.id))
    assert got.plan.state == pb.PLAN_STATE_PROPOSED


async def test_bad_input_is_invalid_argument_with_field_violations(server):
    subj = subject()
    lid = await pupil(server)
    start = next_monday(20)
    cases = [
        (
            "AssignInstructors",
            api.AssignInstructorsRequest(bookings=api.BookingIds()),
            "bookings.booking_ids",
            None,
        ),
        (
            "AssignInstructors",
            api.AssignInstructorsRequest(
                selection=api.BookingSelection(window=window(start, start - timedelta(hours=1)))
            ),
            "selection.window.end_time",
            "END_BEFORE_START",
        ),
        (
            "AssignInstructors",
            api.AssignInstructorsRequest(
                selection=api.BookingSelection(window=window(start, start + timedelta(days=40)))
            ),
            "selection.window",
            "WINDOW_TOO_LARGE",
        ),
        (
            "AssignInstructors",
            api.AssignInstructorsRequest(
                bookings=api.BookingIds(booking_ids=["a"]),
                time_limit=duration_pb2.Duration(seconds=601),
            ),
            "time_limit",
            None,
        ),
        (
            "MatchInstructor",
            api.MatchInstructorRequest(
                prospective_booking=pb.Booking(
                    learner_ids=[lid], start_time=ts(start), end_time=ts(start)
                )
            ),
            "prospective_booking.end_time",
            "END_BEFORE_START",
        ),
        (
            "MatchInstructor",
            api.MatchInstructorRequest(
                prospective_booking=pb.Booking(
                    subject=subj,
                    learner_ids=[lid],
                    start_time=ts(start),
                    end_time=ts(start + timedelta(hours=1)),
                ),
                match=pb.MatchOptions(matcher="no-such-matcher"),
            ),
            "match.matcher",
            "UNKNOWN_MATCHER",
        ),
        ("MatchInstructor", api.MatchInstructorRequest(), "target", None),
        ("AssignInstructor", api.AssignInstructorRequest(), "target", None),
        (
            "ProposeSubstitute",
            api.ProposeSubstituteRequest(booking=ref("bkg_x"), max_candidates=-1),
            "max_candidates",
            None,
        ),
        (
            "CreateCalendarFeedToken",
            api.CreateCalendarFeedTokenRequest(person_id=lid, label="x" * 201),
            "label",
            None,
        ),
    ]
    for method, request, field, reason in cases:
        error = await expect_error(call(server, method, request), INVALID, reason)
        bad = details(error)[1]
        assert bad is not None and field in [v.field for v in bad.field_violations], (
            method,
            bad,
        )
