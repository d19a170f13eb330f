"""Analytics and ratings over real gRPC: live sessions with participants on Connect streams,
chat, reactions, hands, a graded poll, a dropped connection and an absent learner; the rollup
consumer folds the log, and QueryAttendance / QueryEngagement / QueryInstructorQuality return
the minutes and counts the log holds. Ratings: who may rate, one per rater, request_id replays,
deletion. Bad filters, tenant isolation, and a restart that neither loses nor double counts."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from conftest import create_database, make_config, start_server
from test_classroom import details, other_key  # noqa: F401 - other_key is a fixture
from test_connect import INSTRUCTOR, LEARNER, Participant, rpc, seconds, token, ts

from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.data.v1 import service_pb2_grpc as data_grpc
from classwire.api.events.v1 import session_events_pb2 as ev
from classwire.api.session.v1 import resources_pb2 as pb
from classwire.api.session.v1 import service_pb2 as api

EV = "classwire.api.events.v1."
DAY, WEEK = data_pb.TIME_GRANULARITY_DAY, data_pb.TIME_GRANULARITY_WEEK
BY_LEARNER, BY_CLASS = data_pb.ANALYTICS_GROUP_BY_LEARNER, data_pb.ANALYTICS_GROUP_BY_CLASS
BY_INSTRUCTOR, BY_TENANT = data_pb.ANALYTICS_GROUP_BY_INSTRUCTOR, data_pb.ANALYTICS_GROUP_BY_TENANT


async def data(server, method: str, request, credential: str | None = None):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = data_grpc.DataServiceStub(channel)
        metadata = (("authorization", f"Bearer {credential or server.api_key}"),)
        return await getattr(stub, method)(request, metadata=metadata)


async def error_of(awaitable) -> tuple[grpc.StatusCode, str, set[str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    info, bad = details(caught.value)
    fields = {v.field for v in bad.field_violations} if bad else set()
    return caught.value.code(), info.reason if info else "", fields


def day_range(days: int = 1) -> data_pb.TimeRange:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return data_pb.TimeRange(start_time=ts(today), end_time=ts(today + timedelta(days=days)))


async def caught_up(server, credential: str | None = None, timeout: float = 30.0) -> int:
    """Waits until the rollups include every event of the tenant's log; returns the head."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        stream = data_grpc.DataServiceStub(channel).WatchEvents(
            data_api.WatchEventsRequest(from_latest=True),
            metadata=(("authorization", f"Bearer {credential or server.api_key}"),),
        )
        async for first in stream:  # the first message is a heartbeat with the log's head
            head = first.heartbeat.head_sequence
            stream.cancel()
            break
    async with asyncio.timeout(timeout):
        while True:
            response = await data(
                server,
                "QueryAttendance",
                data_api.QueryAttendanceRequest(
                    time_range=day_range(), group_by=BY_TENANT, granularity=DAY
                ),
                credential,
            )
            if response.as_of_sequence >= head:
                return head
            await asyncio.sleep(0.1)


async def create_session(server, class_id: str, instructor: str) -> pb.Session:
    start = datetime.now(UTC) + timedelta(seconds=30)
    session = pb.Session(
        title="Analytics algebra",
        class_id=class_id,
        instructor_identities=[instructor],
        scheduled_start_time=ts(start),
        scheduled_end_time=ts(start + timedelta(hours=1)),
        settings=pb.SessionSettings(
            reconnect_grace=seconds(5), learners_join_before_instructor=True
        ),
    )
    return (await rpc(server, "CreateSession", api.CreateSessionRequest(session=session))).session


async def connect(server, session_id: str, identity: str, role=LEARNER):
    issued = await token(server, session_id, identity, role)
    return await Participant(server.address, issued.token).connect(), issued.token


async def interval_ms(server, session_id: str, credential=None) -> dict[str, int]:
    response = await data(
        server,
        "ListEvents",
        data_api.ListEventsRequest(
            filter=data_pb.EventFilter(
                types=[EV + "AttendanceIntervalRecorded"], session_ids=[session_id]
            ),
            page_size=500,
        ),
        credential,
    )
    spans: dict[str, int] = {}
    for e in response.events:
        item = e.session.attendance_interval_recorded
        span = item.leave_time.ToMilliseconds() - item.join_time.ToMilliseconds()
        spans[item.identity] = spans.get(item.identity, 0) + span
    return spans


