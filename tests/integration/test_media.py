"""The media plane over real WebRTC (aiortc participants) and the real server: publishing,
automatic subscription, server-side mute, malformed SDP, permissions, tenant isolation and the
MediaService List RPCs."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from support.webrtc_client import ActionFailedError, WebRtcParticipant

from classwire.api.common.v1 import common_pb2
from classwire.api.media.v1 import resources_pb2 as media_pb
from classwire.api.media.v1 import service_pb2 as media_api
from classwire.api.media.v1 import service_pb2_grpc as media_grpc
from classwire.api.session.v1 import resources_pb2 as pb
from classwire.api.session.v1 import service_pb2 as api
from classwire.api.session.v1 import service_pb2_grpc
from classwire.server.domain.platform import TenantSettings

INSTRUCTOR = common_pb2.PARTICIPANT_ROLE_INSTRUCTOR
LEARNER = common_pb2.PARTICIPANT_ROLE_LEARNER
OBSERVER = common_pb2.PARTICIPANT_ROLE_OBSERVER
MICROPHONE = common_pb2.TRACK_SOURCE_MICROPHONE
CAMERA = common_pb2.TRACK_SOURCE_CAMERA


@pytest.fixture(autouse=True)
def _needs_media(server):
    if not server.server.platform.media.available:
        pytest.skip("no media backend installed")


def auth(credential: str):
    return (("authorization", f"Bearer {credential}"),)


def reason_of(exc: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(exc)
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


async def session_rpc(server, method: str, request, credential: str | None = None):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = service_pb2_grpc.SessionServiceStub(channel)
        return await getattr(stub, method)(request, metadata=auth(credential or server.api_key))


async def media_rpc(server, method: str, request, credential: str | None = None):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = media_grpc.MediaServiceStub(channel)
        return await getattr(stub, method)(request, metadata=auth(credential or server.api_key))


async def open_session(server) -> pb.Session:
    start = datetime.now(UTC) + timedelta(seconds=60)
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(start)
    end = timestamp_pb2.Timestamp()
    end.FromDatetime(start + timedelta(hours=1))
    response = await session_rpc(
        server,
        "CreateSession",
        api.CreateSessionRequest(
            session=pb.Session(title="Media", scheduled_start_time=stamp, scheduled_end_time=end)
        ),
    )
    return response.session


async def join_token(server, session_id: str, identity: str, role=LEARNER) -> str:
    response = await session_rpc(
        server,
        "CreateJoinToken",
        api.CreateJoinTokenRequest(
            session_id=session_id, identity=identity, display_name=identity.title(), role=role
        ),
    )
    return response.token


@contextlib.asynccontextmanager
async def participants(server, session_id: str, *people, **options):
    """WebRtcParticipants for (identity, role) pairs, joined in order and closed at the end."""
    joined = []
    try:
        for identity, role in people:
            token = await join_token(server, session_id, identity, role)
            client = WebRtcParticipant(server.address, token, **options)
            await client.join()
            joined.append(client)
        yield joined
    finally:
        for client in joined:
            with contextlib.suppress(Exception):
                await client.close()


async def test_publish_auto_subscribe_and_list(server):
    session = await open_session(server)
    async with participants(
        server, session.id, ("teacher", INSTRUCTOR), ("ann", LEARNER), ("ben", LEARNER)
    ) as (teacher, ann, ben):
        audio = await teacher.publish(AudioStreamTrack(), MICROPHONE, name="mic")
        video = await teacher.publish(VideoStreamTrack(), CAMERA, width=640, height=480)
        assert audio.state == media_pb.TRACK_STATE_PUBLISHED
        assert audio.mime_type.lower() == "audio/opus" and video.mime_type.lower() == "video/vp8"
        assert audio.participant_id == teacher.joined.participant_id
        assert (video.width, video.height) == (640, 480)
        for learner in (ann, ben):
            await learner.wait_for_tracks(audio=1, video=1)
            published = await learner.wait_for_event("TrackPublished")
            assert published.session_id == session.id
        # Media really flows: decoded video frames reach a learner.
        await ann.wait_for(lambda: len(ann.received("video")[0].frames) >= 5, timeout=20)

        # A late joiner sees the tracks in its snapshot and is subscribed automatically.
        async with participants(server, session.id, ("cat", LEARNER)) as (cat,):
            listed = {p.id: p for p in cat.joined.snapshot.participants}
            teacher_tracks = listed[teacher.joined.participant_id].tracks
            assert {t.id for t in teacher_tracks} == {audio.id, video.id}
            await cat.wait_for_tracks(audio=1, video=1)

        first = await media_rpc(
            server, "ListTracks", media_api.ListTracksRequest(session_id=session.id, page_size=1)
        )
        assert len(first.tracks) == 1 and first.next_page_token
        second = await media_rpc(
            server,
            "ListTracks",
            media_api.ListTracksRequest(
                session_id=session.id, page_size=1, page_token=first.next_page_token
            ),
        )
        assert {first.tracks[0].id, second.tracks[0].id} == {audio.id, video.id}
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await media_rpc(
                server,
                "ListTracks",
                media_api.ListTracksRequest(
                    session_id=session.id,
                    participant_id="someone",
                    page_token=first.next_page_token,
                ),
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        subs = await media_rpc(
            server,
            "ListSubscriptions",
            media_api.ListSubscriptionsRequest(session_id=session.id, track_id=audio.id),
        )
        subscribers = {s.subscriber_participant_id for s in subs.subscriptions}
        assert {ann.joined.participant_id, ben.joined.participant_id} <= subscribers
        assert all(s.automatic for s in subs.subscriptions)
        got = await media_rpc(server, "GetTrack", media_api.GetTrackRequest(track_id=audio.id))
        assert got.track.subscriber_count >= 2

        # A participant token of this session may read the tracks too.
        ann_token = await join_token(server, session.id, "ann")
        listed = await media_rpc(
            server, "ListTracks", media_api.ListTracksRequest(session_id=session.id), ann_token
        )
        assert len(listed.tracks) == 2


async def test_selective_subscription(server):
    session = await open_session(server)
    async with participants(server, session.id, ("teacher", INSTRUCTOR)) as (teacher,):
        audio = await teacher.publish(AudioStreamTrack(), MICROPHONE)
        async with participants(server, session.id, ("dan", LEARNER), manual_subscription=True) as (
            dan,
        ):
            await asyncio.sleep(1.0)
            assert dan.received("audio") == []
            await dan.act(subscribe=api.ConnectRequest.Subscribe(track_ids=[audio.id]))
            await dan.wait_for_tracks(audio=1)
            await dan.act(unsubscribe=api.ConnectRequest.Unsubscribe(track_ids=[audio.id]))
            subs = await media_rpc(
                server,
                "ListSubscriptions",
                media_api.ListSubscriptionsRequest(
                    session_id=session.id, subscriber_participant_id=dan.joined.participant_id
                ),
            )
            assert list(subs.subscriptions) == []
            with pytest.raises(ActionFailedError) as failed:
                await dan.act(subscribe=api.ConnectRequest.Subscribe(track_ids=["trk_nope"]))
            assert failed.value.reason == "TRACK_NOT_FOUND"


async def test_mute_track(server):
    session = await open_session(server)
    async with participants(server, session.id, ("teacher", INSTRUCTOR), ("eve", LEARNER)) as (
        teacher,
        eve,
    ):
        mine = await eve.publish(AudioStreamTrack(), MICROPHONE)
        theirs = await teacher.publish(AudioStreamTrack(), MICROPHONE)
        # A learner may not mute someone else's track.
        with pytest.raises(ActionFailedError) as denied:
            await eve.act(mute_track=api.ConnectRequest.MuteTrack(track_id=theirs.id))
        assert denied.value.reason == "MISSING_PERMISSION"

        muted = await media_rpc(server, "MuteTrack", media_api.MuteTrackRequest(track_id=mine.id))
        assert muted.track.muted
        assert muted.track.muted_by.kind == common_pb2.Actor.KIND_API_KEY
        event = await eve.wait_for_event("TrackMuted")
        assert event.media.track_muted.track_id == mine.id
        again = await media_rpc(server, "MuteTrack", media_api.MuteTrackRequest(track_id=mine.id))
        assert again.track.muted  # idempotent

        # Only the publisher unmutes; a moderator's mute of its track is lifted by it.
        with pytest.raises(ActionFailedError) as not_owner:
            await teacher.act(unmute_track=api.ConnectRequest.UnmuteTrack(track_id=mine.id))
        assert not_owner.value.reason == "NOT_TRACK_OWNER"
        await eve.act(unmute_track=api.ConnectRequest.UnmuteTrack(track_id=mine.id))
        await teacher.wait_for_event("TrackUnmuted")
        got = await media_rpc(server, "GetTrack", media_api.GetTrackRequest(track_id=mine.id))
        assert not got.track.muted

        # The instructor (MODERATE) mutes the learner over the connection.
        await teacher.act(mute_track=api.ConnectRequest.MuteTrack(track_id=mine.id))
        got = await media_rpc(server, "GetTrack", media_api.GetTrackRequest(track_id=mine.id))
        assert got.track.muted

        # A learner's participant token cannot use MuteTrack (needs MODERATE).
        eve_token = await join_token(server, session.id, "eve")
        with pytest.raises(grpc.aio.AioRpcError) as rpc_denied:
            await media_rpc(
                server, "MuteTrack", media_api.MuteTrackRequest(track_id=theirs.id), eve_token
            )
        assert rpc_denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_malformed_sdp_affects_only_that_action(server):
    session = await open_session(server)
    async with participants(
        server, session.id, ("teacher", INSTRUCTOR), ("fay", LEARNER), ("gus", LEARNER)
    ) as (teacher, fay, gus):
        for sdp in ("not sdp at all", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF\r\n"):
            with pytest.raises(ActionFailedError) as failed:
                await fay.send_offer_sdp(sdp)
            assert failed.value.reason in ("SDP_INVALID", "CODEC_UNSUPPORTED")
            assert failed.value.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert failed.value.error.field_violations
        with pytest.raises(ActionFailedError) as wrong_type:
            await fay.act(
                session_description=media_pb.SessionDescription(
                    target=media_pb.PEER_CONNECTION_ROLE_SUBSCRIBER,
                    type=media_pb.SessionDescription.TYPE_OFFER,
                    sdp="v=0\r\n",
                )
            )
        assert wrong_type.value.error.field_violations[0].field == "session_description.type"
        # The session goes on for everyone, the sender included.
        await teacher.publish(AudioStreamTrack(), MICROPHONE)
        await gus.wait_for_tracks(audio=1)
        await fay.wait_for_tracks(audio=1)
        await fay.publish(AudioStreamTrack(), MICROPHONE)
        await gus.wait_for_tracks(audio=2)


async def test_publish_needs_permission_and_a_known_codec(server):
    session = await open_session(server)
    async with participants(server, session.id, ("teacher", INSTRUCTOR), ("obi", OBSERVER)) as (
        teacher,
        obi,
    ):
        with pytest.raises(ActionFailedError) as denied:
            await obi.publish(AudioStreamTrack(), MICROPHONE)
        assert denied.value.reason == "MISSING_PERMISSION"
        assert denied.value.error.metadata["permission"] == "PARTICIPANT_PERMISSION_PUBLISH_AUDIO"
        with pytest.raises(ActionFailedError) as codec:
            await teacher.act(
                publish_track=media_pb.TrackPublication(
                    client_track_id="x", source=CAMERA, preferred_mime_types=["video/AV2"]
                )
            )
        assert codec.value.reason == "CODEC_UNSUPPORTED"
        with pytest.raises(ActionFailedError) as invalid:
            await teacher.act(publish_track=media_pb.TrackPublication(client_track_id=""))
        fields = {v.field for v in invalid.value.error.field_violations}
        assert fields == {"publish_track.client_track_id", "publish_track.source"}
        listed = await media_rpc(
            server, "ListTracks", media_api.ListTracksRequest(session_id=session.id)
        )
        assert list(listed.tracks) == []  # the observer's track was never registered


async def test_other_tenants_see_nothing(server):
    session = await open_session(server)
    async with participants(server, session.id, ("teacher", INSTRUCTOR)) as (teacher,):
        audio = await teacher.publish(AudioStreamTrack(), MICROPHONE)
        other = await server.server.platform.platform.create_tenant(
            None, "other tenant", TenantSettings(), operator=True
        )
        for method, request in (
            ("GetTrack", media_api.GetTrackRequest(track_id=audio.id)),
            ("MuteTrack", media_api.MuteTrackRequest(track_id=audio.id)),
            ("ListTracks", media_api.ListTracksRequest(session_id=session.id)),
            ("GetTalkTime", media_api.GetTalkTimeRequest(session_id=session.id)),
            ("GetMediaStats", media_api.GetMediaStatsRequest(session_id=session.id)),
            ("ListQualitySamples", media_api.ListQualitySamplesRequest(session_id=session.id)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await media_rpc(server, method, request, other.secret)
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND, method
        got = await media_rpc(server, "GetTrack", media_api.GetTrackRequest(track_id=audio.id))
        assert not got.track.muted


async def test_quality_samples_and_stats(server):
    session = await open_session(server)
    media = server.server.platform.media
    async with participants(server, session.id, ("teacher", INSTRUCTOR), ("hal", LEARNER)) as (
        teacher,
        hal,
    ):
        await teacher.publish(VideoStreamTrack(), CAMERA)
        await hal.wait_for_tracks(video=1)
        await hal.wait_for(lambda: len(hal.received("video")[0].frames) >= 10, timeout=20)
        # One sampling round now rather than waiting for the periodic one.
        recorded = await media.sample_quality(session.id, 1.0)
        assert recorded >= 1
        page = await media_rpc(
            server,
            "ListQualitySamples",
            media_api.ListQualitySamplesRequest(session_id=session.id, page_size=500),
        )
        # The periodic sampler may have added its own round meanwhile.
        assert len(page.samples) >= recorded
        assert all(0.0 <= s.packet_loss_ratio <= 1.0 for s in page.samples)
        mine = [s for s in page.samples if s.participant_id == teacher.joined.participant_id]
        assert mine, "the publisher has an upstream sample"
        # A participant sees only its own quality samples pushed.
        await hal.wait_for(lambda: True)
        for event in hal.events:
            if event.type.endswith("QualitySampleRecorded"):
                assert (
                    event.media.quality_sample_recorded.participant_id == hal.joined.participant_id
                )
        stats = await media_rpc(
            server, "GetMediaStats", media_api.GetMediaStatsRequest(session_id=session.id)
        )
        assert stats.stats.published_track_count == 1
        assert stats.stats.subscription_count >= 1
        by_id = {p.participant_id: p for p in stats.stats.participants}
        assert by_id[teacher.joined.participant_id].published_track_count == 1
        assert by_id[hal.joined.participant_id].subscribed_track_count == 1
