"""Extractive summaries of a transcript, computed locally: the default summarizer.

Nothing leaves the process and the result depends only on the input: the same transcript always
gives the same summary.

- **Summary**: TextRank over sentences. Each final segment is split into sentences (speech
  recognizers often give no punctuation, and then a segment is one sentence); sentences are
  compared by the cosine of their TF-IDF vectors, PageRank over that similarity graph ranks
  them, and the best ones are returned in the order they were spoken. Very short sentences
  ("yes", "okay") are never picked.
- **Key terms**: content words and phrases (up to three words within a run between stopwords
  and punctuation, RAKE's candidate rule), scored by how often they occur, a phrase weighing
  more per extra word and counting only when it recurs; no word appears in two terms, and
  singular and plural are one term. The stopword list is English; other languages get the same
  scoring without it.

Options (``[providers.extractive]``): ``sentences`` (at most this many summary sentences,
default 5) and ``ratio`` (at most this fraction of the sentences, default 0.25; at least one).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from classwire.server.plugins import hookimpl
from classwire.server.plugins.types import (
    ProviderContext,
    Summarizer,
    Summary,
    TranscriptSegment,
)

__all__ = ["ExtractiveSummarizer", "classwire_register_summarizers", "create_summarizer"]

# A common English stopword list (function words, auxiliaries and classroom fillers).
STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are aren't as at be because been
    before being below between both but by can can't cannot could couldn't did didn't do does
    doesn't doing don't down during each else even ever every few for from further get gets got
    had hadn't has hasn't have haven't having he he'd he'll he's her here here's hers herself him
    himself his how how's however i i'd i'll i'm i've if in into is isn't it it's its itself just
    let let's like lot many may me might more most much must mustn't my myself need no nor not now
    of off often on once one only or other ought our ours ourselves out over own please really
    right same say says see shall shan't she she'd she'll she's should shouldn't so some such than
    that that's the their theirs them themselves then there there's these they they'd they'll
    they're they've thing things think this those though through to today too under until up upon
    us use used very want was wasn't way we we'd we'll we're we've well were weren't what what's
    when when's where where's whether which while who who's whom why why's will with won't would
    wouldn't yes yeah yet you you'd you'll you're you've your yours yourself yourselves okay ok
    uh um oh hmm alright going go come comes know tell look next take takes make makes
    """.split()
)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_TOKEN = re.compile(r"[^\W\d_](?:[\w'-]*[^\W_])?", re.UNICODE)
_PHRASE_BREAK = re.compile(r"[.,;:!?()\[\]\"\u2014\u2013]")
_MIN_SENTENCE_WORDS = 4
_MAX_PHRASE_WORDS = 3


def _words(text: str) -> list[str]:
    return [w.lower() for w in _TOKEN.findall(text)]


def _content(words: Sequence[str], stopwords: frozenset[str]) -> list[str]:
    return [w for w in words if w not in stopwords and len(w) > 2]


def _textrank(vectors: np.ndarray, damping: float = 0.85, iterations: int = 100) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1)
    norms[norms == 0] = 1.0
    unit = vectors / norms[:, None]
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, 0.0)
    out_weight = similarity.sum(axis=1)
    n = len(vectors)
    # Sentences similar to none spread their rank evenly (the usual dangling-node rule).
    transition = np.where(
        out_weight[:, None] > 0,
        similarity / np.where(out_weight > 0, out_weight, 1)[:, None],
        1 / n,
    )
    rank = np.full(n, 1.0 / n)
    for _ in range(iterations):
        updated = (1 - damping) / n + damping * (transition.T @ rank)
        if np.abs(updated - rank).sum() < 1e-10:
            return updated
        rank = updated
    return rank


