"""Talk time: a voice-activity detector over decoded audio levels.

One task per published audio track reads the backend's audio tap (the backend decodes each
track once, whatever the number of taps), measures the level of every 20 ms (the RFC 6464
header level when the sender gave one, else the RMS of the samples in dBov), and runs a
hysteresis detector: speech starts above `on_dbov`, continues while above `off_dbov`, and ends
after `hangover` seconds below it. Intervals shorter than `min_interval` (clicks, coughs) are
dropped.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import structlog

from ..plugins.types import AudioFrame

if TYPE_CHECKING:
    from .media import MediaDomain, PublishedAudioTrack

log = structlog.get_logger(__name__)

SAMPLE_RATE = 16000
CHUNK_SECONDS = 0.020
SILENCE_DBOV = -127.0


@dataclass(frozen=True)
class TalkSettings:
    on_dbov: float = -45.0
    off_dbov: float = -52.0
    hangover: float = 0.3
    min_interval: float = 0.25
    # ActiveSpeakersChanged at most this often per room.
    speakers_interval: float = 0.25


def chunk_levels(frame: AudioFrame, chunk_seconds: float = CHUNK_SECONDS) -> list[float]:
    """The level in dBov of every `chunk_seconds` of a frame (a last partial chunk included)."""
    samples = np.frombuffer(frame.pcm[: len(frame.pcm) // 2 * 2], dtype="<i2")
    if frame.channels > 1:
        samples = samples[: len(samples) // frame.channels * frame.channels]
        samples = samples.reshape(-1, frame.channels).mean(axis=1)
    size = max(1, int(frame.sample_rate * chunk_seconds))
    count = max(1, math.ceil(len(samples) / size)) if len(samples) else 0
    if frame.level_dbov is not None:
        return [max(SILENCE_DBOV, min(0.0, float(frame.level_dbov)))] * max(count, 1)
    levels = []
    for i in range(count):
        chunk = samples[i * size : (i + 1) * size].astype(np.float64) / 32768.0
        rms = math.sqrt(float(np.mean(chunk * chunk))) if len(chunk) else 0.0
        levels.append(max(SILENCE_DBOV, 20.0 * math.log10(rms)) if rms > 0 else SILENCE_DBOV)
    return levels


class VoiceActivity:
    """Hysteresis detector. `feed` takes a chunk's start time (seconds) and level, and returns
    the speaking interval it closed, if any."""

    def __init__(self, settings: TalkSettings) -> None:
        self.settings = settings
        self.start: float | None = None
        self.last_voice = 0.0

    @property
    def speaking(self) -> bool:
        return self.start is not None

    def feed(self, t: float, level: float, duration: float = CHUNK_SECONDS):
        s = self.settings
        if self.start is None:
            if level >= s.on_dbov:
                self.start = t
                self.last_voice = t + duration
            return None
        if level >= s.off_dbov:
            self.last_voice = t + duration
            return None
        if t + duration - self.last_voice >= s.hangover:
            return self._close()
        return None

    def flush(self):
        """Closes an interval in progress (the track ended)."""
        return self._close() if self.start is not None else None

    def _close(self):
        start, end = self.start, self.last_voice
        self.start = None
        if end - start >= self.settings.min_interval:
            return start, end
        return None


class TalkTime:
    """The talk-time listener: one detector task per published audio track."""

    def __init__(self, media: MediaDomain, settings: TalkSettings) -> None:
        self.media = media
        self.settings = settings
        self.tasks: dict[str, asyncio.Task] = {}
        # track id -> (start wall time, detector) of the intervals in progress, for "so far".
        self.live: dict[str, tuple[datetime, VoiceActivity, PublishedAudioTrack]] = {}

    async def audio_track_started(self, track: PublishedAudioTrack) -> None:
        if track.track_id not in self.tasks:
            task = asyncio.ensure_future(self._run(track))
            self.tasks[track.track_id] = task
            task.add_done_callback(lambda _: self.tasks.pop(track.track_id, None))

    async def audio_track_ended(self, track: PublishedAudioTrack) -> None:
        # The tap ends with the track; the task flushes the interval in progress itself.
        pass

    def ongoing(self, tenant_id: str, session_ids: set[str]) -> list[tuple[str, datetime]]:
        """(participant id, start) of intervals in progress in these rooms."""
        out = []
        for base, detector, track in self.live.values():
            if track.tenant_id == tenant_id and track.session_id in session_ids:
                if detector.start is not None:
                    out.append((track.participant_id, base + timedelta(seconds=detector.start)))
        return out

    async def close(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks.values()), timeout=5)

    async def _run(self, track: PublishedAudioTrack) -> None:
        detector = VoiceActivity(self.settings)
        base: datetime | None = None
        try:
            async for frame in self.media.audio_tap(track, sample_rate=SAMPLE_RATE):
                if base is None:
                    # Wall-clock time of the track's timestamp 0.
                    base = self.media.now() - timedelta(seconds=frame.timestamp)
                    self.live[track.track_id] = (base, detector, track)
                levels = chunk_levels(frame)
                step = (len(frame.pcm) / 2 / max(frame.channels, 1) / frame.sample_rate) / max(
                    len(levels), 1
                )
                for i, level in enumerate(levels):
                    t = frame.timestamp + i * step
                    was = detector.speaking
                    closed = detector.feed(t, level, step)
                    if closed is not None:
                        await self._record(track, base, closed)
                    if detector.speaking != was or detector.speaking:
                        self.media.speaker_level(track, detector.speaking, level, time.monotonic())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("talk time stopped for a track", track_id=track.track_id, exc_info=True)
        finally:
            self.live.pop(track.track_id, None)
            closed = detector.flush()
            self.media.speaker_level(track, False, SILENCE_DBOV, time.monotonic())
            if closed is not None and base is not None:
                await asyncio.shield(self._record(track, base, closed))

    async def _record(self, track: PublishedAudioTrack, base: datetime, interval) -> None:
        start, end = interval
        try:
            await self.media.record_speaking(
                track, base + timedelta(seconds=start), base + timedelta(seconds=end)
            )
        except Exception:
            log.warning("speaking interval not recorded", track_id=track.track_id, exc_info=True)
