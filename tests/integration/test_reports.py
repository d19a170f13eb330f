"""Post-session reports over real gRPC: a live session with participants on Connect streams,
chat, hands, reactions, a graded poll, a reconnect and a rejoin; the session ends, the durable
build job announces SessionReportReady, and the report's attendance and counts match the event
log. Also: FAILED_PRECONDITION before the end, a restart between the end and the build,
Markdown/HTML rendering with escaped user text, the guardian view, and tenant isolation."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest
from conftest import create_database, make_config, start_server
from test_classroom import details
from test_connect import INSTRUCTOR, LEARNER, Participant, open_session, rpc, seconds, token

from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.data.v1 import service_pb2_grpc as data_grpc
from classwire.api.events.v1 import event_pb2
from classwire.api.events.v1 import session_events_pb2 as ev
from classwire.api.platform.v1 import service_pb2 as platform_api
from classwire.api.platform.v1 import service_pb2_grpc as platform_grpc
from classwire.api.session.v1 import resources_pb2 as pb
from classwire.api.session.v1 import service_pb2 as api

READY = data_pb.SESSION_REPORT_STATE_READY
EV = "classwire.api.events.v1."
EVIL = "<script>alert(1)</script>"


async def data(server, method: str, request, credential: str | None = None):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = data_grpc.DataServiceStub(channel)
        metadata = (("authorization", f"Bearer {credential or server.api_key}"),)
        return await getattr(stub, method)(request, metadata=metadata)


async def error_of(awaitable) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    info, _ = details(caught.value)
    return caught.value.code(), info.reason if info else ""


async def ready_report(server, session_id: str, credential: str | None = None, timeout=30.0):
    async with asyncio.timeout(timeout):
        while True:
            response = await data(
                server,
                "GetSessionReport",
                data_api.GetSessionReportRequest(session_id=session_id),
                credential,
            )
            if response.report.state == READY:
                return response.report
            assert response.report.state in (
                data_pb.SESSION_REPORT_STATE_PENDING,
                data_pb.SESSION_REPORT_STATE_BUILDING,
            ), response.report
            await asyncio.sleep(0.2)


async def session_events(server, session_id: str, *types: str, credential=None) -> list:
    response = await data(
        server,
        "ListEvents",
        data_api.ListEventsRequest(
            filter=data_pb.EventFilter(types=[EV + t for t in types], session_ids=[session_id]),
            page_size=500,
        ),
        credential,
    )
    return list(response.events)


async def connect(server, session_id: str, identity: str, role, name: str = ""):
    issued = await rpc(
        server,
        "CreateJoinToken",
        api.CreateJoinTokenRequest(
            session_id=session_id,
            identity=identity,
            display_name=name or identity.title(),
            role=role,
        ),
    )
    return await Participant(server.address, issued.token).connect(), issued.token


async def end(server, session_id: str) -> None:
    await rpc(server, "EndSession", api.EndSessionRequest(session_id=session_id))


def by_identity(items) -> dict:
    return {item.identity: item for item in items}


async def test_report_of_a_live_session(server):
    session = await open_session(
        server, reconnect_grace=seconds(1), learners_join_before_instructor=True
    )
    teacher, teacher_token = await connect(server, session.id, "teacher", INSTRUCTOR)
    ann, ann_token = await connect(server, session.id, "ann", LEARNER)
    bob, bob_token = await connect(server, session.id, "bob", LEARNER, EVIL)
    # An invited learner who never comes: absent and expected.
    await token(server, session.id, "dan")

    # FAILED_PRECONDITION while the session is live, for every report RPC.
    get = data_api.GetSessionReportRequest(session_id=session.id)
    assert await error_of(data(server, "GetSessionReport", get)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_NOT_ENDED",
    )
    rebuild = data_api.RebuildSessionReportRequest(session_id=session.id)
    assert await error_of(data(server, "RebuildSessionReport", rebuild)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_NOT_ENDED",
    )

    # Chat (one of them carrying markup), reactions, hand raises.
    for text in ("hello", EVIL):
        await rpc(
            server,
            "SendChatMessage",
            api.SendChatMessageRequest(
                session_id=session.id, text=text, audience=ev.CHAT_AUDIENCE_EVERYONE
            ),
            bob_token,
        )
    await rpc(
        server,
        "SendChatMessage",
        api.SendChatMessageRequest(
            session_id=session.id, text="hi all", audience=ev.CHAT_AUDIENCE_EVERYONE
        ),
        ann_token,
    )
    for emoji in ("👍", "🎉", "❤️"):
        await rpc(
            server,
            "SendReaction",
            api.SendReactionRequest(session_id=session.id, emoji=emoji),
            ann_token,
        )
    ann.send("hand", raise_hand=api.ConnectRequest.RaiseHand())
    assert (await ann.answer("hand")).WhichOneof("message") == "ack"

    # A graded poll: ann right, bob wrong.
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
    for credential, option in ((ann_token, "2"), (bob_token, "1")):
        await rpc(
            server,
            "AnswerPoll",
            api.AnswerPollRequest(poll_id=poll.id, option_ids=[option]),
            credential,
        )
    await rpc(server, "ClosePoll", api.ClosePollRequest(poll_id=poll.id), teacher_token)

    # ann's connection drops and resumes inside the grace window: one disconnect, one
    # reconnect, and no gap in her attendance.
    await ann.cut()
    await teacher.event("participant_reconnecting", lambda e: e.identity == "ann")
    await ann.connect(resume=True)
    assert ann.joined.resumed
    # bob leaves and comes back after the grace window: two intervals.
    bob.send("bye", leave=api.ConnectRequest.Leave())
    await teacher.event("participant_left", lambda e: e.identity == "bob")
    await bob.close()
    await asyncio.sleep(1.5)
    bob = await Participant(server.address, bob_token).connect()
    await asyncio.sleep(0.5)
    await end(server, session.id)
    for p in (teacher, ann, bob):
        await p.close()

    report = await ready_report(server, session.id)
    assert report.revision == 1 and report.title == session.title
    ready = await session_events(server, session.id, "SessionReportReady")
    assert len(ready) == 1
    announced = ready[0].data.session_report_ready
    assert announced.revision == 1 and announced.participant_count == 4
    assert not announced.has_transcript

    # Attendance matches the intervals the log recorded, merged per person.
    recorded = await session_events(server, session.id, "AttendanceIntervalRecorded")
    spans: dict[str, list] = {}
    for e in recorded:
        item = e.session.attendance_interval_recorded
        spans.setdefault(item.identity, []).append(
            item.leave_time.ToDatetime() - item.join_time.ToDatetime()
        )
    attendance = by_identity(report.attendance)
    assert set(attendance) == {"teacher", "ann", "bob", "dan"}
    for identity in ("teacher", "ann", "bob"):
        a = attendance[identity]
        assert a.status == data_pb.ATTENDANCE_STATUS_PRESENT and a.expected
        expected_total = sum(spans[identity], timedelta(0))
        assert abs(a.total_duration.ToTimedelta() - expected_total) < timedelta(milliseconds=2)
        assert a.total_duration.ToTimedelta() > timedelta(milliseconds=300)
        # The session was scheduled a minute ahead: everyone was early, nobody is late.
        assert a.late_by.ToTimedelta() == timedelta(0) and not a.late
    assert len(attendance["ann"].intervals) == 1  # the resumed reconnect is no gap
    assert len(attendance["bob"].intervals) == 2  # the rejoin after the window is
    assert attendance["bob"].display_name == EVIL
    assert attendance["dan"].status == data_pb.ATTENDANCE_STATUS_ABSENT
    assert attendance["dan"].expected and not attendance["dan"].intervals
    # Everyone present at the end stayed to the end.
    assert attendance["ann"].early_leave_by.ToTimedelta() == timedelta(0)

    engagement = by_identity(report.engagement)
    assert set(engagement) == {"teacher", "ann", "bob"}
    ann_e, bob_e = engagement["ann"], engagement["bob"]
    assert (ann_e.chat_messages, ann_e.reactions, ann_e.hand_raises) == (1, 3, 1)
    assert (bob_e.chat_messages, bob_e.reactions, bob_e.hand_raises) == (2, 0, 0)
    assert (ann_e.polls_offered, ann_e.polls_answered, ann_e.correct_answers) == (1, 1, 1)
    assert ann_e.poll_participation == 1.0 and ann_e.poll_accuracy == 1.0
    assert (bob_e.graded_answers, bob_e.correct_answers, bob_e.poll_accuracy) == (1, 0, 0.0)
    assert engagement["teacher"].polls_answered == 0
    # No media in this session: zero talk time and camera time, shares zero.
    for e in engagement.values():
        assert e.talk_time.ToTimedelta() == timedelta(0)
        assert e.camera_on_time.ToTimedelta() == timedelta(0)
        assert e.talk_share_against_instructor == 0.0
        assert e.present_duration == attendance[e.identity].total_duration
    assert [
        (p.question, p.graded, p.offered_count, p.answered_count, p.correct_count)
        for p in report.polls
    ] == [("2 + 2?", True, 3, 2, 1)]

    quality = report.quality
    assert (quality.disconnects, quality.reconnects) == (1, 1)
    assert by_identity(quality.participants)["ann"].reconnects == 1
    assert report.transcript.state == data_pb.TRANSCRIPT_STATE_NONE
    assert report.summary.text == "" and not report.key_terms

    # Markdown and HTML, with the participant's markup escaped.
    for fmt, media_type in (
        (data_pb.REPORT_FORMAT_MARKDOWN, "text/markdown"),
        (data_pb.REPORT_FORMAT_HTML, "text/html"),
    ):
        rendered = await data(
            server,
            "RenderSessionReport",
            data_api.RenderSessionReportRequest(
                session_id=session.id, format=fmt, time_zone="Europe/Paris"
            ),
        )
        assert rendered.media_type == media_type and rendered.revision == 1
        assert session.title in rendered.title
        assert "<script>" not in rendered.text and "Ann" in rendered.text
        assert "Attendance" in rendered.text and "Engagement" in rendered.text
    assert "&lt;script&gt;" in rendered.text  # the HTML
    assert "style=" in rendered.text and "<link" not in rendered.text  # inline styles only
    # The guardian view shows one learner and no other learner's name.
    narrowed = await data(
        server,
        "RenderSessionReport",
        data_api.RenderSessionReportRequest(
            session_id=session.id, format=data_pb.REPORT_FORMAT_HTML, learner_identity="ann"
        ),
    )
    assert "Ann" in narrowed.text and "alert(1)" not in narrowed.text
    assert await error_of(
        data(
            server,
            "RenderSessionReport",
            data_api.RenderSessionReportRequest(
                session_id=session.id,
                format=data_pb.REPORT_FORMAT_HTML,
                learner_identity="stranger",
            ),
        )
    ) == (grpc.StatusCode.NOT_FOUND, "LEARNER_NOT_IN_SESSION")
    bad = data_api.RenderSessionReportRequest(session_id=session.id, time_zone="Mars/Base")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await data(server, "RenderSessionReport", bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {v.field for v in details(caught.value)[1].field_violations} == {"format", "time_zone"}

    # A rebuild makes revision 2, announced again.
    rebuilt = await data(server, "RebuildSessionReport", rebuild)
    assert rebuilt.report.revision == 2
    assert rebuilt.report.state in (
        data_pb.SESSION_REPORT_STATE_PENDING,
        data_pb.SESSION_REPORT_STATE_BUILDING,
    )
    async with asyncio.timeout(30):
        while (report2 := await ready_report(server, session.id)).revision != 2:
            await asyncio.sleep(0.2)
    assert by_identity(report2.attendance)["ann"] == attendance["ann"]

    # Listed, and found by learner.
    listed = await data(
        server, "ListSessionReports", data_api.ListSessionReportsRequest(learner_identity="bob")
    )
    assert session.id in [r.session_id for r in listed.reports]
    none = await data(
        server, "ListSessionReports", data_api.ListSessionReportsRequest(learner_identity="zed")
    )
    assert session.id not in [r.session_id for r in none.reports]


@pytest.fixture(scope="module")
async def other_key(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        created = await platform_grpc.PlatformServiceStub(channel).CreateTenant(
            platform_api.CreateTenantRequest(display_name="Other school"),
            metadata=(("authorization", f"Bearer {server.api_key}"),),
        )
    return created.admin_api_key_secret


async def test_other_tenants_and_unknown_sessions_are_not_found(server, other_key):
    session = await open_session(server, learners_join_before_instructor=True)
    teacher, _ = await connect(server, session.id, "teacher", INSTRUCTOR)
    await end(server, session.id)
    await teacher.close()
    await ready_report(server, session.id)
    for method, request in (
        ("GetSessionReport", data_api.GetSessionReportRequest(session_id=session.id)),
        ("RebuildSessionReport", data_api.RebuildSessionReportRequest(session_id=session.id)),
        (
            "RenderSessionReport",
            data_api.RenderSessionReportRequest(
                session_id=session.id, format=data_pb.REPORT_FORMAT_MARKDOWN
            ),
        ),
    ):
        assert await error_of(data(server, method, request, other_key)) == (
            grpc.StatusCode.NOT_FOUND,
            "SESSION_NOT_FOUND",
        )
    listed = await data(
        server, "ListSessionReports", data_api.ListSessionReportsRequest(), other_key
    )
    assert session.id not in [r.session_id for r in listed.reports]
    assert await error_of(
        data(server, "GetSessionReport", data_api.GetSessionReportRequest(session_id="nope"))
    ) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")


async def test_report_survives_a_restart_between_end_and_build(tmp_path):
    url, drop = await create_database(tmp_path)
    config = make_config(tmp_path, url)
    first = await start_server(config)
    try:
        # This replica stops building reports, as if it crashed right after the session ended.
        runner = next(t for t in first.server.platform.tasks if t.get_name() == "session-reports")
        runner.cancel()
        session = await open_session(first, learners_join_before_instructor=True)
        teacher, _ = await connect(first, session.id, "teacher", INSTRUCTOR)
        kid, _ = await connect(first, session.id, "kid", LEARNER)
        await asyncio.sleep(0.3)
        await end(first, session.id)
        for p in (teacher, kid):
            await p.close()
        pending = await data(
            first, "GetSessionReport", data_api.GetSessionReportRequest(session_id=session.id)
        )
        assert pending.report.state == data_pb.SESSION_REPORT_STATE_PENDING
    finally:
        await first.server.stop(grace=1)
    second = await start_server(config)
    try:
        second.api_key, second.tenant_id = first.api_key, first.tenant_id
        report = await ready_report(second, session.id)
        assert {a.identity for a in report.attendance} == {"teacher", "kid"}
        assert all(a.total_duration.ToTimedelta() > timedelta(0) for a in report.attendance)
        ready = await session_events(second, session.id, "SessionReportReady")
        assert len(ready) == 1
        assert isinstance(ready[0], event_pb2.Event)
    finally:
        await second.server.stop(grace=1)
        if drop:
            await drop()