class ExtractiveSummarizer(Summarizer):
    def __init__(self, *, sentences: int = 5, ratio: float = 0.25) -> None:
        if sentences < 1:
            raise ValueError("sentences must be at least 1")
        if not 0 < ratio <= 1:
            raise ValueError("ratio must be in (0, 1]")
        self.max_sentences = sentences
        self.ratio = ratio

    def _stopwords(self, language: str) -> frozenset[str]:
        return STOPWORDS if (language or "en").lower().split("-")[0] == "en" else frozenset()

    async def summarize(
        self, segments: Sequence[TranscriptSegment], language: str, *, max_terms: int = 10
    ) -> Summary:
        if max_terms < 0:
            raise ValueError("max_terms must not be negative")
        finals = sorted(
            (s for s in segments if s.final and s.text.strip()), key=lambda s: (s.start, s.end)
        )
        stopwords = self._stopwords(language)
        sentences = [
            sentence.strip()
            for segment in finals
            for sentence in _SENTENCE_END.split(segment.text.strip())
            if sentence.strip()
        ]
        if not sentences:
            return Summary("", (), language)
        return Summary(
            self._summary(sentences, stopwords),
            self._key_terms(sentences, stopwords, max_terms),
            language,
        )

    def _summary(self, sentences: list[str], stopwords: frozenset[str]) -> str:
        bags = [_content(_words(s), stopwords) for s in sentences]
        vocabulary = sorted({w for bag in bags for w in bag})
        candidates = [i for i, s in enumerate(sentences) if len(_words(s)) >= _MIN_SENTENCE_WORDS]
        if not candidates:
            candidates = list(range(len(sentences)))
        want = min(self.max_sentences, max(1, math.ceil(len(sentences) * self.ratio)))
        if not vocabulary:
            chosen = candidates[:want]
        else:
            index = {w: i for i, w in enumerate(vocabulary)}
            df = Counter(w for bag in bags for w in set(bag))
            idf = np.array([math.log((1 + len(bags)) / (1 + df[w])) + 1 for w in vocabulary])
            vectors = np.zeros((len(sentences), len(vocabulary)))
            for row, bag in enumerate(bags):
                for word, count in Counter(bag).items():
                    vectors[row, index[word]] = count
            vectors *= idf
            rank = _textrank(vectors)
            # Highest rank first; ties go to the earlier sentence, so the result is stable.
            chosen = sorted(candidates, key=lambda i: (-round(float(rank[i]), 12), i))[:want]
        return " ".join(_as_sentence(sentences[i]) for i in sorted(chosen))

    def _key_terms(
        self, sentences: list[str], stopwords: frozenset[str], max_terms: int
    ) -> tuple[str, ...]:
        if max_terms == 0:
            return ()
        phrases: Counter[tuple[str, ...]] = Counter()
        first_seen: dict[tuple[str, ...], int] = {}
        position = 0
        for sentence in sentences:
            for chunk in _PHRASE_BREAK.split(sentence):
                run: list[str] = []
                for word in [*_words(chunk), ""]:  # "" flushes the last run
                    if word and word not in stopwords and len(word) > 2:
                        run.append(word)
                        continue
                    grams = {
                        tuple(run[i : i + n])
                        for n in range(1, _MAX_PHRASE_WORDS + 1)
                        for i in range(len(run) - n + 1)
                    }
                    for gram in sorted(grams):
                        phrases[gram] += 1
                        first_seen.setdefault(gram, position)
                        position += 1
                    run = []
        # Singular and plural are one term, under the form said more often.
        for gram in sorted(phrases):
            if len(gram) == 1 and gram[0].endswith("s") and (gram[0][:-1],) in phrases:
                singular = (gram[0][:-1],)
                keep, drop = (
                    (gram, singular) if phrases[gram] > phrases[singular] else (singular, gram)
                )
                phrases[keep] += phrases.pop(drop)
                first_seen[keep] = min(first_seen[keep], first_seen.pop(drop))
        # A phrase must recur to count; each extra word adds half as much weight as the last.
        scored = [
            (count * (2 - 0.5 ** (len(gram) - 1)), gram)
            for gram, count in phrases.items()
            if len(gram) == 1 or count >= 2
        ]
        scored.sort(key=lambda item: (-item[0], first_seen[item[1]]))
        terms: list[str] = []
        covered: set[str] = set()
        for _, gram in scored:
            if len(terms) >= max_terms:
                break
            if covered.intersection(gram):  # no word twice across the terms
                continue
            terms.append(" ".join(gram))
            covered.update(gram)
        return tuple(terms)


def _as_sentence(text: str) -> str:
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else f"{text}."


def create_summarizer(context: ProviderContext) -> ExtractiveSummarizer:
    options = context.options
    unknown = set(options) - {"sentences", "ratio"}
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    sentences = options.get("sentences", 5)
    if isinstance(sentences, bool) or not isinstance(sentences, int) or sentences < 1:
        raise ValueError(f"sentences must be a positive integer, got {sentences!r}")
    ratio = options.get("ratio", 0.25)
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio <= 1:
        raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}")
    return ExtractiveSummarizer(sentences=sentences, ratio=float(ratio))


@hookimpl
def classwire_register_summarizers(register: Callable[..., None]) -> None:
    register(
        "extractive",
        create_summarizer,
        description="TextRank sentences and frequent phrases; local, deterministic",
    )
