"""The recorders of one recording in progress on this process.

Per participant (and per kind: camera and microphone, or screen share) the media backend remuxes
the encoded packets of its tracks into WebM; the bytes stream into the blob store as they come
and, through a temporary file on disk, into a PyAV probe of the finished file's duration. The
mixed audio is decoded through the media plane's audio taps (one decode per track, shared with
talk time and transcription), summed with numpy at each frame's position on the recording's
clock, and encoded to Opus in Ogg with PyAV.

Stopping a backend recording by closing its iterator would drop the container's last cluster
(a generator cannot hand out bytes while it is being closed), so a recorder told to stop keeps
reading until the next chunk (the backend emits one per finished cluster, about a second apart)
and closes the iterator right after it: a file ends up to a cluster after the stop, never before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog

from ..plugins import types as pt
from ..plugins.muxing import ChunkSink

log = structlog.get_logger(__name__)

MIX_RATE = 48000
# Audio is mixed this far behind real time so that every track's frames for a moment are in.
MIX_LATENCY = 0.6
MIX_TICK = 0.25
# A track whose frames jump further than this past the samples received had a gap (loss, DTX).
GAP = 0.1
# How long a stopping recorder waits for the backend's next chunk before closing it anyway.
STOP_GRACE = 3.0


def probe_duration(path: str) -> float:
    """Playable length in seconds of a finished file, from its packets (a WebM written to a
    non-seekable stream carries no duration in its header)."""
    import av

    first: float | None = None
    last = 0.0
    with av.open(path) as container:
        for packet in container.demux():
            if packet.pts is None or packet.time_base is None:
                continue
            start = float(packet.pts * packet.time_base)
            end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
            first = start if first is None else min(first, start)
            last = max(last, end)
    return 0.0 if first is None else max(0.0, last - first)


async def until_stopped(source: AsyncIterator[bytes], stop: asyncio.Event) -> AsyncIterator[bytes]:
    """The chunks of `source` until it ends, or until the first chunk after `stop` is set (or
    STOP_GRACE after it, whichever comes first)."""
    iterator = source.__aiter__()
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            following = asyncio.ensure_future(iterator.__anext__())
            if not stop.is_set():
                await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not following.done():
                done, _ = await asyncio.wait({following}, timeout=STOP_GRACE)
                if not done:
                    following.cancel()
                    with contextlib.suppress(BaseException):
                        await following
                    return
            try:
                chunk = following.result()
            except StopAsyncIteration:
                return
            yield chunk
            if stop.is_set():
                return
    finally:
        stopping.cancel()
        with contextlib.suppress(BaseException):
            await iterator.aclose()


class Mixer:
    """Sums decoded mono audio placed by sample position and encodes it to Opus in Ogg.

    Positions count samples at 48 kHz from the recording's origin; what arrives for a time
    already written is dropped. `chunks()` yields the encoded bytes for BlobStore.put."""

    def __init__(self, origin: float) -> None:
        self.origin = origin
        self.written = 0  # samples handed to the encoder
        self.pending = np.zeros(0, dtype=np.float32)  # from `written` on
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._sink = ChunkSink()
        self._container: Any = None
        self._stream: Any = None
        self._pts = 0
        self._taps: dict[str, asyncio.Task] = {}
        self._ticker: asyncio.Task | None = None
        self.closed = False

    def now_samples(self) -> int:
        return int((time.monotonic() - self.origin) * MIX_RATE)

    def add(self, position: int, samples: np.ndarray) -> None:
        if self.closed:
            return
        offset = position - self.written
        if offset < 0:
            samples = samples[-offset:]
            offset = 0
        if not len(samples):
            return
        end = offset + len(samples)
        if end > len(self.pending):
            grown = np.zeros(end, dtype=np.float32)
            grown[: len(self.pending)] = self.pending
            self.pending = grown
        self.pending[offset:end] += samples

    def start(self) -> None:
        self._ticker = asyncio.ensure_future(self._tick())

    def tap(self, track_id: str, frames: AsyncIterator[pt.AudioFrame]) -> None:
        if track_id not in self._taps and not self.closed:
            self._taps[track_id] = asyncio.ensure_future(self._feed(frames))

    def untap(self, track_id: str) -> None:
        task = self._taps.pop(track_id, None)
        if task is not None:
            task.cancel()

    async def _feed(self, frames: AsyncIterator[pt.AudioFrame]) -> None:
        anchor = received = 0
        first: float | None = None
        async for frame in frames:
            data = np.frombuffer(frame.pcm, dtype="<i2")
            if frame.channels > 1:
                data = data.reshape(-1, frame.channels).mean(axis=1)
            data = data.astype(np.float32)
            if frame.sample_rate != MIX_RATE:
                continue  # asked for MIX_RATE; anything else is not ours to place
            if first is None:
                # The first frame sits where it arrived on the recording's clock.
                first = frame.timestamp
                anchor = max(0, self.now_samples() - len(data))
            expected = int(round((frame.timestamp - first) * MIX_RATE))
            if expected - received > GAP * MIX_RATE:
                received = expected
            self.add(anchor + received, data)
            received += len(data)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(MIX_TICK)
            await self._write(self.now_samples() - int(MIX_LATENCY * MIX_RATE))

    async def _write(self, upto: int, final: bool = False) -> None:
        count = max(0, upto - self.written)
        if count == 0 and not final:
            return
        block = np.zeros(count, dtype=np.float32)
        have = min(count, len(self.pending))
        block[:have] = self.pending[:have]
        self.pending = self.pending[have:]
        self.written += count
        data = await asyncio.to_thread(self._encode, block, final)
        if data:
            self.queue.put_nowait(data)

    def _encode(self, block: np.ndarray, final: bool) -> bytes:
        import av

        if self._container is None:
            self._container = av.open(self._sink, "w", format="ogg")
            self._stream = self._container.add_stream("libopus", rate=MIX_RATE, layout="mono")
        if len(block):
            pcm = np.clip(block, -32768, 32767).astype(np.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate = MIX_RATE
            frame.pts = self._pts
            self._pts += pcm.shape[1]
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        if final:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._container.close()  # the trailer
        return self._sink.take()

    async def finish(self, until: float) -> None:
        """Mixes up to `until` (monotonic seconds), writes the trailer and ends `chunks()`."""
        if self.closed:
            return
        # Frames already on their way for the last moments get their chance.
        await asyncio.sleep(min(MIX_LATENCY, max(0.0, until + MIX_LATENCY - time.monotonic())))
        for task in self._taps.values():
            task.cancel()
        await asyncio.gather(*self._taps.values(), return_exceptions=True)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(BaseException):
                await self._ticker
        self.closed = True
        try:
            await self._write(int((until - self.origin) * MIX_RATE), final=True)
        finally:
            self.queue.put_nowait(None)

    async def abort(self) -> None:
        self.closed = True
        for task in [*self._taps.values(), self._ticker]:
            if task is not None:
                task.cancel()
        self.queue.put_nowait(None)

    async def chunks(self) -> AsyncIterator[bytes]:
        while (data := await self.queue.get()) is not None:
            yield data


@dataclass
class FileResult:
    size: int
    duration: float


async def store_stream(
    blobs: pt.BlobStore, key: str, source: AsyncIterator[bytes]
) -> FileResult | None:
    """Streams `source` into the blob store under `key` and, through a temporary file on disk,
    probes the stored file's duration. None (and nothing stored) when no bytes came."""
    handle, path = tempfile.mkstemp(prefix="classwire-rec-")
    written = 0
    try:
        with os.fdopen(handle, "wb") as spool:

            async def tee() -> AsyncIterator[bytes]:
                nonlocal written
                async for chunk in source:
                    spool.write(chunk)
                    written += len(chunk)
                    yield chunk

            info = await blobs.put(key, tee())
        if written == 0:
            with contextlib.suppress(Exception):
                await blobs.delete(key)
            return None
        try:
            duration = await asyncio.to_thread(probe_duration, path)
        except Exception:
            log.warning("recorded file could not be probed", key=key, exc_info=True)
            duration = 0.0
        return FileResult(info.size, duration)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


