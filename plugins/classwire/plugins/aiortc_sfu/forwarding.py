"""Forwarding encoded media through aiortc without decoding it.

aiortc's RTCRtpReceiver reassembles frames in its jitter buffer and hands them, through a
``queue.Queue``, to a decoder thread. :class:`SfuPeerConnection` gives each of its own receivers
a :class:`_FrameTap` in place of that queue, so complete encoded frames come out on the event loop
and the decoder thread idles until the receiver stops. Nothing in aiortc is patched globally:
other RTCPeerConnection objects in the process keep decoding as usual.

On the way out, RTCRtpSender already packs pre-encoded input: when a track's ``recv()`` returns
something that is not an ``av.Frame``, the codec's ``pack()`` (Opus: one payload; VP8: the
payload descriptor and fragmentation) turns it into RTP payloads without an encoder.
"""

from __future__ import annotations

import asyncio
import fractions
import queue
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

__all__ = [
    "EncodedPacket",
    "ForwardTrack",
    "PublishedTrack",
    "SfuPeerConnection",
    "is_vp8_keyframe",
    "packer",
    "supported_codecs",
]

FORWARDED_CODECS = {"audio": "opus", "video": "VP8"}
_AUDIO_QUEUE = 50  # 1 s of 20 ms Opus frames
_VIDEO_QUEUE = 60


def supported_codecs(kind: str, name: str | None = None) -> list[Any]:
    """Codec capabilities the SFU negotiates for ``kind`` (the one it forwards, plus RTX)."""
    wanted = (name or FORWARDED_CODECS[kind]).lower()
    return [
        c for c in RTCRtpSender.getCapabilities(kind).codecs if c.name.lower() in (wanted, "rtx")
    ]


def is_vp8_keyframe(data: bytes) -> bool:
    # RFC 6386 9.1: the frame tag's lowest bit is 0 on key frames.
    return bool(data) and not data[0] & 0x01


class EncodedPacket:
    """One encoded frame, shared by every subscriber (nobody mutates it).

    It is what aiortc's codec ``pack()`` reads from a pre-encoded track: ``bytes(packet)``,
    ``pts`` and ``time_base``.
    """

    __slots__ = ("arrival", "audio_level", "data", "keyframe", "pts", "time_base")

    def __init__(
        self,
        data: bytes,
        pts: int,
        time_base: fractions.Fraction,
        keyframe: bool,
        audio_level: int | None,
        arrival: float,
    ) -> None:
        self.data = data
        self.pts = pts
        self.time_base = time_base
        self.keyframe = keyframe
        self.audio_level = audio_level
        self.arrival = arrival

    def __bytes__(self) -> bytes:
        return self.data


class _Packer:
    """The sender's "encoder" for forwarded media: it packetizes and never encodes.

    Set on each subscriber sender in place of the one aiortc would create on the first frame
    (its Opus encoder opens a libopus context per sender in its constructor)."""

    encodes = 0

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        type(self).encodes += 1  # counted, so that a test can show it never happens
        raise RuntimeError("the SFU forwards encoded media and never encodes")


class OpusPacker(_Packer):
    def pack(self, packet: EncodedPacket) -> tuple[list[bytes], int]:
        return [packet.data], packet.pts  # Opus RTP uses the 48 kHz clock, like the input


class Vp8Packer(_Packer, Vp8Encoder):
    """aiortc's VP8 payloader (descriptor, picture id, fragmentation); no codec is opened."""


def packer(kind: str) -> _Packer:
    return OpusPacker() if kind == "audio" else Vp8Packer()


