"""Conformance suite for summarizers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from classwire.server.plugins.types import Summarizer, Summary, TranscriptSegment

__all__ = ["SummarizerConformance", "sample_transcript"]

_LESSON = [
    "Today we are going to talk about photosynthesis.",
    "Photosynthesis is how plants turn light into chemical energy.",
    "The chlorophyll in the leaves absorbs mostly red and blue light.",
    "Can anyone tell me what gas plants take in?",
    "Carbon dioxide, yes, plants take in carbon dioxide through the stomata.",
    "Water comes up from the roots through the xylem.",
    "With light energy, chlorophyll splits water and releases oxygen.",
    "The sugar glucose is built from carbon dioxide in the Calvin cycle.",
    "So the inputs are light, water and carbon dioxide.",
    "And the outputs are glucose and oxygen.",
    "For homework, draw a leaf and label where photosynthesis happens.",
    "Next week we will look at respiration, which is the reverse process.",
]


def sample_transcript() -> list[TranscriptSegment]:
    """A short biology lesson, one sentence per final segment, two speakers."""
    segments = []
    for i, text in enumerate(_LESSON):
        speaker = "learner-1" if text.startswith("Carbon dioxide, yes") else "instructor"
        segments.append(TranscriptSegment(text, i * 6.0, i * 6.0 + 5.0, True, 0.9, "en", speaker))
    return segments


class SummarizerConformance:
    """Behaviour every :class:`Summarizer` must show."""

    language = "en"

    @pytest.fixture
    async def summarizer(self) -> AsyncIterator[Summarizer]:
        raise NotImplementedError("override the summarizer fixture")
        yield  # pragma: no cover

    async def test_is_a_summarizer(self, summarizer: Summarizer) -> None:
        assert isinstance(summarizer, Summarizer)

    async def test_empty_transcript(self, summarizer: Summarizer) -> None:
        summary = await summarizer.summarize([], self.language)
        assert isinstance(summary, Summary)
        assert summary.text == "" and list(summary.key_terms) == []

    async def test_summary_of_a_lesson(self, summarizer: Summarizer) -> None:
        segments = sample_transcript()
        summary = await summarizer.summarize(segments, self.language)
        assert isinstance(summary.text, str) and summary.text.strip()
        assert len(summary.text) < sum(len(s.text) for s in segments)
        terms = list(summary.key_terms)
        assert 0 < len(terms) <= 10
        assert all(isinstance(t, str) and t.strip() for t in terms)
        assert len({t.lower() for t in terms}) == len(terms), "key terms repeat"
        assert any("photosynthesis" in t.lower() for t in terms), terms

    async def test_max_terms(self, summarizer: Summarizer) -> None:
        summary = await summarizer.summarize(sample_transcript(), self.language, max_terms=3)
        assert 0 < len(summary.key_terms) <= 3

    async def test_deterministic(self, summarizer: Summarizer) -> None:
        first = await summarizer.summarize(sample_transcript(), self.language)
        second = await summarizer.summarize(sample_transcript(), self.language)
        assert first.text == second.text
        assert list(first.key_terms) == list(second.key_terms)

    async def test_key_terms_come_from_the_transcript(self, summarizer: Summarizer) -> None:
        segments = sample_transcript()
        spoken = " ".join(s.text for s in segments).lower()
        summary = await summarizer.summarize(segments, self.language)
        # A generative summarizer may paraphrase a few terms, but most must be what was said.
        said = [t for t in summary.key_terms if all(w in spoken for w in t.lower().split())]
        assert 2 * len(said) >= len(summary.key_terms), summary.key_terms

    async def test_single_segment(self, summarizer: Summarizer) -> None:
        segment = TranscriptSegment(
            "Fractions have a numerator and a denominator.", 0.0, 3.0, True, 0.8, "en"
        )
        summary = await summarizer.summarize([segment], self.language)
        assert summary.text.strip()
        assert list(summary.key_terms)
