"""The participant connection (SessionService.Connect) over real gRPC streams: joins, presence,
pushes, reconnection inside and after the grace window, duplicate identities, moderation."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from classwire.api.common.v1 import common_pb2
from classwire.api.events.v1 import session_events_pb2 as ev
from classwire.api.session.v1 import resources_pb2 as pb
from classwire.api.session.v1 import service_pb2 as api
from classwire.api.session.v1 import service_pb2_grpc

INSTRUCTOR = common_pb2.PARTICIPANT_ROLE_INSTRUCTOR
LEARNER = common_pb2.PARTICIPANT_ROLE_LEARNER
CONNECTED = pb.PARTICIPANT_STATE_CONNECTED
WAIT = 10.0


def reason_of(exc: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(exc)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(timedelta(seconds=value))
    return d


def stub(channel) -> service_pb2_grpc.SessionServiceStub:
    return service_pb2_grpc.SessionServiceStub(channel)


def auth(credential: str):
    return (("authorization", f"Bearer {credential}"),)


async def rpc(server, method: str, request, credential: str | None = None):
    async with grpc.aio.insecure_channel(server.address) as channel:
        return await getattr(stub(channel), method)(
            request, metadata=auth(credential or server.api_key)
        )


async def open_session(server, start_in: float = 60.0, **settings) -> pb.Session:
    """A session whose join window is open now (it starts OPEN)."""
    start = datetime.now(UTC) + timedelta(seconds=start_in)
    capacity = settings.pop("capacity", 0)
    session = pb.Session(
        capacity=capacity,
        title="Live algebra",
        scheduled_start_time=ts(start),
        scheduled_end_time=ts(start + timedelta(hours=1)),
        settings=pb.SessionSettings(**settings),
    )
    response = await rpc(server, "CreateSession", api.CreateSessionRequest(session=session))
    return response.session


async def token(
    server, session_id: str, identity: str, role=LEARNER
) -> api.CreateJoinTokenResponse:
    return await rpc(
        server,
        "CreateJoinToken",
        api.CreateJoinTokenRequest(
            session_id=session_id, identity=identity, display_name=identity.title(), role=role
        ),
    )


class Participant:
    """One participant's client: a Connect stream whose messages are collected in order."""

    def __init__(self, address: str, token: str) -> None:
        self.address = address
        self.token = token
        self.received: list[api.ConnectResponse] = []
        self.resume_token = ""
        self.last_sequence = 0
        self.participant_id = ""
        self.joined: api.ConnectResponse.Joined | None = None

    async def connect(self, resume: bool = False, expect_joined: bool = True):
        self.channel = grpc.aio.insecure_channel(self.address)
        self.outgoing: asyncio.Queue = asyncio.Queue()
        self.incoming: asyncio.Queue = asyncio.Queue()
        join = api.ConnectRequest.Join()
        if resume:
            join.resume_token = self.resume_token
            join.after_sequence = self.last_sequence
        self.outgoing.put_nowait(api.ConnectRequest(join=join))
        self.call = stub(self.channel).Connect(self._requests(), metadata=auth(self.token))
        self.reader = asyncio.ensure_future(self._read())
        if expect_joined:
            message = await self.next("joined")
            self.joined = message.joined
            self.resume_token = message.joined.resume_token
            self.participant_id = message.joined.participant_id
            if not message.joined.resumed:
                # Replayed pushes follow a resumed Joined, whose last_sequence counts them.
                self.last_sequence = message.joined.last_sequence
        return self

    async def _requests(self):
        while True:
            item = await self.outgoing.get()
            if item is None:
                return
            yield item

    async def _read(self):
        try:
            async for message in self.call:
                if message.sequence:
                    assert message.sequence > self.last_sequence, "push sequences must increase"
                    self.last_sequence = message.sequence
                self.received.append(message)
                self.incoming.put_nowait(message)
            self.incoming.put_nowait(None)
        except grpc.aio.AioRpcError as exc:
            self.incoming.put_nowait(exc)
        except asyncio.CancelledError:
            self.incoming.put_nowait(None)

    def send(self, action_id: str = "", **action) -> None:
        self.outgoing.put_nowait(api.ConnectRequest(action_id=action_id, **action))

    async def next(self, kind: str, predicate=lambda m: True, timeout: float = WAIT):
        """The next message of `kind` (`joined`, `event`, `disconnect`, ...) matching."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.incoming.get()
                if message is None:
                    raise AssertionError(f"stream ended while waiting for {kind}")
                if isinstance(message, Exception):
                    raise message
                if message.WhichOneof("message") == kind and predicate(message):
                    return message

    async def answer(self, action_id: str, timeout: float = WAIT):
        """The ack or error answering the action with this id."""

        def match(message):
            return message.action_id == action_id

        async with asyncio.timeout(timeout):
            while True:
                message = await self.next_any(timeout)
                if message.WhichOneof("message") in ("ack", "error") and match(message):
                    return message

    async def next_any(self, timeout: float = WAIT):
        async with asyncio.timeout(timeout):
            message = await self.incoming.get()
        if message is None:
            raise AssertionError("stream ended")
        if isinstance(message, Exception):
            raise message
        return message

    async def event(self, payload: str, predicate=lambda p: True, timeout: float = WAIT):
        """The next pushed session event with this payload field (`participant_joined`, ...)."""

        def match(message):
            e = message.event
            return (
                e.WhichOneof("payload") == "session"
                and e.session.WhichOneof("payload") == payload
                and predicate(getattr(e.session, payload))
            )

        message = await self.next("event", match, timeout)
        return getattr(message.event.session, payload)

    async def status(self, timeout: float = WAIT) -> grpc.aio.AioRpcError | None:
        """Waits for the stream's end: its error, or None when it ended OK."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.incoming.get()
                if message is None:
                    return None
                if isinstance(message, Exception):
                    return message

    def events(self, payload: str) -> list:
        return [
            getattr(m.event.session, payload)
            for m in self.received
            if m.WhichOneof("message") == "event"
            and m.event.session.WhichOneof("payload") == payload
        ]

    async def cut(self) -> None:
        """Drops the connection without a leave, as a network failure would."""
        self.outgoing.put_nowait(None)
        self.call.cancel()
        with contextlib.suppress(BaseException):
            await self.reader
        await self.channel.close()

    async def close(self) -> None:
        with contextlib.suppress(BaseException):
            await self.cut()


