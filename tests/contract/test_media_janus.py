"""The Janus media backend against a real Janus on loopback, with aiortc clients."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import io
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import SessionDescription as ParsedSdp

from classwire.plugins.janus import JanusMediaBackend, create_backend
from classwire.server.plugins.types import (
    ConfigError,
    MediaEvent,
    PeerSignal,
    PeerStateChanged,
    ProviderContext,
    RoomOptions,
    SessionDescription,
    TrackPublished,
    TrackUnpublished,
)
from classwire.server.testing.media_backend import (
    MediaBackendConformance,
    MediaClient,
    MediaRoom,
    wait_until,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
from janus_server import JanusServer, janus_missing_reason, run_janus  # noqa: E402

pytestmark = pytest.mark.skipif(
    janus_missing_reason() is not None, reason=str(janus_missing_reason())
)

TONE_HZ = 440.0


@pytest.fixture(scope="module")
def janus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JanusServer]:
    with run_janus(tmp_path_factory.mktemp("janus")) as server:
        yield server


@pytest.fixture
async def backend(janus: JanusServer) -> AsyncIterator[JanusMediaBackend]:
    async with JanusMediaBackend(
        janus.url, admin_url=janus.admin_url, admin_secret=janus.admin_secret
    ) as media:
        yield media


class ToneTrack(MediaStreamTrack):
    """A 440 Hz sine, 20 ms frames at 48 kHz, paced in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pts = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        wait = self._start + self._pts / 48000 - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        t = (np.arange(960) + self._pts) / 48000
        samples = (np.sin(2 * np.pi * TONE_HZ * t) * 12000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, self._pts
        frame.time_base = fractions.Fraction(1, 48000)
        self._pts += 960
        return frame


class PatternTrack(MediaStreamTrack):
    """Synthetic 320x240 video at 15 fps: a moving gradient."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        self._count = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        wait = self._start + self._count / 15 - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        image = np.zeros((240, 320, 3), np.uint8)
        image[:, :, 0] = (np.arange(320) + self._count * 4) % 256
        image[:, :, 1] = 128
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = self._count * 6000, fractions.Fraction(1, 90000)
        self._count += 1
        return frame


async def publisher_offer(pc: RTCPeerConnection, *, video: bool = True) -> SessionDescription:
    pc.addTrack(ToneTrack())
    if video:
        pc.addTrack(PatternTrack())
    await pc.setLocalDescription(await pc.createOffer())
    return SessionDescription("offer", pc.localDescription.sdp)


class JanusClient(MediaClient):
    """The conformance client, plus what a Janus client (janus.js, a browser app) does with a
    re-offer: a section the server no longer sends on (``inactive``, or rejected with port 0)
    ends the track it carried.

    Janus never sends RTCP BYE; after ``unsubscribe`` or a publisher leaving it re-offers the
    section as ``a=inactive`` without ``a=msid``. aiortc, unlike a browser, ends a remote track
    only on RTCP BYE or when its receiver stops (aiortc declined ending it on ``inactive``, pull
    request 1204), so the client stops that receiver itself, as the application would.
    """

    def __init__(self, backend: JanusMediaBackend, room: MediaRoom, peer_id: str) -> None:
        super().__init__(backend, room, peer_id)
        self.ended_by_offer: list[str] = []

        @self.subscriber.on("signalingstatechange")
        async def on_state() -> None:
            if self.subscriber.signalingState == "stable":
                await self._end_tracks_not_sent()

    async def _end_tracks_not_sent(self) -> None:
        remote = self.subscriber.remoteDescription
        if remote is None:
            return
        stopped = {
            str(m.rtp.muxId)
            for m in ParsedSdp.parse(remote.sdp).media
            if m.port == 0 or m.direction in ("inactive", "recvonly")
        }
        for transceiver in self.subscriber.getTransceivers():
            track = transceiver.receiver.track
            if transceiver.mid in stopped and track is not None:
                if track.id in self.ended_by_offer:
                    continue
                self.ended_by_offer.append(track.id)
                await transceiver.receiver.stop()


class JanusMediaRoom(MediaRoom):
    async def client(self, peer_id: str) -> MediaClient:
        client = JanusClient(self.backend, self, peer_id)  # type: ignore[arg-type]
        self.clients.append(client)
        await client.join()
        return client


class TestJanusConformance(MediaBackendConformance):
    @pytest.fixture
    async def media_backend(self, backend: JanusMediaBackend) -> AsyncIterator[JanusMediaBackend]:
        yield backend

    @pytest.fixture
    async def media_room(self, media_backend: JanusMediaBackend) -> AsyncIterator[MediaRoom]:
        room = JanusMediaRoom(media_backend, f"room-{secrets.token_hex(4)}")
        await media_backend.create_room(room.room_id, RoomOptions(), room.sink)
        try:
            yield room
        finally:
            await room.close()

    async def test_reoffer_turns_ended_sections_inactive(self, media_room: MediaRoom) -> None:
        """What ends a subscriber's track on Janus: the re-offer after unsubscribe, and after
        the publisher leaves, sends the section ``inactive`` and without its ``a=msid``."""
        await self._publishing(media_room)
        learner = await media_room.client("learner")
        assert isinstance(learner, JanusClient)
        await self._subscribe_all(media_room, learner, "teacher")
        ids = {t.kind: t.track_id for t in media_room.published("teacher")}
        for track_id in ids.values():
            await self._receiving(learner, track_id, 5)

        def sections() -> dict[str, tuple[str, str | None]]:
            remote = ParsedSdp.parse(learner.subscriber.remoteDescription.sdp)
            return {m.kind: (m.direction, m.msid) for m in remote.media}

        await media_room.backend.unsubscribe(media_room.room_id, "learner", ids["audio"])
        await wait_until(lambda: learner.ended_by_offer == [ids["audio"]], what="audio ends")
        assert sections() == {
            "audio": ("inactive", None),
            "video": ("sendonly", f"teacher {ids['video']}"),
        }
        await media_room.backend.close_peer(media_room.room_id, "teacher")
        await wait_until(lambda: len(learner.ended_by_offer) == 2, what="video ends")
        assert sections() == {"audio": ("inactive", None), "video": ("inactive", None)}
        assert learner.received[ids["video"]].ended.is_set() and not learner.errors

    @pytest.fixture
    async def client_offer(self) -> AsyncIterator[SessionDescription]:
        pc = RTCPeerConnection()
        try:
            yield await publisher_offer(pc, video=False)
        finally:
            await pc.close()


def test_factory_validates_options(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        create_backend(ProviderContext(tmp_path, "sqlite://", options={}, name="janus"))
    assert error.value.key == "providers.janus.url"
    with pytest.raises(ConfigError):
        create_backend(
            ProviderContext(
                tmp_path, "sqlite://", options={"url": "http://x/janus", "request_timeout": "x"}
            )
        )
    backend = create_backend(
        ProviderContext(tmp_path, "sqlite://", options={"url": "http://127.0.0.1:1/janus"})
    )
    assert isinstance(backend, JanusMediaBackend)


async def _wait_for(predicate, timeout: float = 15.0) -> None:  # noqa: ANN001
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


def _dominant_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[int(np.argmax(spectrum))])


async def test_publisher_to_subscriber_through_janus(backend: JanusMediaBackend) -> None:
    room_id = f"room-{secrets.token_hex(4)}"
    events: list[MediaEvent] = []
    subscriber_pc = RTCPeerConnection()
    publisher_pc = RTCPeerConnection()
    received: dict[str, list[av.Frame]] = {"audio": [], "video": []}
    signal_tasks: list[asyncio.Task[None]] = []

    async def consume(track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                received[track.kind].append(await track.recv())

    subscriber_pc.on(
        "track", lambda track: signal_tasks.append(asyncio.create_task(consume(track)))
    )

    async def answer(offer: SessionDescription) -> None:
        await subscriber_pc.setRemoteDescription(RTCSessionDescription(offer.sdp, offer.type))
        await subscriber_pc.setLocalDescription(await subscriber_pc.createAnswer())
        await backend.set_remote_description(
            room_id, "learner", SessionDescription("answer", subscriber_pc.localDescription.sdp)
        )

    async def sink(event: MediaEvent) -> None:
        events.append(event)
        if isinstance(event, PeerSignal) and event.peer_id == "learner" and event.description:
            signal_tasks.append(asyncio.create_task(answer(event.description)))

    await backend.create_room(room_id, RoomOptions(), sink)
    try:
        await backend.add_peer(room_id, "teacher")
        await backend.add_peer(room_id, "learner")
        offer = await publisher_offer(publisher_pc)
        result = await backend.publish(room_id, "teacher", offer)
        assert result.type == "answer"
        await publisher_pc.setRemoteDescription(RTCSessionDescription(result.sdp, "answer"))

        published = [e.track for e in events if isinstance(e, TrackPublished)]
        assert sorted(t.kind for t in published) == ["audio", "video"]
        sent_ids = {t.id for t in publisher_pc.getSenders() for t in [t.track]}
        assert {t.client_track_id for t in published} == sent_ids
        assert {t.codec for t in published} == {"opus", "VP8"}
        audio = next(t for t in published if t.kind == "audio")
        video = next(t for t in published if t.kind == "video")

        await _wait_for(
            lambda: any(
                isinstance(e, PeerStateChanged)
                and e.peer_id == "teacher"
                and e.state == "connected"
                for e in events
            )
        )
        await backend.subscribe(room_id, "learner", audio.track_id)
        await backend.subscribe(room_id, "learner", video.track_id)

        # The tap decodes the forwarded Opus once and resamples it to 16 kHz mono.
        pcm = bytearray()
        async for frame in backend.audio_tap(room_id, audio.track_id):
            assert (frame.sample_rate, frame.channels) == (16000, 1)
            pcm += frame.pcm
            if len(pcm) >= 16000 * 2 * 2:
                break
        samples = np.frombuffer(bytes(pcm), np.int16)
        assert abs(_dominant_hz(samples[-16000:], 16000) - TONE_HZ) < 10

        await _wait_for(lambda: len(received["audio"]) > 50 and len(received["video"]) > 10, 20)
        tone = np.concatenate([f.to_ndarray().reshape(-1)[::2] for f in received["audio"][-50:]])
        assert abs(_dominant_hz(tone, received["audio"][-1].sample_rate) - TONE_HZ) < 10
        picture = received["video"][-1]
        assert (picture.width, picture.height) == (320, 240)

        stats = await backend.stats(room_id)
        inbound = {s.track_id for s in stats if s.direction == "inbound"}
        assert inbound == {audio.track_id, video.track_id}
        assert any(s.bitrate_bps for s in stats if s.direction == "inbound")

        # Leaving ends the publisher's tracks for everyone.
        await backend.close_peer(room_id, "teacher")
        gone = {e.track_id for e in events if isinstance(e, TrackUnpublished)}
        assert gone == {audio.track_id, video.track_id}
        assert all(e.reason == "peer_left" for e in events if isinstance(e, TrackUnpublished))
        assert (await backend.room_info(room_id)).tracks == ()
    finally:
        for task in signal_tasks:
            task.cancel()
        await publisher_pc.close()
        await subscriber_pc.close()
        await backend.close_room(room_id)


async def test_recording_is_playable(backend: JanusMediaBackend) -> None:
    room_id = f"room-{secrets.token_hex(4)}"
    events: list[MediaEvent] = []

    async def sink(event: MediaEvent) -> None:
        events.append(event)

    publisher_pc = RTCPeerConnection()
    await backend.create_room(room_id, RoomOptions(), sink)
    try:
        await backend.add_peer(room_id, "teacher")
        result = await backend.publish(room_id, "teacher", await publisher_offer(publisher_pc))
        await publisher_pc.setRemoteDescription(RTCSessionDescription(result.sdp, "answer"))
        tracks = {e.track.kind: e.track.track_id for e in events if isinstance(e, TrackPublished)}

        async def stop_later() -> None:
            await asyncio.sleep(3.0)
            await backend.close_peer(room_id, "teacher")

        stopper = asyncio.create_task(stop_later())
        for format, kinds in (("webm", ("audio", "video")),):
            data = b"".join(
                [
                    c
                    async for c in backend.record(
                        room_id, [tracks[k] for k in kinds], format=format
                    )
                ]
            )
        await stopper
        with av.open(io.BytesIO(data)) as container:
            decoded = {"audio": 0.0, "video": 0}
            for frame in container.decode(*container.streams):
                if isinstance(frame, av.AudioFrame):
                    decoded["audio"] += frame.samples / frame.sample_rate
                else:
                    decoded["video"] += 1
        assert 1.0 < decoded["audio"] < 3.5
        assert decoded["video"] > 5
    finally:
        await publisher_pc.close()
        await backend.close_room(room_id)
