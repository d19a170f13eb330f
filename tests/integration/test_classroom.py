"""Classroom interactions over real gRPC: the hand queue, chat, reactions, polls and breakouts,
called with API keys and with participant tokens minted through CreateJoinToken, and the events
they write as WatchSession delivers them."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from classwire.api.common.v1 import common_pb2
from classwire.api.events.v1 import session_events_pb2 as ev
from classwire.api.platform.v1 import service_pb2 as platform_api
from classwire.api.platform.v1 import service_pb2_grpc as platform_grpc
from classwire.api.session.v1 import resources_pb2 as pb
from classwire.api.session.v1 import service_pb2 as api
from classwire.api.session.v1 import service_pb2_grpc
from classwire.server.store.models import LiveSession

INSTRUCTOR = common_pb2.PARTICIPANT_ROLE_INSTRUCTOR
LEARNER = common_pb2.PARTICIPANT_ROLE_LEARNER
EVERYONE = ev.CHAT_AUDIENCE_EVERYONE
TO_INSTRUCTORS = ev.CHAT_AUDIENCE_INSTRUCTORS
TO_PARTICIPANT = ev.CHAT_AUDIENCE_PARTICIPANT
EV = "classwire.api.events.v1."
TIMEOUT = 15


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


async def call(server, method, request, credential):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.SessionServiceStub(channel)
        metadata = (("authorization", f"Bearer {credential}"),)
        return await getattr(stub, method)(request, metadata=metadata)


async def expect_error(awaitable, code: grpc.StatusCode, reason: str | None = None):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    assert caught.value.code() == code, caught.value.details()
    if reason is not None:
        assert details(caught.value)[0].reason == reason
    return caught.value


def violations(exc) -> set[str]:
    return {v.field for v in details(exc)[1].field_violations}


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


async def open_session(server, **fields) -> pb.Session:
    """A session whose join window is open (it starts in 3 minutes)."""
    start = (datetime.now(UTC) + timedelta(minutes=3)).replace(microsecond=0)
    session = pb.Session(
        title="Fractions",
        scheduled_start_time=ts(start),
        scheduled_end_time=ts(start + timedelta(hours=1)),
        **fields,
    )
    response = await call(
        server, "CreateSession", api.CreateSessionRequest(session=session), server.api_key
    )
    assert response.session.state == common_pb2.SESSION_STATE_OPEN
    return response.session


async def go_live(server, session_id: str) -> None:
    """StartSession; while the lifecycle's StartSession is not in this build, the row is set
    LIVE directly (the one state classroom tests cannot reach through the API yet)."""
    try:
        await call(
            server, "StartSession", api.StartSessionRequest(session_id=session_id), server.api_key
        )
        return
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
    async with server.server.platform.db.writer() as s, s.begin():
        row = await s.get(LiveSession, session_id)
        row.state = common_pb2.SESSION_STATE_LIVE
        row.live_time = datetime.now(UTC)


class Person:
    def __init__(self, identity: str, token: str, participant_id: str) -> None:
        self.identity = identity
        self.token = token
        self.id = participant_id


async def join(server, session_id: str, identity: str, role=LEARNER) -> Person:
    response = await call(
        server,
        "CreateJoinToken",
        api.CreateJoinTokenRequest(
            session_id=session_id, identity=identity, display_name=identity.title(), role=role
        ),
        server.api_key,
    )
    return Person(identity, response.token, response.participant_id)


async def watch(server, session_id: str, until, after: int = 0) -> list:
    """Events of a session from WatchSession until `until(events)` holds."""
    events = []

    async def run():
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = service_pb2_grpc.SessionServiceStub(channel)
            stream = stub.WatchSession(
                api.WatchSessionRequest(session_id=session_id, after_sequence=after),
                metadata=(("authorization", f"Bearer {server.api_key}"),),
            )
            async for item in stream:
                if item.HasField("event"):
                    events.append(item.event)
                    if until(events):
                        stream.cancel()
                        return

    await asyncio.wait_for(run(), TIMEOUT)
    return events


def types(events) -> list[str]:
    return [e.type.removeprefix(EV) for e in events]


def has(name: str, count: int = 1):
    return lambda events: types(events).count(name) >= count


@pytest.fixture(scope="module")
async def other_key(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        created = await platform_grpc.PlatformServiceStub(channel).CreateTenant(
            platform_api.CreateTenantRequest(display_name="Other school"),
            metadata=(("authorization", f"Bearer {server.api_key}"),),
        )
    return created.admin_api_key_secret


# Hand raise -------------------------------------------------------------------------------------


class Connection:
    """A participant's Connect stream: join, then actions answered by ack or error."""

    def __init__(self, server, person: Person) -> None:
        self.server = server
        self.person = person

    async def __aenter__(self) -> Connection:
        self.channel = grpc.aio.insecure_channel(self.server.address)
        self.outgoing: asyncio.Queue = asyncio.Queue()
        self.outgoing.put_nowait(api.ConnectRequest(join=api.ConnectRequest.Join()))
        self.call = service_pb2_grpc.SessionServiceStub(self.channel).Connect(
            self._requests(), metadata=(("authorization", f"Bearer {self.person.token}"),)
        )
        self.responses = self.call.__aiter__()
        await self._next(lambda m: m.WhichOneof("message") == "joined")
        return self

    async def _requests(self):
        while (item := await self.outgoing.get()) is not None:
            yield item

    async def _next(self, predicate) -> api.ConnectResponse:
        async with asyncio.timeout(TIMEOUT):
            while True:
                message = await self.responses.__anext__()
                if predicate(message):
                    return message

    async def act(self, **action) -> api.ConnectResponse:
        action_id = uuid.uuid4().hex
        self.outgoing.put_nowait(api.ConnectRequest(action_id=action_id, **action))
        return await self._next(
            lambda m: m.action_id == action_id and m.WhichOneof("message") in ("ack", "error")
        )

    async def __aexit__(self, *exc) -> None:
        self.outgoing.put_nowait(api.ConnectRequest(leave=api.ConnectRequest.Leave()))
        try:
            await self._next(lambda m: m.WhichOneof("message") == "disconnect")
        finally:
            self.outgoing.put_nowait(None)
            await self.channel.close()