async def run_lesson(server, class_id: str, teacher_id: str, learners: list[str], absent: str):
    """A live session: the teacher and learners connect, chat, react, raise hands, answer a
    graded poll (the first learner right, the others wrong); the teacher's and the first
    learner's connections drop and resume; then the session ends."""
    session = await create_session(server, class_id, teacher_id)
    teacher, teacher_token = await connect(server, session.id, teacher_id, INSTRUCTOR)
    people = [await connect(server, session.id, name, LEARNER) for name in learners]
    await token(server, session.id, absent)
    for i, (person, credential) in enumerate(people):
        for n in range(i + 1):
            await rpc(
                server,
                "SendChatMessage",
                api.SendChatMessageRequest(
                    session_id=session.id, text=f"hi {n}", audience=ev.CHAT_AUDIENCE_EVERYONE
                ),
                credential,
            )
        await rpc(
            server,
            "SendReaction",
            api.SendReactionRequest(session_id=session.id, emoji="👍"),
            credential,
        )
        person.send("hand", raise_hand=api.ConnectRequest.RaiseHand())
        assert (await person.answer("hand")).WhichOneof("message") == "ack"
    poll = (
        await rpc(
            server,
            "CreatePoll",
            api.CreatePollRequest(
                session_id=session.id,
                poll=pb.Poll(
                    question="2 + 2?",
                    options=[pb.PollOption(text="3"), pb.PollOption(text="4")],
                    correct_option_ids=["2"],
                ),
            ),
            teacher_token,
        )
    ).poll
    for i, (_, credential) in enumerate(people):
        await rpc(
            server,
            "AnswerPoll",
            api.AnswerPollRequest(poll_id=poll.id, option_ids=["2" if i == 0 else "1"]),
            credential,
        )
    first = people[0][0]
    for participant in (teacher, first):
        await participant.cut()
        await participant.connect(resume=True)
        assert participant.joined.resumed
    await asyncio.sleep(0.3)
    await rpc(server, "EndSession", api.EndSessionRequest(session_id=session.id))
    for participant in [teacher, *(p for p, _ in people)]:
        await participant.close()
    return session, [credential for _, credential in people]


