"""Guardians in live sessions over real gRPC: a guardian token is minted only for the wards the
roster links it to (RosterService.LinkGuardian) who belong to the session; a guardian joins
through Connect, observes, and may not act in the room."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from classwire.api.common.v1 import common_pb2
from classwire.api.events.v1 import session_events_pb2 as ev
from classwire.api.platform.v1 import service_pb2 as platform_api
from classwire.api.platform.v1 import service_pb2_grpc as platform_grpc
from classwire.api.roster.v1 import resources_pb2 as rpb
from classwire.api.roster.v1 import service_pb2 as rapi
from classwire.api.roster.v1 import service_pb2_grpc as roster_grpc
from classwire.api.session.v1 import resources_pb2 as pb
from classwire.api.session.v1 import service_pb2 as api
from classwire.api.session.v1 import service_pb2_grpc

INSTRUCTOR = common_pb2.PARTICIPANT_ROLE_INSTRUCTOR
LEARNER = common_pb2.PARTICIPANT_ROLE_LEARNER
GUARDIAN = common_pb2.PARTICIPANT_ROLE_GUARDIAN
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]
TIMEOUT = 15


def info_of(exc: grpc.aio.AioRpcError):
    """(ErrorInfo, BadRequest or None) from the rich status trailer."""
    info, bad = None, None
    for detail in rpc_status.from_call(exc).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
    return info, bad


async def expect_error(awaitable, code: grpc.StatusCode, reason: str):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    assert caught.value.code() == code, caught.value.details()
    info, _ = info_of(caught.value)
    assert info.reason == reason, info
    return caught.value


async def session_call(server, method, request, credential=None):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.SessionServiceStub(channel)
        metadata = (("authorization", f"Bearer {credential or server.api_key}"),)
        return await getattr(stub, method)(request, metadata=metadata)


async def roster_call(server, method, request, credential=None):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = roster_grpc.RosterServiceStub(channel)
        metadata = (("authorization", f"Bearer {credential or server.api_key}"),)
        return await getattr(stub, method)(request, metadata=metadata)


def tag() -> str:
    return uuid.uuid4().hex[:10]


async def person(server, role, credential=None) -> rpb.Person:
    # external_id is the embedding product's user id: the identity its tokens are minted for.
    request = rapi.CreatePersonRequest(
        person=rpb.Person(roles=[role], given_name="Sam", external_id=f"user-{tag()}")
    )
    return (await roster_call(server, "CreatePerson", request, credential)).person


async def link(server, learner: rpb.Person, guardian: rpb.Person, credential=None) -> None:
    request = rapi.LinkGuardianRequest(
        link=rpb.GuardianLink(
            learner_id=learner.id,
            guardian_id=guardian.id,
            relationship=rpb.GUARDIAN_RELATIONSHIP_PARENT,
        )
    )
    await roster_call(server, "LinkGuardian", request, credential)


async def family(server, credential=None) -> tuple[rpb.Person, rpb.Person]:
    """A learner and a guardian linked to it."""
    learner = await person(server, rpb.PERSON_ROLE_LEARNER, credential)
    guardian = await person(server, rpb.PERSON_ROLE_GUARDIAN, credential)
    await link(server, learner, guardian, credential)
    return learner, guardian


async def roster_class(server) -> rpb.Class:
    org = (
        await roster_call(
            server,
            "CreateOrg",
            rapi.CreateOrgRequest(org=rpb.Org(name="North", type=rpb.ORG_TYPE_SCHOOL)),
        )
    ).org
    course = (
        await roster_call(
            server,
            "CreateCourse",
            rapi.CreateCourseRequest(course=rpb.Course(title="Algebra", org_id=org.id)),
        )
    ).course
    return (
        await roster_call(
            server,
            "CreateClass",
            rapi.CreateClassRequest(course_class=rpb.Class(course_id=course.id, title="Algebra A")),
        )
    ).course_class


async def enroll(server, learner: rpb.Person, course_class: rpb.Class) -> None:
    request = rapi.CreateEnrollmentRequest(
        enrollment=rpb.Enrollment(
            person_id=learner.id, class_id=course_class.id, role=rpb.ENROLLMENT_ROLE_LEARNER
        )
    )
    await roster_call(server, "CreateEnrollment", request)


async def open_session(server, class_id: str = "") -> pb.Session:
    start = datetime.now(UTC) + timedelta(minutes=1)
    stamps = [timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()]
    stamps[0].FromDatetime(start)
    stamps[1].FromDatetime(start + timedelta(hours=1))
    session = pb.Session(
        title="Algebra live",
        class_id=class_id,
        scheduled_start_time=stamps[0],
        scheduled_end_time=stamps[1],
        settings=pb.SessionSettings(learners_join_before_instructor=True),
    )
    return (
        await session_call(server, "CreateSession", api.CreateSessionRequest(session=session))
    ).session


async def token(server, session_id, identity, role=LEARNER, wards=()):
    request = api.CreateJoinTokenRequest(
        session_id=session_id,
        identity=identity,
        display_name="Someone",
        role=role,
        guardian_of_identities=list(wards),
    )
    return await session_call(server, "CreateJoinToken", request)


class Connection:
    """A participant's Connect stream: every message is kept, in order, for the assertions."""

    def __init__(self, server, credential: str) -> None:
        self.server = server
        self.credential = credential
        self.received: list[api.ConnectResponse] = []
        self.seen = 0

    async def __aenter__(self) -> Connection:
        self.channel = grpc.aio.insecure_channel(self.server.address)
        self.outgoing: asyncio.Queue = asyncio.Queue()
        self.outgoing.put_nowait(api.ConnectRequest(join=api.ConnectRequest.Join()))
        self.call = service_pb2_grpc.SessionServiceStub(self.channel).Connect(
            self._requests(), metadata=(("authorization", f"Bearer {self.credential}"),)
        )
        self.responses = self.call.__aiter__()
        self.joined = (await self.next(lambda m: m.WhichOneof("message") == "joined")).joined
        return self

    async def _requests(self):
        while (item := await self.outgoing.get()) is not None:
            yield item

    async def next(self, predicate) -> api.ConnectResponse:
        async with asyncio.timeout(TIMEOUT):
            while True:
                message = await self.responses.__anext__()
                self.received.append(message)
                if predicate(message):
                    return message

    async def event(self, payload: str, predicate=lambda p: True):
        def match(m):
            return (
                m.WhichOneof("message") == "event"
                and m.event.session.WhichOneof("payload") == payload
                and predicate(getattr(m.event.session, payload))
            )

        return getattr((await self.next(match)).event.session, payload)

    def events(self, payload: str) -> list:
        return [
            getattr(m.event.session, payload)
            for m in self.received
            if m.WhichOneof("message") == "event"
            and m.event.session.WhichOneof("payload") == payload
        ]

    async def act(self, **action) -> api.ConnectResponse:
        action_id = uuid.uuid4().hex
        self.outgoing.put_nowait(api.ConnectRequest(action_id=action_id, **action))
        return await self.next(
            lambda m: m.action_id == action_id and m.WhichOneof("message") in ("ack", "error")
        )

    async def __aexit__(self, *exc) -> None:
        self.outgoing.put_nowait(api.ConnectRequest(leave=api.ConnectRequest.Leave()))
        try:
            await self.next(lambda m: m.WhichOneof("message") == "disconnect")
        finally:
            self.outgoing.put_nowait(None)
            await self.channel.close()