class ForwardTrack(MediaStreamTrack):
    """A subscriber's copy of a published track: yields :class:`EncodedPacket` objects.

    It takes packets only once its sender has started reading, so that nothing stale piles up
    during negotiation; a video copy then waits for a keyframe (and asks for one).
    """

    def __init__(self, source: PublishedTrack) -> None:
        super().__init__()
        self.kind = source.kind
        self._id = source.track_id
        self.source = source
        self._queue: deque[EncodedPacket | None] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._reading = False
        self._need_keyframe = source.kind == "video"
        self._limit = _VIDEO_QUEUE if source.kind == "video" else _AUDIO_QUEUE
        self.forwarded = 0
        self.dropped = 0

    def push(self, packet: EncodedPacket) -> None:
        if not self._reading:
            return
        if self._need_keyframe:
            if not packet.keyframe:
                return
            self._need_keyframe = False
        q = self._queue
        if len(q) >= self._limit:
            # A subscriber that cannot keep up loses the oldest media; video then restarts
            # from a keyframe rather than showing a broken picture.
            self.dropped += len(q) if self.kind == "video" else 1
            if self.kind == "video":
                q.clear()
                self._need_keyframe = True
                self.source.request_keyframe()
                return
            q.popleft()
        q.append(packet)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def need_keyframe(self) -> None:
        if self.kind == "video":
            self._need_keyframe = True
            self._queue.clear()

    def end(self) -> None:
        self._queue.append(None)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def recv(self) -> EncodedPacket:  # type: ignore[override]
        if self.readyState != "live":
            raise MediaStreamError
        if not self._reading:
            self._reading = True
            if self.kind == "video":
                self.source.request_keyframe()
        q = self._queue
        while not q:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        packet = q.popleft()
        if packet is None:
            self.stop()
            raise MediaStreamError
        self.forwarded += 1
        return packet


