"""Conformance suite for streaming transcription engines.

Override ``transcription_engine``; to also check recognition, override ``speech_sample`` to
return 16 kHz mono s16le PCM of speech and words that must appear in the final text.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from classwire.server.plugins.types import (
    TRANSCRIPTION_SAMPLE_RATE,
    TranscriptionEngine,
    TranscriptionStream,
    TranscriptSegment,
    UnsupportedLanguageError,
)

__all__ = ["TranscriptionEngineConformance", "collect_segments"]


async def collect_segments(
    stream: TranscriptionStream, timeout: float = 60.0
) -> list[TranscriptSegment]:
    """Every segment until the stream ends (call ``close`` first)."""

    async def run() -> list[TranscriptSegment]:
        return [segment async for segment in stream]

    return await asyncio.wait_for(run(), timeout)


class TranscriptionEngineConformance:
    """Behaviour every :class:`TranscriptionEngine` must show."""

    timeout = 60.0

    @pytest.fixture
    async def transcription_engine(self) -> AsyncIterator[TranscriptionEngine]:
        raise NotImplementedError("override the transcription_engine fixture")
        yield  # pragma: no cover

    @pytest.fixture
    def speech_sample(self) -> tuple[bytes, Sequence[str]]:
        pytest.skip("override speech_sample with PCM speech and expected words")

    @pytest.fixture
    def language(self, transcription_engine: TranscriptionEngine) -> str:
        return transcription_engine.languages()[0]

    def _check(self, segment: TranscriptSegment, duration: float) -> None:
        assert isinstance(segment, TranscriptSegment)
        assert isinstance(segment.text, str) and isinstance(segment.final, bool)
        assert 0.0 <= segment.start <= segment.end <= duration + 0.5, segment
        assert 0.0 <= segment.confidence <= 1.0, segment

    async def test_languages(self, transcription_engine: TranscriptionEngine) -> None:
        languages = transcription_engine.languages()
        assert languages and all(isinstance(tag, str) and tag for tag in languages)

    async def test_unsupported_language(self, transcription_engine: TranscriptionEngine) -> None:
        with pytest.raises(UnsupportedLanguageError):
            await transcription_engine.open_stream("zz-Invalid")

    async def test_only_16khz(
        self, transcription_engine: TranscriptionEngine, language: str
    ) -> None:
        with pytest.raises(ValueError):
            await transcription_engine.open_stream(language, sample_rate=8000)

    async def test_silence_in_odd_chunks(
        self, transcription_engine: TranscriptionEngine, language: str
    ) -> None:
        stream = await transcription_engine.open_stream(language)
        silence = bytes(2 * TRANSCRIPTION_SAMPLE_RATE * 2)  # two seconds
        # Odd sizes split samples across calls: an engine must reassemble them.
        for i in range(0, len(silence), 3331):
            await stream.feed(silence[i : i + 3331])
        await stream.feed(b"")
        await stream.close()
        segments = await collect_segments(stream, self.timeout)
        for segment in segments:
            self._check(segment, 2.0)

    async def test_feed_after_close(
        self, transcription_engine: TranscriptionEngine, language: str
    ) -> None:
        stream = await transcription_engine.open_stream(language)
        await stream.close()
        await stream.close()  # idempotent
        with pytest.raises(RuntimeError):
            await stream.feed(b"\x00\x00")
        assert isinstance(await collect_segments(stream, self.timeout), list)

    async def test_recognizes_speech(
        self,
        transcription_engine: TranscriptionEngine,
        language: str,
        speech_sample: tuple[bytes, Sequence[str]],
    ) -> None:
        pcm, words = speech_sample
        duration = len(pcm) / 2 / TRANSCRIPTION_SAMPLE_RATE
        stream = await transcription_engine.open_stream(language)
        for i in range(0, len(pcm), 640):  # 20 ms frames, as the media plane sends them
            await stream.feed(pcm[i : i + 640])
        await stream.close()
        segments = await collect_segments(stream, self.timeout)
        for segment in segments:
            self._check(segment, duration)
        final = " ".join(s.text for s in segments if s.final).lower()
        assert any(word.lower() in final for word in words), final
        finals = [s for s in segments if s.final]
        assert finals == sorted(finals, key=lambda s: s.start)