async def raise_hand(connection: Connection) -> None:
    answer = await connection.act(raise_hand=api.ConnectRequest.RaiseHand())
    assert answer.WhichOneof("message") == "ack", answer


async def test_hand_queue_is_ordered_and_lowered_one_or_all(server):
    """Hands go up on the participant connection; the queue and lowering are unary RPCs."""
    session = await open_session(
        server, settings=pb.SessionSettings(learners_join_before_instructor=True)
    )
    teacher = await join(server, session.id, "teacher", INSTRUCTOR)
    ann, bob, cat = [await join(server, session.id, n) for n in ("ann", "bob", "cat")]
    async with (
        Connection(server, ann) as ann_conn,
        Connection(server, bob) as bob_conn,
        Connection(server, cat) as cat_conn,
    ):
        for connection in (bob_conn, ann_conn, cat_conn, bob_conn):  # bob twice: no change
            await raise_hand(connection)
        await hand_queue_checks(server, session, teacher, ann, bob, cat, ann_conn)


async def hand_queue_checks(server, session, teacher, ann, bob, cat, ann_conn) -> None:
    queue = await call(
        server, "GetHandQueue", api.GetHandQueueRequest(session_id=session.id), ann.token
    )
    assert [(e.identity, e.position) for e in queue.entries] == [("bob", 1), ("ann", 2), ("cat", 3)]
    assert queue.entries[0].display_name == "Bob" and queue.entries[0].HasField("raise_time")

    # A learner lowers its own hand, but not another's.
    lowered = await call(
        server, "LowerHand", api.LowerHandRequest(session_id=session.id), ann.token
    )
    assert [e.identity for e in lowered.entries] == ["bob", "cat"]
    err = await expect_error(
        call(
            server,
            "LowerHand",
            api.LowerHandRequest(session_id=session.id, participant_id=bob.id),
            cat.token,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "MISSING_PERMISSION",
    )
    assert details(err)[0].metadata["permission"] == "PARTICIPANT_PERMISSION_MODERATE"
    # The instructor lowers one, then all.
    one = await call(
        server,
        "LowerHand",
        api.LowerHandRequest(session_id=session.id, participant_id=cat.id),
        teacher.token,
    )
    assert [(e.identity, e.position) for e in one.entries] == [("bob", 1)]
    await raise_hand(ann_conn)
    everyone = await call(
        server, "LowerHand", api.LowerHandRequest(session_id=session.id, all=True), teacher.token
    )
    assert list(everyone.entries) == []
    await expect_error(
        call(
            server,
            "LowerHand",
            api.LowerHandRequest(session_id=session.id, participant_id="par_missing"),
            server.api_key,
        ),
        grpc.StatusCode.NOT_FOUND,
        "PARTICIPANT_NOT_FOUND",
    )

    events = await watch(server, session.id, has("HandLowered", 4))
    hands = [e for e in events if e.type.startswith(EV + "Hand")]
    assert [(e.type.removeprefix(EV), e.session.WhichOneof("payload")) for e in hands][:3] == [
        ("HandRaised", "hand_raised"),
        ("HandRaised", "hand_raised"),
        ("HandRaised", "hand_raised"),
    ]
    assert [e.session.hand_raised.queue_position for e in hands[:3]] == [1, 2, 3]
    # Lowering all emits one HandLowered per hand in queue order: bob, then ann.
    lowered_all = [e.session.hand_lowered.identity for e in hands if e.type.endswith("Lowered")]
    assert lowered_all == ["ann", "cat", "bob", "ann"]
    assert hands[-1].actor.kind == common_pb2.Actor.KIND_PARTICIPANT


# Chat -------------------------------------------------------------------------------------------


async def send(server, credential, session_id, text, audience=EVERYONE, **kw):
    response = await call(
        server,
        "SendChatMessage",
        api.SendChatMessageRequest(session_id=session_id, text=text, audience=audience, **kw),
        credential,
    )
    return response.message


async def listed(server, credential, session_id, **kw) -> list[str]:
    response = await call(
        server,
        "ListChatMessages",
        api.ListChatMessagesRequest(session_id=session_id, **kw),
        credential,
    )
    return [m.text for m in response.messages]


async def test_chat_visibility_private_messages_and_deletion(server):
    session = await open_session(server)
    teacher = await join(server, session.id, "teacher", INSTRUCTOR)
    ann, bob = await join(server, session.id, "ann"), await join(server, session.id, "bob")

    hello = await send(server, ann.token, session.id, "hello all")
    assert hello.sender.kind == common_pb2.Actor.KIND_PARTICIPANT
    assert hello.sender_participant_id == ann.id and hello.sender_display_name == "Ann"
    await send(server, bob.token, session.id, "bob asks privately", TO_INSTRUCTORS)
    await send(
        server,
        teacher.token,
        session.id,
        "teacher to ann",
        TO_PARTICIPANT,
        recipient_participant_id=ann.id,
    )
    bot = await send(server, server.api_key, session.id, "welcome", sender_display_name="Helper")
    assert bot.sender_display_name == "Helper" and bot.sender_participant_id == ""

    everything = ["hello all", "bob asks privately", "teacher to ann", "welcome"]
    assert await listed(server, server.api_key, session.id) == everything
    assert await listed(server, teacher.token, session.id) == everything
    assert await listed(server, ann.token, session.id) == ["hello all", "teacher to ann", "welcome"]
    assert await listed(server, bob.token, session.id) == [
        "hello all",
        "bob asks privately",
        "welcome",
    ]
    # A learner reading a service's message learns it was a service, not which key.
    as_ann = await call(
        server, "ListChatMessages", api.ListChatMessagesRequest(session_id=session.id), ann.token
    )
    assert as_ann.messages[-1].sender.kind == common_pb2.Actor.KIND_API_KEY
    assert as_ann.messages[-1].sender.id == ""

    # Paging, oldest first, with an opaque token.
    first = await call(
        server,
        "ListChatMessages",
        api.ListChatMessagesRequest(session_id=session.id, page_size=3),
        server.api_key,
    )
    rest = await call(
        server,
        "ListChatMessages",
        api.ListChatMessagesRequest(
            session_id=session.id, page_size=3, page_token=first.next_page_token
        ),
        server.api_key,
    )
    assert [m.text for m in [*first.messages, *rest.messages]] == everything
    assert rest.next_page_token == ""

    # Learners may not post to one participant, nor delete.
    await expect_error(
        send(
            server, bob.token, session.id, "psst", TO_PARTICIPANT, recipient_participant_id=ann.id
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "MISSING_PERMISSION",
    )
    await expect_error(
        call(
            server,
            "DeleteChatMessage",
            api.DeleteChatMessageRequest(message_id=hello.id),
            bob.token,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "MISSING_PERMISSION",
    )
    deleted = await call(
        server,
        "DeleteChatMessage",
        api.DeleteChatMessageRequest(message_id=hello.id),
        teacher.token,
    )
    assert deleted.message.text == "" and deleted.message.HasField("delete_time")
    assert deleted.message.deleted_by.id == teacher.id
    again = await call(
        server,
        "DeleteChatMessage",
        api.DeleteChatMessageRequest(message_id=hello.id),
        server.api_key,
    )
    assert again.message.delete_time == deleted.message.delete_time  # idempotent
    assert await listed(server, ann.token, session.id) == ["teacher to ann", "welcome"]
    assert await listed(server, ann.token, session.id, include_deleted=True) == [
        "",
        "teacher to ann",
        "welcome",
    ]

    events = await watch(server, session.id, has("ChatMessageDeleted"))
    chat = [e for e in events if "Chat" in e.type]
    assert types(chat) == ["ChatMessagePosted"] * 4 + ["ChatMessageDeleted"]
    posted = chat[1].session.chat_message_posted
    assert posted.audience == TO_INSTRUCTORS and posted.sender_identity == "bob"
    assert chat[-1].session.chat_message_deleted.message_id == hello.id


async def test_chat_validation_reports_every_field(server):
    session = await open_session(server)
    ann = await join(server, session.id, "ann")
    err = await expect_error(
        call(
            server,
            "SendChatMessage",
            api.SendChatMessageRequest(
                session_id=session.id, text="x" * 4001, recipient_participant_id="par_x"
            ),
            ann.token,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert violations(err) == {"text", "audience"}
    err = await expect_error(
        send(server, ann.token, session.id, "  ", recipient_participant_id="par_x"),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(err) == {"text", "recipient_participant_id"}
    longest = await send(server, ann.token, session.id, "y" * 4000)
    assert len(longest.text) == 4000
    # request_id: a retry returns the first message, not a second one.
    request = api.SendChatMessageRequest(
        request_id=str(uuid.uuid4()), session_id=session.id, text="once", audience=EVERYONE
    )
    first = await call(server, "SendChatMessage", request, ann.token)
    second = await call(server, "SendChatMessage", request, ann.token)
    assert first.message.id == second.message.id
    assert (await listed(server, ann.token, session.id)).count("once") == 1
    # A scheduled session (join window not open) has no chat yet.
    start = datetime.now(UTC) + timedelta(days=2)
    later = await call(
        server,
        "CreateSession",
        api.CreateSessionRequest(
            session=pb.Session(
                title="Later",
                scheduled_start_time=ts(start),
                scheduled_end_time=ts(start + timedelta(hours=1)),
            )
        ),
        server.api_key,
    )
    await expect_error(
        send(server, server.api_key, later.session.id, "too early"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_NOT_OPEN",
    )


# Reactions --------------------------------------------------------------------------------------


async def test_reactions(server):
    session = await open_session(server)
    ann = await join(server, session.id, "ann")
    for emoji in ("👍🏽", "❤️", "🇫🇷", "👩‍🏫"):
        await call(
            server,
            "SendReaction",
            api.SendReactionRequest(session_id=session.id, emoji=emoji),
            ann.token,
        )
    for bad in ("", "ok", "👍👍"):
        await expect_error(
            call(
                server,
                "SendReaction",
                api.SendReactionRequest(session_id=session.id, emoji=bad),
                ann.token,
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
    await expect_error(
        call(
            server,
            "SendReaction",
            api.SendReactionRequest(session_id=session.id, emoji="👍"),
            server.api_key,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    events = await watch(server, session.id, has("ReactionSent", 4))
    sent = [e.session.reaction_sent for e in events if e.type == EV + "ReactionSent"]
    assert [(r.identity, r.emoji) for r in sent] == [
        ("ann", "👍🏽"),
        ("ann", "❤️"),
        ("ann", "🇫🇷"),
        ("ann", "👩‍🏫"),
    ]


# Polls ------------------------------------------------------------------------------------------


def quiz(**kw) -> pb.Poll:
    return pb.Poll(
        question="2 + 2?",
        options=[pb.PollOption(text="3"), pb.PollOption(text="4"), pb.PollOption(text="5")],
        correct_option_ids=["2"],
        **kw,
    )


async def answer(server, person: Person, poll_id: str, *options: str):
    response = await call(
        server,
        "AnswerPoll",
        api.AnswerPollRequest(poll_id=poll_id, option_ids=options),
        person.token,
    )
    return response.poll


async def test_poll_live_results_changed_answers_and_close(server):
    session = await open_session(server)
    teacher = await join(server, session.id, "teacher", INSTRUCTOR)
    ann, bob, cat = [await join(server, session.id, n) for n in ("ann", "bob", "cat")]

    await expect_error(
        call(
            server,
            "CreatePoll",
            api.CreatePollRequest(session_id=session.id, poll=quiz()),
            ann.token,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "MISSING_PERMISSION",
    )
    created = await call(
        server,
        "CreatePoll",
        api.CreatePollRequest(session_id=session.id, poll=quiz()),
        teacher.token,
    )
    poll = created.poll
    assert poll.state == pb.POLL_STATE_OPEN and [o.id for o in poll.options] == ["1", "2", "3"]
    assert list(poll.correct_option_ids) == ["2"]  # the moderator sees the answer key

    # Live results while open: learners see counts (PUBLIC_LIVE) but not the answer key.
    await answer(server, ann, poll.id, "1")
    await answer(server, bob, poll.id, "2")
    as_cat = await answer(server, cat, poll.id, "2")
    assert list(as_cat.correct_option_ids) == [] and list(as_cat.results.answers) == []
    assert [(o.option_id, o.count, o.correct) for o in as_cat.results.options] == [
        ("1", 1, False),
        ("2", 2, False),
        ("3", 0, False),
    ]
    changed = await answer(server, ann, poll.id, "2")  # changeable until close
    assert changed.results.answer_count == 3
    live = await call(server, "GetPoll", api.GetPollRequest(poll_id=poll.id), server.api_key)
    results = live.poll.results
    assert [(o.option_id, o.count) for o in results.options] == [("1", 0), ("2", 3), ("3", 0)]
    assert results.correct_count == 3
    assert {(a.identity, tuple(a.option_ids), a.correct) for a in results.answers} == {
        ("ann", ("2",), True),
        ("bob", ("2",), True),
        ("cat", ("2",), True),
    }

    # Bad answers: unknown option, too many, none.
    err = await expect_error(
        answer(server, ann, poll.id, "9"), grpc.StatusCode.INVALID_ARGUMENT, "POLL_OPTION_UNKNOWN"
    )
    assert violations(err) == {"option_ids[0]"}
    await expect_error(
        answer(server, ann, poll.id, "1", "2"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TOO_MANY_SELECTIONS",
    )
    await expect_error(
        call(server, "AnswerPoll", api.AnswerPollRequest(poll_id=poll.id), server.api_key),
        grpc.StatusCode.PERMISSION_DENIED,
    )

    closed = await call(server, "ClosePoll", api.ClosePollRequest(poll_id=poll.id), teacher.token)
    assert closed.poll.state == pb.POLL_STATE_CLOSED and closed.poll.HasField("close_time")
    again = await call(server, "ClosePoll", api.ClosePollRequest(poll_id=poll.id), server.api_key)
    assert again.poll.close_time == closed.poll.close_time  # idempotent
    await expect_error(
        answer(server, bob, poll.id, "1"), grpc.StatusCode.FAILED_PRECONDITION, "POLL_CLOSED"
    )
    # Once closed, learners see the answer key; results stay as data.
    final = await call(server, "GetPoll", api.GetPollRequest(poll_id=poll.id), bob.token)
    assert list(final.poll.correct_option_ids) == ["2"]
    assert [(o.option_id, o.count, o.correct) for o in final.poll.results.options][1] == (
        "2",
        3,
        True,
    )
    listed_polls = await call(
        server,
        "ListPolls",
        api.ListPollsRequest(session_id=session.id, states=[pb.POLL_STATE_CLOSED]),
        ann.token,
    )
    assert [p.id for p in listed_polls.polls] == [poll.id]

    # The event log carries the live results as data: who chose what, and the final counts.
    events = await watch(server, session.id, has("PollClosed"))
    polls = [e for e in events if "Poll" in e.type]
    assert types(polls) == ["PollCreated"] + ["PollAnswered"] * 4 + ["PollClosed"]
    answered = [e.session.poll_answered for e in polls[1:5]]
    assert [
        (a.identity, list(a.option_ids), a.replaced_previous, a.answer_count) for a in answered
    ] == [
        ("ann", ["1"], False, 1),
        ("bob", ["2"], False, 2),
        ("cat", ["2"], False, 3),
        ("ann", ["2"], True, 3),
    ]
    final_event = polls[-1].session.poll_closed
    assert final_event.reason == ev.PollClosed.REASON_REQUESTED
    assert [(o.option_id, o.count, o.correct) for o in final_event.options] == [
        ("1", 0, False),
        ("2", 3, True),
        ("3", 0, False),
    ]
    assert final_event.answer_count == 3 and final_event.correct_count == 3


async def test_anonymous_poll_hides_who_answered_and_timer_closes_it(server):
    session = await open_session(server)
    ann = await join(server, session.id, "ann")
    created = await call(
        server,
        "CreatePoll",
        api.CreatePollRequest(
            session_id=session.id,
            poll=pb.Poll(
                question="Pace?",
                options=[pb.PollOption(id="slow", text="Slow"), pb.PollOption(id="ok", text="OK")],
                anonymous=True,
                duration=duration_pb2.Duration(seconds=1),
            ),
        ),
        server.api_key,
    )
    poll = created.poll
    assert poll.HasField("close_time")
    await answer(server, ann, poll.id, "ok")
    events = await watch(server, session.id, has("PollClosed"))
    answered = next(e for e in events if e.type == EV + "PollAnswered").session.poll_answered
    assert answered.participant_id == "" and answered.identity == ""
    assert list(answered.option_ids) == ["ok"]
    closed = next(e for e in events if e.type == EV + "PollClosed")
    assert closed.session.poll_closed.reason == ev.PollClosed.REASON_TIMER_EXPIRED
    assert closed.actor.kind == common_pb2.Actor.KIND_SYSTEM
    fetched = await call(server, "GetPoll", api.GetPollRequest(poll_id=poll.id), server.api_key)
    assert fetched.poll.state == pb.POLL_STATE_CLOSED
    assert list(fetched.poll.results.answers) == []  # anonymous: never attributed


async def test_invalid_polls_report_every_field(server):
    session = await open_session(server)
    err = await expect_error(
        call(
            server,
            "CreatePoll",
            api.CreatePollRequest(session_id=session.id, poll=pb.Poll(question="")),
            server.api_key,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert violations(err) == {"poll.question", "poll.options"}
    err = await expect_error(
        call(
            server,
            "CreatePoll",
            api.CreatePollRequest(
                session_id=session.id,
                poll=pb.Poll(
                    question="Pick",
                    options=[pb.PollOption(id="a", text="A"), pb.PollOption(id="a", text="")],
                    correct_option_ids=["z"],
                    duration=duration_pb2.Duration(seconds=-5),
                ),
            ),
            server.api_key,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(err) == {
        "poll.options[1].id",
        "poll.options[1].text",
        "poll.correct_option_ids[0]",
        "poll.duration",
    }


# Breakouts --------------------------------------------------------------------------------------


async def test_breakout_round_trip(server):
    session = await open_session(server)
    await go_live(server, session.id)
    teacher = await join(server, session.id, "teacher", INSTRUCTOR)
    learners = [await join(server, session.id, f"learner-{i}") for i in range(5)]
    ids = [p.id for p in learners]

    await expect_error(
        call(
            server, "GetBreakouts", api.GetBreakoutsRequest(session_id=session.id), server.api_key
        ),
        grpc.StatusCode.NOT_FOUND,
        "BREAKOUTS_NOT_FOUND",
    )
    plan = pb.BreakoutPlan(
        split=pb.BreakoutPlan.Split(room_count=2, strategy=pb.BREAKOUT_SPLIT_STRATEGY_EVEN)
    )
    await expect_error(
        call(
            server,
            "CreateBreakouts",
            api.CreateBreakoutsRequest(session_id=session.id, plan=plan),
            learners[0].token,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "MISSING_PERMISSION",
    )
    request = api.CreateBreakoutsRequest(
        request_id=str(uuid.uuid4()), session_id=session.id, plan=plan
    )
    created = (await call(server, "CreateBreakouts", request, teacher.token)).breakouts
    replay = (await call(server, "CreateBreakouts", request, teacher.token)).breakouts
    assert replay == created  # request_id: one round, not two
    assert created.state == pb.BREAKOUTS_STATE_OPEN
    assert [r.name for r in created.rooms] == ["Room 1", "Room 2"]
    # Even split in join order: 3 and 2; the instructor stays in the main room.
    assert [list(r.participant_ids) for r in created.rooms] == [ids[:3], ids[3:]]
    room1, room2 = (r.session_id for r in created.rooms)
    child = await call(
        server, "GetSession", api.GetSessionRequest(session_id=room1), server.api_key
    )
    assert child.session.parent_session_id == session.id
    assert child.session.breakout_name == "Room 1"
    assert child.session.state == common_pb2.SESSION_STATE_LIVE
    await expect_error(
        call(
            server,
            "CreateBreakouts",
            api.CreateBreakoutsRequest(session_id=session.id, plan=plan),
            server.api_key,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "BREAKOUTS_ALREADY_OPEN",
    )

    # A participant in a room chats there: the token admits to the session's rooms.
    await send(server, learners[0].token, room1, "hi room 1")
    assert await listed(server, learners[3].token, room1) == ["hi room 1"]

    moved = await call(
        server,
        "MoveParticipant",
        api.MoveParticipantRequest(
            session_id=session.id, participant_id=ids[0], to_session_id=room2
        ),
        teacher.token,
    )
    assert [list(r.participant_ids) for r in moved.breakouts.rooms] == [
        ids[1:3],
        [*ids[3:], ids[0]],
    ]
    await expect_error(
        call(
            server,
            "MoveParticipant",
            api.MoveParticipantRequest(
                session_id=session.id, participant_id=ids[1], to_session_id="ses_nowhere"
            ),
            teacher.token,
        ),
        grpc.StatusCode.NOT_FOUND,
        "BREAKOUT_ROOM_NOT_FOUND",
    )
    await expect_error(
        call(
            server,
            "MoveParticipant",
            api.MoveParticipantRequest(
                session_id=session.id, participant_id=ids[1], to_session_id=room2
            ),
            learners[1].token,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    reached = await call(
        server,
        "BroadcastToBreakouts",
        api.BroadcastToBreakoutsRequest(session_id=session.id, text="Two minutes left"),
        server.api_key,
    )
    assert list(reached.session_ids) == [room1, room2]

    closing = await call(
        server,
        "CloseBreakouts",
        api.CloseBreakoutsRequest(
            session_id=session.id, countdown=duration_pb2.Duration(seconds=1)
        ),
        teacher.token,
    )
    assert closing.breakouts.state == pb.BREAKOUTS_STATE_CLOSING
    again = await call(
        server, "CloseBreakouts", api.CloseBreakoutsRequest(session_id=session.id), server.api_key
    )
    assert again.breakouts.close_time == closing.breakouts.close_time  # idempotent while closing

    events = await watch(server, session.id, has("BreakoutsClosed"))
    breakout = [e for e in events if "Breakout" in e.type]
    assert types(breakout) == (
        ["BreakoutsOpened"]
        + ["BreakoutParticipantMoved"] * 6
        + ["BreakoutBroadcast", "BreakoutsClosing", "BreakoutsClosed"]
    )
    seqs = [e.session_sequence for e in breakout]
    assert seqs == sorted(seqs)
    opened = breakout[0].session.breakouts_opened
    assert [list(r.participant_ids) for r in opened.rooms] == [ids[:3], ids[3:]]
    last_move = breakout[6].session.breakout_participant_moved
    assert (last_move.participant_id, last_move.from_session_id, last_move.to_session_id) == (
        ids[0],
        room1,
        room2,
    )
    assert breakout[8].session.breakouts_closing.countdown.seconds == 1
    assert list(breakout[9].session.breakouts_closed.session_ids) == [room1, room2]

    final = await call(
        server, "GetBreakouts", api.GetBreakoutsRequest(session_id=session.id), learners[2].token
    )
    assert final.breakouts.state == pb.BREAKOUTS_STATE_CLOSED
    ended = await call(
        server, "GetSession", api.GetSessionRequest(session_id=room2), server.api_key
    )
    assert ended.session.state == common_pb2.SESSION_STATE_ENDED
    assert ended.session.end_reason == ev.SESSION_END_REASON_BREAKOUTS_CLOSED
    # Each room has its own log: created, its chat, ended (breakout-wide events are the main
    # session's, which the connection delivers in every room).
    room_events = await watch(server, room1, has("SessionEnded"))
    assert types(room_events) == ["SessionCreated", "ChatMessagePosted", "SessionEnded"]
    assert room_events[-1].session.session_ended.reason == ev.SESSION_END_REASON_BREAKOUTS_CLOSED
    await expect_error(
        send(server, learners[1].token, room1, "anyone?"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_ENDED",
    )
    await expect_error(
        call(
            server,
            "BroadcastToBreakouts",
            api.BroadcastToBreakoutsRequest(session_id=session.id, text="late"),
            server.api_key,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "BREAKOUTS_NOT_OPEN",
    )


async def test_manual_breakouts_and_validation(server):
    session = await open_session(server)
    ann = await join(server, session.id, "ann")
    plan = pb.BreakoutPlan(
        manual=pb.BreakoutPlan.Manual(rooms=[pb.BreakoutRoom(name="A", participant_ids=[ann.id])])
    )
    # Breakouts need a live session.
    await expect_error(
        call(
            server,
            "CreateBreakouts",
            api.CreateBreakoutsRequest(session_id=session.id, plan=plan),
            server.api_key,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_NOT_LIVE",
    )
    await go_live(server, session.id)
    err = await expect_error(
        call(
            server,
            "CreateBreakouts",
            api.CreateBreakoutsRequest(
                session_id=session.id,
                plan=pb.BreakoutPlan(
                    manual=pb.BreakoutPlan.Manual(
                        rooms=[
                            pb.BreakoutRoom(name="", participant_ids=[ann.id]),
                            pb.BreakoutRoom(name="B", participant_ids=[ann.id]),
                        ]
                    ),
                    duration=duration_pb2.Duration(seconds=0),
                ),
            ),
            server.api_key,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(err) == {
        "plan.manual.rooms[0].name",
        "plan.manual.rooms[1].participant_ids[0]",
        "plan.duration",
    }
    err = await expect_error(
        call(
            server,
            "CreateBreakouts",
            api.CreateBreakoutsRequest(
                session_id=session.id,
                plan=pb.BreakoutPlan(split=pb.BreakoutPlan.Split(room_count=0, room_names=["x"])),
            ),
            server.api_key,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(err) == {"plan.split.room_count", "plan.split.room_names"}
    await expect_error(
        call(
            server,
            "CreateBreakouts",
            api.CreateBreakoutsRequest(
                session_id=session.id,
                plan=pb.BreakoutPlan(
                    manual=pb.BreakoutPlan.Manual(
                        rooms=[pb.BreakoutRoom(name="A", participant_ids=["par_nobody"])]
                    )
                ),
            ),
            server.api_key,
        ),
        grpc.StatusCode.NOT_FOUND,
        "PARTICIPANT_NOT_FOUND",
    )
    created = await call(
        server,
        "CreateBreakouts",
        api.CreateBreakoutsRequest(session_id=session.id, plan=plan),
        server.api_key,
    )
    room = created.breakouts.rooms[0]
    assert room.name == "A" and list(room.participant_ids) == [ann.id]
    # Moving back to the main room, then closing at once (zero countdown).
    back = await call(
        server,
        "MoveParticipant",
        api.MoveParticipantRequest(
            session_id=session.id, participant_id=ann.id, to_session_id=session.id
        ),
        server.api_key,
    )
    assert list(back.breakouts.rooms[0].participant_ids) == []
    closed = await call(
        server,
        "CloseBreakouts",
        api.CloseBreakoutsRequest(session_id=session.id, countdown=duration_pb2.Duration()),
        server.api_key,
    )
    assert closed.breakouts.state == pb.BREAKOUTS_STATE_CLOSED
    await expect_error(
        call(
            server,
            "CreateBreakouts",
            api.CreateBreakoutsRequest(session_id=room.session_id, plan=plan),
            server.api_key,
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_IS_BREAKOUT",
    )


# Tenancy ----------------------------------------------------------------------------------------


async def test_another_tenants_ids_are_not_found(server, other_key):
    session = await open_session(server)
    message = await send(server, server.api_key, session.id, "mine")
    poll = (
        await call(
            server,
            "CreatePoll",
            api.CreatePollRequest(session_id=session.id, poll=quiz()),
            server.api_key,
        )
    ).poll
    for method, request, reason in [
        ("GetHandQueue", api.GetHandQueueRequest(session_id=session.id), "SESSION_NOT_FOUND"),
        (
            "ListChatMessages",
            api.ListChatMessagesRequest(session_id=session.id),
            "SESSION_NOT_FOUND",
        ),
        (
            "SendChatMessage",
            api.SendChatMessageRequest(session_id=session.id, text="x", audience=EVERYONE),
            "SESSION_NOT_FOUND",
        ),
        (
            "DeleteChatMessage",
            api.DeleteChatMessageRequest(message_id=message.id),
            "CHAT_MESSAGE_NOT_FOUND",
        ),
        ("GetPoll", api.GetPollRequest(poll_id=poll.id), "POLL_NOT_FOUND"),
        ("ClosePoll", api.ClosePollRequest(poll_id=poll.id), "POLL_NOT_FOUND"),
        ("ListPolls", api.ListPollsRequest(session_id=session.id), "SESSION_NOT_FOUND"),
        ("GetBreakouts", api.GetBreakoutsRequest(session_id=session.id), "SESSION_NOT_FOUND"),
        (
            "CloseBreakouts",
            api.CloseBreakoutsRequest(session_id=session.id),
            "SESSION_NOT_FOUND",
        ),
    ]:
        await expect_error(
            call(server, method, request, other_key), grpc.StatusCode.NOT_FOUND, reason
        )
    # A participant token of another session is refused, as the contract says.
    elsewhere = await open_session(server)
    stranger = await join(server, elsewhere.id, "stranger")
    await expect_error(
        call(
            server, "GetHandQueue", api.GetHandQueueRequest(session_id=session.id), stranger.token
        ),
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_SESSION_MISMATCH",
    )
    await expect_error(
        call(server, "GetPoll", api.GetPollRequest(poll_id=poll.id), stranger.token),
        grpc.StatusCode.NOT_FOUND,
        "POLL_NOT_FOUND",
    )
