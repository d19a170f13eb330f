"""Live captions end to end over real WebRTC on loopback.

An instructor publishes Festival speech; captions carrying its key words reach a learner on the
participant connection and the session's event stream (WatchSession), attributed to the
instructor; the delay from the end of each utterance (as the sender played it) to its final
caption is measured and printed; GetTranscript holds the captions; after the session ends the
report holds the transcript, attendance for every participant and the instructor's talk time
within 20% of the speech's duration.

A second test runs an engine provider that refuses overloaded (clipping) audio: the learner
whose microphone clips loses its captions, a TranscriptionEngineFailed event names its track,
and the instructor's captions and the session go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import wave
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest
from aiortc import MediaStreamTrack
from aiortc.contrib.media import MediaPlayer
from conftest import create_database, make_config, start_server
from integration.test_classroom import INSTRUCTOR, LEARNER, go_live, join, open_session
from support import speech
from support.webrtc_client import WebRtcParticipant

from classwire.api.common.v1 import common_pb2
from classwire.api.data.v1 import resources_pb2 as data_pb
from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.data.v1 import service_pb2_grpc as data_grpc
from classwire.api.media.v1 import resources_pb2 as media_pb
from classwire.api.media.v1 import service_pb2 as media_api
from classwire.api.media.v1 import service_pb2_grpc as media_grpc
from classwire.api.session.v1 import service_pb2 as session_api
from classwire.api.session.v1 import service_pb2_grpc as session_grpc
from classwire.plugins import pocketsphinx as pocketsphinx_plugin
from classwire.server.plugins import hookimpl
from classwire.server.plugins.types import TranscriptionEngine, TranscriptionStream

SENTENCES = (
    "please open your books to chapter three",
    "remember to finish your homework before friday",
)
KEY_WORDS = {"books", "chapter", "three", "homework", "friday", "open", "finish"}
LEAD, GAP = 0.5, 1.2
# Generous: the goal is 2 s; this only catches captions that never keep up.
LATENCY_BOUND = 8.0


def words(text: str) -> set[str]:
    return set(text.lower().split())


def loud_span(pcm: bytes, threshold_dbov: float = -45.0) -> tuple[float, float]:
    """Seconds from the start of `pcm` (16 kHz s16le) to its first and past its last 20 ms
    window above the threshold."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0
    size = speech.SAMPLE_RATE // 50
    n = len(samples) // size
    rms = np.sqrt(np.mean(samples[: n * size].reshape(n, size) ** 2, axis=1))
    loud = np.nonzero(20 * np.log10(np.maximum(rms, 1e-9)) > threshold_dbov)[0]
    return (loud[0] * 0.02, (loud[-1] + 1) * 0.02) if len(loud) else (0.0, 0.0)


class Lesson:
    """Sentences joined with silence, written as a wav, with where each one's speech lies."""

    def __init__(self, path: Path, parts: Sequence[bytes], lead: float, gap: float) -> None:
        pcm = speech.join_with_silence(list(parts), gap=gap, lead=lead)
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(speech.SAMPLE_RATE)
            w.writeframes(pcm)
        self.path = path
        self.duration = speech.duration(pcm)
        self.spans: list[tuple[float, float]] = []
        offset = lead
        for part in parts:
            first, last = loud_span(part)
            self.spans.append((offset + first, offset + last))
            offset += speech.duration(part) + gap

    @property
    def speech_seconds(self) -> float:
        return sum(end - start for start, end in self.spans)


class PlayClock(MediaStreamTrack):
    """Passes a player's audio through and remembers the wall time its timeline started at
    (the player paces frames in real time), so offsets in the file become wall times."""

    kind = "audio"

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.source = source
        self.start: float | None = None

    async def recv(self):
        frame = await self.source.recv()
        if self.start is None:
            self.start = time.time() - float(frame.pts * frame.time_base)
        return frame

    def stop(self) -> None:
        super().stop()
        self.source.stop()

    def wall(self, offset: float) -> float:
        assert self.start is not None, "the player has not started"
        return self.start + offset


