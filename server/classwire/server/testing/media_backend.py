"""Conformance suite for media backends.

The first checks need no WebRTC client: room lifecycle, typed errors for unknown rooms, peers and
tracks, malformed SDP refused without harming the room. The rest drive the backend with real
aiortc clients in the test process (:class:`MediaClient`): a publisher sends a sine tone and a
synthetic video, subscribers receive and decode both, and the checks cover forwarding of the
publisher's exact encoded payloads, keyframes for late joiners, mute, unsubscribe, peers
leaving, renegotiation, bad SDP from one peer, audio taps, recording and statistics.

    class TestMySfu(MediaBackendConformance):
        @pytest.fixture
        async def media_backend(self):
            async with MySfu(...) as backend:
                yield backend

aiortc gathers its ICE candidates before it offers or answers, so its candidates travel in the
SDP; candidates a backend signals (``PeerSignal.candidate``) are applied to the named connection.
"""

from __future__ import annotations

import asyncio
import fractions
import io
import math
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import pytest
from aiortc.mediastreams import MediaStreamTrack

from classwire.server.plugins.types import (
    IceCandidate,
    InvalidSdpError,
    MediaBackend,
    MediaEvent,
    PeerNotFoundError,
    PeerSignal,
    PeerStateChanged,
    RoomInfo,
    RoomNotFoundError,
    RoomOptions,
    SessionDescription,
    TrackInfo,
    TrackMuted,
    TrackNotFoundError,
    TrackPublished,
    TrackUnpublished,
)

__all__ = [
    "MediaBackendConformance",
    "MediaClient",
    "MediaRoom",
    "PatternVideoTrack",
    "ReceivedTrack",
    "SineAudioTrack",
]

WAIT = 15.0  # generous upper bound for anything that should happen within a second or two


async def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------------------------
# Synthetic sources
# --------------------------------------------------------------------------------------------


