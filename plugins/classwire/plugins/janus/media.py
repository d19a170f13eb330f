"""Media that Janus forwards to us as plain RTP (VideoRoom ``rtp_forward``).

A :class:`RtpForward` is one UDP socket on the provider's host that Janus sends one published
stream to. Listeners get each parsed RTP packet: the once-per-track Opus decoder behind
``audio_tap``, and recorders that remux packets into WebM or Ogg without re-encoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from fractions import Fraction
from typing import Any

import av
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.rtp import RtpPacket

from classwire.server.plugins.muxing import ChunkSink

__all__ = ["AudioDecoder", "RtpForward", "TrackRecorder", "mux_tracks"]

OPUS_RATE = 48000
VIDEO_RATE = 90000
PacketListener = Callable[[RtpPacket], None]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: RtpForward) -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # Janus forwards RTCP elsewhere; anything unparsable is dropped.
        if len(data) < 12 or 192 <= data[1] <= 223:
            return
        try:
            packet = RtpPacket.parse(data)
        except ValueError:
            return
        self.owner.packets += 1
        self.owner.bytes += len(data)
        for listener in list(self.owner.listeners):
            listener(packet)


class RtpForward:
    """A local UDP port receiving one forwarded stream (audio or video) from Janus."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.listeners: set[PacketListener] = set()
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self.stream_id: int | None = None
        self.packets = 0
        self.bytes = 0
        self.ended = asyncio.Event()

    async def open(self, host: str) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(host, 0)
        )
        self.transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        return self.port

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        self.ended.set()


class AudioDecoder:
    """Decodes one Opus track once, however many taps read it.

    Each tap gets the decoded 48 kHz frames through its own queue and resamples them itself.
    """

    def __init__(self) -> None:
        self.codec = av.CodecContext.create("opus", "r")
        self.codec.sample_rate = OPUS_RATE
        self.codec.layout = "stereo"
        self.queues: set[asyncio.Queue[tuple[float, av.AudioFrame] | None]] = set()
        self._first_ts: int | None = None
        self._last_seq: int | None = None
        self.ended = False

    def on_packet(self, packet: RtpPacket) -> None:
        if not packet.payload:
            return
        # Loopback delivers in order; a late duplicate is simply skipped.
        if (
            self._last_seq is not None
            and ((packet.sequence_number - self._last_seq) & 0xFFFF) > 0x8000
        ):
            return
        self._last_seq = packet.sequence_number
        if self._first_ts is None:
            self._first_ts = packet.timestamp
        timestamp = ((packet.timestamp - self._first_ts) & 0xFFFFFFFF) / OPUS_RATE
        try:
            frames = self.codec.decode(av.Packet(packet.payload))
        except av.FFmpegError:
            return
        for frame in frames:
            for queue in self.queues:
                queue.put_nowait((timestamp, frame))
            timestamp += frame.samples / OPUS_RATE

    def end(self) -> None:
        self.ended = True
        for queue in self.queues:
            queue.put_nowait(None)

    async def frames(
        self, sample_rate: int, channels: int
    ) -> AsyncIterator[tuple[float, bytes, int]]:
        """(timestamp, s16 interleaved PCM, samples) at the asked rate and channel count."""
        queue: asyncio.Queue[tuple[float, av.AudioFrame] | None] = asyncio.Queue()
        self.queues.add(queue)
        resampler = av.AudioResampler(
            format="s16", layout="mono" if channels == 1 else "stereo", rate=sample_rate
        )
        try:
            if self.ended:
                return
            while (item := await queue.get()) is not None:
                timestamp, frame = item
                for out in resampler.resample(frame):
                    size = out.samples * 2 * channels
                    yield timestamp, bytes(out.planes[0])[:size], out.samples
        finally:
            self.queues.discard(queue)


def opus_head(channels: int = 2) -> bytes:
    """The OpusHead identification header (RFC 7845 section 5.1) muxers need as extradata."""
    return b"OpusHead" + struct.pack("<BBHIhB", 1, channels, 312, OPUS_RATE, 0, 0)


