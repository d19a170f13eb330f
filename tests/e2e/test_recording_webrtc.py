"""End to end over real WebRTC on loopback: an instructor publishes speech synthesized with
espeak-ng and synthetic video, a learner listens; a recording started over the API and stopped
becomes READY; the instructor's WebM and the mixed audio, downloaded through the API, decode with
PyAV to the recording's length, and the mix's audio correlates with the speech.
Parametrized by media backend: the in-process SFU and a real Janus."""

from __future__ import annotations

import asyncio
import contextlib
import io
from pathlib import Path

import av
import grpc
import numpy as np
import pytest
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from conftest import create_database, make_config, start_server
from integration.test_media import join_token, open_session
from support.janus_server import backend_settings
from support.webrtc_client import WebRtcParticipant
from test_media_webrtc import RATE, best_correlation, read_wav, resample, speech_wav

from classwire.api.common.v1 import common_pb2
from classwire.api.media.v1 import resources_pb2 as media_pb
from classwire.api.media.v1 import service_pb2 as media_api
from classwire.api.media.v1 import service_pb2_grpc as media_grpc
from classwire.plugins.janus import JanusMediaBackend


class SpeechThenSilence(AudioStreamTrack):
    """The speech once, then silence, paced in real time: a microphone keeps sending after
    its speaker stops (a track that stops sending would hold back the muxer's other streams)."""

    def __init__(self, samples: np.ndarray, rate: int) -> None:
        super().__init__()
        pcm = np.clip(resample(samples, rate, 8000), -1, 1) * 32767
        self.pcm = pcm.astype("<i2").tobytes()
        self.position = 0

    async def recv(self):
        frame = await super().recv()  # 20 ms of silence at 8 kHz, paced
        size = frame.planes[0].buffer_size
        chunk = self.pcm[self.position : self.position + size]
        self.position += size
        if chunk:
            frame.planes[0].update(chunk + bytes(size - len(chunk)))
        return frame


def decode(data: bytes) -> tuple[np.ndarray, float, int]:
    """Mono audio at RATE, the audio's length in seconds, and the number of video frames."""
    parts, rate, video = [], RATE, 0
    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(*container.streams):
            if isinstance(frame, av.VideoFrame):
                video += 1
                continue
            array = frame.to_ndarray().astype(np.float64) / 32768.0
            channels = len(frame.layout.channels)
            if frame.format.is_planar:
                array = array.mean(axis=0)
            else:
                array = array.reshape(-1, channels).mean(axis=1)
            parts.append(array)
            rate = frame.sample_rate
    audio = np.concatenate(parts) if parts else np.zeros(0)
    return resample(audio, rate, RATE), len(audio) / rate, video


async def download(stub, metadata, request) -> tuple[media_pb.RecordingFile, bytes]:
    messages = [m async for m in stub.DownloadRecording(request, metadata=metadata)]
    return messages[0].file, b"".join(m.chunk.data for m in messages[1:])


@pytest.mark.parametrize("backend", ["aiortc_sfu", "janus"])
async def test_recording_of_speech_and_video(tmp_path, backend):
    with contextlib.ExitStack() as stack:
        await recording_of_speech_and_video(tmp_path, backend, stack)