def refused(answer: api.ConnectResponse, permission: int) -> bool:
    error = answer.error
    return (
        answer.WhichOneof("message") == "error"
        and error.code == PERMISSION_DENIED
        and error.reason == "MISSING_PERMISSION"
        and error.metadata["permission"] == ev.ParticipantPermission.Name(permission)
    )


async def test_guardian_of_an_enrolled_learner_observes_only(server):
    course_class = await roster_class(server)
    kid, parent = await family(server)
    classmate = await person(server, rpb.PERSON_ROLE_LEARNER)
    for learner in (kid, classmate):
        await enroll(server, learner, course_class)
    session = await open_session(server, course_class.id)

    issued = await token(server, session.id, parent.external_id, GUARDIAN, [kid.external_id])
    got = await session_call(
        server,
        "GetParticipant",
        api.GetParticipantRequest(session_id=session.id, participant_id=issued.participant_id),
    )
    guardian = got.participant
    assert guardian.role == GUARDIAN and list(guardian.guardian_of_identities) == [kid.external_id]
    assert list(guardian.permissions) == []  # observes only, not even reactions
    # The roster's own ids name the same people (for products that use them as user ids).
    by_id = await token(server, session.id, parent.id, GUARDIAN, [kid.id])
    assert by_id.participant_id != issued.participant_id

    teacher = await token(server, session.id, f"teacher-{tag()}", INSTRUCTOR)
    kid_token = await token(server, session.id, kid.external_id)
    mate_token = await token(server, session.id, classmate.external_id)
    async with (
        Connection(server, teacher.token) as teacher_conn,
        Connection(server, kid_token.token) as kid_conn,
        Connection(server, mate_token.token) as mate_conn,
        Connection(server, issued.token) as parent_conn,
    ):
        local = parent_conn.joined.snapshot.local_participant
        assert local.role == GUARDIAN and list(local.guardian_of_identities) == [kid.external_id]
        assert parent_conn.joined.snapshot.session.state == common_pb2.SESSION_STATE_LIVE

        # Chat: the room's messages reach the guardian, private ones to the instructors don't.
        private = await kid_conn.act(
            send_chat=api.ConnectRequest.SendChat(
                text="I am stuck", audience=ev.CHAT_AUDIENCE_INSTRUCTORS
            )
        )
        public = await kid_conn.act(
            send_chat=api.ConnectRequest.SendChat(
                text="Hello all", audience=ev.CHAT_AUDIENCE_EVERYONE
            )
        )
        assert private.WhichOneof("message") == public.WhichOneof("message") == "ack"
        posted = await parent_conn.event("chat_message_posted")
        assert posted.text == "Hello all" and len(parent_conn.events("chat_message_posted")) == 1

        # A guardian may not act in the room: each action is refused with its permission.
        for permission, action in (
            (
                ev.PARTICIPANT_PERMISSION_CHAT,
                {"send_chat": api.ConnectRequest.SendChat(text="Hi", audience=1)},
            ),
            (ev.PARTICIPANT_PERMISSION_RAISE_HAND, {"raise_hand": api.ConnectRequest.RaiseHand()}),
            (ev.PARTICIPANT_PERMISSION_REACT, {"react": api.ConnectRequest.React(emoji="👍")}),
            (
                ev.PARTICIPANT_PERMISSION_MODERATE,
                {"set_room_lock": api.ConnectRequest.SetRoomLock(locked=True)},
            ),
        ):
            answer = await parent_conn.act(**action)
            assert refused(answer, permission), answer

        # Poll answers: the ward's as a learner sees it, a classmate's without who or what.
        poll = (
            await session_call(
                server,
                "CreatePoll",
                api.CreatePollRequest(
                    session_id=session.id,
                    poll=pb.Poll(
                        question="2 + 2?",
                        options=[pb.PollOption(text="4"), pb.PollOption(text="5")],
                    ),
                ),
            )
        ).poll
        answer = await parent_conn.act(
            answer_poll=api.ConnectRequest.AnswerPoll(poll_id=poll.id, option_ids=["1"])
        )
        assert refused(answer, ev.PARTICIPANT_PERMISSION_ANSWER_POLLS), answer
        for conn, option in ((kid_conn, "1"), (mate_conn, "2")):
            done = await conn.act(
                answer_poll=api.ConnectRequest.AnswerPoll(poll_id=poll.id, option_ids=[option])
            )
            assert done.WhichOneof("message") == "ack", done
        await parent_conn.event("poll_answered", lambda a: a.answer_count == 2)
        answers = parent_conn.events("poll_answered")
        assert [(a.identity, list(a.option_ids)) for a in answers] == [
            (kid.external_id, ["1"]),
            ("", []),
        ]
        assert not answers[1].participant_id
        # A learner of the class still sees its classmate's answer as before.
        seen = await teacher_conn.event("poll_answered", lambda a: a.answer_count == 2)
        assert seen.identity == classmate.external_id