class TrackRecorder:
    """Collects one track's encoded frames (Opus packets, or VP8 frames rebuilt from RTP)."""

    def __init__(self, kind: str, codec: str) -> None:
        self.kind = kind
        self.codec = codec.lower()
        self.frames: asyncio.Queue[tuple[int, bytes, bool] | None] = asyncio.Queue()
        self._first_ts: int | None = None
        self._vp8_parts: list[bytes] = []
        self._vp8_ts: int | None = None
        self._vp8_ok = True
        self._seen_keyframe = False

    def _rel(self, timestamp: int) -> int:
        if self._first_ts is None:
            self._first_ts = timestamp
        return (timestamp - self._first_ts) & 0xFFFFFFFF

    def on_packet(self, packet: RtpPacket) -> None:
        if not packet.payload:
            return
        if self.kind == "audio":
            self.frames.put_nowait((self._rel(packet.timestamp), packet.payload, True))
            return
        # VP8 (RFC 7741): a frame is the packets sharing a timestamp, the last one marked.
        try:
            descriptor, data = VpxPayloadDescriptor.parse(packet.payload)
        except ValueError:
            self._vp8_ok = False
            return
        if packet.timestamp != self._vp8_ts:
            self._vp8_parts, self._vp8_ts = [], packet.timestamp
            self._vp8_ok = bool(descriptor.partition_start and descriptor.partition_id == 0)
        self._vp8_parts.append(data)
        if packet.marker and self._vp8_ok and self._vp8_parts:
            frame = b"".join(self._vp8_parts)
            self._vp8_parts = []
            keyframe = not (frame[0] & 0x01)
            if keyframe:
                self._seen_keyframe = True
            if self._seen_keyframe:  # a recording starts on a keyframe
                self.frames.put_nowait((self._rel(packet.timestamp), frame, keyframe))

    def end(self) -> None:
        self.frames.put_nowait(None)


async def mux_tracks(recorders: Sequence[TrackRecorder], format: str) -> AsyncIterator[bytes]:
    """Remux the recorders' frames into ``format`` (webm or ogg) until all of them end."""
    sink = ChunkSink()
    container = av.open(sink, mode="w", format=format)
    streams = []
    for recorder in recorders:
        if recorder.kind == "audio":
            stream = container.add_stream("libopus" if format == "webm" else "opus", rate=OPUS_RATE)
            stream.codec_context.extradata = opus_head()
            stream.time_base = Fraction(1, OPUS_RATE)
            rate = OPUS_RATE
        else:
            stream = container.add_stream("libvpx", rate=30)
            stream.width, stream.height = 640, 480
            stream.time_base = Fraction(1, VIDEO_RATE)
            rate = VIDEO_RATE
        streams.append((stream, rate))
    queue: asyncio.Queue[tuple[int, tuple[int, bytes, bool] | None]] = asyncio.Queue()

    async def pump(index: int, recorder: TrackRecorder) -> None:
        while True:
            item = await recorder.frames.get()
            await queue.put((index, item))
            if item is None:
                return

    pumps = [asyncio.create_task(pump(i, r)) for i, r in enumerate(recorders)]
    open_tracks = len(recorders)
    last_pts = [-1] * len(recorders)
    try:
        while open_tracks:
            index, item = await queue.get()
            if item is None:
                open_tracks -= 1
                continue
            pts, data, keyframe = item
            if pts <= last_pts[index]:
                continue
            last_pts[index] = pts
            stream, rate = streams[index]
            packet = av.Packet(data)
            packet.stream = stream
            packet.time_base = Fraction(1, rate)
            packet.pts = packet.dts = pts
            packet.is_keyframe = keyframe
            container.mux(packet)
            if chunk := sink.take():
                yield chunk
    finally:
        for task in pumps:
            task.cancel()
        with contextlib.suppress(Exception):
            container.close()
    if chunk := sink.take():
        yield chunk