class Watcher:
    """WatchSession from the start, each event with the wall time it arrived."""

    def __init__(self, server, session_id: str) -> None:
        self.server, self.session_id = server, session_id
        self.events: list[tuple[float, object]] = []
        self.changed = asyncio.Event()
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(self.server.address) as channel:
            stream = session_grpc.SessionServiceStub(channel).WatchSession(
                session_api.WatchSessionRequest(session_id=self.session_id),
                metadata=(("authorization", f"Bearer {self.server.api_key}"),),
            )
            async for item in stream:
                if item.HasField("event"):
                    self.events.append((time.time(), item.event))
                    self.changed.set()

    async def wait_for(self, predicate, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()

    def finals(self) -> list[tuple[float, object]]:
        return [(t, e) for t, e in self.events if e.type.endswith(".CaptionFinal")]

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


def latencies(lesson: Lesson, clock: PlayClock, finals) -> list[float]:
    """Per sentence: the arrival of the last final caption sharing its words, less the wall
    time the sender played the end of its speech."""
    out = []
    for sentence, (_, end) in zip(SENTENCES, lesson.spans, strict=True):
        matching = [t for t, text in finals if words(text) & (words(sentence) - {"to", "your"})]
        out.append(max(matching) - clock.wall(end) if matching else float("nan"))
    return out


async def rpc(server, stub_class, method: str, request):
    async with grpc.aio.insecure_channel(server.address) as channel:
        return await getattr(stub_class(channel), method)(
            request, metadata=(("authorization", f"Bearer {server.api_key}"),)
        )


async def ready_report(server, session_id: str, timeout: float) -> data_pb.SessionReport:
    async with asyncio.timeout(timeout):
        while True:
            response = await rpc(
                server,
                data_grpc.DataServiceStub,
                "GetSessionReport",
                data_api.GetSessionReportRequest(session_id=session_id),
            )
            if response.report.state == data_pb.SESSION_REPORT_STATE_READY:
                return response.report
            assert response.report.state in (
                data_pb.SESSION_REPORT_STATE_PENDING,
                data_pb.SESSION_REPORT_STATE_BUILDING,
            ), response.report
            await asyncio.sleep(0.2)


@pytest.fixture
def lesson(tmp_path) -> Lesson:
    if not speech.festival_available():
        pytest.skip("Festival (text2wave) is not installed")
    return Lesson(tmp_path / "lesson.wav", [speech.festival_pcm(s) for s in SENTENCES], LEAD, GAP)


async def test_captions_reach_learner_event_stream_transcript_and_report(server, lesson):
    if server.server.platform.media is None or not server.server.platform.media.available:
        pytest.skip("no media backend in this build")
    session = await open_session(server)
    await go_live(server, session.id)
    # The learner joins first: it waits for the instructor, whose join admits it.
    teacher = await join(server, session.id, "mr-okafor", role=INSTRUCTOR)
    learner = await join(server, session.id, "lena", role=LEARNER)
    started = await rpc(
        server,
        media_grpc.MediaServiceStub,
        "StartTranscription",
        media_api.StartTranscriptionRequest(session_id=session.id),
    )
    assert started.status.state == media_pb.TRANSCRIPTION_STATE_RUNNING
    watcher = Watcher(server, session.id)

    lena_finals: list[tuple[float, object]] = []  # (arrival wall time, CaptionFinal)

    def heard_all() -> bool:
        # Called on every message the learner receives: stamps new finals as they arrive.
        finals = [e.media.caption_final for e in lena.events if e.type.endswith(".CaptionFinal")]
        for final in finals[len(lena_finals) :]:
            lena_finals.append((time.time(), final))
        heard = words(" ".join(f.text for _, f in lena_finals))
        return len(heard & KEY_WORDS) >= 3 and bool(heard & {"homework", "friday", "finish"})

    try:
        async with (
            WebRtcParticipant(server.address, learner.token) as lena,
            WebRtcParticipant(server.address, teacher.token) as okafor,
        ):
            clock = PlayClock(MediaPlayer(str(lesson.path)).audio)
            track = await okafor.publish(clock, common_pb2.TRACK_SOURCE_MICROPHONE)
            published = await lena.wait_for_event(
                "TrackPublished", where=lambda e: e.media.track_published.track_id == track.id
            )
            assert published.media.track_published.identity == "mr-okafor"
            try:
                await lena.wait_for(heard_all, timeout=lesson.duration + 30)
            except TimeoutError:
                pushes = [e.type.rsplit(".", 1)[-1] for e in lena.events]
                pytest.fail(f"heard {[f.text for _, f in lena_finals]}; pushes {pushes}")
            # Every utterance is over and its talk time recorded before the session ends.
            last_end = clock.wall(lesson.spans[-1][1])
            await watcher.wait_for(
                lambda: any(
                    e.type.endswith(".SpeakingIntervalRecorded")
                    and e.media.speaking_interval_recorded.end_time.ToMicroseconds() / 1e6
                    >= last_end - 1.0
                    for _, e in watcher.events
                ),
                timeout=15,
            )
            finals = [f for _, f in lena_finals]
            assert finals and all(f.participant_id == teacher.id for f in finals)
            assert all(f.identity == "mr-okafor" and f.track_id == track.id for f in finals)
            await watcher.wait_for(lambda: len(watcher.finals()) >= len(finals), timeout=15)

            streamed = watcher.finals()
            assert [e.media.caption_final.text for _, e in streamed][: len(finals)] == [
                f.text for f in finals
            ]
            assert all(e.media.caption_final.identity == "mr-okafor" for _, e in streamed)
            assert all(e.media.caption_final.participant_id == teacher.id for _, e in streamed)

            to_learner = latencies(lesson, clock, [(t, f.text) for t, f in lena_finals])
            to_watch = latencies(
                lesson, clock, [(t, e.media.caption_final.text) for t, e in streamed]
            )
            print(f"finals: {[f.text for f in finals]}")
            print(
                "end of utterance -> final caption (s): learner "
                + ", ".join(f"{x:.2f}" for x in to_learner)
                + "; WatchSession "
                + ", ".join(f"{x:.2f}" for x in to_watch)
            )
            for delay in [*to_learner, *to_watch]:
                assert delay < LATENCY_BOUND, (to_learner, to_watch)
            assert not [m for m in lena.messages if m.WhichOneof("message") == "disconnect"]
            clock.stop()

            await rpc(
                server,
                session_grpc.SessionServiceStub,
                "EndSession",
                session_api.EndSessionRequest(session_id=session.id),
            )
            await lena.wait_for(
                lambda: any(m.WhichOneof("message") == "disconnect" for m in lena.messages)
            )
    finally:
        await watcher.close()

    transcript = await rpc(
        server,
        data_grpc.DataServiceStub,
        "GetTranscript",
        data_api.GetTranscriptRequest(session_id=session.id, page_size=500),
    )
    stored = [s.text for s in transcript.segments]
    assert stored == [f.text for f in finals]
    assert len(words(" ".join(stored)) & KEY_WORDS) >= 3
    assert {s.identity for s in transcript.segments} == {"mr-okafor"}
    assert {s.participant_id for s in transcript.segments} == {teacher.id}

    report = await ready_report(server, session.id, timeout=60)
    assert report.transcript.segment_count == len(stored)
    assert [s.text for s in report.transcript.excerpt] == stored[:20]
    assert {s.identity for s in report.transcript.excerpt} == {"mr-okafor"}
    attendance = {a.identity: a for a in report.attendance}
    assert set(attendance) == {"mr-okafor", "lena"}
    for person in attendance.values():
        assert person.status == data_pb.ATTENDANCE_STATUS_PRESENT
        assert person.intervals and person.total_duration.ToTimedelta().total_seconds() > 0
    engagement = {e.identity: e for e in report.engagement}
    talk = engagement["mr-okafor"].talk_time.ToTimedelta().total_seconds()
    expected = lesson.speech_seconds
    print(f"talk time in the report {talk:.2f}s, speech {expected:.2f}s")
    assert abs(talk - expected) <= 0.2 * expected, (talk, expected)
    assert engagement["lena"].talk_time.ToTimedelta().total_seconds() == 0


# -- an engine that fails on one track ------------------------------------------------------

OVERLOAD_DBOV = -8.0  # loudest 20 ms of Festival speech: about -12.5 dBov; clipping: about -5


class OverloadError(RuntimeError):
    pass


class _RefusingStream(TranscriptionStream):
    def __init__(self, inner: TranscriptionStream) -> None:
        self.inner = inner

    async def feed(self, pcm: bytes) -> None:
        samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64)
        rms = float(np.sqrt(np.mean((samples / 32768.0) ** 2))) if len(samples) else 0.0
        if rms > 10 ** (OVERLOAD_DBOV / 20):
            await self.inner.close()
            raise OverloadError(f"input overload ({20 * np.log10(rms):.1f} dBov)")
        await self.inner.feed(pcm)

    async def close(self) -> None:
        await self.inner.close()

    def __aiter__(self):
        return self.inner.__aiter__()


