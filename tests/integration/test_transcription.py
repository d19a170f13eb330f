"""Live transcription over real gRPC: control RPCs (errors, scopes, tenants), the recognizer
pipeline on Festival speech through the real PocketSphinx engine, transcripts paged with
GetTranscript, and exports read back by the webvtt-py and srt parsers."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
import srt
import webvtt
from support import speech
from test_classroom import (
    INSTRUCTOR,
    call,
    expect_error,
    go_live,
    has,
    join,
    open_session,
    violations,
    watch,
)

from classwire.api.common.v1 import common_pb2
from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.data.v1 import service_pb2_grpc as data_grpc
from classwire.api.media.v1 import resources_pb2 as media_pb
from classwire.api.media.v1 import service_pb2 as media_api
from classwire.api.media.v1 import service_pb2_grpc as media_grpc
from classwire.api.platform.v1 import service_pb2 as platform_api
from classwire.api.platform.v1 import service_pb2_grpc as platform_grpc
from classwire.api.session.v1 import service_pb2 as session_api
from classwire.server.plugins.types import AudioFrame

EV = "classwire.api.events.v1."
SENTENCES = (
    "please open your books to chapter three",
    "remember to finish your homework before friday",
)
KEY_WORDS = {"books", "chapter", "three", "homework", "friday", "open", "finish"}


async def media(server, method, request, credential=None):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = media_grpc.MediaServiceStub(channel)
        metadata = (("authorization", f"Bearer {credential or server.api_key}"),)
        return await getattr(stub, method)(request, metadata=metadata)


async def data(server, method, request, credential=None):
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = data_grpc.DataServiceStub(channel)
        metadata = (("authorization", f"Bearer {credential or server.api_key}"),)
        result = getattr(stub, method)(request, metadata=metadata)
        if method == "ExportTranscript":
            return [chunk async for chunk in result]
        return await result


async def key_with(server, *scopes: str) -> str:
    async with grpc.aio.insecure_channel(server.address) as channel:
        created = await platform_grpc.PlatformServiceStub(channel).CreateApiKey(
            platform_api.CreateApiKeyRequest(display_name="narrow", scopes=list(scopes)),
            metadata=(("authorization", f"Bearer {server.api_key}"),),
        )
    return created.secret


@pytest.fixture(scope="module")
async def other_tenant_key(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        created = await platform_grpc.PlatformServiceStub(channel).CreateTenant(
            platform_api.CreateTenantRequest(display_name="Elsewhere"),
            metadata=(("authorization", f"Bearer {server.api_key}"),),
        )
    return created.admin_api_key_secret


def start(session_id: str, engine: str = "", language: str = ""):
    return media_api.StartTranscriptionRequest(
        session_id=session_id,
        options=media_pb.TranscriptionOptions(engine=engine, language=language),
    )


async def test_engines_are_listed_with_languages(server):
    listed = await media(
        server, "ListTranscriptionEngines", media_api.ListTranscriptionEnginesRequest()
    )
    engines = {e.name: e for e in listed.engines}
    assert engines["pocketsphinx"].available, engines["pocketsphinx"].unavailable_message
    assert "en-US" in engines["pocketsphinx"].languages
    assert engines["pocketsphinx"].tenant_default


async def test_control_errors_name_their_fields(server, other_tenant_key):
    session = await open_session(server)
    # Not live yet.
    await expect_error(
        media(server, "StartTranscription", start(session.id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "SESSION_NOT_LIVE",
    )
    await go_live(server, session.id)
    exc = await expect_error(
        media(server, "StartTranscription", start(session.id, engine="nosuch")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "TRANSCRIPTION_ENGINE_UNKNOWN",
    )
    assert violations(exc) == {"options.engine"}
    for language in ("zz-ZZ", "not a tag!", "x" * 300):
        exc = await expect_error(
            media(server, "StartTranscription", start(session.id, language=language)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "TRANSCRIPTION_LANGUAGE_UNSUPPORTED",
        )
        assert violations(exc) == {"options.language"}
    await expect_error(
        media(server, "StartTranscription", start("")),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    await expect_error(
        media(
            server,
            "GetTranscriptionStatus",
            media_api.GetTranscriptionStatusRequest(session_id="nope"),
        ),
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
    )
    # Another tenant's session does not exist for this caller.
    for method, request in (
        ("StartTranscription", start(session.id)),
        ("StopTranscription", media_api.StopTranscriptionRequest(session_id=session.id)),
        (
            "GetTranscriptionStatus",
            media_api.GetTranscriptionStatusRequest(session_id=session.id),
        ),
    ):
        await expect_error(
            media(server, method, request, other_tenant_key),
            grpc.StatusCode.NOT_FOUND,
            "SESSION_NOT_FOUND",
        )
    await expect_error(
        data(
            server,
            "GetTranscript",
            data_api.GetTranscriptRequest(session_id=session.id),
            other_tenant_key,
        ),
        grpc.StatusCode.NOT_FOUND,
        "SESSION_NOT_FOUND",
    )
    # Scopes: reading media is not writing it; data:read is needed for transcripts.
    reader = await key_with(server, "media:read")
    await expect_error(
        media(server, "StartTranscription", start(session.id), reader),
        grpc.StatusCode.PERMISSION_DENIED,
        "MISSING_SCOPE",
    )
    status = await media(
        server,
        "GetTranscriptionStatus",
        media_api.GetTranscriptionStatusRequest(session_id=session.id),
        reader,
    )
    assert status.status.state == media_pb.TRANSCRIPTION_STATE_STOPPED
    await expect_error(
        data(
            server,
            "GetTranscript",
            data_api.GetTranscriptRequest(session_id=session.id),
            reader,
        ),
        grpc.StatusCode.PERMISSION_DENIED,
        "MISSING_SCOPE",
    )
    # Never ran: NONE, and nothing to export.
    got = await data(server, "GetTranscript", data_api.GetTranscriptRequest(session_id=session.id))
    assert got.transcript.state == data_pb.TRANSCRIPT_STATE_NONE
    await expect_error(
        data(
            server,
            "ExportTranscript",
            data_api.ExportTranscriptRequest(
                session_id=session.id, format=data_pb.TRANSCRIPT_FORMAT_SRT
            ),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "TRANSCRIPT_NONE",
    )
    exc = await expect_error(
        data(
            server,
            "ExportTranscript",
            data_api.ExportTranscriptRequest(session_id=session.id),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert violations(exc) == {"format"}
    exc = await expect_error(
        data(
            server,
            "GetTranscript",
            data_api.GetTranscriptRequest(session_id=session.id, page_token="garbage"),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
    )


async def test_start_is_idempotent_and_refuses_other_options(server):
    session = await open_session(server)
    await go_live(server, session.id)
    first = await media(server, "StartTranscription", start(session.id, language="en"))
    assert first.status.state == media_pb.TRANSCRIPTION_STATE_RUNNING
    assert first.status.options.engine == "pocketsphinx"
    assert first.status.options.language == "en-US"  # a bare language picks the engine's tag
    assert first.status.started_by.kind == common_pb2.Actor.KIND_API_KEY
    again = await media(server, "StartTranscription", start(session.id, "pocketsphinx", "en-US"))
    assert again.status.start_time == first.status.start_time
    stopped = await media(
        server,
        "StopTranscription",
        media_api.StopTranscriptionRequest(session_id=session.id),
    )
    assert stopped.status.state == media_pb.TRANSCRIPTION_STATE_STOPPED
    assert stopped.status.HasField("stop_time")
    # Stopping twice is fine.
    await media(
        server,
        "StopTranscription",
        media_api.StopTranscriptionRequest(session_id=session.id),
    )
    events = await watch(server, session.id, has("TranscriptionStopped"))
    names = [e.type.rsplit(".", 1)[-1] for e in events]
    assert names.count("TranscriptionStarted") == 1 and names.count("TranscriptionStopped") == 1


async def test_auto_start_when_the_session_goes_live(server):
    from classwire.api.session.v1 import resources_pb2 as session_pb

    settings = session_pb.SessionSettings(auto_start_transcription=True)
    session = await open_session(server, settings=settings)
    await go_live(server, session.id)
    request = media_api.GetTranscriptionStatusRequest(session_id=session.id)
    async with asyncio.timeout(10):
        while True:
            status = (await media(server, "GetTranscriptionStatus", request)).status
            if status.state == media_pb.TRANSCRIPTION_STATE_RUNNING:
                break
            await asyncio.sleep(0.1)
    assert status.auto_started
    assert status.started_by.kind == common_pb2.Actor.KIND_SYSTEM


# -- the pipeline on real speech ----------------------------------------------------------------


@dataclass(frozen=True)
class Track:
    tenant_id: str
    session_id: str
    main_session_id: str
    track_id: str
    participant_id: str
    identity: str


async def frames_48k_stereo(pcm16k: bytes) -> AsyncIterator[AudioFrame]:
    """The speech as a browser would send it (48 kHz stereo), in 20 ms frames, in real time
    divided by 8: the recognizer must resample, and keep up."""
    mono = np.frombuffer(pcm16k, np.int16)
    stereo = np.repeat(np.repeat(mono, 3)[:, None], 2, axis=1).reshape(-1)
    step = 960 * 2  # 20 ms of 48 kHz stereo samples
    for i, offset in enumerate(range(0, len(stereo), step)):
        chunk = stereo[offset : offset + step].tobytes()
        yield AudioFrame(pcm=chunk, sample_rate=48000, channels=2, timestamp=i * 0.02)
        if i % 8 == 0:
            await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def spoken() -> bytes:
    if not speech.festival_available():
        pytest.skip("Festival (text2wave) is not installed")
    return speech.join_with_silence([speech.festival_pcm(s) for s in SENTENCES], gap=1.0)


async def test_speech_becomes_segments_pages_and_exports(server, spoken):
    session = await open_session(server)
    await go_live(server, session.id)
    teacher = await join(server, session.id, "ms-rivera", role=INSTRUCTOR)
    await media(server, "StartTranscription", start(session.id))
    domain = server.server.platform.transcription
    track = Track(
        server.tenant_id,
        session.id,
        session.id,
        "TR_voice",
        teacher.id,
        teacher.identity,
    )
    await domain.attach_audio(track, frames_48k_stereo(spoken))
    await asyncio.wait_for(domain.wait_track(track), 120)

    status = (
        await media(
            server,
            "GetTranscriptionStatus",
            media_api.GetTranscriptionStatusRequest(session_id=session.id),
        )
    ).status
    (tracked,) = status.tracks
    assert tracked.track_id == "TR_voice" and tracked.participant_id == teacher.id
    assert tracked.final_caption_count >= 1

    # Every segment, one per page.
    segments, token = [], ""
    while True:
        page = await data(
            server,
            "GetTranscript",
            data_api.GetTranscriptRequest(session_id=session.id, page_size=1, page_token=token),
        )
        segments.extend(page.segments)
        token = page.next_page_token
        if not token:
            break
    assert page.transcript.state == data_pb.TRANSCRIPT_STATE_IN_PROGRESS
    assert page.transcript.segment_count == len(segments) == tracked.final_caption_count
    words = set(" ".join(s.text for s in segments).split())
    assert len(words & KEY_WORDS) >= 3, words
    assert all(s.identity == "ms-rivera" and s.participant_id == teacher.id for s in segments)
    starts = [s.start_offset.ToTimedelta() for s in segments]
    assert starts == sorted(starts)
    assert all(s.end_offset.ToTimedelta() >= s.start_offset.ToTimedelta() for s in segments)
    # Filtering by speaker: nobody else spoke.
    other = await data(
        server,
        "GetTranscript",
        data_api.GetTranscriptRequest(session_id=session.id, speaker_identities=["nobody"]),
    )
    assert not other.segments

    # The log keeps final captions; partials were replaced by them.
    events = await watch(server, session.id, has("CaptionFinal", len(segments)))
    finals = [e.media.caption_final for e in events if e.type == f"{EV}CaptionFinal"]
    assert [f.text for f in finals] == [s.text for s in segments]
    assert all(f.identity == "ms-rivera" for f in finals)
    assert not [e for e in events if e.type == f"{EV}CaptionPartial"]

    # Exports, read back by real parsers.
    def export(fmt, **kw):
        return data(
            server,
            "ExportTranscript",
            data_api.ExportTranscriptRequest(session_id=session.id, format=fmt, **kw),
        )

    chunks = await export(data_pb.TRANSCRIPT_FORMAT_WEBVTT)
    assert chunks[0].media_type == "text/vtt" and chunks[0].file_name.endswith(".vtt")
    vtt = webvtt.from_buffer(io.StringIO("".join(c.text for c in chunks)))
    assert [c.text for c in vtt] == [s.text for s in segments]
    assert {c.voice for c in vtt} == {"Ms-Rivera"}

    chunks = await export(data_pb.TRANSCRIPT_FORMAT_SRT)
    assert chunks[0].media_type == "application/x-subrip"
    cues = list(srt.parse("".join(c.text for c in chunks)))
    assert [c.content for c in cues] == [f"Ms-Rivera: {s.text}" for s in segments]
    assert [c.start for c in cues] == starts
    bare = list(
        srt.parse(
            "".join(c.text for c in await export(data_pb.TRANSCRIPT_FORMAT_SRT, omit_speakers=True))
        )
    )
    assert [c.content for c in bare] == [s.text for s in segments]

    chunks = await export(data_pb.TRANSCRIPT_FORMAT_PLAIN_TEXT)
    assert chunks[0].media_type == "text/plain"
    lines = "".join(c.text for c in chunks).splitlines()
    assert len(lines) == len(segments)
    assert all(line.startswith("[00:00:") and "Ms-Rivera: " in line for line in lines)

    # The session ends: the transcript completes and is announced.
    await call(
        server,
        "EndSession",
        session_api.EndSessionRequest(session_id=session.id),
        server.api_key,
    )
    events = await watch(server, session.id, has("TranscriptReady"))
    (ready,) = [e.data.transcript_ready for e in events if e.type == f"{EV}TranscriptReady"]
    assert ready.segment_count == len(segments) and list(ready.engines) == ["pocketsphinx"]
    got = await data(server, "GetTranscript", data_api.GetTranscriptRequest(session_id=session.id))
    assert got.transcript.state == data_pb.TRANSCRIPT_STATE_COMPLETE
    assert got.transcript.HasField("complete_time")
    stopped = [e for e in events if e.type == f"{EV}TranscriptionStopped"]
    assert stopped[-1].media.transcription_stopped.reason == 2  # REASON_SESSION_ENDED


# -- the report waits for the last captions ----------------------------------------------------


def without_trailing_silence(pcm16k: bytes) -> bytes:
    """Cut at the last loud sample: the speaker is cut off, so only the flush at the session's
    end can make the last sentence final."""
    samples = np.frombuffer(pcm16k, np.int16)
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > 500)
    return samples[: loud[-1] + 1].tobytes()


async def test_the_report_holds_captions_flushed_after_the_end(server, spoken):
    session = await open_session(server)
    await go_live(server, session.id)
    teacher = await join(server, session.id, "mr-okafor", role=INSTRUCTOR)
    await media(server, "StartTranscription", start(session.id))
    domain = server.server.platform.transcription
    track = Track(server.tenant_id, session.id, session.id, "TR_open", teacher.id, "mr-okafor")
    fed, never = asyncio.Event(), asyncio.Event()

    async def open_microphone() -> AsyncIterator[AudioFrame]:
        async for frame in frames_48k_stereo(without_trailing_silence(spoken)):
            yield frame
        fed.set()
        await never.wait()  # the track stays published: no end of audio flushes the engine

    await domain.attach_audio(track, open_microphone())
    await asyncio.wait_for(fed.wait(), 120)
    before = await data(
        server, "GetTranscript", data_api.GetTranscriptRequest(session_id=session.id)
    )
    said = " ".join(s.text for s in before.segments).split()
    assert "friday" not in said, "the last sentence must still be open when the session ends"

    await call(
        server, "EndSession", session_api.EndSessionRequest(session_id=session.id), server.api_key
    )
    async with asyncio.timeout(90):
        while True:
            report = (
                await data(
                    server,
                    "GetSessionReport",
                    data_api.GetSessionReportRequest(session_id=session.id),
                )
            ).report
            if report.state == data_pb.SESSION_REPORT_STATE_READY:
                break
            assert report.state in (
                data_pb.SESSION_REPORT_STATE_PENDING,
                data_pb.SESSION_REPORT_STATE_BUILDING,
            ), report
            await asyncio.sleep(0.2)

    after = await data(
        server, "GetTranscript", data_api.GetTranscriptRequest(session_id=session.id)
    )
    assert after.transcript.state == data_pb.TRANSCRIPT_STATE_COMPLETE
    final_words = set(after.segments[-1].text.split())
    assert final_words & {"homework", "friday", "finish", "remember"}, after.segments[-1].text
    # The report was built from the final transcript: every segment, the last one included.
    assert report.transcript.state == data_pb.TRANSCRIPT_STATE_COMPLETE
    assert report.transcript.segment_count == len(after.segments)
    assert [s.text for s in report.transcript.excerpt] == [s.text for s in after.segments]
    assert all(s.identity == "mr-okafor" for s in report.transcript.excerpt)
    assert not report.HasField("failure") or report.failure.reason != "TRANSCRIPT_NOT_FINAL"
    ready = [
        e
        for e in await watch(server, session.id, has("SessionReportReady"))
        if e.type.rsplit(".", 1)[-1] in ("TranscriptReady", "SessionReportReady")
    ]
    assert [e.type.rsplit(".", 1)[-1] for e in ready] == ["TranscriptReady", "SessionReportReady"]
