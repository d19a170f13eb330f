"""Session lifecycle over real gRPC: transitions and their FAILED_PRECONDITION reasons, durable
timers (join window, empty room), UpdateSession, WatchSession resumed, attendance."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from test_connect import (
    INSTRUCTOR,
    Participant,
    join,
    open_session,
    reason_of,
    rpc,
    seconds,
    stub,
    token,
    ts,
)

from classwire.api.common.v1 import common_pb2
from classwire.api.events.v1 import session_events_pb2 as ev
from classwire.api.session.v1 import resources_pb2 as pb
from classwire.api.session.v1 import service_pb2 as api

S = common_pb2


async def expect(awaitable, code, reason):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    assert caught.value.code() == code, caught.value.details()
    assert reason_of(caught.value) == reason
    return caught.value


async def get(server, session_id) -> pb.Session:
    return (await rpc(server, "GetSession", api.GetSessionRequest(session_id=session_id))).session


async def wait_for(check, timeout: float = 10.0):
    async with asyncio.timeout(timeout):
        while True:
            value = await check()
            if value:
                return value
            await asyncio.sleep(0.1)


async def scheduled(server, start_in: float, **settings) -> pb.Session:
    start = datetime.now(UTC) + timedelta(seconds=start_in)
    response = await rpc(
        server,
        "CreateSession",
        api.CreateSessionRequest(
            session=pb.Session(
                title="Later",
                scheduled_start_time=ts(start),
                scheduled_end_time=ts(start + timedelta(hours=1)),
                settings=pb.SessionSettings(**settings),
            )
        ),
    )
    return response.session


async def test_lifecycle_transitions_and_bad_ones(server):
    session = await scheduled(server, 3600)
    assert session.state == S.SESSION_STATE_SCHEDULED
    await expect(
        rpc(server, "EndSession", api.EndSessionRequest(session_id=session.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_NOT_OPEN",
    )
    started = await rpc(server, "StartSession", api.StartSessionRequest(session_id=session.id))
    assert started.session.state == S.SESSION_STATE_LIVE and started.session.live_time.seconds
    again = await rpc(server, "StartSession", api.StartSessionRequest(session_id=session.id))
    assert again.session.state == S.SESSION_STATE_LIVE  # idempotent
    await expect(
        rpc(server, "CancelSession", api.CancelSessionRequest(session_id=session.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_ALREADY_LIVE",
    )
    ended = await rpc(
        server, "EndSession", api.EndSessionRequest(session_id=session.id, message="done")
    )
    assert ended.session.state == S.SESSION_STATE_ENDED
    assert ended.session.end_reason == ev.SESSION_END_REASON_REQUESTED
    twice = await rpc(server, "EndSession", api.EndSessionRequest(session_id=session.id))
    assert twice.session.end_time == ended.session.end_time  # idempotent, unchanged
    for method, request in (
        ("StartSession", api.StartSessionRequest(session_id=session.id)),
        ("CancelSession", api.CancelSessionRequest(session_id=session.id)),
    ):
        await expect(
            rpc(server, method, request), grpc.StatusCode.FAILED_PRECONDITION, "SESSION_ENDED"
        )
    await expect(
        rpc(
            server,
            "UpdateSession",
            api.UpdateSessionRequest(
                session=pb.Session(id=session.id, title="x"), update_mask={"paths": ["title"]}
            ),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_ENDED",
    )
    other = await scheduled(server, 3600)
    cancelled = await rpc(
        server, "CancelSession", api.CancelSessionRequest(session_id=other.id, reason="snow")
    )
    assert cancelled.session.state == S.SESSION_STATE_CANCELLED
    assert cancelled.session.end_message == "snow"
    await expect(
        rpc(server, "EndSession", api.EndSessionRequest(session_id=other.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_CANCELLED",
    )
    # The log tells the whole story, in order.
    async with grpc.aio.insecure_channel(server.address) as channel:
        watch = stub(channel).WatchSession(
            api.WatchSessionRequest(session_id=session.id),
            metadata=(("authorization", f"Bearer {server.api_key}"),),
        )
        kinds = []
        async for item in watch:
            kinds.append(item.event.session.WhichOneof("payload"))
            if kinds[-1] == "attendance_finalized":
                break
        watch.cancel()
    assert kinds == [
        "session_created",
        "session_state_changed",
        "session_state_changed",
        "session_ended",
        "attendance_finalized",
    ]


async def test_update_session_with_a_field_mask(server):
    session = await scheduled(server, 3600)
    updated = await rpc(
        server,
        "UpdateSession",
        api.UpdateSessionRequest(
            session=pb.Session(
                id=session.id,
                title="Geometry",
                capacity=99,
                settings=pb.SessionSettings(reconnect_grace=seconds(7)),
            ),
            update_mask={"paths": ["title", "settings.reconnect_grace"]},
        ),
    )
    assert updated.session.title == "Geometry"
    assert updated.session.capacity == 0  # not in the mask
    assert updated.session.settings.reconnect_grace.seconds == 7
    assert updated.session.settings.join_window.seconds == 600  # kept
    error = await expect(
        rpc(
            server,
            "UpdateSession",
            api.UpdateSessionRequest(
                session=pb.Session(id=session.id), update_mask={"paths": ["state", "title"]}
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "UPDATE_MASK_INVALID",
    )
    assert "state" in error.details()
    await expect(
        rpc(
            server,
            "UpdateSession",
            api.UpdateSessionRequest(
                session=pb.Session(id=session.id, title=""), update_mask={"paths": ["title"]}
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    await expect(
        rpc(
            server,
            "UpdateSession",
            api.UpdateSessionRequest(
                session=pb.Session(id="ses_missing", title="x"), update_mask={"paths": ["title"]}
            ),
        ),
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
    )


async def test_join_window_opens_by_its_durable_timer(server):
    # The start is 2 s away and the window 1 s: SCHEDULED now, OPEN about a second later.
    session = await scheduled(server, 2, join_window=seconds(1))
    assert session.state == S.SESSION_STATE_SCHEDULED
    issued = await token(server, session.id, "too-early")
    early = await Participant(server.address, issued.token).connect(expect_joined=False)
    error = await early.status()
    assert reason_of(error) == "SESSION_NOT_OPEN"

    async def opened():
        return (await get(server, session.id)).state == S.SESSION_STATE_OPEN

    await wait_for(opened)
    await early.close()


async def test_empty_room_timeout_ends_the_session(server):
    session = await open_session(
        server, empty_room_timeout=seconds(1), learners_join_before_instructor=True
    )
    host = await join(server, session.id, "teacher", INSTRUCTOR)
    host.send(leave={})
    await host.next("disconnect")

    async def ended():
        current = await get(server, session.id)
        return current if current.state == S.SESSION_STATE_ENDED else None

    final = await wait_for(ended)
    assert final.end_reason == ev.SESSION_END_REASON_EMPTY_ROOM_TIMEOUT
    attendance = await rpc(server, "GetAttendance", api.GetAttendanceRequest(session_id=session.id))
    assert attendance.attendance.finalized
    (entry,) = attendance.attendance.participants
    (interval,) = entry.intervals
    assert interval.leave_reason == S.LEAVE_REASON_LEFT
    assert entry.left_early and not entry.late  # joined before the start, left before the end
    await host.close()


async def test_attendance_merges_a_resumed_reconnection(server):
    session = await open_session(
        server, reconnect_grace=seconds(30), learners_join_before_instructor=True
    )
    kid = await join(server, session.id, "kid")
    await kid.cut()
    await asyncio.sleep(0.2)
    await kid.connect(resume=True)
    assert kid.joined.resumed
    await rpc(server, "EndSession", api.EndSessionRequest(session_id=session.id))
    await kid.next("disconnect")
    attendance = (
        await rpc(server, "GetAttendance", api.GetAttendanceRequest(session_id=session.id))
    ).attendance
    (entry,) = attendance.participants
    assert entry.reconnect_count == 1
    (interval,) = entry.intervals  # one interval across the reconnection
    assert interval.leave_reason == S.LEAVE_REASON_SESSION_ENDED
    assert entry.total_duration.ToTimedelta() > timedelta(0)
    await kid.close()


async def test_watch_session_cut_and_resumed_gets_every_event_once_in_order(server):
    session = await open_session(server, learners_join_before_instructor=True)
    metadata = (("authorization", f"Bearer {server.api_key}"),)

    async def lock(value: bool):
        await rpc(
            server, "SetRoomLock", api.SetRoomLockRequest(session_id=session.id, locked=value)
        )

    async with grpc.aio.insecure_channel(server.address) as channel:
        watch = stub(channel).WatchSession(
            api.WatchSessionRequest(session_id=session.id), metadata=metadata
        )
        seen = []
        for value in (True, False, True):
            await lock(value)
        async for item in watch:
            seen.append(item.event.session_sequence)
            if len(seen) == 3:
                break
        watch.cancel()  # cut mid-way
    for value in (False, True, False):
        await lock(value)
    async with grpc.aio.insecure_channel(server.address) as channel:
        resumed = stub(channel).WatchSession(
            api.WatchSessionRequest(session_id=session.id, after_sequence=seen[-1]),
            metadata=metadata,
        )
        async for item in resumed:
            seen.append(item.event.session_sequence)
            if len(seen) == 7:
                break
        resumed.cancel()
    assert seen == list(range(1, 8))  # created, then six lock changes: no gap, no duplicate