async def test_analytics_of_live_sessions_and_ratings(server, other_key):  # noqa: F811
    session, (ann_token, bob_token) = await run_lesson(
        server, "cls-analytics", "teacher-a", ["ann-a", "bob-a"], "dan-a"
    )
    await caught_up(server)
    spans = await interval_ms(server, session.id)
    assert spans["ann-a"] > 0 and spans["bob-a"] > 0

    # By learner, narrowed to this test's people.
    learners = data_pb.AnalyticsFilter(learner_identities=["ann-a", "bob-a", "dan-a"])
    by_learner = await data(
        server,
        "QueryAttendance",
        data_api.QueryAttendanceRequest(
            time_range=day_range(), group_by=BY_LEARNER, granularity=DAY, filter=learners
        ),
    )
    groups = {g.key.id: g for g in by_learner.groups}
    assert list(groups) == ["ann-a", "bob-a", "dan-a"]
    for name in ("ann-a", "bob-a"):
        total = groups[name].total
        assert (total.sessions, total.expected, total.attended, total.absences) == (1, 1, 1, 0)
        assert total.present_duration.ToMilliseconds() == spans[name]
        assert total.attendance_rate == 1.0
        assert total.scheduled_duration.ToTimedelta() == timedelta(hours=1)
    dan = groups["dan-a"].total
    assert (dan.expected, dan.attended, dan.absences, dan.attendance_rate) == (1, 0, 1, 0.0)
    assert groups["ann-a"].key.display_name == "Ann-A"
    # One day bucket (today), whose previous day is empty: the trend is the full rate.
    [bucket] = groups["ann-a"].buckets
    assert bucket.stats.attended == 1 and bucket.previous.attended == 0
    assert bucket.attendance_rate_change == 1.0

    # By class and by instructor: the three learners of the class together.
    for group_by, key in ((BY_CLASS, "cls-analytics"), (BY_INSTRUCTOR, "teacher-a")):
        response = await data(
            server,
            "QueryAttendance",
            data_api.QueryAttendanceRequest(
                time_range=day_range(7),
                group_by=group_by,
                granularity=WEEK,
                time_zone="Europe/Paris",
                filter=data_pb.AnalyticsFilter(class_ids=["cls-analytics"]),
            ),
        )
        [group] = response.groups
        assert group.key.id == key
        assert (group.total.expected, group.total.attended, group.total.absences) == (3, 2, 1)
        assert group.total.present_duration.ToMilliseconds() == spans["ann-a"] + spans["bob-a"]
        assert all(
            b.end_time.ToSeconds() - b.start_time.ToSeconds()
            in (7 * 86400, 7 * 86400 - 3600, 7 * 86400 + 3600)
            for b in group.buckets
        )

    engagement = await data(
        server,
        "QueryEngagement",
        data_api.QueryEngagementRequest(
            time_range=day_range(), group_by=BY_LEARNER, granularity=DAY, filter=learners
        ),
    )
    stats = {g.key.id: g.total for g in engagement.groups}
    ann, bob = stats["ann-a"], stats["bob-a"]
    assert (ann.attendances, ann.chat_messages, ann.reactions, ann.hand_raises) == (1, 1, 1, 1)
    assert (bob.attendances, bob.chat_messages, bob.reactions, bob.hand_raises) == (1, 2, 1, 1)
    assert (ann.polls_offered, ann.polls_answered, ann.graded_answers) == (1, 1, 1)
    assert (ann.correct_answers, bob.correct_answers) == (1, 0)
    assert ann.poll_accuracy == 1.0 and bob.poll_accuracy == 0.0
    assert ann.present_duration.ToMilliseconds() == spans["ann-a"]

    # Ratings: ann rates 4 then replaces it with 5; bob rates 2; a retry replays.
    first = await data(
        server,
        "SubmitRating",
        data_api.SubmitRatingRequest(
            request_id="r-ann-1", session_id=session.id, rater_identity="ann-a", score=4
        ),
    )
    assert first.rating.instructor_identity == "teacher-a" and first.rating.score == 4
    replay = await data(
        server,
        "SubmitRating",
        data_api.SubmitRatingRequest(
            request_id="r-ann-1", session_id=session.id, rater_identity="ann-a", score=4
        ),
    )
    assert replay == first
    assert (
        await error_of(
            data(
                server,
                "SubmitRating",
                data_api.SubmitRatingRequest(
                    request_id="r-ann-1", session_id=session.id, rater_identity="ann-a", score=3
                ),
            )
        )
    )[:2] == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")
    second = await data(
        server,
        "SubmitRating",
        data_api.SubmitRatingRequest(
            session_id=session.id, rater_identity="ann-a", score=5, comment="great"
        ),
    )
    assert second.rating.rating_id == first.rating.rating_id and second.rating.score == 5
    bobs = await data(
        server,
        "SubmitRating",
        data_api.SubmitRatingRequest(
            session_id=session.id,
            rater_identity="bob-a",
            instructor_identity="teacher-a",
            score=2,
        ),
    )
    code, reason, _ = await error_of(
        data(
            server,
            "SubmitRating",
            data_api.SubmitRatingRequest(session_id=session.id, rater_identity="dan-a", score=3),
        )
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "RATER_NOT_IN_SESSION")
    code, reason, _ = await error_of(
        data(
            server,
            "SubmitRating",
            data_api.SubmitRatingRequest(
                session_id=session.id,
                rater_identity="ann-a",
                instructor_identity="bob-a",
                score=3,
            ),
        )
    )
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_SESSION_INSTRUCTOR")
    code, _, fields = await error_of(
        data(
            server,
            "SubmitRating",
            data_api.SubmitRatingRequest(
                session_id=session.id, rater_identity="ann-a", score=6, comment="x" * 2001
            ),
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == {"score", "comment"}
    code, reason, _ = await error_of(
        data(
            server,
            "SubmitRating",
            data_api.SubmitRatingRequest(session_id="ses_nope", rater_identity="ann-a", score=3),
        )
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
    listed = await data(
        server, "ListRatings", data_api.ListRatingsRequest(instructor_identity="teacher-a")
    )
    assert [r.rater_identity for r in listed.ratings] == ["bob-a", "ann-a"]
    paged = await data(
        server,
        "ListRatings",
        data_api.ListRatingsRequest(instructor_identity="teacher-a", page_size=1),
    )
    rest = await data(
        server,
        "ListRatings",
        data_api.ListRatingsRequest(
            instructor_identity="teacher-a", page_size=1, page_token=paged.next_page_token
        ),
    )
    assert [r.rater_identity for r in [*paged.ratings, *rest.ratings]] == ["bob-a", "ann-a"]

    async def quality():
        await caught_up(server)
        response = await data(
            server,
            "QueryInstructorQuality",
            data_api.QueryInstructorQualityRequest(
                time_range=day_range(), granularity=DAY, instructor_identities=["teacher-a"]
            ),
        )
        [teacher] = response.instructors
        return teacher.total

    total = await quality()
    assert (total.sessions_scheduled, total.sessions_taught, total.no_shows) == (1, 1, 0)
    assert total.disconnects == 1 and total.sessions_with_disconnects == 1
    assert total.disconnects_per_hour > 0
    assert total.ratings.count == 2 and total.ratings.mean_score == 3.5
    assert list(total.ratings.score_counts) == [0, 1, 0, 0, 1]

    # Another tenant sees none of it and cannot delete the rating.
    other = await data(
        server,
        "QueryInstructorQuality",
        data_api.QueryInstructorQualityRequest(time_range=day_range(), granularity=DAY),
        other_key,
    )
    assert list(other.instructors) == []
    code, reason, _ = await error_of(
        data(
            server,
            "DeleteRating",
            data_api.DeleteRatingRequest(rating_id=bobs.rating.rating_id),
            other_key,
        )
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "RATING_NOT_FOUND")
    other_list = await data(server, "ListRatings", data_api.ListRatingsRequest(), other_key)
    assert list(other_list.ratings) == []

    await data(
        server, "DeleteRating", data_api.DeleteRatingRequest(rating_id=bobs.rating.rating_id)
    )
    code, reason, _ = await error_of(
        data(server, "DeleteRating", data_api.DeleteRatingRequest(rating_id=bobs.rating.rating_id))
    )
    assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "RATING_NOT_FOUND")
    total = await quality()
    assert total.ratings.count == 1 and total.ratings.mean_score == 5.0


async def test_bad_filters_are_invalid_argument(server):
    cases = [
        (data_api.QueryAttendanceRequest(time_range=day_range(), granularity=DAY), {"group_by"}),
        (
            data_api.QueryAttendanceRequest(group_by=BY_TENANT),
            {"time_range.start_time", "time_range.end_time", "granularity"},
        ),
        (
            data_api.QueryAttendanceRequest(
                time_range=data_pb.TimeRange(
                    start_time=day_range().end_time, end_time=day_range().start_time
                ),
                group_by=BY_TENANT,
                granularity=DAY,
            ),
            {"time_range.end_time"},
        ),
        (
            data_api.QueryAttendanceRequest(
                time_range=day_range(),
                group_by=BY_LEARNER,
                granularity=DAY,
                time_zone="Mars/Olympus",
                page_size=-1,
                filter=data_pb.AnalyticsFilter(learner_identities=[""]),
            ),
            {"time_zone", "page_size", "filter.learner_identities[0]"},
        ),
        (
            data_api.QueryAttendanceRequest(
                time_range=day_range(400), group_by=BY_TENANT, granularity=DAY
            ),
            {"time_range"},
        ),
    ]
    for request, expected in cases:
        code, _, fields = await error_of(data(server, "QueryAttendance", request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and fields == expected, (request, fields)
    code, reason, _ = await error_of(
        data(
            server,
            "QueryEngagement",
            data_api.QueryEngagementRequest(
                time_range=day_range(),
                group_by=BY_LEARNER,
                granularity=DAY,
                page_token="garbage",
            ),
        )
    )
    assert (code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")
    code, _, fields = await error_of(
        data(
            server,
            "QueryInstructorQuality",
            data_api.QueryInstructorQualityRequest(
                time_range=day_range(), granularity=0, instructor_identities=["x" * 200]
            ),
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert fields == {"granularity", "instructor_identities[0]"}


async def test_rollups_catch_up_after_a_restart_without_double_counting(tmp_path):
    url, drop = await create_database(tmp_path)
    first = await start_server(make_config(tmp_path, url))
    try:
        session, _ = await run_lesson(first, "cls-r", "teacher-r", ["eve-r"], "fay-r")
        # Stopped at once: the consumer may have folded some, all or none of the lesson.
    finally:
        await first.server.stop(grace=1)
    config = make_config(tmp_path, url)
    second = await start_server(config)
    # The restarted server's tenant is a new one; the first tenant's key still works.
    second.api_key, second.tenant_id = first.api_key, first.tenant_id
    try:
        session2, _ = await run_lesson(second, "cls-r", "teacher-r", ["eve-r"], "fay-r")
        await caught_up(second)
        spans = await interval_ms(second, session.id)
        spans2 = await interval_ms(second, session2.id)
        response = await data(
            second,
            "QueryEngagement",
            data_api.QueryEngagementRequest(
                time_range=day_range(), group_by=BY_CLASS, granularity=DAY
            ),
        )
        [group] = response.groups
        assert group.total.attendances == 2
        assert (group.total.chat_messages, group.total.reactions) == (2, 2)
        assert group.total.present_duration.ToMilliseconds() == (spans["eve-r"] + spans2["eve-r"])
        attendance = await data(
            second,
            "QueryAttendance",
            data_api.QueryAttendanceRequest(
                time_range=day_range(), group_by=BY_CLASS, granularity=DAY
            ),
        )
        total = attendance.groups[0].total
        assert (total.sessions, total.expected, total.attended, total.absences) == (2, 4, 2, 2)
    finally:
        await second.server.stop(grace=1)
        if drop:
            await drop()