class _RefusingEngine(TranscriptionEngine):
    """PocketSphinx that refuses overloaded input, as engines with input checks do."""

    def __init__(self, inner: TranscriptionEngine) -> None:
        self.inner = inner

    def languages(self):
        return self.inner.languages()

    async def open_stream(self, language: str, **kwargs) -> TranscriptionStream:
        return _RefusingStream(await self.inner.open_stream(language, **kwargs))

    async def close(self) -> None:
        await self.inner.close()


class RefusingEnginePlugin:
    @hookimpl
    def classwire_register_transcription_engines(self, register) -> None:
        register(
            "refuses_overload",
            lambda context: _RefusingEngine(pocketsphinx_plugin.create_engine(context)),
            description="PocketSphinx that refuses clipping input",
        )


def clipping(seconds: float) -> bytes:
    """A full-scale square wave at 300 Hz: a microphone overdriven into clipping."""
    t = np.arange(int(seconds * speech.SAMPLE_RATE)) / speech.SAMPLE_RATE
    return (np.sign(np.sin(2 * np.pi * 300 * t)) * 32000).astype("<i2").tobytes()


async def test_engine_failure_on_one_track_stops_only_its_captions(tmp_path):
    if not speech.festival_available():
        pytest.skip("Festival (text2wave) is not installed")
    url, drop = await create_database(tmp_path)
    running = await start_server(make_config(tmp_path, url))
    try:
        platform = running.server.platform
        if platform.media is None or not platform.media.available:
            pytest.skip("no media backend in this build")
        platform.plugins.register_plugin(RefusingEnginePlugin(), "refusing_engine_test")
        said_first, said_after = SENTENCES
        first = speech.festival_pcm(said_first)
        # The learner speaks, its microphone clips, then it speaks again (never captioned).
        learner_lesson = Lesson(
            tmp_path / "learner.wav",
            [first, clipping(1.0), speech.festival_pcm("the cat sat on the mat")],
            LEAD,
            2.0,  # time for the first sentence's final caption before the clipping
        )
        # The instructor speaks after the learner's microphone clipped.
        teacher_lesson = Lesson(
            tmp_path / "teacher.wav",
            [speech.festival_pcm(said_after)],
            learner_lesson.spans[1][1] + 1.0,
            GAP,
        )
        session = await open_session(running)
        await go_live(running, session.id)
        teacher = await join(running, session.id, "ms-ade", role=INSTRUCTOR)
        learner = await join(running, session.id, "sam", role=LEARNER)
        async with (
            WebRtcParticipant(running.address, teacher.token) as ade,
            WebRtcParticipant(running.address, learner.token) as sam,
        ):
            ade.events.clear()
            start = await ade.act(
                start_transcription=session_api.ConnectRequest.StartTranscription(
                    options=media_pb.TranscriptionOptions(engine="refuses_overload")
                )
            )
            assert start.WhichOneof("message") == "ack"
            sam_clock = PlayClock(MediaPlayer(str(learner_lesson.path)).audio)
            ade_clock = PlayClock(MediaPlayer(str(teacher_lesson.path)).audio)
            sam_track, ade_track = await asyncio.gather(
                sam.publish(sam_clock, common_pb2.TRACK_SOURCE_MICROPHONE),
                ade.publish(ade_clock, common_pb2.TRACK_SOURCE_MICROPHONE),
            )
            failed = await ade.wait_for_event("TranscriptionEngineFailed", timeout=30)
            failure = failed.media.transcription_engine_failed
            assert failure.track_id == sam_track.id and failure.participant_id == learner.id
            assert failure.engine == "refuses_overload" and "overload" in failure.message
            # The instructor's speech, after the failure, is still captioned.
            after = await ade.wait_for_event(
                "CaptionFinal",
                timeout=teacher_lesson.duration + 30,
                where=lambda e: (
                    e.media.caption_final.track_id == ade_track.id
                    and bool(words(e.media.caption_final.text) & {"homework", "friday", "finish"})
                ),
            )
            assert after.sequence > failed.sequence
            assert after.media.caption_final.identity == "ms-ade"
            # Let the learner's last sentence play out: no caption comes for it.
            remaining = sam_clock.wall(learner_lesson.spans[-1][1]) - time.time()
            await asyncio.sleep(max(0.0, remaining) + 3.0)
            sam_finals = [
                e
                for e in ade.events
                if e.type.endswith(".CaptionFinal")
                and e.media.caption_final.track_id == sam_track.id
            ]
            # Captioned before the failure, never after it.
            assert all(e.media.caption_final.participant_id == learner.id for e in sam_finals)
            before = " ".join(e.media.caption_final.text for e in sam_finals)
            assert words(before) & KEY_WORDS, before
            assert all(e.sequence < failed.sequence for e in sam_finals)
            assert not words(before) & {"cat", "mat", "sat"}

            status = (
                await rpc(
                    running,
                    media_grpc.MediaServiceStub,
                    "GetTranscriptionStatus",
                    media_api.GetTranscriptionStatusRequest(session_id=session.id),
                )
            ).status
            by_track = {t.track_id: t for t in status.tracks}
            assert status.state == media_pb.TRANSCRIPTION_STATE_RUNNING
            assert by_track[sam_track.id].state == media_pb.TRACK_TRANSCRIPTION_STATE_FAILED
            assert by_track[ade_track.id].state == media_pb.TRACK_TRANSCRIPTION_STATE_RUNNING
            # The session goes on: both are still connected and the room still works.
            for client in (ade, sam):
                assert not [m for m in client.messages if m.WhichOneof("message") == "disconnect"]
            await sam.act(raise_hand=session_api.ConnectRequest.RaiseHand())
            await ade.wait_for_event("HandRaised")
            for clock in (sam_clock, ade_clock):
                clock.stop()
    finally:
        await running.server.stop(grace=1)
        if drop:
            await drop()