async def join(server, session_id: str, identity: str, role=LEARNER) -> Participant:
    issued = await token(server, session_id, identity, role)
    return await Participant(server.address, issued.token).connect()


async def test_instructor_and_thirty_learners_are_present(server):
    session = await open_session(server, learners_join_before_instructor=False)
    host = await join(server, session.id, "teacher", INSTRUCTOR)
    assert host.joined.snapshot.session.state == common_pb2.SESSION_STATE_LIVE
    learners = await asyncio.gather(*[join(server, session.id, f"kid-{i}") for i in range(30)])
    try:
        seen = set()
        while len(seen) < 30:
            joined = await host.event("participant_joined")
            seen.add(joined.identity)
        assert seen == {f"kid-{i}" for i in range(30)}
        listed = await rpc(
            server,
            "ListParticipants",
            api.ListParticipantsRequest(session_id=session.id, states=[CONNECTED], page_size=20),
        )
        rest = await rpc(
            server,
            "ListParticipants",
            api.ListParticipantsRequest(
                session_id=session.id,
                states=[CONNECTED],
                page_size=20,
                page_token=listed.next_page_token,
            ),
        )
        ids = [p.id for p in listed.participants] + [p.id for p in rest.participants]
        assert len(ids) == len(set(ids)) == 31 and not rest.next_page_token
        got = await rpc(server, "GetSession", api.GetSessionRequest(session_id=session.id))
        assert got.session.connected_count == 31
        # A learner sees the roster but not the waiting-room or token bookkeeping.
        learners[0].send(leave=api.ConnectRequest.Leave())
        bye = await learners[0].next("disconnect")
        assert bye.disconnect.reason == common_pb2.LEAVE_REASON_LEFT
        left = await host.event("participant_left")
        assert left.reason == common_pb2.LEAVE_REASON_LEFT
        assert learners[1].events("join_token_issued") == []
    finally:
        for client in [host, *learners]:
            await client.close()