async def recording_of_speech_and_video(
    tmp_path: Path, backend: str, stack: contextlib.ExitStack
) -> None:
    overrides = backend_settings(backend, tmp_path, stack)
    url, drop = await create_database(tmp_path)
    running = await start_server(make_config(tmp_path, url, **overrides))
    try:
        if not running.server.platform.media.available:
            pytest.skip(f"media backend {backend} is not available")
        if backend == "janus":  # media really goes through Janus, not a default
            assert isinstance(running.server.platform.media.backend, JanusMediaBackend)
        wav = speech_wav(tmp_path)
        sent, _ = read_wav(wav)
        session = await open_session(running)
        teacher = WebRtcParticipant(
            running.address, await join_token(running, session.id, "teacher", 1)
        )
        learner = WebRtcParticipant(running.address, await join_token(running, session.id, "ann"))
        metadata = (("authorization", f"Bearer {running.api_key}"),)
        channel = grpc.aio.insecure_channel(running.address)
        stub = media_grpc.MediaServiceStub(channel)
        try:
            await teacher.join()
            await learner.join()
            started = await stub.StartRecording(
                media_api.StartRecordingRequest(session_id=session.id), metadata=metadata
            )
            recording_id = started.recording.id
            await learner.wait_for_event("RecordingConsentRequested")
            # Published after the start: the tracks join the recording.
            speech = SpeechThenSilence(sent, RATE)
            await teacher.publish(speech, common_pb2.TRACK_SOURCE_MICROPHONE)
            await teacher.publish(VideoStreamTrack(), common_pb2.TRACK_SOURCE_CAMERA)
            await learner.wait_for_tracks(audio=1, video=1)
            await asyncio.sleep(len(sent) / RATE + 1.5)
            await stub.StopRecording(
                media_api.StopRecordingRequest(recording_id=recording_id), metadata=metadata
            )
            async with asyncio.timeout(60):
                while True:
                    got = await stub.GetRecording(
                        media_api.GetRecordingRequest(recording_id=recording_id),
                        metadata=metadata,
                    )
                    if got.recording.state in (
                        media_pb.RECORDING_STATE_READY,
                        media_pb.RECORDING_STATE_FAILED,
                    ):
                        break
                    await asyncio.sleep(0.2)
            recording = got.recording
            assert recording.state == media_pb.RECORDING_STATE_READY, recording
            recorded = recording.duration.ToTimedelta().total_seconds()
            kinds = sorted(f.kind for f in recording.files)
            assert kinds == [
                media_pb.RECORDING_FILE_KIND_PARTICIPANT,
                media_pb.RECORDING_FILE_KIND_MIXED_AUDIO,
            ], recording.files

            own, data = await download(
                stub,
                metadata,
                media_api.DownloadRecordingRequest(
                    recording_id=recording_id,
                    participant_file=media_api.DownloadRecordingRequest.ParticipantFile(
                        participant_id=teacher.joined.participant_id,
                        kind=media_pb.RECORDING_FILE_KIND_PARTICIPANT,
                    ),
                ),
            )
            assert own.mime_type == "video/webm" and len(own.track_ids) == 2
            assert own.size_bytes == len(data)
            audio, seconds, video_frames = decode(data)
            # The file starts when the tracks were published, a moment after the recording.
            expected = (
                recording.stop_time.ToDatetime() - own.start_time.ToDatetime()
            ).total_seconds()
            probed = own.duration.ToTimedelta().total_seconds()
            print(
                f"participant file {probed:.2f}s for {expected:.2f}s recorded, audio "
                f"{seconds:.2f}s, {video_frames} video frames"
            )
            assert abs(probed - expected) <= 0.15 * expected, (probed, expected)
            assert abs(seconds - expected) <= 0.15 * expected, (seconds, expected)
            assert video_frames >= 10
            assert best_correlation(sent, audio, RATE) > 0.6

            mix, data = await download(
                stub,
                metadata,
                media_api.DownloadRecordingRequest(
                    recording_id=recording_id,
                    mixed_audio=media_api.DownloadRecordingRequest.MixedAudio(),
                ),
            )
            assert mix.mime_type == "audio/ogg"
            audio, seconds, _ = decode(data)
            correlation = best_correlation(sent, audio, RATE)
            print(f"mix {seconds:.2f}s of {recorded:.2f}s recorded, correlation {correlation:.3f}")
            assert abs(seconds - recorded) <= 0.10 * recorded, (seconds, recorded)
            assert correlation > 0.6, correlation
            await learner.wait_for_event("RecordingReady")
        finally:
            for client in (teacher, learner):
                await client.close()
            await channel.close()
    finally:
        await running.server.stop(grace=1)
        if drop:
            await drop()