class PublishedTrack:
    """A track a peer publishes: fans its encoded frames out to subscribers and listeners."""

    def __init__(
        self,
        *,
        track_id: str,
        peer_id: str,
        kind: str,
        client_track_id: str,
        keyframe_interval: float,
    ) -> None:
        self.track_id = track_id
        self.peer_id = peer_id
        self.kind = kind
        self.client_track_id = client_track_id
        self.codec = FORWARDED_CODECS[kind]
        self.muted = False
        self.ended = False
        self.receiver: Any = None
        self.mid: str | None = None
        self.subscribers: dict[str, ForwardTrack] = {}
        # Callables fed every encoded packet (taps, recorders); None means the track ended.
        self.listeners: list[Callable[[EncodedPacket | None], None]] = []
        self.frames = 0
        # Encoded payload bytes received: the inbound bitrate, without waiting for the
        # publisher's RTCP sender reports (sent only every 0.5-1.5 s).
        self.bytes_received = 0
        self.first_arrival: float | None = None
        self._keyframe_interval = keyframe_interval
        self._last_pli = -1e9
        self._pli_pending: asyncio.TimerHandle | None = None
        self.plis_sent = 0
        self.audio_hub: Any = None
        self.on_end: Callable[[], None] | None = None

    # -- input from the receiver ---------------------------------------------------------------

    def on_frame(self, data: bytes, pts: int, clock_rate: int, audio_level: int | None) -> None:
        now = time.monotonic()
        if self.first_arrival is None:
            self.first_arrival = now
        self.frames += 1
        self.bytes_received += len(data)
        packet = EncodedPacket(
            data,
            pts,
            fractions.Fraction(1, clock_rate),
            self.kind == "audio" or is_vp8_keyframe(data),
            audio_level,
            now,
        )
        for listener in self.listeners:
            listener(packet)
        if self.muted:
            return
        for sub in self.subscribers.values():
            sub.push(packet)

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self._pli_pending is not None:
            self._pli_pending.cancel()
        for sub in self.subscribers.values():
            sub.end()
        for listener in list(self.listeners):
            listener(None)
        self.listeners.clear()
        if self.on_end is not None:
            self.on_end()

    # -- keyframes -----------------------------------------------------------------------------

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe (PLI), at most once per interval; a request inside
        the interval is sent when it ends, so none is lost."""
        if self.kind != "video" or self.ended or self.receiver is None:
            return
        loop = asyncio.get_running_loop()
        wait = self._last_pli + self._keyframe_interval - loop.time()
        if wait <= 0:
            self._send_pli()
        elif self._pli_pending is None:
            self._pli_pending = loop.call_later(wait, self._send_pli)

    def _send_pli(self) -> None:
        self._pli_pending = None
        if self.ended:
            return
        self._last_pli = asyncio.get_running_loop().time()
        sources = self.receiver.getSynchronizationSources()
        if sources:
            self.plis_sent += 1
            asyncio.ensure_future(self.receiver._send_rtcp_pli(sources[0].source))
        else:
            # Nothing received yet: the first frame will be a keyframe anyway; try again soon.
            self._pli_pending = asyncio.get_running_loop().call_later(
                self._keyframe_interval, self._send_pli
            )


class _FrameTap:
    """Stands in for the receiver's decoder queue (see the module docstring).

    ``put`` runs on the event loop (from ``RTCRtpReceiver._handle_rtp_packet``); the idle decoder
    thread blocks in ``get`` until the receiver stops and puts None.
    """

    def __init__(self, hook: ReceiverHook) -> None:
        self._hook = hook
        self._stop: queue.Queue[None] = queue.Queue()

    def put(self, task: Any) -> None:
        if task is None:
            self._stop.put(None)
            self._hook.ended()
            return
        codec, frame = task
        self._hook.frame(codec, frame)

    def get(self) -> None:
        return self._stop.get()


class _LevelJitterBuffer:
    """Wraps the receiver's jitter buffer to carry each frame's RFC 6464 level (and note the
    sender's SSRC) from the RTP packet to the reassembled frame."""

    def __init__(self, inner: Any, hook: ReceiverHook) -> None:
        self._inner = inner
        self._hook = hook
        self._levels: dict[int, int] = {}

    def add(self, packet: Any) -> tuple[bool, Any]:
        level = packet.extensions.audio_level
        if level is not None:
            if len(self._levels) > 64:
                self._levels.clear()
            self._levels[packet.timestamp] = level[1]
        pli, frame = self._inner.add(packet)
        if frame is not None:
            frame.audio_level = self._levels.pop(frame.timestamp, None)
        return pli, frame

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ReceiverHook:
    """Connects one of the SFU's receivers to the :class:`PublishedTrack` it feeds."""

    def __init__(self, receiver: Any) -> None:
        self.receiver = receiver
        self.track: PublishedTrack | None = None
        self.is_ended = False
        receiver._RTCRtpReceiver__decoder_queue = _FrameTap(self)
        receiver._RTCRtpReceiver__jitter_buffer = _LevelJitterBuffer(
            receiver._RTCRtpReceiver__jitter_buffer, self
        )

    def frame(self, codec: Any, frame: Any) -> None:
        track = self.track
        if track is not None and not track.ended:
            track.on_frame(frame.data, frame.timestamp, codec.clockRate, frame.audio_level)

    def ended(self) -> None:
        self.is_ended = True
        if self.track is not None:
            self.track.end()


class SfuPeerConnection(RTCPeerConnection):
    """An RTCPeerConnection whose receivers hand out encoded frames instead of decoding them.

    Only this subclass changes: aiortc calls ``self.__createTransceiver`` internally, which
    name-mangles to the method overridden here.
    """

    def _RTCPeerConnection__createTransceiver(  # noqa: N802 - overrides a mangled name
        self, direction: str, kind: str, sender_track: Any = None
    ) -> Any:
        transceiver = super()._RTCPeerConnection__createTransceiver(  # type: ignore[misc]
            direction, kind, sender_track
        )
        transceiver._cw_hook = ReceiverHook(transceiver.receiver)
        # Only the forwarded codec is accepted, so that every subscriber can take the
        # publisher's packets as they are.
        transceiver.setCodecPreferences(supported_codecs(kind))
        return transceiver
