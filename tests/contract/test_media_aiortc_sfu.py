"""The aiortc SFU against the media backend conformance suite, plus what is its own: no encoder
runs for forwarding, and audio is decoded once per track however many taps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from classwire.plugins.aiortc_sfu import AiortcSfu, create_backend
from classwire.plugins.aiortc_sfu.forwarding import _Packer
from classwire.server.plugins.types import ConfigError, MediaBackend, ProviderContext
from classwire.server.testing.media_backend import (
    MediaBackendConformance,
    MediaRoom,
    wait_until,
)


class TestAiortcSfuConformance(MediaBackendConformance):
    @pytest.fixture
    async def media_backend(self) -> AsyncIterator[MediaBackend]:
        async with AiortcSfu() as backend:
            yield backend

    async def test_no_encoder_runs_for_subscribers(self, media_room: MediaRoom) -> None:
        await self._publishing(media_room)
        learners = [await media_room.client(f"learner-{i}") for i in range(2)]
        for learner in learners:
            await self._subscribe_all(media_room, learner, "teacher")
        for learner in learners:
            for info in media_room.published("teacher"):
                await self._receiving(learner, info.track_id, 10)
        backend = media_room.backend
        assert isinstance(backend, AiortcSfu)
        room = backend._rooms[media_room.room_id]
        for peer_id in ("learner-0", "learner-1"):
            for copy, transceiver in room.peers[peer_id].subscriptions.values():
                assert copy.forwarded >= 10
                # The sender packs what the publisher encoded; its "encoder" cannot encode.
                assert isinstance(transceiver.sender._RTCRtpSender__encoder, _Packer)
        assert _Packer.encodes == 0

    async def test_audio_is_decoded_once_for_all_taps(self, media_room: MediaRoom) -> None:
        await self._publishing(media_room)
        audio_id = next(t.track_id for t in media_room.published("teacher") if t.kind == "audio")
        backend = media_room.backend
        taps = [
            backend.audio_tap(media_room.room_id, audio_id, sample_rate=rate, channels=channels)
            for rate, channels in ((16000, 1), (16000, 1), (48000, 2))
        ]
        got: list[list] = [[] for _ in taps]

        async def read(i: int) -> None:
            async for frame in taps[i]:
                got[i].append(frame)
                if len(got[i]) >= 50:
                    return

        await asyncio.wait_for(asyncio.gather(*(read(i) for i in range(3))), 15)
        track = backend._rooms[media_room.room_id].tracks[audio_id]
        hub = track.audio_hub
        # One decoder: it decoded about as many frames as the track delivered, not three times.
        assert hub.decoded_frames <= track.frames
        assert {f.sample_rate for f in got[2]} == {48000} and {f.channels for f in got[2]} == {2}
        # The aiortc client sends RFC 6464 levels, which the tap passes on.
        assert any(f.level_dbov is not None and -127 <= f.level_dbov <= 0 for f in got[0])
        for tap in taps:
            await tap.aclose()
        await wait_until(lambda: track.audio_hub is None, what="hub released")

    async def test_ogg_recording_of_audio(self, media_room: MediaRoom) -> None:
        import io

        import av

        await self._publishing(media_room)
        audio_id = next(t.track_id for t in media_room.published("teacher") if t.kind == "audio")
        chunks: list[bytes] = []

        async def drain() -> None:
            async for chunk in media_room.backend.record(
                media_room.room_id, [audio_id], format="ogg"
            ):
                chunks.append(chunk)

        task = asyncio.ensure_future(drain())
        await asyncio.sleep(2)
        await media_room.backend.close_peer(media_room.room_id, "teacher")
        await asyncio.wait_for(task, 15)
        with av.open(io.BytesIO(b"".join(chunks)), format="ogg") as container:
            samples = sum(f.samples for f in container.decode(audio=0))
        assert 1.5 <= samples / 48000 <= 3.0


def test_factory_reads_options(tmp_path: Path) -> None:
    backend = create_backend(
        ProviderContext(tmp_path, "", options={"keyframe_interval_ms": 500, "stun_servers": []})
    )
    assert isinstance(backend, AiortcSfu) and backend._keyframe_interval == 0.5
    with pytest.raises(ConfigError):
        create_backend(ProviderContext(tmp_path, "", options={"keyframe_interval_ms": "x"}))