async def test_guardian_tokens_need_guardianship_of_learners_in_the_session(server):
    course_class = await roster_class(server)
    kid, parent = await family(server)
    other_kid, other_parent = await family(server)
    await enroll(server, kid, course_class)
    await enroll(server, other_kid, course_class)
    session = await open_session(server, course_class.id)

    # The guardian of another learner is refused, naming the learner.
    error = await expect_error(
        token(server, session.id, other_parent.external_id, GUARDIAN, [kid.external_id]),
        grpc.StatusCode.FAILED_PRECONDITION,
        "GUARDIANSHIP_NOT_FOUND",
    )
    info, _ = info_of(error)
    assert info.metadata["learner_identity"] == kid.external_id
    assert info.metadata["guardian_identity"] == other_parent.external_id
    # Every ward must be the guardian's: one of two is not enough.
    error = await expect_error(
        token(
            server,
            session.id,
            parent.external_id,
            GUARDIAN,
            [kid.external_id, other_kid.external_id],
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "GUARDIANSHIP_NOT_FOUND",
    )
    assert info_of(error)[0].metadata["learner_identity"] == other_kid.external_id
    # An identity the roster does not know.
    await expect_error(
        token(server, session.id, f"stranger-{tag()}", GUARDIAN, [kid.external_id]),
        grpc.StatusCode.FAILED_PRECONDITION,
        "GUARDIANSHIP_NOT_FOUND",
    )

    # Without a class, the ward must be a participant (invited or joined) of the session.
    classless = await open_session(server)
    await expect_error(
        token(server, classless.id, parent.external_id, GUARDIAN, [kid.external_id]),
        grpc.StatusCode.FAILED_PRECONDITION,
        "GUARDIANSHIP_NOT_FOUND",
    )
    await token(server, classless.id, kid.external_id)
    issued = await token(server, classless.id, parent.external_id, GUARDIAN, [kid.external_id])
    assert issued.token

    # Bad input is reported at once, with the request's field paths.
    error = await expect_error(
        token(
            server,
            session.id,
            parent.external_id,
            GUARDIAN,
            [kid.external_id, kid.external_id, parent.external_id],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
    )
    assert {v.field for v in info_of(error)[1].field_violations} == {
        "guardian_of_identities[1]",
        "guardian_of_identities[2]",
    }


async def test_another_tenants_guardianship_does_not_count(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        other = await platform_grpc.PlatformServiceStub(channel).CreateTenant(
            platform_api.CreateTenantRequest(display_name="Other school"),
            metadata=(("authorization", f"Bearer {server.api_key}"),),
        )
    kid, parent = await family(server, other.admin_api_key_secret)
    session = await open_session(server)
    await token(server, session.id, kid.external_id)
    for guardian, ward in ((parent.external_id, kid.external_id), (parent.id, kid.id)):
        await expect_error(
            token(server, session.id, guardian, GUARDIAN, [ward]),
            grpc.StatusCode.FAILED_PRECONDITION,
            "GUARDIANSHIP_NOT_FOUND",
        )
