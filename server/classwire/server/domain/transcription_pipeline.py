"""One recognizer per published audio track: decoded audio in, captions and segments out.

The recognizer feeds the track's decoded audio (the media plane's tap, 16 kHz mono; anything
else is resampled here, never refused) to a stream of the engine, and hands what the engine
says to a `CaptionSink`: partial segments throttled to one per `PARTIAL_INTERVAL` (and only
when the text changed), final segments all. Engine times (seconds of audio fed) are mapped back
to the track's own clock, so gaps in the audio (silence suppression, a stalled sender) do not
shift later captions.

A fault of the engine (open, feed or its results) ends this recognizer only: the sink hears
`failed` once and the session goes on.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import av
import numpy as np
import structlog

from ..plugins.types import (
    TRANSCRIPTION_SAMPLE_RATE,
    AudioFrame,
    TranscriptionEngine,
    TranscriptSegment,
)
from ..store.types import utcnow

log = structlog.get_logger(__name__)

PARTIAL_INTERVAL = 0.5  # seconds between two partial captions of one track
# A jump in the track's timestamps larger than this is a gap, not jitter.
GAP_TOLERANCE = 0.05


@dataclass(frozen=True)
class Caption:
    """A segment mapped to wall-clock time, with its utterance."""

    utterance_id: str
    text: str
    start: datetime
    end: datetime
    final: bool
    confidence: float
    language: str


class CaptionSink(Protocol):
    async def caption(self, caption: Caption) -> None: ...

    async def failed(self, reason: str, message: str) -> None: ...


class _Clock:
    """Maps seconds of audio fed to the engine to wall-clock time: piecewise, one anchor per
    gap in the track's timestamps."""

    def __init__(self) -> None:
        self.fed = 0.0  # seconds of audio fed so far
        self._anchors_fed: list[float] = []
        self._anchors_wall: list[datetime] = []
        self._expected: float | None = None  # the track timestamp the next frame should have

    def advance(self, frame_timestamp: float, seconds: float) -> None:
        if self._expected is None or abs(frame_timestamp - self._expected) > GAP_TOLERANCE:
            # The frame's wall time: now, less the audio it carries (it arrived when complete).
            wall = utcnow() - timedelta(seconds=seconds)
            self._anchors_fed.append(self.fed)
            self._anchors_wall.append(wall)
        self._expected = frame_timestamp + seconds
        self.fed += seconds

    def wall(self, fed_seconds: float) -> datetime:
        if not self._anchors_fed:
            return utcnow()
        i = max(0, bisect.bisect_right(self._anchors_fed, fed_seconds) - 1)
        return self._anchors_wall[i] + timedelta(seconds=fed_seconds - self._anchors_fed[i])


class _Resampler:
    """s16 interleaved PCM of any rate and layout -> 16 kHz mono s16le (PyAV's libswresample)."""

    def __init__(self) -> None:
        self._resampler: av.AudioResampler | None = None
        self._format: tuple[int, int] | None = None

    def __call__(self, frame: AudioFrame) -> bytes:
        if frame.sample_rate == TRANSCRIPTION_SAMPLE_RATE and frame.channels == 1:
            return frame.pcm
        if self._format != (frame.sample_rate, frame.channels):
            self._format = (frame.sample_rate, frame.channels)
            self._resampler = av.AudioResampler(
                format="s16", layout="mono", rate=TRANSCRIPTION_SAMPLE_RATE
            )
        samples = np.frombuffer(frame.pcm[: len(frame.pcm) - len(frame.pcm) % 2], np.int16)
        channels = max(1, frame.channels)
        samples = samples[: len(samples) - len(samples) % channels]
        source = av.AudioFrame.from_ndarray(
            samples.reshape(1, -1), format="s16", layout="mono" if channels == 1 else "stereo"
        )
        if channels > 2:
            # Layouts beyond stereo: average the channels first.
            mono = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
            source = av.AudioFrame.from_ndarray(mono.reshape(1, -1), format="s16", layout="mono")
        source.sample_rate = frame.sample_rate
        out = b"".join(
            bytes(f.planes[0])[: f.samples * 2] for f in self._resampler.resample(source)
        )
        return out


