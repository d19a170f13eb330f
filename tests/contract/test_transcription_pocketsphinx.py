"""The PocketSphinx engine, created through the plugin manager, passes the transcription suite;
and it recognizes Festival's synthesized classroom speech fed as the media plane feeds it.

Word error rate bound: PocketSphinx's general US English model on the kal_diphone voice gets
about 15% of words wrong on the benchmark's sentences (bench/asr.py); the tests allow 35% on
the few sentences they use, so they catch a broken pipeline, not a slightly worse model.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import jiwer
import pocketsphinx
import pytest

from classwire.plugins.pocketsphinx import PocketSphinxEngine, PocketSphinxModel
from classwire.server.plugins import ConfigError, PluginManager
from classwire.server.plugins.types import (
    TranscriptionEngine,
    TranscriptSegment,
    UnsupportedLanguageError,
)
from classwire.server.testing import TranscriptionEngineConformance
from classwire.server.testing.transcription import collect_segments

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))

import speech  # noqa: E402

pytestmark = pytest.mark.skipif(
    not speech.festival_available(), reason="Festival (text2wave) is not installed"
)

MAX_WER = 0.35
SENTENCES = (
    "please open your books to chapter three",
    "remember to finish your homework before friday",
    "the students went to the library after lunch",
)


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return PluginManager().load()


def create(manager: PluginManager, tmp_path: Path, **options: object) -> TranscriptionEngine:
    return manager.create(
        "transcription_engine",
        "pocketsphinx",
        data_dir=tmp_path,
        database_url="",
        options=options,
    )


class TestPocketSphinxConformance(TranscriptionEngineConformance):
    @pytest.fixture
    async def transcription_engine(self, manager: PluginManager, tmp_path: Path):
        async with create(manager, tmp_path) as engine:
            yield engine

    @pytest.fixture
    def speech_sample(self) -> tuple[bytes, list[str]]:
        pcm = speech.join_with_silence([speech.festival_pcm(SENTENCES[1])])
        return pcm, ["homework", "friday"]


async def transcribe(
    engine: TranscriptionEngine, pcm: bytes, chunk: int = 641
) -> list[TranscriptSegment]:
    """Feed in odd-sized chunks (samples split across calls) while another task reads."""
    stream = await engine.open_stream("en-US")
    reader = asyncio.create_task(collect_segments(stream, 120))
    for i in range(0, len(pcm), chunk):
        await stream.feed(pcm[i : i + chunk])
    await stream.close()
    return await reader


async def test_classroom_sentences(manager: PluginManager, tmp_path: Path) -> None:
    parts = [speech.festival_pcm(text) for text in SENTENCES]
    lead, gap = 0.5, 1.0
    pcm = speech.join_with_silence(parts, gap=gap, lead=lead)
    async with create(manager, tmp_path) as engine:
        segments = await transcribe(engine, pcm)

    finals = [s for s in segments if s.final]
    assert len(finals) == len(SENTENCES), finals
    text = " ".join(s.text for s in finals)
    for word in ("chapter", "homework", "friday", "students", "library"):
        assert word in text.split(), text
    error = jiwer.wer(" ".join(SENTENCES), text)
    assert error <= MAX_WER, (error, text)

    # Each final lies over its own sentence's stretch of audio (the endpointer keeps up to a
    # window of silence on either side).
    begin = lead
    for final, part in zip(finals, parts, strict=True):
        end = begin + speech.duration(part)
        assert begin - 0.6 <= final.start < final.end <= end + 0.6, (final, begin, end)
        assert final.language == "en-US" and 0.0 < final.confidence <= 1.0
        begin = end + gap

    # Partials arrive while an utterance goes on: before its final, inside its time.
    for final in finals:
        index = segments.index(final)
        partials = [
            s
            for s in segments[:index]
            if not s.final and s.start == final.start and s.end <= final.end
        ]
        assert partials, (final, segments)
        assert all(p.confidence <= 1.0 and p.text for p in partials)


async def test_whole_feed_matches_chunked_feed(manager: PluginManager, tmp_path: Path) -> None:
    pcm = speech.join_with_silence([speech.festival_pcm(SENTENCES[0])])
    async with create(manager, tmp_path) as engine:
        chunked = [s for s in await transcribe(engine, pcm, chunk=641) if s.final]
        whole = [s for s in await transcribe(engine, pcm, chunk=len(pcm)) if s.final]
    assert [(s.text, s.start, s.end) for s in chunked] == [(s.text, s.start, s.end) for s in whole]


async def test_partials_can_be_turned_off(manager: PluginManager, tmp_path: Path) -> None:
    pcm = speech.join_with_silence([speech.festival_pcm(SENTENCES[2])])
    async with create(manager, tmp_path, partial_interval=0) as engine:
        segments = await transcribe(engine, pcm)
    assert segments and all(s.final for s in segments)
    assert "library" in segments[0].text


async def test_48khz_is_refused_and_languages(manager: PluginManager, tmp_path: Path) -> None:
    async with create(manager, tmp_path) as engine:
        assert list(engine.languages()) == ["en-US"]
        with pytest.raises(ValueError, match="16000"):
            await engine.open_stream("en-US", sample_rate=48000)
        for tag in ("de-DE", "fr", "", "english"):
            with pytest.raises(UnsupportedLanguageError):
                await engine.open_stream(tag)
        for tag in ("en", "EN-us"):
            stream = await engine.open_stream(tag)
            await stream.close()


async def test_noise_gives_no_words(manager: PluginManager, tmp_path: Path) -> None:
    # Quiet hiss (deterministic): voice activity detection keeps it away from the decoder.
    import numpy as np

    hiss = (np.random.default_rng(7).normal(0, 30, 16000 * 3)).astype("<i2").tobytes()
    async with create(manager, tmp_path) as engine:
        segments = await transcribe(engine, hiss)
    assert not any(s.text for s in segments if s.final), segments


async def test_model_dir_option(manager: PluginManager, tmp_path: Path) -> None:
    model_dir = Path(pocketsphinx.get_model_path()) / "en-us"
    engine = create(manager, tmp_path, model_dir=str(model_dir), language="en-US")
    assert engine.model == PocketSphinxModel.default()  # the phone LM next to it is skipped
    pcm = speech.join_with_silence([speech.festival_pcm(SENTENCES[1])])
    async with engine:
        segments = await transcribe(engine, pcm)
    assert "homework" in " ".join(s.text for s in segments if s.final)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"partial_intervall": 1}, "partial_intervall"),
        ({"partial_interval": "soon"}, "partial_interval"),
        ({"partial_interval": -1}, "partial_interval"),
        ({"vad_mode": 4}, "vad_mode"),
        ({"vad_mode": 1.5}, "vad_mode"),
        ({"endpoint_window": 0}, "endpoint_window"),
        ({"language": ""}, "language"),
        ({"model_dir": "/nonexistent/model"}, "model_dir"),
        ({"lm": "/nonexistent/en.lm.bin"}, "lm"),
    ],
)
def test_bad_options_name_the_key(
    manager: PluginManager, tmp_path: Path, options: dict, named: str
) -> None:
    with pytest.raises(ConfigError) as info:
        create(manager, tmp_path, **options)
    assert info.value.key == "providers.pocketsphinx"
    assert named in str(info.value)


async def test_empty_model_dir_names_what_is_missing(
    manager: PluginManager, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="acoustic model"):
        create(manager, tmp_path, model_dir=str(tmp_path))


async def test_feed_rejects_non_bytes(tmp_path: Path) -> None:
    stream = await PocketSphinxEngine().open_stream("en-US")
    with pytest.raises(TypeError):
        await stream.feed("not audio")  # type: ignore[arg-type]
    await stream.close()
    assert await collect_segments(stream) == []
