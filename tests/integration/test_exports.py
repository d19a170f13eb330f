"""Exports and xAPI over real gRPC against a real LRS (ralph on loopback).

A live session (joins, public and private chat, a hand raise, a graded poll, the end and its
report) becomes xAPI statements: previewed with ListXapiStatements, pushed with
PushXapiStatements, and read back from the LRS's own statements resource, matching the events.
A push while the LRS is down is UNAVAILABLE; the continuous pusher retries until the LRS is back
and then the LRS holds each statement once. ExportRecords streams parse back with the json and
csv modules. Bad input is INVALID_ARGUMENT; another tenant sees nothing of ours.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import hashlib
import io
import json
import uuid

import grpc
import pytest
from conftest import create_database, make_config, start_server
from google.protobuf import json_format
from support.ralph_lrs import RalphLrs
from test_classroom import details
from test_connect import INSTRUCTOR, LEARNER, open_session, rpc
from test_reports import connect, end, ready_report

from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.data.v1 import service_pb2_grpc as data_grpc
from classwire.api.events.v1 import data_events_pb2 as dev
from classwire.api.events.v1 import event_pb2
from classwire.api.events.v1 import session_events_pb2 as ev
from classwire.api.platform.v1 import service_pb2 as platform_api
from classwire.api.platform.v1 import service_pb2_grpc as platform_grpc
from classwire.api.session.v1 import resources_pb2 as pb
from classwire.api.session.v1 import service_pb2 as api

EV = "classwire.api.events.v1."
HOME = "https://school.example/tenants/{tenant_id}"
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://classwire.dev/xapi")
VERB = {
    "join": "http://activitystrea.ms/join",
    "leave": "http://activitystrea.ms/leave",
    "raised": "https://w3id.org/xapi/virtual-classroom/verbs/raised-hand",
    "asked": "http://adlnet.gov/expapi/verbs/asked",
    "answered": "http://adlnet.gov/expapi/verbs/answered",
    "posted": "https://w3id.org/xapi/acrossx/verbs/posted",
    "attended": "http://adlnet.gov/expapi/verbs/attended",
    "initialized": "http://adlnet.gov/expapi/verbs/initialized",
    "terminated": "http://adlnet.gov/expapi/verbs/terminated",
}


async def data(server, method: str, request, credential: str | None = None):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = data_grpc.DataServiceStub(channel)
        metadata = (("authorization", f"Bearer {credential or server.api_key}"),)
        call = getattr(stub, method)(request, metadata=metadata)
        if method == "ExportRecords":
            return [m async for m in call]
        return await call


async def failure(awaitable):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    info, bad = details(caught.value)
    fields = sorted(v.field for v in bad.field_violations) if bad else []
    return caught.value.code(), info.reason if info else "", fields


async def lrs_server(tmp, lrs: RalphLrs, *, continuous: bool):
    url, drop = await create_database(tmp)
    config = make_config(tmp, url)
    config = dataclasses.replace(
        config,
        providers={**config.providers, "learning_record_store": "xapi_lrs"},
        provider_options={
            **config.provider_options,
            "xapi_lrs": lrs.options,
            "xapi": {"home_page": HOME, "continuous_push": continuous},
        },
    )
    return await start_server(config), drop


@pytest.fixture(scope="module")
async def ralph(tmp_path_factory):
    lrs = RalphLrs(tmp_path_factory.mktemp("ralph"))
    await lrs.start()
    yield lrs
    lrs.stop()


@pytest.fixture(scope="module")
async def xserver(tmp_path_factory, ralph):
    running, drop = await lrs_server(tmp_path_factory.mktemp("xapi"), ralph, continuous=False)
    yield running
    await running.server.stop(grace=1)
    if drop:
        await drop()


async def run_session(server) -> str:
    """A live session with the classroom actions the mapping covers; returns its id once the
    report is ready."""
    session = await open_session(server, learners_join_before_instructor=True)
    teacher, teacher_token = await connect(server, session.id, "teacher", INSTRUCTOR)
    ann, ann_token = await connect(server, session.id, "ann", LEARNER)
    bob, bob_token = await connect(server, session.id, "bob", LEARNER)
    chat = api.SendChatMessageRequest(session_id=session.id, audience=ev.CHAT_AUDIENCE_EVERYONE)
    chat.text = "hello everyone"
    await rpc(server, "SendChatMessage", chat, bob_token)
    private = api.SendChatMessageRequest(
        session_id=session.id, text="a private question", audience=ev.CHAT_AUDIENCE_INSTRUCTORS
    )
    await rpc(server, "SendChatMessage", private, ann_token)
    ann.send("hand", raise_hand=api.ConnectRequest.RaiseHand())
    assert (await ann.answer("hand")).WhichOneof("message") == "ack"
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
    await end(server, session.id)
    for p in (teacher, ann, bob):
        await p.close()
    await ready_report(server, session.id)
    return session.id


async def all_statements(server, session_id: str) -> list[data_pb.XapiStatement]:
    out, token = [], ""
    while True:
        page = await data(
            server,
            "ListXapiStatements",
            data_api.ListXapiStatementsRequest(
                session_id=session_id, page_size=4, page_token=token
            ),
        )
        assert page.mapping_version == "classwire-xapi/1"
        out.extend(page.statements)
        token = page.next_page_token
        if not token:
            return out


async def session_events(server, session_id: str) -> list[event_pb2.Event]:
    response = await data(
        server,
        "ListEvents",
        data_api.ListEventsRequest(
            filter=data_pb.EventFilter(session_ids=[session_id]), page_size=1000
        ),
    )
    return list(response.events)


@pytest.fixture(scope="module")
async def live(xserver) -> str:
    return await run_session(xserver)


async def test_verb_mapping_is_pinned(xserver):
    mapping = await data(xserver, "GetXapiVerbMapping", data_api.GetXapiVerbMappingRequest())
    assert mapping.mapping_version == "classwire-xapi/1"
    assert mapping.xapi_version == "1.0.3"
    assert mapping.profile_id == "https://w3id.org/xapi/virtual-classroom"
    rows = {(m.event_type, m.verb_id) for m in mapping.mappings}
    assert (EV + "ParticipantJoined", VERB["join"]) in rows
    assert (EV + "PollAnswered", VERB["answered"]) in rows
    assert (EV + "ChatMessagePosted", VERB["posted"]) in rows
    assert (EV + "SessionReportReady", VERB["attended"]) in rows
    assert len(mapping.mappings) == 21


async def test_statements_match_the_events(xserver, live):
    statements = await all_statements(xserver, live)
    events = {e.id: e for e in await session_events(xserver, live)}
    home = HOME.format(tenant_id=xserver.tenant_id)
    bodies = [json.loads(s.json) for s in statements]
    for statement, body in zip(statements, bodies, strict=True):
        assert body["id"] == statement.statement_id
        assert body["version"] == "1.0.3"
        assert body["actor"] == {
            "objectType": "Agent",
            "account": {"homePage": home, "name": statement.actor_identity},
        }
        assert "mbox" not in statement.json and "@" not in json.dumps(body["actor"])
        assert body["verb"]["id"] == statement.verb_id
        assert body["context"]["registration"] == bodies[0]["context"]["registration"]
        if statement.event_id:
            event = events[statement.event_id]
            assert event.sequence == statement.event_sequence
            assert body["timestamp"].startswith(
                event.occur_time.ToDatetime().strftime("%Y-%m-%dT%H:%M:%S")
            )
            expected = uuid.uuid5(NAMESPACE, f"{xserver.tenant_id}/{event.id}/{statement.verb_id}")
            assert statement.statement_id == str(expected)
    seen = {(s.verb_id, s.actor_identity) for s in statements}
    for who in ("teacher", "ann", "bob"):
        assert (VERB["join"], who) in seen
        assert (VERB["attended"], who) in seen
    assert (VERB["raised"], "ann") in seen
    assert (VERB["asked"], "teacher") in seen
    answers = {
        s.actor_identity: json.loads(s.json)["result"]
        for s in statements
        if s.verb_id == VERB["answered"]
    }
    assert answers == {
        "ann": {"response": "2", "success": True},
        "bob": {"response": "1", "success": False},
    }
    # The public message is posted; the private one to the instructors is not.
    posted = [s for s in statements if s.verb_id == VERB["posted"]]
    assert [s.actor_identity for s in posted] == ["bob"]
    joins = [e for e in events.values() if e.type == EV + "ParticipantJoined"]
    assert len([s for s in statements if s.verb_id == VERB["join"]]) == len(joins)
    # Ids are unique and stable: listing again gives the same statements.
    assert len({s.statement_id for s in statements}) == len(statements)
    again = await all_statements(xserver, live)
    assert [s.json for s in again] == [s.json for s in statements]
    # Filters.
    only = await data(
        xserver,
        "ListXapiStatements",
        data_api.ListXapiStatementsRequest(
            session_id=live, actor_identities=["ann"], verb_ids=[VERB["answered"]]
        ),
    )
    assert [(s.actor_identity, s.verb_id) for s in only.statements] == [("ann", VERB["answered"])]


async def test_push_reads_back_from_the_lrs(xserver, live, ralph):
    statements = await all_statements(xserver, live)
    request = data_api.PushXapiStatementsRequest(request_id=str(uuid.uuid4()), session_id=live)
    pushed = await data(xserver, "PushXapiStatements", request)
    assert pushed.statement_count == len(statements)
    assert pushed.stored_count == len(statements), pushed
    assert pushed.failed_count == 0 and not pushed.failures
    # The same request id: the first answer, nothing pushed again.
    assert await data(xserver, "PushXapiStatements", request) == pushed
    registration = json.loads(statements[0].json)["context"]["registration"]
    held = await ralph.statements(registration=registration)
    assert sorted(s["id"] for s in held) == sorted(s.statement_id for s in statements)
    by_id = {s["id"]: s for s in held}
    for statement in statements:
        sent = json.loads(statement.json)
        stored = by_id[statement.statement_id]
        for key in ("actor", "verb", "object", "timestamp"):
            assert stored[key] == sent[key], key
        assert stored["context"]["registration"] == registration
    # A new push of the same session: the LRS already holds every statement.
    again = await data(
        xserver,
        "PushXapiStatements",
        data_api.PushXapiStatementsRequest(request_id=str(uuid.uuid4()), session_id=live),
    )
    assert (again.stored_count, again.already_stored_count) == (0, len(statements))
    assert len(await ralph.statements(registration=registration)) == len(statements)
    announced = await data(
        xserver,
        "ListEvents",
        data_api.ListEventsRequest(
            filter=data_pb.EventFilter(types=[EV + "XapiStatementsPushed"]), page_size=100
        ),
    )
    mine = [e.data.xapi_statements_pushed for e in announced.events]
    assert [m.push_id for m in mine][:2] == [pushed.push_id, again.push_id]
    assert mine[0].stored_count == len(statements) and mine[0].lrs == "xapi_lrs"


async def test_xapi_bad_input(xserver, other_key):
    list_none = data_api.ListXapiStatementsRequest()
    assert await failure(data(xserver, "ListXapiStatements", list_none)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        ["session_id"],
    )
    bad_verb = data_api.ListXapiStatementsRequest(session_id="x", verb_ids=["http://nope"])
    code, _, fields = await failure(data(xserver, "ListXapiStatements", bad_verb))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["verb_ids[0]"])
    missing = data_api.ListXapiStatementsRequest(session_id="ses_missing")
    assert (await failure(data(xserver, "ListXapiStatements", missing)))[:2] == (
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
    )
    unknown_lrs = data_api.PushXapiStatementsRequest(
        time_range=data_pb.TimeRange(end_time={"seconds": 1}), lrs="nope"
    )
    assert (await failure(data(xserver, "PushXapiStatements", unknown_lrs)))[:2] == (
        grpc.StatusCode.NOT_FOUND,
        "LRS_NOT_FOUND",
    )


@pytest.fixture(scope="module")
async def other_key(xserver):
    async with grpc.aio.insecure_channel(xserver.address) as channel:
        created = await platform_grpc.PlatformServiceStub(channel).CreateTenant(
            platform_api.CreateTenantRequest(display_name="Other school"),
            metadata=(("authorization", f"Bearer {xserver.api_key}"),),
        )
    return created.admin_api_key_secret


async def test_other_tenant_sees_nothing(xserver, live, other_key):
    foreign = data_api.ListXapiStatementsRequest(session_id=live)
    assert (await failure(data(xserver, "ListXapiStatements", foreign, other_key)))[:2] == (
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
    )
    export = await data(
        xserver,
        "ExportRecords",
        data_api.ExportRecordsRequest(
            kind=dev.EXPORT_RECORD_KIND_EVENTS,
            format=dev.EXPORT_FORMAT_JSON_LINES,
            session_ids=[live],
        ),
        other_key,
    )
    assert export[-1].trailer.record_count == 0
    assert b"".join(m.chunk for m in export) == b""


def assemble(messages) -> tuple[data_pb.ExportHeader, bytes, data_pb.ExportTrailer]:
    assert messages[0].WhichOneof("part") == "header"
    assert messages[-1].WhichOneof("part") == "trailer"
    body = b"".join(m.chunk for m in messages[1:-1])
    trailer = messages[-1].trailer
    assert trailer.byte_count == len(body)
    assert trailer.sha256 == hashlib.sha256(body).hexdigest()
    return messages[0].header, body, trailer


async def test_event_export_parses_back(xserver, live):
    events = await session_events(xserver, live)
    request = data_api.ExportRecordsRequest(
        kind=dev.EXPORT_RECORD_KIND_EVENTS,
        format=dev.EXPORT_FORMAT_JSON_LINES,
        session_ids=[live],
    )
    header, body, trailer = assemble(await data(xserver, "ExportRecords", request))
    assert header.media_type == "application/jsonl" and not header.columns
    lines = body.decode().splitlines()
    parsed = [json_format.ParseDict(json.loads(line), event_pb2.Event()) for line in lines]
    assert parsed == events
    assert trailer.record_count == len(events)
    assert trailer.last_sequence >= events[-1].sequence

    request.format = dev.EXPORT_FORMAT_CSV
    header, body, trailer = assemble(await data(xserver, "ExportRecords", request))
    assert header.media_type == "text/csv"
    rows = list(csv.DictReader(io.StringIO(body.decode(), newline="")))
    assert list(csv.reader(io.StringIO(body.decode())))[0] == list(header.columns)
    assert [r["id"] for r in rows] == [e.id for e in events]
    assert [int(r["sequence"]) for r in rows] == [e.sequence for e in events]
    joined = next(r for r in rows if r["type"] == EV + "ParticipantJoined")
    assert json.loads(joined["payload"])["session"]["participantJoined"]["identity"]

    # Filters: one type, one identity, a time range, and resuming after a sequence.
    only = await data(
        xserver,
        "ExportRecords",
        data_api.ExportRecordsRequest(
            kind=dev.EXPORT_RECORD_KIND_EVENTS,
            format=dev.EXPORT_FORMAT_JSON_LINES,
            session_ids=[live],
            identities=["ann"],
            event_filter=data_pb.EventFilter(types=[EV + "HandRaised"]),
        ),
    )
    _, body, trailer = assemble(only)
    assert trailer.record_count == 1
    assert json.loads(body)["session"]["handRaised"]["identity"] == "ann"
    middle = events[len(events) // 2]
    rest = await data(
        xserver,
        "ExportRecords",
        data_api.ExportRecordsRequest(
            kind=dev.EXPORT_RECORD_KIND_EVENTS,
            format=dev.EXPORT_FORMAT_JSON_LINES,
            session_ids=[live],
            after_sequence=middle.sequence,
        ),
    )
    _, body, _ = assemble(rest)
    assert [json.loads(line)["id"] for line in body.decode().splitlines()] == [
        e.id for e in events if e.sequence > middle.sequence
    ]


async def test_attendance_and_report_exports(xserver, live):
    report = await ready_report(xserver, live)
    for kind, expected in (
        (dev.EXPORT_RECORD_KIND_ATTENDANCE, len(report.attendance)),
        (dev.EXPORT_RECORD_KIND_SESSION_REPORTS, 1),
    ):
        request = data_api.ExportRecordsRequest(
            kind=kind, format=dev.EXPORT_FORMAT_CSV, session_ids=[live]
        )
        header, body, trailer = assemble(await data(xserver, "ExportRecords", request))
        rows = list(csv.DictReader(io.StringIO(body.decode(), newline="")))
        assert trailer.record_count == len(rows) == expected
        assert list(rows[0].keys()) == list(header.columns)
    attendance = data_api.ExportRecordsRequest(
        kind=dev.EXPORT_RECORD_KIND_ATTENDANCE,
        format=dev.EXPORT_FORMAT_JSON_LINES,
        session_ids=[live],
    )
    _, body, _ = assemble(await data(xserver, "ExportRecords", attendance))
    records = {r["identity"]: r for r in map(json.loads, body.decode().splitlines())}
    assert set(records) == {a.identity for a in report.attendance}
    assert all(r["sessionId"] == live for r in records.values())


async def test_export_bad_input(xserver):
    cases = [
        (data_api.ExportRecordsRequest(), ["format", "kind"]),
        (
            data_api.ExportRecordsRequest(
                kind=dev.EXPORT_RECORD_KIND_ATTENDANCE,
                format=dev.EXPORT_FORMAT_CSV,
                after_sequence=3,
                event_filter=data_pb.EventFilter(types=[EV + "HandRaised"]),
            ),
            ["after_sequence", "event_filter"],
        ),
        (
            data_api.ExportRecordsRequest(
                kind=dev.EXPORT_RECORD_KIND_EVENTS,
                format=dev.EXPORT_FORMAT_CSV,
                time_range=data_pb.TimeRange(start_time={"seconds": 10}, end_time={"seconds": 5}),
                event_filter=data_pb.EventFilter(types=["no.such.Event"]),
                session_ids=[""],
            ),
            ["event_filter.types[0]", "session_ids[0]", "time_range.end_time"],
        ),
    ]
    for request, fields in cases:
        assert await failure(data(xserver, "ExportRecords", request)) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_ARGUMENT",
            fields,
        )
    ahead = data_api.ExportRecordsRequest(
        kind=dev.EXPORT_RECORD_KIND_EVENTS, format=dev.EXPORT_FORMAT_CSV, after_sequence=10**9
    )
    assert (await failure(data(xserver, "ExportRecords", ahead)))[:2] == (
        grpc.StatusCode.OUT_OF_RANGE,
        "CURSOR_AHEAD_OF_LOG",
    )


async def test_continuous_push_retries_until_the_lrs_is_back(tmp_path):
    lrs = RalphLrs(tmp_path / "lrs")  # not started: the LRS is down
    running, drop = await lrs_server(tmp_path / "server", lrs, continuous=True)
    try:
        session_id = await run_session(running)
        statements = await all_statements(running, session_id)
        # A push now cannot reach the LRS: UNAVAILABLE, nothing lost.
        now = data_api.PushXapiStatementsRequest(request_id="p1", session_id=session_id)
        assert (await failure(data(running, "PushXapiStatements", now)))[:2] == (
            grpc.StatusCode.UNAVAILABLE,
            "LRS_UNAVAILABLE",
        )
        await asyncio.sleep(1.0)
        await lrs.start()
        registration = json.loads(statements[0].json)["context"]["registration"]
        async with asyncio.timeout(90):
            while True:
                held = await lrs.statements(registration=registration)
                if len(held) >= len(statements):
                    break
                await asyncio.sleep(0.5)
        ids = [s["id"] for s in held]
        assert len(ids) == len(set(ids)) == len(statements)
        assert set(ids) == {s.statement_id for s in statements}
        # The file-system LRS appends every stored statement: each id is in it once.
        stored_lines = (tmp_path / "lrs" / "statements" / "fs_lrs.jsonl").read_text().splitlines()
        stored_ids = [json.loads(line)["id"] for line in stored_lines]
        assert sorted(stored_ids) == sorted(ids)
        # The retried request id now pushes: everything was already stored by the pusher.
        again = await data(running, "PushXapiStatements", now)
        assert again.already_stored_count == len(statements) and again.stored_count == 0
    finally:
        await running.server.stop(grace=1)
        lrs.stop()
        if drop:
            await drop()
