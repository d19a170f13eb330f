"""The extractive summarizer, created through the plugin manager, passes the summarizer suite;
and its summary and key terms come from what was said."""

from __future__ import annotations

from pathlib import Path

import pytest

from classwire.plugins.extractive_summarizer import ExtractiveSummarizer
from classwire.server.plugins import ConfigError, PluginManager
from classwire.server.plugins.types import TranscriptSegment
from classwire.server.testing import SummarizerConformance
from classwire.server.testing.summarizer import sample_transcript


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return PluginManager().load()


class TestExtractiveConformance(SummarizerConformance):
    @pytest.fixture
    async def summarizer(self, manager: PluginManager, tmp_path: Path):
        async with manager.create(
            "summarizer", "extractive", data_dir=tmp_path, database_url=""
        ) as summarizer:
            yield summarizer


def lesson(*texts: str, final: bool = True) -> list[TranscriptSegment]:
    return [
        TranscriptSegment(text, i * 4.0, i * 4.0 + 3.0, final, 0.8, "en-US", "instructor")
        for i, text in enumerate(texts)
    ]


async def test_summary_sentences_are_spoken_sentences_in_order() -> None:
    segments = sample_transcript()
    summary = await ExtractiveSummarizer(sentences=3).summarize(segments, "en")
    spoken = [s.text.rstrip(".?!").lower() for s in segments]
    picked = [p.rstrip(".?!").lower() for p in summary.text.split(". ")]
    assert 1 <= len(picked) <= 3
    positions = [spoken.index(p.rstrip(".")) for p in picked]
    assert positions == sorted(positions)


async def test_recognizer_output_without_punctuation() -> None:
    segments = lesson(
        "today we will practice adding fractions",
        "a fraction has a numerator and a denominator",
        "to add fractions the denominators must be the same",
        "yes",
        "so we find a common denominator first",
        "then we add the numerators and keep the denominator",
        "for homework do the fractions on page twenty",
    )
    summary = await ExtractiveSummarizer(sentences=2).summarize(segments, "en-US")
    assert summary.language == "en-US"
    assert summary.text.count(".") == 2 and summary.text[0].isupper()
    assert "Yes." not in summary.text  # too short to summarize anything
    terms = list(summary.key_terms)
    assert "fractions" in terms and "denominator" in terms, terms
    assert not {"the", "we", "and", "yes"} & set(terms)


async def test_partials_and_empty_segments_are_ignored() -> None:
    segments = [
        *lesson("the mitochondria is the powerhouse of the cell", final=False),
        TranscriptSegment("   ", 5.0, 6.0, True),
    ]
    summary = await ExtractiveSummarizer().summarize(segments, "en")
    assert summary.text == "" and list(summary.key_terms) == []


async def test_repeated_phrase_is_one_term() -> None:
    segments = lesson(
        "carbon dioxide goes in through the leaves",
        "the plant uses carbon dioxide and water",
        "oxygen comes out and carbon dioxide goes in",
    )
    terms = list((await ExtractiveSummarizer().summarize(segments, "en")).key_terms)
    assert terms[0] == "carbon dioxide", terms
    assert "carbon" not in terms and "dioxide" not in terms


async def test_max_terms_zero_and_negative() -> None:
    summarizer = ExtractiveSummarizer()
    summary = await summarizer.summarize(sample_transcript(), "en", max_terms=0)
    assert summary.text and list(summary.key_terms) == []
    with pytest.raises(ValueError):
        await summarizer.summarize(sample_transcript(), "en", max_terms=-1)


async def test_long_transcript_is_capped() -> None:
    texts = [f"lesson part {i} covers the topic of gravity and motion" for i in range(200)]
    summary = await ExtractiveSummarizer(sentences=5).summarize(lesson(*texts), "en")
    assert summary.text.count(".") == 5
    assert "gravity" in summary.key_terms


def test_bad_options_name_the_key(manager: PluginManager, tmp_path: Path) -> None:
    for options in ({"sentence": 3}, {"sentences": 0}, {"ratio": 2}, {"sentences": "3"}):
        with pytest.raises(ConfigError) as info:
            manager.create(
                "summarizer", "extractive", data_dir=tmp_path, database_url="", options=options
            )
        assert info.value.key == "providers.extractive"
