"""Usage metering over real gRPC: a session is recorded (twice, the second recording then
deleted) and transcribed (Festival speech through the real PocketSphinx engine), and GetUsage
reports recording and transcription minutes close to what really happened, on the day it
happened, and nothing for another tenant."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from support import speech
from test_classroom import INSTRUCTOR, go_live, join, open_session
from test_transcription import SENTENCES, Track, frames_48k_stereo

from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.data.v1 import service_pb2_grpc as data_grpc
from classwire.api.media.v1 import resources_pb2 as media_pb
from classwire.api.media.v1 import service_pb2 as media_api
from classwire.api.media.v1 import service_pb2_grpc as media_grpc
from classwire.api.platform.v1 import service_pb2 as platform_api
from classwire.api.platform.v1 import service_pb2_grpc as platform_grpc

READY = media_pb.RECORDING_STATE_READY
# Timestamps cross the wire with microseconds; minutes compared with this slack.
SLACK_MINUTES = 0.001


def _metadata(key: str):
    return (("authorization", f"Bearer {key}"),)


async def _tenant(server):
    """A fresh tenant (nothing else metered on it), as a RunningServer whose key is its admin."""
    async with grpc.aio.insecure_channel(server.address) as channel:
        created = await platform_grpc.PlatformServiceStub(channel).CreateTenant(
            platform_api.CreateTenantRequest(display_name="Metered school"),
            metadata=_metadata(server.api_key),
        )
    return dataclasses.replace(
        server, tenant_id=created.tenant.id, api_key=created.admin_api_key_secret
    )


async def _media(tenant, method, request):
    async with grpc.aio.insecure_channel(tenant.address) as channel:
        stub = media_grpc.MediaServiceStub(channel)
        return await getattr(stub, method)(request, metadata=_metadata(tenant.api_key))


async def _usage(tenant, first: datetime, days: int) -> list:
    request = platform_api.GetUsageRequest()
    request.start_time.FromDatetime(first)
    request.end_time.FromDatetime(first + timedelta(days=days))
    async with grpc.aio.insecure_channel(tenant.address) as channel:
        response = await platform_grpc.PlatformServiceStub(channel).GetUsage(
            request, metadata=_metadata(tenant.api_key)
        )
    return list(response.days)


async def _transcript(tenant, session_id: str) -> list:
    async with grpc.aio.insecure_channel(tenant.address) as channel:
        stub = data_grpc.DataServiceStub(channel)
        got = await stub.GetTranscript(
            data_api.GetTranscriptRequest(session_id=session_id, page_size=1000),
            metadata=_metadata(tenant.api_key),
        )
    return list(got.segments)


async def _record(tenant, session_id: str, seconds: float) -> tuple[media_pb.Recording, float]:
    """Records for `seconds`; returns the READY recording and the longest it can have run, as
    timed here (from before the start request to after the stop response)."""
    before = time.monotonic()
    started = await _media(
        tenant, "StartRecording", media_api.StartRecordingRequest(session_id=session_id)
    )
    await asyncio.sleep(seconds)
    await _media(
        tenant,
        "StopRecording",
        media_api.StopRecordingRequest(recording_id=started.recording.id),
    )
    longest = time.monotonic() - before
    request = media_api.GetRecordingRequest(recording_id=started.recording.id)
    async with asyncio.timeout(30):
        while (recording := (await _media(tenant, "GetRecording", request)).recording).state != (
            READY
        ):
            assert recording.state != media_pb.RECORDING_STATE_FAILED, recording
            await asyncio.sleep(0.1)
    return recording, longest


def _day(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


@pytest.fixture(scope="module")
def spoken() -> tuple[bytes, float]:
    """The speech fed to the recognizer, and how many seconds of it are voice (not the gap)."""
    if not speech.festival_available():
        pytest.skip("Festival (text2wave) is not installed")
    sentences = [speech.festival_pcm(s) for s in SENTENCES]
    voiced = sum(len(pcm) for pcm in sentences) / 2 / speech.SAMPLE_RATE
    return speech.join_with_silence(sentences, gap=1.0), voiced


async def test_recording_and_transcription_minutes(server, spoken):
    if not server.server.platform.media.available:
        pytest.skip("no media backend in this build")
    pcm, voiced_seconds = spoken
    tenant = await _tenant(server)
    other = await _tenant(server)
    session = await open_session(tenant)
    await go_live(tenant, session.id)
    today = _day(datetime.now(UTC))
    first = today - timedelta(days=1)  # yesterday, today, tomorrow

    # A recording still running counts up to now.
    started = await _media(
        tenant, "StartRecording", media_api.StartRecordingRequest(session_id=session.id)
    )
    await asyncio.sleep(1.0)
    running = sum(d.recording_minutes for d in await _usage(tenant, first, 3))
    assert 0.9 / 60 <= running <= 60 / 60, running
    await _media(
        tenant,
        "StopRecording",
        media_api.StopRecordingRequest(recording_id=started.recording.id),
    )

    # Transcription of one teacher's audio track, while the session is live.
    teacher = await join(tenant, session.id, "ms-rivera", role=INSTRUCTOR)
    await _media(
        tenant,
        "StartTranscription",
        media_api.StartTranscriptionRequest(session_id=session.id),
    )
    domain = server.server.platform.transcription
    track = Track(tenant.tenant_id, session.id, session.id, "TR_meter", teacher.id, "ms-rivera")
    await domain.attach_audio(track, frames_48k_stereo(pcm))
    await asyncio.wait_for(domain.wait_track(track), 120)
    await _media(
        tenant, "StopTranscription", media_api.StopTranscriptionRequest(session_id=session.id)
    )

    # Two more recordings; the second is deleted, and its minutes still count.
    kept, kept_longest = await _record(tenant, session.id, 2.0)
    gone, gone_longest = await _record(tenant, session.id, 1.0)
    await _media(tenant, "DeleteRecording", media_api.DeleteRecordingRequest(recording_id=gone.id))
    first_recording = (
        await _media(
            tenant,
            "GetRecording",
            media_api.GetRecordingRequest(recording_id=started.recording.id),
        )
    ).recording

    days = await _usage(tenant, first, 3)
    by_day = {d.day_time.ToDatetime(tzinfo=UTC): d for d in days}
    assert list(by_day) == [first, today, today + timedelta(days=1)]

    # Recording minutes: the three recordings' durations, as the API reported them, and
    # within what this test timed around them.
    recorded = sum(d.recording_minutes for d in days)
    durations = [r.duration.ToTimedelta().total_seconds() for r in (first_recording, kept, gone)]
    assert abs(recorded - sum(durations) / 60) <= SLACK_MINUTES, (recorded, durations)
    assert (1.0 + 2.0 + 1.0) / 60 - SLACK_MINUTES <= recorded
    assert recorded <= (60 + kept_longest + gone_longest) / 60

    # Transcription minutes: the transcribed segments' audio, which is most of the voice and
    # never more than the audio fed (voice and the gap between the sentences).
    segments = await _transcript(tenant, session.id)
    assert segments, "the recognizer produced no final segment"
    transcribed = sum(d.transcription_minutes for d in days)
    segment_seconds = sum(
        (s.end_time.ToDatetime() - s.start_time.ToDatetime()).total_seconds() for s in segments
    )
    assert abs(transcribed - segment_seconds / 60) <= SLACK_MINUTES, (transcribed, segments)
    audio_seconds = len(pcm) / 2 / speech.SAMPLE_RATE
    assert 0.5 * voiced_seconds / 60 <= transcribed <= (audio_seconds + 0.5) / 60, (
        transcribed,
        voiced_seconds,
    )

    # On the right day: only the days the recordings and the speech ran on carry minutes.
    ran_on = (
        {
            _day(t.ToDatetime(tzinfo=UTC))
            for r in (first_recording, kept, gone)
            for t in (r.start_time, r.stop_time)
        }
        | {_day(s.start_time.ToDatetime(tzinfo=UTC)) for s in segments}
        | {_day(s.end_time.ToDatetime(tzinfo=UTC)) for s in segments}
    )
    for day, usage in by_day.items():
        if day not in ran_on:
            assert usage.recording_minutes == 0 and usage.transcription_minutes == 0, usage
    assert by_day[today].recording_minutes > 0 or today not in ran_on

    # Another tenant sees none of it.
    assert all(
        d.recording_minutes == 0 and d.transcription_minutes == 0
        for d in await _usage(other, first, 3)
    )
