"""Conformance suite for streaming transcription engines.

Override ``transcription_engine``; to also check recognition, override ``speech_sample`` to
return 16 kHz mono s16le PCM of speech and words that must appear in the final text. The speech
tests also check that streams are independent, that ``close`` flushes speech that runs to the
very end of the audio, and that partial segments never revise speech already finalized.
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

    @pytest.mark.parametrize("rate", [8000, 44100, 48000])
    async def test_only_16khz(
        self, transcription_engine: TranscriptionEngine, language: str, rate: int
    ) -> None:
        with pytest.raises(ValueError):
            await transcription_engine.open_stream(language, sample_rate=rate)

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

    async def test_close_flushes_speech_at_the_very_end(
        self,
        transcription_engine: TranscriptionEngine,
        language: str,
        speech_sample: tuple[bytes, Sequence[str]],
    ) -> None:
        pcm, words = speech_sample
        # No trailing silence at all: only close() can tell the engine that the speech ended.
        end = _last_sound(pcm)
        stream = await transcription_engine.open_stream(language)
        await stream.feed(pcm[:end])
        await stream.close()
        segments = await collect_segments(stream, self.timeout)
        final = " ".join(s.text for s in segments if s.final).lower()
        assert any(word.lower() in final for word in words), final

    async def test_partials_never_revise_finished_speech(
        self,
        transcription_engine: TranscriptionEngine,
        language: str,
        speech_sample: tuple[bytes, Sequence[str]],
    ) -> None:
        pcm, _ = speech_sample
        stream = await transcription_engine.open_stream(language)
        twice = pcm + bytes(TRANSCRIPTION_SAMPLE_RATE * 2) + pcm  # a second of silence between
        for i in range(0, len(twice), 640):
            await stream.feed(twice[i : i + 640])
        await stream.close()
        segments = await collect_segments(stream, self.timeout)
        finished = 0.0
        for segment in segments:
            if not segment.final:
                assert segment.start >= finished - 0.05, (segment, finished)
            else:
                finished = max(finished, segment.end)
        for segment in segments:
            if segment.language:
                tags = [t.lower().split("-")[0] for t in transcription_engine.languages()]
                assert segment.language.lower().split("-")[0] in tags, segment

    async def test_streams_are_independent(
        self,
        transcription_engine: TranscriptionEngine,
        language: str,
        speech_sample: tuple[bytes, Sequence[str]],
    ) -> None:
        pcm, words = speech_sample
        speaking = await transcription_engine.open_stream(language)
        silent = await transcription_engine.open_stream(language)
        quiet = bytes(len(pcm))
        for i in range(0, len(pcm), 640):  # interleaved, as two tracks of one room arrive
            await speaking.feed(pcm[i : i + 640])
            await silent.feed(quiet[i : i + 640])
        await asyncio.gather(speaking.close(), silent.close())
        spoken, heard_nothing = await asyncio.gather(
            collect_segments(speaking, self.timeout), collect_segments(silent, self.timeout)
        )
        final = " ".join(s.text for s in spoken if s.final).lower()
        assert any(word.lower() in final for word in words), final
        assert not any(s.text.strip() for s in heard_nothing), heard_nothing


def _last_sound(pcm: bytes, threshold: int = 300) -> int:
    """Byte offset just past the last sample louder than ``threshold``."""
    samples = memoryview(pcm[: len(pcm) & ~1]).cast("h")
    for i in range(len(samples) - 1, -1, -1):
        if abs(samples[i]) > threshold:
            return 2 * (i + 1)
    return len(samples) * 2
