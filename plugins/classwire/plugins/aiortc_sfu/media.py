"""Where samples are needed: one Opus decoder per published track for audio taps, and the
remuxing of encoded packets into WebM or Ogg for recording."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import av

from classwire.server.plugins.muxing import ChunkSink
from classwire.server.plugins.types import AudioFrame

from .forwarding import EncodedPacket, PublishedTrack

__all__ = ["AudioHub", "record_tracks"]

_TAP_QUEUE = 500  # 10 s of 20 ms frames; a tap that falls further behind loses the oldest


class AudioHub:
    """Decodes one published audio track once and feeds every tap, resampled per
    (rate, channels) once too, however many taps share those parameters."""

    def __init__(self, track: PublishedTrack) -> None:
        self.track = track
        self._decoder = av.CodecContext.create("opus", "r")
        self._outputs: dict[tuple[int, int], tuple[Any, set[asyncio.Queue[Any]]]] = {}
        self.decoded_frames = 0
        track.listeners.append(self._on_packet)

    def add_tap(self, sample_rate: int, channels: int) -> asyncio.Queue[AudioFrame | None]:
        q: asyncio.Queue[AudioFrame | None] = asyncio.Queue()
        key = (sample_rate, channels)
        if key not in self._outputs:
            resampler = av.AudioResampler(
                format="s16", layout="mono" if channels == 1 else "stereo", rate=sample_rate
            )
            self._outputs[key] = (resampler, set())
        self._outputs[key][1].add(q)
        if self.track.ended:
            q.put_nowait(None)
        return q

    def remove_tap(self, q: asyncio.Queue[Any]) -> None:
        for key, (_, queues) in list(self._outputs.items()):
            queues.discard(q)
            if not queues:
                del self._outputs[key]
        if not self._outputs and self.track.audio_hub is self:
            self.track.audio_hub = None
            if self._on_packet in self.track.listeners:
                self.track.listeners.remove(self._on_packet)

    def _on_packet(self, packet: EncodedPacket | None) -> None:
        if packet is None:
            for _, queues in self._outputs.values():
                for q in queues:
                    q.put_nowait(None)
            return
        if not self._outputs:
            return
        av_packet = av.Packet(packet.data)
        av_packet.pts = packet.pts
        av_packet.time_base = packet.time_base
        try:
            frames = self._decoder.decode(av_packet)
        except av.FFmpegError:
            return  # a corrupt frame costs its 20 ms, not the tap
        self.decoded_frames += len(frames)
        timestamp = packet.pts / 48000
        level = None if packet.audio_level is None else -float(packet.audio_level)
        for frame in frames:
            frame.pts = None  # the resampler keeps its own clock
            for (rate, channels), (resampler, queues) in self._outputs.items():
                for out in resampler.resample(frame):
                    pcm = bytes(out.planes[0])[: out.samples * 2 * channels]
                    item = AudioFrame(pcm, rate, channels, timestamp, level)
                    for q in queues:
                        if q.qsize() >= _TAP_QUEUE:
                            q.get_nowait()
                        q.put_nowait(item)


def _vp8_size(data: bytes) -> tuple[int, int]:
    # RFC 6386 9.1: a key frame's 3-byte tag, the start code 9d 01 2a, then 14-bit sizes.
    if len(data) >= 10 and data[3:6] == b"\x9d\x01\x2a":
        return int.from_bytes(data[6:8], "little") & 0x3FFF, int.from_bytes(
            data[8:10], "little"
        ) & 0x3FFF
    return 640, 480


async def record_tracks(
    tracks: Sequence[PublishedTrack], container_format: str
) -> AsyncIterator[bytes]:
    """Remux the tracks' encoded packets into one container, yielding bytes as they come.

    Streams are added when each video track has delivered its first keyframe (its size is in
    it); audio that arrives meanwhile is kept. Timestamps are the RTP ones, shifted so that all
    tracks share the recording's start as their origin.
    """
    queue: asyncio.Queue[tuple[int, EncodedPacket | None]] = asyncio.Queue()
    listeners = []
    for index, track in enumerate(tracks):

        def listener(packet: EncodedPacket | None, index: int = index) -> None:
            queue.put_nowait((index, packet))

        listeners.append(listener)
        track.listeners.append(listener)
        if track.ended:
            queue.put_nowait((index, None))
        elif track.kind == "video":
            track.request_keyframe()

    started = time.monotonic()
    origin: dict[int, int] = {}  # per track: RTP pts that maps to its offset from `started`
    open_tracks = set(range(len(tracks)))
    pending: list[tuple[int, EncodedPacket]] = []
    sizes: dict[int, tuple[int, int]] = {}
    sink = ChunkSink()
    container: Any = None
    streams: dict[int, Any] = {}
    try:
        while open_tracks:
            index, packet = await queue.get()
            if packet is None:
                open_tracks.discard(index)
                if container is None and not open_tracks and pending:
                    container, streams = _open(tracks, sizes, sink, container_format)
                continue
            track = tracks[index]
            if track.kind == "video" and index not in sizes:
                if not packet.keyframe:
                    continue
                sizes[index] = _vp8_size(packet.data)
            if index not in origin:
                offset = round((packet.arrival - started) / packet.time_base)
                origin[index] = packet.pts - max(0, offset)
            pending.append((index, packet))
            if container is None:
                waiting_video = [
                    i
                    for i, t in enumerate(tracks)
                    if t.kind == "video" and i not in sizes and i in open_tracks
                ]
                if waiting_video:
                    continue
                container, streams = _open(tracks, sizes, sink, container_format)
            for i, p in pending:
                _mux(container, streams[i], p, p.pts - origin[i])
            pending.clear()
            data = sink.take()
            if data:
                yield data
        if container is not None:
            for i, p in pending:
                _mux(container, streams[i], p, p.pts - origin[i])
            pending.clear()
    finally:
        for track, listener in zip(tracks, listeners, strict=True):
            if listener in track.listeners:
                track.listeners.remove(listener)
        if container is not None:
            container.close()  # writes the trailer
    # Only reached when the tracks ended (not on aclose()): hand out the trailer too.
    data = sink.take()
    if data:
        yield data


def _open(
    tracks: Sequence[PublishedTrack], sizes: dict[int, tuple[int, int]], sink: ChunkSink, fmt: str
) -> tuple[Any, dict[int, Any]]:
    container = av.open(sink, "w", format=fmt)
    streams = {}
    for index, track in enumerate(tracks):
        if track.kind == "audio":
            stream = container.add_stream("libopus", rate=48000, layout="stereo")
        else:
            if index not in sizes:
                continue
            stream = container.add_stream("libvpx", rate=30)
            stream.width, stream.height = sizes[index]
            stream.pix_fmt = "yuv420p"
        streams[index] = stream
    return container, streams


def _mux(container: Any, stream: Any, packet: EncodedPacket, pts: int) -> None:
    if stream is None or pts < 0:
        return
    out = av.Packet(packet.data)
    out.stream = stream
    out.time_base = packet.time_base
    out.pts = out.dts = pts
    if packet.keyframe:
        out.is_keyframe = True
    container.mux(out)