class SineAudioTrack(MediaStreamTrack):
    """48 kHz mono 20 ms frames of a sine tone, paced in real time."""

    kind = "audio"

    def __init__(self, frequency: float = 440.0, amplitude: float = 0.3) -> None:
        super().__init__()
        self.frequency = frequency
        self.amplitude = amplitude
        self._samples = 0
        self._start: float | None = None

    async def recv(self) -> Any:
        import av

        rate, n = 48000, 960
        if self._start is None:
            self._start = time.time()
        else:
            wait = self._start + self._samples / rate - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        t = (np.arange(n) + self._samples) / rate
        pcm = (self.amplitude * 32767 * np.sin(2 * math.pi * self.frequency * t)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = self._samples
        frame.time_base = fractions.Fraction(1, rate)
        self._samples += n
        return frame


class PatternVideoTrack(MediaStreamTrack):
    """A moving colour pattern, ``fps`` frames per second, paced in real time."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: int = 30) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self._count = 0
        self._start: float | None = None
        y, x = np.mgrid[0:height, 0:width]
        self._base = ((x + y) % 256).astype(np.uint8)

    async def recv(self) -> Any:
        import av

        if self._start is None:
            self._start = time.time()
        else:
            wait = self._start + self._count / self.fps - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
        shift = (self._count * 4) % 256
        img = np.stack(
            [self._base + shift, np.roll(self._base, shift, axis=1), 255 - self._base], axis=-1
        ).astype(np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts = self._count * (90000 // self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self._count += 1
        return frame


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------


class ReceivedTrack:
    """A track a client receives: decoded frames are counted as they arrive."""

    def __init__(self, track: Any) -> None:
        self.track = track
        self.track_id: str = track.id
        self.kind: str = track.kind
        self.frames = 0
        self.samples = 0
        self.pcm: list[bytes] = []
        self.first_frame_at: float | None = None
        self.ended = asyncio.Event()
        self.sizes: set[tuple[int, int]] = set()
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        from aiortc.mediastreams import MediaStreamError

        try:
            while True:
                frame = await self.track.recv()
                if self.first_frame_at is None:
                    self.first_frame_at = time.monotonic()
                self.frames += 1
                if self.kind == "audio":
                    self.samples += frame.samples
                    self.pcm.append(frame.to_ndarray().tobytes())
                else:
                    self.sizes.add((frame.width, frame.height))
        except (MediaStreamError, asyncio.CancelledError):
            pass
        finally:
            self.ended.set()

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class MediaClient:
    """One participant as a browser would be: a publisher connection it offers and a
    subscriber connection the backend offers, with signaling through the backend API.

    ``sent_payloads``/``received_payloads`` record encoded frames per kind on the wire (Opus
    frames, VP8 frames without their RTP payload descriptor), to show what was forwarded.
    """

    def __init__(self, backend: MediaBackend, room: MediaRoom, peer_id: str) -> None:
        from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection

        self.backend = backend
        self.room = room
        self.peer_id = peer_id
        # As browsers do; aiortc's "balanced" default mishandles several tracks of one kind.
        config = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)
        self.publisher = RTCPeerConnection(config)
        self.subscriber = RTCPeerConnection(config)
        self.received: dict[str, ReceivedTrack] = {}
        self.sent_payloads: dict[str, list[bytes]] = defaultdict(list)
        self.received_payloads: dict[str, list[bytes]] = defaultdict(list)
        self.offers = 0
        self.errors: list[BaseException] = []

        @self.subscriber.on("track")
        def on_track(track: Any) -> None:
            self.received[track.id] = ReceivedTrack(track)

        self._signals = asyncio.ensure_future(self._handle_signals())

    async def join(self) -> None:
        await self.backend.add_peer(self.room.room_id, self.peer_id)

    async def publish(self, *tracks: Any) -> SessionDescription:
        """Add ``tracks`` to the publisher connection and (re)negotiate it."""
        for track in tracks:
            transceiver = self.publisher.addTransceiver(track, direction="sendonly")
            self._record_sent(transceiver.sender, track.kind)
        await self.publisher.setLocalDescription(await self.publisher.createOffer())
        offer = SessionDescription("offer", self.publisher.localDescription.sdp)
        answer = await self.backend.publish(self.room.room_id, self.peer_id, offer)
        from aiortc import RTCSessionDescription

        await self.publisher.setRemoteDescription(RTCSessionDescription(answer.sdp, answer.type))
        return answer

    def _record_sent(self, sender: Any, kind: str) -> None:
        original = sender._next_encoded_frame
        sink = self.sent_payloads[kind]

        async def next_encoded_frame(codec: Any) -> Any:
            frame = await original(codec)
            if frame is not None:
                sink.append(_frame_bytes(kind, frame.payloads))
            return frame

        sender._next_encoded_frame = next_encoded_frame

    def _record_received(self, receiver: Any, kind: str) -> None:
        if getattr(receiver, "_cw_recording", False):
            return
        receiver._cw_recording = True
        original = receiver._handle_rtp_packet
        sink = self.received_payloads[kind]
        partial: dict[int, list[bytes]] = {}

        async def handle(packet: Any, arrival_time_ms: int) -> None:
            if packet.payload_type < 96 or len(packet.payload) < 2:
                return await original(packet, arrival_time_ms=arrival_time_ms)
            parts = partial.setdefault(packet.timestamp, [])
            parts.append(packet.payload)
            if packet.marker or kind == "audio":
                sink.append(_frame_bytes(kind, partial.pop(packet.timestamp)))
                if len(partial) > 32:
                    partial.clear()
            return await original(packet, arrival_time_ms=arrival_time_ms)

        receiver._handle_rtp_packet = handle

    def track_ids(self) -> list[str]:
        return [t.sender.track.id for t in self.publisher.getTransceivers() if t.sender.track]

    async def _handle_signals(self) -> None:
        from aiortc import RTCSessionDescription
        from aiortc.sdp import candidate_from_sdp

        queue = self.room.signals(self.peer_id)
        while True:
            signal = await queue.get()
            try:
                if signal.description is not None:
                    self.offers += 1
                    await self.subscriber.setRemoteDescription(
                        RTCSessionDescription(signal.description.sdp, signal.description.type)
                    )
                    for transceiver in self.subscriber.getTransceivers():
                        self._record_received(transceiver.receiver, transceiver.kind)
                    await self.subscriber.setLocalDescription(await self.subscriber.createAnswer())
                    await self.backend.set_remote_description(
                        self.room.room_id,
                        self.peer_id,
                        SessionDescription("answer", self.subscriber.localDescription.sdp),
                    )
                elif signal.candidate is not None and signal.candidate.candidate:
                    pc = self.publisher if signal.candidate.role == "publisher" else self.subscriber
                    candidate = candidate_from_sdp(
                        signal.candidate.candidate.removeprefix("candidate:")
                    )
                    candidate.sdpMid = signal.candidate.sdp_mid
                    candidate.sdpMLineIndex = signal.candidate.sdp_mline_index
                    await pc.addIceCandidate(candidate)
            except Exception as exc:  # kept for the test to report
                self.errors.append(exc)

    async def close(self) -> None:
        self._signals.cancel()
        await asyncio.gather(self._signals, return_exceptions=True)
        for received in self.received.values():
            await received.close()
        await self.publisher.close()
        await self.subscriber.close()


def _frame_bytes(kind: str, payloads: list[bytes]) -> bytes:
    if kind == "audio":
        return b"".join(payloads)
    from aiortc.codecs.vpx import vp8_depayload

    return b"".join(vp8_depayload(p) for p in payloads)


class MediaRoom:
    """A room plus the events its backend reported, with PeerSignals routed per peer."""

    def __init__(self, backend: MediaBackend, room_id: str) -> None:
        self.backend = backend
        self.room_id = room_id
        self.events: list[MediaEvent] = []
        self._signals: dict[str, asyncio.Queue[PeerSignal]] = {}
        self.clients: list[MediaClient] = []

    def signals(self, peer_id: str) -> asyncio.Queue[PeerSignal]:
        return self._signals.setdefault(peer_id, asyncio.Queue())

    async def sink(self, event: MediaEvent) -> None:
        self.events.append(event)
        if isinstance(event, PeerSignal):
            self.signals(event.peer_id).put_nowait(event)

    async def client(self, peer_id: str) -> MediaClient:
        client = MediaClient(self.backend, self, peer_id)
        self.clients.append(client)
        await client.join()
        return client

    def published(self, peer_id: str | None = None) -> list[TrackInfo]:
        return [
            e.track
            for e in self.events
            if isinstance(e, TrackPublished) and peer_id in (None, e.track.peer_id)
        ]

    def unpublished(self) -> list[TrackUnpublished]:
        return [e for e in self.events if isinstance(e, TrackUnpublished)]

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        await self.backend.close_room(self.room_id)


async def _drain(source: AsyncIterator[Any], into: list[Any]) -> None:
    async for item in source:
        into.append(item)


class MediaBackendConformance:
    """Behaviour every :class:`MediaBackend` must show."""

    @pytest.fixture
    async def media_backend(self) -> AsyncIterator[MediaBackend]:
        raise NotImplementedError("override the media_backend fixture")
        yield  # pragma: no cover

    @pytest.fixture
    async def client_offer(self) -> SessionDescription:
        """A real client offer with one audio track (aiortc's); override for another client."""
        return SessionDescription("offer", await _real_offer())

    @pytest.fixture
    def events(self) -> list[MediaEvent]:
        return []

    @pytest.fixture
    async def room(
        self, media_backend: MediaBackend, events: list[MediaEvent]
    ) -> AsyncIterator[str]:
        room_id = f"room-{secrets.token_hex(4)}"

        async def sink(event: MediaEvent) -> None:
            events.append(event)

        await media_backend.create_room(room_id, RoomOptions(), sink)
        yield room_id
        await media_backend.close_room(room_id)

    async def test_is_a_media_backend(self, media_backend: MediaBackend) -> None:
        assert isinstance(media_backend, MediaBackend)

    async def test_new_room_is_empty(self, media_backend: MediaBackend, room: str) -> None:
        info = await media_backend.room_info(room)
        assert isinstance(info, RoomInfo)
        assert info.room_id == room
        assert list(info.peer_ids) == [] and list(info.tracks) == []
        assert list(await media_backend.stats(room)) == []

    async def test_create_room_is_idempotent(self, media_backend: MediaBackend, room: str) -> None:
        async def sink(event: MediaEvent) -> None:
            pass

        again = await media_backend.create_room(room, RoomOptions(), sink)
        assert again.room_id == room

    async def test_close_room(self, media_backend: MediaBackend) -> None:
        async def sink(event: MediaEvent) -> None:
            pass

        room_id = f"room-{secrets.token_hex(4)}"
        await media_backend.create_room(room_id, RoomOptions(), sink)
        await media_backend.close_room(room_id)
        await media_backend.close_room(room_id)  # idempotent
        with pytest.raises(RoomNotFoundError):
            await media_backend.room_info(room_id)

    async def test_unknown_room(self, media_backend: MediaBackend) -> None:
        missing = f"missing-{secrets.token_hex(4)}"
        with pytest.raises(RoomNotFoundError):
            await media_backend.room_info(missing)
        with pytest.raises(RoomNotFoundError):
            await media_backend.add_peer(missing, "p1")
        with pytest.raises(RoomNotFoundError):
            await media_backend.publish(missing, "p1", SessionDescription("offer", "v=0\r\n"))
        with pytest.raises(RoomNotFoundError):
            await media_backend.stats(missing)

    async def test_unknown_peer_and_track(self, media_backend: MediaBackend, room: str) -> None:
        with pytest.raises(PeerNotFoundError):
            await media_backend.add_ice_candidate(room, "nobody", IceCandidate("", "0", 0))
        with pytest.raises(PeerNotFoundError):
            await media_backend.publish(room, "nobody", SessionDescription("offer", "v=0\r\n"))
        with pytest.raises(PeerNotFoundError):
            await media_backend.set_remote_description(
                room, "nobody", SessionDescription("answer", "v=0\r\n")
            )
        with pytest.raises(TrackNotFoundError):
            await media_backend.set_track_muted(room, "no-track", True)
        with pytest.raises(LookupError):
            await media_backend.subscribe(room, "nobody", "no-track")
        with pytest.raises(TrackNotFoundError):
            async for _ in media_backend.audio_tap(room, "no-track"):
                pass
        await media_backend.close_peer(room, "nobody")  # idempotent

    @pytest.mark.parametrize(
        "sdp", ["", "not sdp at all", "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF\r\n", "v=0\r\n" * 3]
    )
    async def test_malformed_offer_refused(
        self, media_backend: MediaBackend, room: str, sdp: str
    ) -> None:
        await media_backend.add_peer(room, "bad-peer")
        with pytest.raises(InvalidSdpError):
            await media_backend.publish(room, "bad-peer", SessionDescription("offer", sdp))
        # Only that peer is affected, and it keeps its previous (empty) state.
        info = await media_backend.room_info(room)
        assert "bad-peer" in info.peer_ids
        assert [t for t in info.tracks if t.peer_id == "bad-peer"] == []

    async def test_add_peer_is_idempotent(self, media_backend: MediaBackend, room: str) -> None:
        await media_backend.add_peer(room, "p1")
        await media_backend.add_peer(room, "p1")
        assert list((await media_backend.room_info(room)).peer_ids) == ["p1"]
        await media_backend.close_peer(room, "p1")
        await media_backend.close_peer(room, "p1")
        assert "p1" not in (await media_backend.room_info(room)).peer_ids

    async def test_offer_answer(
        self,
        media_backend: MediaBackend,
        room: str,
        client_offer: SessionDescription,
    ) -> None:
        await media_backend.add_peer(room, "p1")
        answer = await media_backend.publish(room, "p1", client_offer)
        assert answer.type == "answer"
        assert answer.sdp.startswith("v=0")
        assert "m=audio" in answer.sdp
        assert "p1" in (await media_backend.room_info(room)).peer_ids
        await media_backend.close_peer(room, "p1")
        assert "p1" not in (await media_backend.room_info(room)).peer_ids

    # -- with real WebRTC clients --------------------------------------------------------------

    @pytest.fixture
    async def media_room(self, media_backend: MediaBackend) -> AsyncIterator[MediaRoom]:
        room = MediaRoom(media_backend, f"room-{secrets.token_hex(4)}")
        await media_backend.create_room(room.room_id, RoomOptions(), room.sink)
        try:
            yield room
        finally:
            await room.close()

    @staticmethod
    async def _publishing(room: MediaRoom, peer_id: str = "teacher") -> MediaClient:
        client = await room.client(peer_id)
        await client.publish(SineAudioTrack(), PatternVideoTrack())
        await wait_until(lambda: len(room.published(peer_id)) == 2, what="TrackPublished x2")
        return client

    @staticmethod
    async def _subscribe_all(room: MediaRoom, client: MediaClient, publisher: str) -> None:
        for info in room.published(publisher):
            await room.backend.subscribe(room.room_id, client.peer_id, info.track_id)

    @staticmethod
    async def _receiving(client: MediaClient, track_id: str, frames: int = 10) -> ReceivedTrack:
        await wait_until(lambda: track_id in client.received, what=f"track {track_id}")
        received = client.received[track_id]
        await wait_until(lambda: received.frames >= frames, what=f"{frames} frames")
        return received

    async def test_client_offer_is_answered(self, media_room: MediaRoom) -> None:
        client = await media_room.client("p1")
        answer = await client.publish(SineAudioTrack())
        assert answer.type == "answer" and "m=audio" in answer.sdp
        await wait_until(lambda: client.publisher.connectionState == "connected")
        [info] = media_room.published("p1")
        assert info.kind == "audio" and info.codec.lower() == "opus"
        assert info.client_track_id == client.track_ids()[0]
        assert [
            t.track_id for t in (await media_room.backend.room_info(media_room.room_id)).tracks
        ] == [info.track_id]

    async def test_subscriber_receives_audio_and_video(self, media_room: MediaRoom) -> None:
        teacher = await self._publishing(media_room)
        learner = await media_room.client("learner")
        await self._subscribe_all(media_room, learner, "teacher")
        infos = {t.kind: t for t in media_room.published("teacher")}
        audio = await self._receiving(learner, infos["audio"].track_id, 50)
        video = await self._receiving(learner, infos["video"].track_id, 10)
        assert audio.samples >= 50 * 960
        assert video.sizes == {(320, 240)}
        assert learner.offers >= 1 and not learner.errors and not teacher.errors

    async def test_forwards_the_publishers_encoded_payloads(self, media_room: MediaRoom) -> None:
        """Passthrough: the subscriber gets the very bytes the publisher's encoder produced.
        A decode-and-re-encode relay could not produce identical Opus and VP8 frames."""
        teacher = await self._publishing(media_room)
        learner = await media_room.client("learner")
        await self._subscribe_all(media_room, learner, "teacher")
        for info in media_room.published("teacher"):
            await self._receiving(learner, info.track_id, 20)
        for kind in ("audio", "video"):
            got = learner.received_payloads[kind]
            sent = set(teacher.sent_payloads[kind])
            assert len(got) >= 10, kind
            same = sum(1 for payload in got if payload in sent)
            assert same >= 0.9 * len(got), (kind, same, len(got))

    async def test_late_joiner_gets_a_picture(self, media_room: MediaRoom) -> None:
        await self._publishing(media_room)
        early = await media_room.client("early")
        await self._subscribe_all(media_room, early, "teacher")
        video_id = next(t.track_id for t in media_room.published("teacher") if t.kind == "video")
        await self._receiving(early, video_id, 30)
        # The publisher's periodic keyframe is far off; only a keyframe request helps here.
        late = await media_room.client("late")
        await media_room.backend.subscribe(media_room.room_id, "late", video_id)
        await self._receiving(late, video_id, 5)

    async def test_mute_stops_forwarding(self, media_room: MediaRoom) -> None:
        await self._publishing(media_room)
        learner = await media_room.client("learner")
        await self._subscribe_all(media_room, learner, "teacher")
        audio_id = next(t.track_id for t in media_room.published("teacher") if t.kind == "audio")
        audio = await self._receiving(learner, audio_id, 10)
        await media_room.backend.set_track_muted(media_room.room_id, audio_id, True)
        await wait_until(lambda: any(isinstance(e, TrackMuted) for e in media_room.events))
        await asyncio.sleep(0.3)  # what was in flight
        before = audio.frames
        await asyncio.sleep(0.5)
        assert audio.frames <= before + 2  # the receiver's jitter buffer may flush a frame
        info = await media_room.backend.room_info(media_room.room_id)
        assert next(t for t in info.tracks if t.track_id == audio_id).muted
        await media_room.backend.set_track_muted(media_room.room_id, audio_id, False)
        await wait_until(lambda: audio.frames >= before + 10, what="audio after unmute")

    async def test_unsubscribe_ends_the_track(self, media_room: MediaRoom) -> None:
        await self._publishing(media_room)
        learner = await media_room.client("learner")
        await self._subscribe_all(media_room, learner, "teacher")
        audio_id = next(t.track_id for t in media_room.published("teacher") if t.kind == "audio")
        video_id = next(t.track_id for t in media_room.published("teacher") if t.kind == "video")
        audio = await self._receiving(learner, audio_id, 10)
        video = await self._receiving(learner, video_id, 5)
        await media_room.backend.unsubscribe(media_room.room_id, "learner", audio_id)
        await asyncio.wait_for(audio.ended.wait(), WAIT)
        frames = video.frames
        await wait_until(lambda: video.frames >= frames + 5, what="video goes on")
        with pytest.raises(TrackNotFoundError):
            await media_room.backend.unsubscribe(media_room.room_id, "learner", "no-such-track")

    async def test_close_peer_ends_its_tracks_for_subscribers(self, media_room: MediaRoom) -> None:
        await self._publishing(media_room)
        learner = await media_room.client("learner")
        await self._subscribe_all(media_room, learner, "teacher")
        received = [
            await self._receiving(learner, t.track_id, 5) for t in media_room.published("teacher")
        ]
        await media_room.backend.close_peer(media_room.room_id, "teacher")
        for track in received:
            await asyncio.wait_for(track.ended.wait(), WAIT)
        reasons = {e.reason for e in media_room.unpublished()}
        assert reasons == {"peer_left"} and len(media_room.unpublished()) == 2
        info = await media_room.backend.room_info(media_room.room_id)
        assert "teacher" not in info.peer_ids and list(info.tracks) == []
        assert any(
            isinstance(e, PeerStateChanged) and e.peer_id == "teacher" for e in media_room.events
        )

    async def test_bad_sdp_from_one_peer_leaves_others_flowing(self, media_room: MediaRoom) -> None:
        await self._publishing(media_room)
        learner = await media_room.client("learner")
        await self._subscribe_all(media_room, learner, "teacher")
        audio_id = next(t.track_id for t in media_room.published("teacher") if t.kind == "audio")
        audio = await self._receiving(learner, audio_id, 10)
        rogue = await media_room.client("rogue")
        real = await _real_offer()
        for sdp in (
            real.replace("a=fingerprint:", "a=x-nothing:"),
            real.replace("opus", "nopus"),
            "v=0\r\n" + "m=video 9 RTP/SAVPF 96\r\n" * 50,
        ):
            with pytest.raises(InvalidSdpError):
                await media_room.backend.publish(
                    media_room.room_id, rogue.peer_id, SessionDescription("offer", sdp)
                )
        with pytest.raises(InvalidSdpError):
            await media_room.backend.set_remote_description(
                media_room.room_id, "learner", SessionDescription("answer", "v=0\r\nnonsense")
            )
        with pytest.raises(InvalidSdpError):
            await media_room.backend.add_ice_candidate(
                media_room.room_id,
                "learner",
                IceCandidate("candidate:garbage", "0", 0, "subscriber"),
            )
        frames = audio.frames
        await wait_until(lambda: audio.frames >= frames + 25, what="audio still flowing")
        # The rogue can still publish properly afterwards.
        await rogue.publish(SineAudioTrack(frequency=660))
        await wait_until(lambda: len(media_room.published("rogue")) == 1)

    async def test_publisher_renegotiates_to_add_a_screen(self, media_room: MediaRoom) -> None:
        teacher = await self._publishing(media_room)
        learner = await media_room.client("learner")
        await self._subscribe_all(media_room, learner, "teacher")
        first = media_room.published("teacher")
        await teacher.publish(PatternVideoTrack(width=480, height=270, fps=10))
        await wait_until(lambda: len(media_room.published("teacher")) == 3, what="3rd track")
        screen = media_room.published("teacher")[2]
        assert screen.kind == "video" and screen.client_track_id == teacher.track_ids()[2]
        await media_room.backend.subscribe(media_room.room_id, "learner", screen.track_id)
        shown = await self._receiving(learner, screen.track_id, 3)
        assert shown.sizes == {(480, 270)}
        audio = learner.received[next(t.track_id for t in first if t.kind == "audio")]
        frames = audio.frames
        await wait_until(lambda: audio.frames >= frames + 10, what="audio after renegotiation")

    async def test_audio_tap_yields_pcm_at_the_asked_rate(self, media_room: MediaRoom) -> None:
        await self._publishing(media_room)
        audio_id = next(t.track_id for t in media_room.published("teacher") if t.kind == "audio")
        frames = []
        tap = media_room.backend.audio_tap(media_room.room_id, audio_id, sample_rate=16000)
        async for frame in tap:
            frames.append(frame)
            if sum(len(f.pcm) for f in frames) >= 16000 * 2:
                break
        await tap.aclose()
        assert {(f.sample_rate, f.channels) for f in frames} == {(16000, 1)}
        pcm = np.frombuffer(b"".join(f.pcm for f in frames), dtype="<i2").astype(float)
        spectrum = np.abs(np.fft.rfft(pcm[-8000:]))
        peak = np.argmax(spectrum) * 16000 / 8000
        assert abs(peak - 440) <= 10, peak  # the publisher's tone, decoded and resampled
        assert frames[-1].timestamp > frames[0].timestamp

    async def test_audio_tap_ends_with_the_track(self, media_room: MediaRoom) -> None:
        await self._publishing(media_room)
        audio_id = next(t.track_id for t in media_room.published("teacher") if t.kind == "audio")
        got: list[Any] = []
        task = asyncio.ensure_future(
            _drain(media_room.backend.audio_tap(media_room.room_id, audio_id), got)
        )
        await wait_until(lambda: len(got) >= 10, what="tap frames")
        await media_room.backend.close_peer(media_room.room_id, "teacher")
        await asyncio.wait_for(task, WAIT)

    async def test_record_is_playable(self, media_room: MediaRoom) -> None:
        import av

        await self._publishing(media_room)
        ids = [t.track_id for t in media_room.published("teacher")]
        chunks: list[bytes] = []
        task = asyncio.ensure_future(
            _drain(media_room.backend.record(media_room.room_id, ids), chunks)
        )
        started = time.monotonic()
        await asyncio.sleep(3)
        await media_room.backend.close_peer(media_room.room_id, "teacher")  # tracks end
        await asyncio.wait_for(task, WAIT)
        elapsed = time.monotonic() - started
        data = b"".join(chunks)
        with av.open(io.BytesIO(data)) as container:
            kinds = sorted(s.type for s in container.streams)
            assert kinds == ["audio", "video"]
            samples = sum(f.samples for f in container.decode(audio=0))
        with av.open(io.BytesIO(data)) as container:
            pictures = sum(1 for _ in container.decode(video=0))
        assert 2.0 <= samples / 48000 <= elapsed + 0.5, (samples / 48000, elapsed)
        assert pictures >= 30

    async def test_stats(self, media_room: MediaRoom) -> None:
        await self._publishing(media_room)
        learner = await media_room.client("learner")
        await self._subscribe_all(media_room, learner, "teacher")
        for info in media_room.published("teacher"):
            await self._receiving(learner, info.track_id, 5)
        await asyncio.sleep(2.5)  # RTCP reports every 0.5-1.5 s
        await media_room.backend.stats(media_room.room_id)
        await asyncio.sleep(1)
        stats = await media_room.backend.stats(media_room.room_id)
        inbound = [s for s in stats if s.direction == "inbound"]
        outbound = [s for s in stats if s.direction == "outbound"]
        assert {s.peer_id for s in inbound} == {"teacher"} and len(inbound) == 2
        assert {s.peer_id for s in outbound} == {"learner"} and len(outbound) == 2
        for sample in stats:
            assert sample.packets_lost >= 0 and 0 <= sample.fraction_lost <= 1
            assert sample.bitrate_bps is not None and sample.bitrate_bps > 0, sample
        assert any(s.round_trip_time_ms is not None for s in outbound)


async def _real_offer() -> str:
    from aiortc import RTCConfiguration, RTCPeerConnection

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver("audio", direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()
