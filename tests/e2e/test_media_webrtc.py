"""End to end over real WebRTC on loopback: an instructor publishes speech synthesized with
espeak-ng and synthetic video; two learners receive both; the audio they decode matches what was
sent (duration and normalized cross-correlation), and the instructor's talk time is within 20%
of the speech's duration. Parametrized by media backend."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import wave
from pathlib import Path

import grpc
import numpy as np
import pytest
from aiortc.contrib.media import MediaPlayer
from aiortc.mediastreams import VideoStreamTrack
from conftest import create_database, make_config, start_server
from integration.test_media import join_token, open_session
from support.janus_server import backend_settings
from support.webrtc_client import WebRtcParticipant

from classwire.api.common.v1 import common_pb2
from classwire.api.media.v1 import service_pb2 as media_api
from classwire.api.media.v1 import service_pb2_grpc as media_grpc
from classwire.plugins.janus import JanusMediaBackend

RATE = 16000
TEXT = (
    "Good morning class. Today we look at fractions. A fraction has a numerator and a "
    "denominator. Please open your books at page twelve."
)


def speech_wav(directory: Path) -> Path:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    raw = directory / "speech-raw.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), TEXT], check=True)
    # 1 s of silence before and after: the detector must find the speech, not the file.
    out = directory / "speech.wav"
    pcm = resample(*read_wav(raw), RATE)
    pad = np.zeros(RATE, dtype=np.float64)
    samples = np.concatenate([pad, pcm, pad])
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return out


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as w:
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
        channels, rate = w.getnchannels(), w.getframerate()
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1)
    return data / 32768.0, rate


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    if rate == target or len(samples) == 0:
        return samples
    duration = len(samples) / rate
    t_new = np.arange(int(duration * target)) / target
    return np.interp(t_new, np.arange(len(samples)) / rate, samples)


def speech_seconds(samples: np.ndarray, rate: int, threshold_dbov: float = -45.0) -> float:
    """Duration from the first to the last 20 ms window above the threshold."""
    size = int(rate * 0.02)
    windows = len(samples) // size
    levels = [
        20 * np.log10(max(1e-9, float(np.sqrt(np.mean(samples[i * size : (i + 1) * size] ** 2)))))
        for i in range(windows)
    ]
    loud = [i for i, level in enumerate(levels) if level > threshold_dbov]
    return (loud[-1] - loud[0] + 1) * 0.02 if loud else 0.0


def decoded_audio(frames) -> np.ndarray:
    """Mono float samples at RATE from received av.AudioFrames."""
    parts = []
    rate = RATE
    for frame in frames:
        array = frame.to_ndarray()
        rate = frame.sample_rate
        channels = len(frame.layout.channels)
        data = array.reshape(-1, channels).mean(axis=1) if array.shape[0] == 1 else array.mean(0)
        parts.append(data.astype(np.float64) / 32768.0)
    return resample(np.concatenate(parts), rate, RATE) if parts else np.zeros(0)


def best_correlation(sent: np.ndarray, received: np.ndarray, rate: int) -> float:
    """Peak normalized cross-correlation of the amplitude envelopes (10 ms), any lag."""
    hop = rate // 100

    def envelope(x: np.ndarray) -> np.ndarray:
        n = len(x) // hop
        e = np.sqrt(np.mean(x[: n * hop].reshape(n, hop) ** 2, axis=1))
        return (e - e.mean()) / (e.std() or 1.0)

    a, b = envelope(sent), envelope(received)
    corr = np.correlate(b, a, mode="full") / min(len(a), len(b))
    return float(corr.max())


@pytest.mark.parametrize("backend", ["aiortc_sfu", "janus"])
async def test_speech_and_video_reach_two_learners(tmp_path, backend):
    with contextlib.ExitStack() as stack:
        await speech_and_video_reach_two_learners(tmp_path, backend, stack)


async def speech_and_video_reach_two_learners(
    tmp_path: Path, backend: str, stack: contextlib.ExitStack
) -> None:
    overrides = backend_settings(backend, tmp_path, stack)
    url, drop = await create_database(tmp_path)
    config = make_config(tmp_path, url, **overrides)
    running = await start_server(config)
    try:
        if not running.server.platform.media.available:
            pytest.skip(f"media backend {backend} is not available")
        if backend == "janus":  # media really goes through Janus, not a default
            assert isinstance(running.server.platform.media.backend, JanusMediaBackend)
        wav = speech_wav(tmp_path)
        sent, _ = read_wav(wav)
        expected_speech = speech_seconds(sent, RATE)
        assert 4.0 < expected_speech < 12.0

        session = await open_session(running)
        teacher = WebRtcParticipant(
            running.address, await join_token(running, session.id, "teacher", 1)
        )
        learners = [
            WebRtcParticipant(running.address, await join_token(running, session.id, name))
            for name in ("ann", "ben")
        ]
        await teacher.join()
        for learner in learners:
            await learner.join()
        try:
            player = MediaPlayer(str(wav))
            audio = await teacher.publish(player.audio, common_pb2.TRACK_SOURCE_MICROPHONE)
            await teacher.publish(VideoStreamTrack(), common_pb2.TRACK_SOURCE_CAMERA)
            for learner in learners:
                await learner.wait_for_tracks(audio=1, video=1)
            # Let the whole file play, with margin for the start-up and the hangover.
            total = len(sent) / RATE
            await asyncio.sleep(total + 2.0)

            for learner in learners:
                video = learner.received("video")[0]
                assert len(video.frames) >= 10, "video frames arrive"
                received = decoded_audio(learner.received("audio")[0].frames)
                got_speech = speech_seconds(received, RATE)
                assert abs(got_speech - expected_speech) <= 0.2 * expected_speech, (
                    got_speech,
                    expected_speech,
                )
                correlation = best_correlation(sent, received, RATE)
                print(
                    f"speech {expected_speech:.2f}s received {got_speech:.2f}s "
                    f"corr {correlation:.3f}"
                )
                assert correlation > 0.6, correlation

            async with grpc.aio.insecure_channel(running.address) as channel:
                stub = media_grpc.MediaServiceStub(channel)
                metadata = (("authorization", f"Bearer {running.api_key}"),)
                talk = await stub.GetTalkTime(
                    media_api.GetTalkTimeRequest(session_id=session.id), metadata=metadata
                )
                intervals = await stub.ListSpeakingIntervals(
                    media_api.ListSpeakingIntervalsRequest(session_id=session.id),
                    metadata=metadata,
                )
            by_id = {p.participant_id: p for p in talk.participants}
            spoken = by_id[teacher.joined.participant_id].talk_duration.ToTimedelta()
            seconds = spoken.total_seconds()
            print(f"talk time {seconds:.2f}s in {len(intervals.intervals)} intervals")
            assert abs(seconds - expected_speech) <= 0.2 * expected_speech, (
                seconds,
                expected_speech,
            )
            assert all(i.track_id == audio.id for i in intervals.intervals)
            assert by_id[teacher.joined.participant_id].talk_share > 0.99
            for learner in learners:
                # The learners were silent.
                assert (
                    by_id[learner.joined.participant_id].talk_duration.ToTimedelta().total_seconds()
                    == 0
                )
                await learner.wait_for_event("SpeakingIntervalRecorded")
                await learner.wait_for_event("ActiveSpeakersChanged")
        finally:
            for client in (teacher, *learners):
                await client.close()
    finally:
        await running.server.stop(grace=1)
        if drop:
            await drop()