class Recognizer:
    """Runs one engine stream over one track's audio until the audio ends or `finish`."""

    def __init__(
        self,
        engine: TranscriptionEngine,
        language: str,
        audio: AsyncIterator[AudioFrame],
        sink: CaptionSink,
        *,
        label: str = "",
    ) -> None:
        self.engine = engine
        self.language = language
        self.audio = audio
        self.sink = sink
        self.label = label
        self.clock = _Clock()
        self.resample = _Resampler()
        self.failed = False
        self._utterance: str | None = None
        self._last_partial = (0.0, "")
        self._feed_task: asyncio.Task | None = None
        self.task: asyncio.Task | None = None

    def start(self) -> asyncio.Task:
        self.task = asyncio.create_task(self._run(), name=f"recognizer {self.label}")
        return self.task

    async def finish(self) -> None:
        """Stop taking audio, flush the engine's last finals to the sink, and return."""
        if self._feed_task is not None and not self._feed_task.done():
            self._feed_task.cancel()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _fail(self, reason: str, exc: BaseException) -> None:
        if self.failed:
            return
        self.failed = True
        message = f"{type(exc).__name__}: {exc}"[:1000]
        log.warning("recognizer failed", track=self.label, reason=reason, error=message)
        await self.sink.failed(reason, message)

    async def _run(self) -> None:
        try:
            stream = await self.engine.open_stream(self.language)
        except Exception as exc:  # noqa: BLE001 - an engine fault ends this track only
            await self._fail("ENGINE_START_FAILED", exc)
            await _drain_closed(self.audio)
            return
        reader = asyncio.create_task(self._read(stream))
        self._feed_task = asyncio.create_task(self._feed(stream))
        with contextlib.suppress(asyncio.CancelledError):
            await self._feed_task
        if not self.failed:
            try:
                await stream.close()
            except Exception as exc:  # noqa: BLE001
                await self._fail("ENGINE_CRASHED", exc)
        if self.failed:
            reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await _drain_closed(self.audio)

    async def _feed(self, stream) -> None:
        async for frame in self.audio:
            pcm = self.resample(frame)
            if not pcm:
                continue
            self.clock.advance(frame.timestamp, len(pcm) / 2 / TRANSCRIPTION_SAMPLE_RATE)
            try:
                await stream.feed(pcm)
            except Exception as exc:  # noqa: BLE001
                await self._fail("ENGINE_CRASHED", exc)
                return
            if self.failed:
                return

    async def _read(self, stream) -> None:
        try:
            async for segment in stream:
                await self._segment(segment)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            await self._fail("ENGINE_CRASHED", exc)
            if self._feed_task is not None:
                self._feed_task.cancel()

    async def _segment(self, segment: TranscriptSegment) -> None:
        text = " ".join(segment.text.split())
        if self._utterance is None:
            self._utterance = f"utt_{uuid.uuid4().hex[:20]}"
        utterance = self._utterance
        if segment.final:
            self._utterance = None
            self._last_partial = (0.0, "")
            if not text:
                return
        else:
            now = asyncio.get_running_loop().time()
            last_time, last_text = self._last_partial
            if not text or text == last_text or now - last_time < PARTIAL_INTERVAL:
                return
            self._last_partial = (now, text)
        start = self.clock.wall(max(0.0, segment.start))
        end = max(start, self.clock.wall(max(segment.start, segment.end)))
        await self.sink.caption(
            Caption(
                utterance_id=utterance,
                text=text,
                start=start,
                end=end,
                final=segment.final,
                confidence=min(1.0, max(0.0, float(segment.confidence))),
                language=segment.language or self.language,
            )
        )


async def _drain_closed(audio: AsyncIterator[AudioFrame]) -> None:
    # Closing the tap releases the media plane's decoder share for this consumer.
    close = getattr(audio, "aclose", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()