async def test_learners_wait_for_the_instructor_and_the_waiting_room(server):
    session = await open_session(server)  # learners may not join before the instructor
    kid = await join(server, session.id, "early-kid")
    assert kid.joined.snapshot.local_participant.state == pb.PARTICIPANT_STATE_WAITING
    assert list(kid.joined.snapshot.participants) == []
    kid.send(action_id="a1", set_room_lock=api.ConnectRequest.SetRoomLock(locked=True))
    refused = await kid.next("error")
    assert refused.error.reason == "PARTICIPANT_WAITING" and refused.action_id == "a1"
    host = await join(server, session.id, "teacher", INSTRUCTOR)
    entered = await kid.next("room_entered")
    assert entered.room_entered.reason == api.ConnectResponse.RoomEntered.REASON_ADMITTED
    assert entered.sequence > 0
    # With the waiting-room setting a moderator admits or denies, here on its own connection.
    await rpc(
        server,
        "UpdateSession",
        api.UpdateSessionRequest(
            session=pb.Session(id=session.id, settings=pb.SessionSettings(waiting_room=True)),
            update_mask={"paths": ["settings.waiting_room"]},
        ),
    )
    late = await join(server, session.id, "late-kid")
    other = await join(server, session.id, "other-kid")
    waiting = await host.event("participant_waiting", lambda e: e.identity == "late-kid")
    host.send(action_id="ok", admit=api.ConnectRequest.Admit(participant_id=waiting.participant_id))
    assert (await host.next("ack", lambda m: m.action_id == "ok")).action_id == "ok"
    await late.next("room_entered")
    await rpc(
        server,
        "DenyParticipant",
        api.DenyParticipantRequest(
            session_id=session.id, participant_id=other.participant_id, message="not today"
        ),
    )
    denied = await other.next("disconnect")
    assert denied.disconnect.reason == common_pb2.LEAVE_REASON_DENIED
    assert denied.disconnect.message == "not today"
    assert await other.status() is None
    for client in (kid, host, late, other):
        await client.close()


async def test_capacity_lock_and_actions_on_the_stream(server):
    session = await open_session(server, capacity=1, learners_join_before_instructor=True)
    first = await join(server, session.id, "first")
    issued = await token(server, session.id, "second")
    second = await Participant(server.address, issued.token).connect(expect_joined=False)
    error = await second.status()
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(error) == "SESSION_FULL"
    host = await join(server, session.id, "teacher", INSTRUCTOR)  # instructors still get in
    await rpc(server, "SetRoomLock", api.SetRoomLockRequest(session_id=session.id, locked=True))
    await first.event("room_locked")
    await rpc(
        server,
        "UpdateSession",
        api.UpdateSessionRequest(
            session=pb.Session(id=session.id, capacity=0), update_mask={"paths": ["capacity"]}
        ),
    )
    third = await Participant(
        server.address, (await token(server, session.id, "third")).token
    ).connect(expect_joined=False)
    error = await third.status()
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(error) == "ROOM_LOCKED"
    # Ping, a classroom action (answered even while it is not available), a repeated action id.
    first.send(action_id="p", ping=api.ConnectRequest.Ping(client_time=ts(datetime.now(UTC))))
    assert (await first.next("pong")).action_id == "p"
    first.send(action_id="h", raise_hand=api.ConnectRequest.RaiseHand())
    answer = await first.answer("h")
    if answer.WhichOneof("message") == "error":
        # Until the classroom interactions land: a per-action error, and the stream goes on.
        assert answer.error.code == grpc.StatusCode.UNIMPLEMENTED.value[0]
    first.send(action_id="m", set_room_lock=api.ConnectRequest.SetRoomLock(locked=False))
    denied = await first.next("error", lambda m: m.action_id == "m")
    assert denied.error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert denied.error.reason == "MISSING_PERMISSION"
    first.send(action_id="m", set_room_lock=api.ConnectRequest.SetRoomLock(locked=False))
    again = await first.next("error", lambda m: m.action_id == "m")
    assert again.error == denied.error
    first.send(action_id="x", join=api.ConnectRequest.Join())
    assert (await first.next("error", lambda m: m.action_id == "x")).error.reason == (
        "ALREADY_JOINED"
    )
    for client in (first, second, host, third):
        await client.close()


