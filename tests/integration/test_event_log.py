"""The event log over real gRPC: WatchSession, WatchEvents, ListEvents, GetEvent, and the schema
the migrations build compared with the models."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from conftest import create_database, make_config, start_server
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from classwire.api.common.v1 import common_pb2
from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.data.v1 import service_pb2_grpc as data_grpc
from classwire.api.platform.v1 import service_pb2 as platform_api
from classwire.api.platform.v1 import service_pb2_grpc as platform_grpc
from classwire.api.session.v1 import resources_pb2 as pb
from classwire.api.session.v1 import service_pb2 as session_api
from classwire.api.session.v1 import service_pb2_grpc as session_grpc
from classwire.server.store.schema import Base

EV = "classwire.api.events.v1."
CREATED = EV + "SessionCreated"
ISSUED = EV + "JoinTokenIssued"
TIMEOUT = 10


def details(exc: grpc.aio.AioRpcError):
    """(ErrorInfo, BadRequest or None) decoded from the rich status trailer."""
    info, bad = None, None
    for detail in rpc_status.from_call(exc).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
    return info, bad


async def expect_error(awaitable, code: grpc.StatusCode, reason: str | None = None):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    assert caught.value.code() == code, caught.value.details()
    if reason is not None:
        assert details(caught.value)[0].reason == reason
    return caught.value


def metadata(server, credential=None):
    return (("authorization", f"Bearer {credential or server.api_key}"),)


async def create_session(channel, server, credential=None) -> pb.Session:
    start = datetime.now(UTC) + timedelta(days=1)
    session = pb.Session(title="Watched")
    session.scheduled_start_time.FromDatetime(start)
    session.scheduled_end_time.FromDatetime(start + timedelta(hours=1))
    response = await session_grpc.SessionServiceStub(channel).CreateSession(
        session_api.CreateSessionRequest(session=session), metadata=metadata(server, credential)
    )
    return response.session


async def issue(channel, server, session_id, identity, credential=None):
    return await session_grpc.SessionServiceStub(channel).CreateJoinToken(
        session_api.CreateJoinTokenRequest(
            session_id=session_id,
            identity=identity,
            display_name=identity,
            role=common_pb2.PARTICIPANT_ROLE_LEARNER,
        ),
        metadata=metadata(server, credential),
    )


async def take(stream, count: int, kind: str = "event"):
    """The next `count` messages of `kind` from a stream, skipping the other kind."""
    found = []
    while len(found) < count:
        message = await asyncio.wait_for(stream.read(), TIMEOUT)
        assert message is not grpc.aio.EOF
        if message.WhichOneof("message") == kind:
            found.append(getattr(message, kind))
    return found


async def test_watch_session_in_order_cut_and_resumed_exactly_once(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = session_grpc.SessionServiceStub(channel)
        session = await create_session(channel, server)
        for i in range(3):
            await issue(channel, server, session.id, f"learner-{i}")

        # The history first, in session_sequence order.
        stream = stub.WatchSession(
            session_api.WatchSessionRequest(session_id=session.id), metadata=metadata(server)
        )
        history = await take(stream, 2)
        stream.cancel()
        assert [e.session_sequence for e in history] == [1, 2]
        assert history[0].type == CREATED and history[0].session.session_created.title == "Watched"
        assert all(e.session_id == session.id for e in history)

        # Cut after two events; resume after the last one received, then go live.
        stream = stub.WatchSession(
            session_api.WatchSessionRequest(session_id=session.id, after_sequence=2),
            metadata=metadata(server),
        )
        rest = await take(stream, 2)
        assert [e.session_sequence for e in rest] == [3, 4]
        live_issue = asyncio.ensure_future(issue(channel, server, session.id, "late-comer"))
        live = await take(stream, 1)
        await live_issue
        assert live[0].session_sequence == 5 and live[0].type == ISSUED
        assert live[0].session.join_token_issued.identity == "late-comer"
        stream.cancel()

        # Events committed while nobody watched arrive on resume, with no gap and no duplicate.
        await issue(channel, server, session.id, "while-away")
        stream = stub.WatchSession(
            session_api.WatchSessionRequest(session_id=session.id, after_sequence=5),
            metadata=metadata(server),
        )
        missed = await take(stream, 1)
        stream.cancel()
        received = history + rest + live + missed
        assert [e.session_sequence for e in received] == [1, 2, 3, 4, 5, 6]
        assert len({e.id for e in received}) == 6

        # The durable log holds exactly what the watchers received.
        listed = await data_grpc.DataServiceStub(channel).ListEvents(
            data_api.ListEventsRequest(filter=data_pb.EventFilter(session_ids=[session.id])),
            metadata=metadata(server),
        )
        assert [e.id for e in listed.events] == [e.id for e in received]


async def test_watch_session_filters_heartbeats_and_errors(server):
    log = server.server.platform.event_log
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = session_grpc.SessionServiceStub(channel)
        session = await create_session(channel, server)
        await issue(channel, server, session.id, "a")
        await issue(channel, server, session.id, "b")

        # A type filter never renumbers: the events keep their session sequence.
        stream = stub.WatchSession(
            session_api.WatchSessionRequest(session_id=session.id, event_types=[ISSUED]),
            metadata=metadata(server),
        )
        issued = await take(stream, 2)
        stream.cancel()
        assert [(e.type, e.session_sequence) for e in issued] == [(ISSUED, 2), (ISSUED, 3)]

        # An idle stream sends heartbeats with the session's latest sequence (15 s by contract;
        # shortened here on the running server).
        interval = log.session_heartbeat_interval
        log.session_heartbeat_interval = timedelta(milliseconds=200)
        try:
            stream = stub.WatchSession(
                session_api.WatchSessionRequest(session_id=session.id, after_sequence=3),
                metadata=metadata(server),
            )
            beat = (await take(stream, 1, "heartbeat"))[0]
            stream.cancel()
        finally:
            log.session_heartbeat_interval = interval
        assert beat.latest_sequence == 3 and beat.HasField("server_time")

        async def first_error(request, credential=None):
            stream = stub.WatchSession(request, metadata=metadata(server, credential))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(stream.read(), TIMEOUT)
            return caught.value

        err = await first_error(
            session_api.WatchSessionRequest(session_id=session.id, event_types=[ISSUED, "nope"])
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in details(err)[1].field_violations] == ["event_types[1]"]
        err = await first_error(
            session_api.WatchSessionRequest(session_id=session.id, after_sequence=99)
        )
        assert err.code() == grpc.StatusCode.OUT_OF_RANGE
        assert details(err)[0].reason == "SEQUENCE_AHEAD"
        assert details(err)[0].metadata["latest_sequence"] == "3"
        err = await first_error(session_api.WatchSessionRequest(session_id="ses_missing"))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert details(err)[0].reason == "SESSION_NOT_FOUND"
        # Watching is for backend services, not participants.
        token = await issue(channel, server, session.id, "c")
        err = await first_error(session_api.WatchSessionRequest(session_id=session.id), token.token)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_watch_events_filters_by_type_and_resumes_from_the_cursor(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = data_grpc.DataServiceStub(channel)
        stream = stub.WatchEvents(
            data_api.WatchEventsRequest(
                filter=data_pb.EventFilter(types=[ISSUED]),
                from_latest=True,
                heartbeat_interval=duration_pb2.Duration(seconds=1),
            ),
            metadata=metadata(server),
        )
        first = await asyncio.wait_for(stream.read(), TIMEOUT)
        assert first.WhichOneof("message") == "heartbeat"  # always first
        start = first.heartbeat.cursor
        assert start == first.heartbeat.head_sequence

        session = await create_session(channel, server)
        await issue(channel, server, session.id, "x")
        await issue(channel, server, session.id, "y")
        events = await take(stream, 2)
        assert [e.type for e in events] == [ISSUED, ISSUED]
        assert [e.session.join_token_issued.identity for e in events] == ["x", "y"]
        assert events[0].sequence > start + 1  # SessionCreated came first and was filtered out
        assert events[0].sequence < events[1].sequence

        # A filtered-out event advances the heartbeat's cursor: a narrow filter resumes cheaply.
        other = await create_session(channel, server)
        beat = None
        while beat is None or beat.cursor < beat.head_sequence:
            beat = (await take(stream, 1, "heartbeat"))[0]
        stream.cancel()
        assert beat.cursor >= events[1].sequence + 1

        # Resuming after the last sequence received gives exactly the events after it.
        await issue(channel, server, other.id, "z")
        resumed = stub.WatchEvents(
            data_api.WatchEventsRequest(
                filter=data_pb.EventFilter(types=[ISSUED]), after_sequence=start
            ),
            metadata=metadata(server),
        )
        again = await take(resumed, 3)
        resumed.cancel()
        assert [e.id for e in again[:2]] == [e.id for e in events]
        assert again[2].session.join_token_issued.identity == "z"

        # Area wrappers select a whole area; session ids narrow to sessions.
        by_area = stub.WatchEvents(
            data_api.WatchEventsRequest(
                filter=data_pb.EventFilter(types=[EV + "SessionEvent"], session_ids=[other.id]),
                after_sequence=start,
            ),
            metadata=metadata(server),
        )
        area_events = await take(by_area, 2)
        by_area.cancel()
        assert [e.type for e in area_events] == [CREATED, ISSUED]
        assert {e.session_id for e in area_events} == {other.id}


async def test_watch_events_rejects_what_it_cannot_honour(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = data_grpc.DataServiceStub(channel)

        async def first_error(request, credential=None):
            stream = stub.WatchEvents(request, metadata=metadata(server, credential))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(stream.read(), TIMEOUT)
            return caught.value

        err = await first_error(
            data_api.WatchEventsRequest(
                filter=data_pb.EventFilter(types=[EV + "SessionEvent", EV + "Nope", "HandRaised"])
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in details(err)[1].field_violations] == [
            "filter.types[1]",
            "filter.types[2]",
        ]
        err = await first_error(
            data_api.WatchEventsRequest(heartbeat_interval=duration_pb2.Duration(nanos=500_000_000))
        )
        assert details(err)[1].field_violations[0].field == "heartbeat_interval"
        err = await first_error(data_api.WatchEventsRequest(from_latest=False))
        assert details(err)[1].field_violations[0].field == "from_latest"
        err = await first_error(data_api.WatchEventsRequest(after_sequence=10**12))
        assert err.code() == grpc.StatusCode.OUT_OF_RANGE
        info = details(err)[0]
        assert info.reason == "CURSOR_AHEAD_OF_LOG" and int(info.metadata["head_sequence"]) > 0
        # Only API keys with data:read watch the log.
        reader = await platform_grpc.PlatformServiceStub(channel).CreateApiKey(
            platform_api.CreateApiKeyRequest(display_name="sessions only", scopes=["session:read"]),
            metadata=metadata(server),
        )
        err = await first_error(data_api.WatchEventsRequest(), reader.secret)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert details(err)[0].metadata["scope"] == "data:read"


async def test_list_and_get_events(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = data_grpc.DataServiceStub(channel)
        session = await create_session(channel, server)
        for i in range(4):
            await issue(channel, server, session.id, f"p{i}")
        flt = data_pb.EventFilter(session_ids=[session.id])

        pages, token, seen, last = 0, "", [], 0
        while True:
            page = await stub.ListEvents(
                data_api.ListEventsRequest(filter=flt, page_size=2, page_token=token),
                metadata=metadata(server),
            )
            pages += 1
            seen += list(page.events)
            last = page.last_sequence
            token = page.next_page_token
            if not token:
                break
        assert [e.session_sequence for e in seen] == [1, 2, 3, 4, 5]
        assert [e.sequence for e in seen] == sorted(e.sequence for e in seen)
        assert pages == 3 and last >= seen[-1].sequence

        issued_only = await stub.ListEvents(
            data_api.ListEventsRequest(
                filter=data_pb.EventFilter(types=[ISSUED], session_ids=[session.id]),
                after_sequence=seen[1].sequence,
            ),
            metadata=metadata(server),
        )
        assert [e.id for e in issued_only.events] == [e.id for e in seen[2:]]

        # An occur-time window with an end: nothing after it.
        window = data_api.ListEventsRequest(filter=flt)
        window.time_range.end_time.FromDatetime(datetime.now(UTC) - timedelta(days=1))
        assert list((await stub.ListEvents(window, metadata=metadata(server))).events) == []
        window.time_range.start_time.FromDatetime(datetime.now(UTC))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListEvents(window, metadata=metadata(server))
        assert details(caught.value)[1].field_violations[0].field == "time_range.end_time"

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListEvents(
                data_api.ListEventsRequest(filter=data_pb.EventFilter(types=["x"])),
                metadata=metadata(server),
            )
        assert details(caught.value)[1].field_violations[0].field == "filter.types[0]"
        first = await stub.ListEvents(
            data_api.ListEventsRequest(filter=flt, page_size=1), metadata=metadata(server)
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListEvents(
                data_api.ListEventsRequest(page_size=1, page_token=first.next_page_token),
                metadata=metadata(server),
            )
        assert details(caught.value)[0].reason == "INVALID_PAGE_TOKEN"

        got = await stub.GetEvent(
            data_api.GetEventRequest(event_id=seen[0].id), metadata=metadata(server)
        )
        assert got.event == seen[0]
        await expect_error(
            stub.GetEvent(
                data_api.GetEventRequest(event_id=str(uuid.uuid4())), metadata=metadata(server)
            ),
            grpc.StatusCode.NOT_FOUND,
            "EVENT_NOT_FOUND",
        )
        # Another tenant's event is NOT_FOUND, exactly as a missing one.
        other = await platform_grpc.PlatformServiceStub(channel).CreateTenant(
            platform_api.CreateTenantRequest(display_name="Event log neighbour"),
            metadata=metadata(server),
        )
        await expect_error(
            stub.GetEvent(
                data_api.GetEventRequest(event_id=seen[0].id),
                metadata=metadata(server, other.admin_api_key_secret),
            ),
            grpc.StatusCode.NOT_FOUND,
            "EVENT_NOT_FOUND",
        )
        theirs = await stub.ListEvents(
            data_api.ListEventsRequest(filter=flt),
            metadata=metadata(server, other.admin_api_key_secret),
        )
        assert list(theirs.events) == []


@contextlib.asynccontextmanager
async def own_server(tmp_path):
    """A server of its own, for tests that stop it."""
    url, drop = await create_database(tmp_path)
    running = await start_server(make_config(tmp_path, url))
    try:
        yield running
    finally:
        with contextlib.suppress(Exception):
            await running.server.stop(grace=0)
        if drop:
            await drop()


async def read_until_error(stream) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while True:
            message = await asyncio.wait_for(stream.read(), TIMEOUT)
            assert message is not grpc.aio.EOF
    return caught.value


async def test_closing_the_log_ends_streams_with_unavailable(tmp_path):
    async with (
        own_server(tmp_path) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        session = await create_session(channel, running)
        watch = session_grpc.SessionServiceStub(channel).WatchSession(
            session_api.WatchSessionRequest(session_id=session.id), metadata=metadata(running)
        )
        await take(watch, 1)
        events = data_grpc.DataServiceStub(channel).WatchEvents(
            data_api.WatchEventsRequest(), metadata=metadata(running)
        )
        await take(events, 1, "heartbeat")
        # What a draining server should do first: open streams end at once with UNAVAILABLE, so
        # clients resume elsewhere instead of waiting out the grace period.
        running.server.platform.event_log.close()
        for stream in (watch, events):
            error = await read_until_error(stream)
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert details(error)[0].reason == "SERVER_SHUTTING_DOWN"


async def test_streams_end_when_the_server_stops(tmp_path):
    async with (
        own_server(tmp_path) as running,
        grpc.aio.insecure_channel(running.address) as channel,
    ):
        stream = data_grpc.DataServiceStub(channel).WatchEvents(
            data_api.WatchEventsRequest(), metadata=metadata(running)
        )
        await take(stream, 1, "heartbeat")
        # The stream never ends by itself: the server cancels it when the grace period is over.
        await running.server.stop(grace=0.5)
        error = await read_until_error(stream)
        assert error.code() == grpc.StatusCode.UNAVAILABLE


async def test_migrations_match_the_models(server):
    """The schema the migrations built equals the one the models declare, on this engine."""

    def compare(connection):
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)

    async with server.server.platform.db.read_engine.connect() as conn:
        differences = await conn.run_sync(compare)
    assert differences == []
