"""Transcription on the participant connection: the start_transcription / stop_transcription
actions (MANAGE_MEDIA), and a learner admitted by someone else's join keeping its connection
(the push path captions travel on)."""

from __future__ import annotations

import grpc
from integration.test_classroom import go_live
from integration.test_connect import INSTRUCTOR, join, open_session, rpc

from classwire.api.common.v1 import common_pb2
from classwire.api.events.v1 import session_events_pb2 as ev
from classwire.api.media.v1 import resources_pb2 as media_pb
from classwire.api.media.v1 import service_pb2 as media_api
from classwire.api.media.v1 import service_pb2_grpc as media_grpc
from classwire.api.session.v1 import resources_pb2 as pb
from classwire.api.session.v1 import service_pb2 as api

INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]


async def transcription_status(server, session_id: str) -> media_pb.TranscriptionStatus:
    async with grpc.aio.insecure_channel(server.address) as channel:
        response = await media_grpc.MediaServiceStub(channel).GetTranscriptionStatus(
            media_api.GetTranscriptionStatusRequest(session_id=session_id),
            metadata=(("authorization", f"Bearer {server.api_key}"),),
        )
    return response.status


async def chat_reaches(sender, receiver, text: str) -> None:
    sender.send(
        action_id=f"chat-{text}",
        send_chat=api.ConnectRequest.SendChat(text=text, audience=ev.CHAT_AUDIENCE_EVERYONE),
    )
    await receiver.event("chat_message_posted", lambda p: p.text == text)


async def test_learners_admitted_by_someone_else_keep_their_connection(server):
    """A ParticipantJoined about a learner written by whoever admitted it (the first instructor
    in, a moderator on its own connection) is not another connection taking the learner over."""
    session = await open_session(server)  # learners wait for the instructor
    kid = await join(server, session.id, "held-kid")
    assert kid.joined.snapshot.local_participant.state == pb.PARTICIPANT_STATE_WAITING
    host = await join(server, session.id, "teacher", INSTRUCTOR)
    late = None
    try:
        await kid.next("room_entered")
        await chat_reaches(host, kid, "still-there")
        assert not [m for m in kid.received if m.WhichOneof("message") == "disconnect"]

        await rpc(
            server,
            "UpdateSession",
            api.UpdateSessionRequest(
                session=pb.Session(id=session.id, settings=pb.SessionSettings(waiting_room=True)),
                update_mask={"paths": ["settings.waiting_room"]},
            ),
        )
        late = await join(server, session.id, "late-kid")
        waiting = await host.event("participant_waiting", lambda e: e.identity == "late-kid")
        host.send(
            action_id="ok", admit=api.ConnectRequest.Admit(participant_id=waiting.participant_id)
        )
        assert (await host.answer("ok")).WhichOneof("message") == "ack"
        await late.next("room_entered")
        await chat_reaches(host, late, "welcome")
        await chat_reaches(late, kid, "hello")
        for client in (kid, late):
            assert not [m for m in client.received if m.WhichOneof("message") == "disconnect"]
    finally:
        for client in (kid, host, late):
            if client is not None:
                await client.close()


async def test_connect_starts_and_stops_transcription_with_manage_media(server):
    session = await open_session(server)
    await go_live(server, session.id)
    host = await join(server, session.id, "teacher", INSTRUCTOR)
    kid = await join(server, session.id, "kid")
    try:
        # A learner has no MANAGE_MEDIA.
        kid.send(action_id="k1", start_transcription=api.ConnectRequest.StartTranscription())
        refused = (await kid.answer("k1")).error
        assert (refused.code, refused.reason) == (PERMISSION_DENIED, "MISSING_PERMISSION")
        kid.send(action_id="k2", stop_transcription=api.ConnectRequest.StopTranscription())
        assert (await kid.answer("k2")).error.reason == "MISSING_PERMISSION"

        # Bad options name their field within the action.
        host.send(
            action_id="h0",
            start_transcription=api.ConnectRequest.StartTranscription(
                options=media_pb.TranscriptionOptions(engine="no-such-engine")
            ),
        )
        bad = (await host.answer("h0")).error
        assert bad.code == INVALID_ARGUMENT
        assert [v.field for v in bad.field_violations] == ["start_transcription.options.engine"]
        host.send(
            action_id="h0b",
            start_transcription=api.ConnectRequest.StartTranscription(
                options=media_pb.TranscriptionOptions(language="not a language")
            ),
        )
        bad = (await host.answer("h0b")).error
        assert [v.field for v in bad.field_violations] == ["start_transcription.options.language"]
        assert (await transcription_status(server, session.id)).state == (
            media_pb.TRANSCRIPTION_STATE_STOPPED
        )

        host.send(
            action_id="h1",
            start_transcription=api.ConnectRequest.StartTranscription(
                options=media_pb.TranscriptionOptions(language="en")
            ),
        )
        assert (await host.answer("h1")).WhichOneof("message") == "ack"
        status = await transcription_status(server, session.id)
        assert status.state == media_pb.TRANSCRIPTION_STATE_RUNNING
        assert status.options.language == "en-US"
        assert status.started_by.kind == common_pb2.Actor.KIND_PARTICIPANT
        assert status.started_by.id == host.participant_id
        # Participants of the room see it start.
        started = await kid.next("event", lambda m: m.event.type.endswith(".TranscriptionStarted"))
        assert started.event.media.transcription_started.language == "en-US"

        host.send(action_id="h2", stop_transcription=api.ConnectRequest.StopTranscription())
        assert (await host.answer("h2")).WhichOneof("message") == "ack"
        assert (await transcription_status(server, session.id)).state == (
            media_pb.TRANSCRIPTION_STATE_STOPPED
        )
        await kid.next("event", lambda m: m.event.type.endswith(".TranscriptionStopped"))
        # Stopping again is harmless.
        host.send(action_id="h3", stop_transcription=api.ConnectRequest.StopTranscription())
        assert (await host.answer("h3")).WhichOneof("message") == "ack"
    finally:
        for client in (host, kid):
            await client.close()