async def test_first_message_must_be_a_join(server):
    session = await open_session(server)
    issued = await token(server, session.id, "rude")
    async with grpc.aio.insecure_channel(server.address) as channel:
        call = stub(channel).Connect(
            iter([api.ConnectRequest(ping=api.ConnectRequest.Ping())]), metadata=auth(issued.token)
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(caught.value) == "JOIN_REQUIRED"


async def test_resume_inside_the_window_replays_missed_pushes(server):
    session = await open_session(
        server, reconnect_grace=seconds(30), learners_join_before_instructor=True
    )
    host = await join(server, session.id, "teacher", INSTRUCTOR)
    kid = await join(server, session.id, "kid")
    await kid.cut()
    reconnecting = await host.event("participant_reconnecting")
    assert reconnecting.participant_id == kid.participant_id
    # Pushes the learner misses while away, replayed in order on resume.
    for locked in (True, False):
        await rpc(
            server, "SetRoomLock", api.SetRoomLockRequest(session_id=session.id, locked=locked)
        )
    await kid.connect(resume=True)
    assert kid.joined.resumed
    assert await kid.event("room_locked") is not None
    assert await kid.event("room_unlocked") is not None
    resumed = await host.event("participant_resumed")
    assert resumed.participant_id == kid.participant_id and resumed.replayed_push_count >= 2
    participant = await rpc(
        server,
        "GetParticipant",
        api.GetParticipantRequest(session_id=session.id, participant_id=kid.participant_id),
    )
    assert participant.participant.state == CONNECTED
    assert participant.participant.reconnect_count == 1
    # No second join: the host saw exactly one join of the learner.
    await rpc(server, "SetRoomLock", api.SetRoomLockRequest(session_id=session.id, locked=True))
    await host.event("room_locked")
    assert [e.identity for e in host.events("participant_joined")] == ["kid"]
    # An old resume token is used up: a forged one is refused outright.
    kid.resume_token = kid.resume_token[:-4] + "AAAA"
    await kid.cut()
    refused = await kid.connect(resume=True, expect_joined=False)
    error = await refused.status()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason_of(error) == "RESUME_TOKEN_INVALID"
    for client in (host, kid):
        await client.close()


async def test_resume_after_the_window_is_a_fresh_join(server):
    session = await open_session(
        server, reconnect_grace=seconds(1), learners_join_before_instructor=True
    )
    host = await join(server, session.id, "teacher", INSTRUCTOR)
    kid = await join(server, session.id, "slow-kid")
    await kid.cut()
    left = await host.event("participant_left")
    assert left.reason == common_pb2.LEAVE_REASON_CONNECTION_LOST
    await kid.connect(resume=True)
    assert not kid.joined.resumed
    rejoined = await host.event("participant_joined", lambda e: e.identity == "slow-kid")
    assert rejoined.rejoined
    for client in (host, kid):
        await client.close()


async def test_duplicate_identity_replaces_the_first_connection(server):
    session = await open_session(server, learners_join_before_instructor=True)
    issued = await token(server, session.id, "twin")
    first = await Participant(server.address, issued.token).connect()
    second = await Participant(server.address, issued.token).connect()
    bye = await first.next("disconnect")
    assert bye.disconnect.reason == common_pb2.LEAVE_REASON_DUPLICATE_IDENTITY
    assert await first.status() is None
    assert second.participant_id == first.participant_id
    second.send(action_id="p", ping=api.ConnectRequest.Ping())
    await second.next("pong")
    for client in (first, second):
        await client.close()


async def test_removed_participant_cannot_rejoin(server):
    session = await open_session(server, learners_join_before_instructor=True)
    host = await join(server, session.id, "teacher", INSTRUCTOR)
    issued = await token(server, session.id, "troll")
    troll = await Participant(server.address, issued.token).connect()
    host.send(
        action_id="r",
        remove=api.ConnectRequest.Remove(
            participant_id=troll.participant_id, message="bye", block_rejoin=True
        ),
    )
    await host.next("ack", lambda m: m.action_id == "r")
    bye = await troll.next("disconnect")
    assert bye.disconnect.reason == common_pb2.LEAVE_REASON_REMOVED
    assert bye.disconnect.message == "bye"
    again = await Participant(server.address, issued.token).connect(expect_joined=False)
    error = await again.status()
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(error) == "TOKEN_REVOKED"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await token(server, session.id, "troll")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert reason_of(caught.value) == "IDENTITY_BLOCKED"
    for client in (host, troll, again):
        await client.close()


async def test_end_session_disconnects_everyone(server):
    session = await open_session(server, learners_join_before_instructor=True)
    host = await join(server, session.id, "teacher", INSTRUCTOR)
    kid = await join(server, session.id, "kid")
    host.send(action_id="e", end_session=api.ConnectRequest.EndSession(message="that's all"))
    for client in (host, kid):
        bye = await client.next("disconnect")
        assert bye.disconnect.reason == common_pb2.LEAVE_REASON_SESSION_ENDED
        assert bye.disconnect.message == "that's all"
    got = await rpc(server, "GetSession", api.GetSessionRequest(session_id=session.id))
    assert got.session.state == common_pb2.SESSION_STATE_ENDED
    assert got.session.end_message == "that's all"
    for client in (host, kid):
        await client.close()


def poll(question: str, visibility=pb.POLL_RESULTS_VISIBILITY_PUBLIC_LIVE, **fields) -> pb.Poll:
    return pb.Poll(
        question=question,
        options=[pb.PollOption(text="Yes"), pb.PollOption(text="No")],
        results_visibility=visibility,
        **fields,
    )


async def test_moderator_runs_polls_chat_and_hands_over_connect(server):
    session = await open_session(server, learners_join_before_instructor=True)
    host = await join(server, session.id, "teacher", INSTRUCTOR)
    ada = await join(server, session.id, "ada")
    bob = await join(server, session.id, "bob")
    try:
        # Invalid polls name every problem, with paths within the action.
        host.send("bad", create_poll=api.ConnectRequest.CreatePoll(poll=pb.Poll()))
        error = (await host.answer("bad")).error
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert {v.field for v in error.field_violations} == {
            "create_poll.poll.question",
            "create_poll.poll.options",
        }
        # A learner may not open a poll.
        ada.send("sneaky", create_poll=api.ConnectRequest.CreatePoll(poll=poll("Mine?")))
        assert (await ada.answer("sneaky")).error.reason == "MISSING_PERMISSION"

        # Results shown to moderators only: learners see that someone answered, not what.
        host.send(
            "p1",
            create_poll=api.ConnectRequest.CreatePoll(
                poll=poll("Ready?", pb.POLL_RESULTS_VISIBILITY_MODERATORS, correct_option_ids=["1"])
            ),
        )
        poll_id = (await host.answer("p1")).ack.created_id
        created = await bob.event("poll_created", lambda e: e.poll_id == poll_id)
        assert not created.correct_option_ids  # quiz answers stay hidden from learners
        ada.send("a1", answer_poll=api.ConnectRequest.AnswerPoll(poll_id=poll_id, option_ids=["1"]))
        assert (await ada.answer("a1")).WhichOneof("message") == "ack"
        seen_by_host = await host.event("poll_answered", lambda e: e.poll_id == poll_id)
        assert list(seen_by_host.option_ids) == ["1"]
        update = await host.next("poll_results_update", lambda m: True)
        assert update.poll_results_update.poll_id == poll_id
        results = update.poll_results_update.results
        assert results.answer_count == 1
        assert {o.option_id: o.count for o in results.options} == {"1": 1, "2": 0}
        seen_by_bob = await bob.event("poll_answered", lambda e: e.poll_id == poll_id)
        assert not seen_by_bob.option_ids and seen_by_bob.answer_count == 1

        # A public poll pushes its live results to everyone.
        host.send("p2", create_poll=api.ConnectRequest.CreatePoll(poll=poll("Lunch?")))
        public_id = (await host.answer("p2")).ack.created_id
        bob.send(
            "b1", answer_poll=api.ConnectRequest.AnswerPoll(poll_id=public_id, option_ids=["2"])
        )
        live = await ada.next(
            "poll_results_update", lambda m: m.poll_results_update.poll_id == public_id
        )
        assert {o.option_id: o.count for o in live.poll_results_update.results.options} == {
            "1": 0,
            "2": 1,
        }
        assert not live.poll_results_update.results.answers  # counts only for learners
        assert not [
            m
            for m in bob.received
            if m.WhichOneof("message") == "poll_results_update"
            and m.poll_results_update.poll_id == poll_id
        ]

        host.send("c1", close_poll=api.ConnectRequest.ClosePoll(poll_id=poll_id))
        assert (await host.answer("c1")).ack.created_id == ""
        closed = await ada.event("poll_closed", lambda e: e.poll_id == poll_id)
        assert closed.answer_count == 1

        # Hands: the queue is pushed after each change.
        ada.send("h1", raise_hand=api.ConnectRequest.RaiseHand())
        queue = await host.next(
            "hand_queue_update", lambda m: len(m.hand_queue_update.entries) == 1
        )
        assert queue.hand_queue_update.entries[0].participant_id == ada.participant_id
        host.send("h2", lower_hand=api.ConnectRequest.LowerHand(all=True))
        await bob.next("hand_queue_update", lambda m: not m.hand_queue_update.entries)

        # Chat deletion by the moderator.
        bob.send("m1", send_chat=api.ConnectRequest.SendChat(text="oops", audience=1))
        message_id = (await bob.answer("m1")).ack.created_id
        host.send("d1", delete_chat=api.ConnectRequest.DeleteChat(message_id=message_id))
        assert (await host.answer("d1")).WhichOneof("message") == "ack"
        await ada.event("chat_message_deleted", lambda e: e.message_id == message_id)
        host.send("d2", delete_chat=api.ConnectRequest.DeleteChat())
        error = (await host.answer("d2")).error
        assert [v.field for v in error.field_violations] == ["delete_chat.message_id"]
    finally:
        for p in (host, ada, bob):
            await p.close()


async def test_breakouts_over_connect_and_a_late_learner_lands_in_its_room(server):
    session = await open_session(server, learners_join_before_instructor=True)
    host = await join(server, session.id, "teacher", INSTRUCTOR)
    ada = await join(server, session.id, "ada")
    bob = await join(server, session.id, "bob")
    late = await token(server, session.id, "cleo")  # assigned before she connects
    cleo = None
    try:
        plan = pb.BreakoutPlan(
            manual=pb.BreakoutPlan.Manual(
                rooms=[
                    pb.BreakoutRoom(
                        name="Red", participant_ids=[ada.participant_id, late.participant_id]
                    ),
                    pb.BreakoutRoom(name="Blue", participant_ids=[bob.participant_id]),
                ]
            )
        )
        ada.send("o0", open_breakouts=api.ConnectRequest.OpenBreakouts(plan=plan))
        assert (await ada.answer("o0")).error.reason == "MISSING_PERMISSION"
        host.send("o1", open_breakouts=api.ConnectRequest.OpenBreakouts(plan=plan))
        assert (await host.answer("o1")).WhichOneof("message") == "ack"
        opened = await host.event("breakouts_opened")
        red, blue = (room.session_id for room in opened.rooms)
        entered = await ada.next("room_entered")
        assert entered.room_entered.reason == api.ConnectResponse.RoomEntered.REASON_MOVED
        assert entered.room_entered.snapshot.session.id == red
        assert (await bob.next("room_entered")).room_entered.snapshot.session.id == blue

        # Cleo joins in the middle of the round: she lands in Red, not in the main room.
        cleo = await Participant(server.address, late.token).connect()
        assert cleo.joined.snapshot.session.id == red
        assert cleo.joined.snapshot.local_participant.room_session_id == red
        await ada.event("participant_joined", lambda e: e.identity == "cleo")

        host.send(
            "m1",
            move_participant=api.ConnectRequest.MoveParticipant(
                participant_id=bob.participant_id, to_session_id=red
            ),
        )
        assert (await host.answer("m1")).WhichOneof("message") == "ack"
        assert (await bob.next("room_entered")).room_entered.snapshot.session.id == red

        host.send(
            "b1", broadcast_to_breakouts=api.ConnectRequest.BroadcastToBreakouts(text="5 min")
        )
        assert (await host.answer("b1")).WhichOneof("message") == "ack"
        assert (await cleo.event("breakout_broadcast")).text == "5 min"

        host.send("x0", close_breakouts=api.ConnectRequest.CloseBreakouts(countdown=seconds(3600)))
        error = (await host.answer("x0")).error
        assert [v.field for v in error.field_violations] == ["close_breakouts.countdown"]
        host.send("x1", close_breakouts=api.ConnectRequest.CloseBreakouts(countdown=seconds(0)))
        assert (await host.answer("x1")).WhichOneof("message") == "ack"
        for p in (ada, bob, cleo):
            back = await p.next("room_entered")
            assert (
                back.room_entered.reason == api.ConnectResponse.RoomEntered.REASON_BREAKOUTS_CLOSED
            )
            assert back.room_entered.snapshot.session.id == session.id
    finally:
        for p in (host, ada, bob, cleo):
            if p is not None:
                await p.close()


async def test_ending_the_session_closes_its_poll_hands_and_breakouts(server):
    session = await open_session(server, learners_join_before_instructor=True)
    host = await join(server, session.id, "teacher", INSTRUCTOR)
    ada = await join(server, session.id, "ada")
    bob = await join(server, session.id, "bob")
    try:
        host.send("p1", create_poll=api.ConnectRequest.CreatePoll(poll=poll("Done?")))
        poll_id = (await host.answer("p1")).ack.created_id
        ada.send("a1", answer_poll=api.ConnectRequest.AnswerPoll(poll_id=poll_id, option_ids=["1"]))
        assert (await ada.answer("a1")).WhichOneof("message") == "ack"
        ada.send("h1", raise_hand=api.ConnectRequest.RaiseHand())
        await host.next("hand_queue_update", lambda m: len(m.hand_queue_update.entries) == 1)
        split = pb.BreakoutPlan(split=pb.BreakoutPlan.Split(room_count=1))
        host.send("o1", open_breakouts=api.ConnectRequest.OpenBreakouts(plan=split))
        assert (await host.answer("o1")).WhichOneof("message") == "ack"
        room = (await bob.next("room_entered")).room_entered.snapshot.session.id
        bob.send("p2", create_poll=api.ConnectRequest.CreatePoll(poll=poll("Room poll?")))
        assert (await bob.answer("p2")).error.reason == "MISSING_PERMISSION"

        host.send("e1", end_session=api.ConnectRequest.EndSession(message="bye"))
        for p in (host, ada, bob):
            ended = await p.next("disconnect")
            assert ended.disconnect.reason == common_pb2.LEAVE_REASON_SESSION_ENDED

        got = await rpc(server, "GetPoll", api.GetPollRequest(poll_id=poll_id))
        assert got.poll.state == pb.POLL_STATE_CLOSED
        assert got.poll.results.answer_count == 1
        queue = await rpc(server, "GetHandQueue", api.GetHandQueueRequest(session_id=session.id))
        assert not queue.entries
        breakouts = await rpc(
            server, "GetBreakouts", api.GetBreakoutsRequest(session_id=session.id)
        )
        assert breakouts.breakouts.state == pb.BREAKOUTS_STATE_CLOSED
        child = await rpc(server, "GetSession", api.GetSessionRequest(session_id=room))
        assert child.session.state == common_pb2.SESSION_STATE_ENDED
        events = []
        async with grpc.aio.insecure_channel(server.address) as channel:
            watch = stub(channel).WatchSession(
                api.WatchSessionRequest(session_id=session.id), metadata=auth(server.api_key)
            )
            async for message in watch:
                if message.WhichOneof("message") != "event":
                    break
                events.append(message.event.session)
                if message.event.session.WhichOneof("payload") == "attendance_finalized":
                    break
        closed = [e.poll_closed for e in events if e.WhichOneof("payload") == "poll_closed"]
        assert [c.reason for c in closed] == [ev.PollClosed.REASON_SESSION_ENDED]
        assert any(e.WhichOneof("payload") == "hand_lowered" for e in events)
    finally:
        for p in (host, ada, bob):
            await p.close()