@dataclass
class Recorder:
    """One file being recorded: a task and the event that tells it to stop."""

    key: tuple[str, int]  # (participant id, file kind)
    track_ids: frozenset[str]
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None


@dataclass
class LiveRecording:
    tenant_id: str
    room_id: str
    recording_id: str
    origin: float  # monotonic time of the start
    kinds: frozenset[int]
    consent_required: bool
    allowed: set[str] = field(default_factory=set)  # consenting participants (consent mode)
    declined: set[str] = field(default_factory=set)
    recorders: dict[tuple[str, int], Recorder] = field(default_factory=dict)
    finished: list[Recorder] = field(default_factory=list)
    settling: dict[tuple[str, int], asyncio.Task] = field(default_factory=dict)
    mixer: Mixer | None = None
    mixer_task: asyncio.Task | None = None
    stopping: bool = False

    def may_record(self, participant_id: str) -> bool:
        if participant_id in self.declined:
            return False
        return not self.consent_required or participant_id in self.allowed


async def gather_quietly(awaitables: list[Awaitable], timeout: float) -> None:
    if awaitables:
        tasks = [asyncio.ensure_future(a) for a in awaitables]
        await asyncio.wait(tasks, timeout=timeout)


Spawn = Callable[[Awaitable], asyncio.Task]
