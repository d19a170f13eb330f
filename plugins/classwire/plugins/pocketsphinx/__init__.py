"""Streaming speech recognition with PocketSphinx 5: the default transcription engine.

The US English model ships inside the ``pocketsphinx`` wheel, so nothing is downloaded. Each
stream owns one :class:`pocketsphinx.Decoder` and one :class:`pocketsphinx.Endpointer` (WebRTC
voice activity detection), which cuts the audio into utterances: a partial segment is emitted
every ``partial_interval`` seconds of speech while an utterance goes on, and a final segment
when it ends. Times are seconds since the stream's first sample.

Decoding runs in a worker thread per stream (a one-thread executor, which also keeps segments in
order). PocketSphinx holds the GIL while it decodes, so audio is handed to it one 30 ms frame at
a time: the event loop never waits for more than one frame's decoding.

Confidence is the mean posterior probability of the utterance's words (PocketSphinx computes
word posteriors from the lattice when ``bestpath`` is on, its default), clipped to [0, 1].

Options (``[providers.pocketsphinx]``):

- ``language``: the BCP 47 tag the model recognizes (default ``en-US``); set it when pointing
  ``model_dir`` at another language's model.
- ``model_dir``: a directory laid out like the wheel's ``model/en-us``: the acoustic model in a
  subdirectory, one ``*.lm.bin`` (or ``*.lm``) language model and one ``*.dict`` dictionary.
  ``hmm``, ``lm`` and ``dict`` name the three explicitly instead (each overrides ``model_dir``).
- ``partial_interval``: seconds of speech between partial segments (default 0.5; 0 turns
  partials off).
- ``vad_mode``: aggressiveness of voice activity detection, 0 (keeps most) to 3 (default 0).
- ``endpoint_window``: seconds of audio the endpointer looks at to decide that speech started
  or stopped (default 0.3).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pocketsphinx
from classwire.server.plugins import hookimpl
from classwire.server.plugins.types import (
    TRANSCRIPTION_SAMPLE_RATE,
    ProviderContext,
    TranscriptionEngine,
    TranscriptionStream,
    TranscriptSegment,
    UnsupportedLanguageError,
)

__all__ = [
    "PocketSphinxEngine",
    "PocketSphinxModel",
    "PocketSphinxStream",
    "Recognizer",
    "classwire_register_transcription_engines",
    "create_engine",
]

DEFAULT_LANGUAGE = "en-US"
DEFAULT_PARTIAL_INTERVAL = 0.5
OPTIONS = frozenset(
    {
        "language",
        "model_dir",
        "hmm",
        "lm",
        "dict",
        "partial_interval",
        "vad_mode",
        "endpoint_window",
    }
)


@dataclass(frozen=True, slots=True)
class PocketSphinxModel:
    """The three files a decoder needs: acoustic model directory, language model, dictionary."""

    hmm: Path
    lm: Path
    dict: Path

    @classmethod
    def default(cls) -> PocketSphinxModel:
        """The US English model inside the pocketsphinx wheel."""
        root = Path(pocketsphinx.get_model_path()) / "en-us"
        return cls(root / "en-us", root / "en-us.lm.bin", root / "cmudict-en-us.dict")

    @classmethod
    def from_dir(cls, model_dir: Path) -> PocketSphinxModel:
        """Find the three parts in ``model_dir``; ValueError names what is missing."""
        if not model_dir.is_dir():
            raise ValueError(f"model_dir {str(model_dir)!r} is not a directory")
        hmms = sorted(p for p in model_dir.iterdir() if p.is_dir() and (p / "mdef").exists())
        lms = sorted(model_dir.glob("*.lm.bin")) or sorted(model_dir.glob("*.lm"))
        # The phone language model next to the word one is for phoneme decoding, not words.
        lms = [p for p in lms if "-phone." not in p.name] or lms
        dicts = sorted(model_dir.glob("*.dict"))
        missing = [
            what
            for what, found in (
                ("an acoustic model subdirectory (with mdef)", hmms),
                ("a *.lm.bin or *.lm language model", lms),
                ("a *.dict dictionary", dicts),
            )
            if not found
        ]
        if missing:
            raise ValueError(f"model_dir {str(model_dir)!r} lacks {', '.join(missing)}")
        return cls(hmms[0], lms[0], dicts[0])

    def check(self) -> None:
        for option, path, is_dir in (
            ("hmm", self.hmm, True),
            ("lm", self.lm, False),
            ("dict", self.dict, False),
        ):
            if not (path.is_dir() if is_dir else path.is_file()):
                kind = "directory" if is_dir else "file"
                raise ValueError(f"{option}: no such {kind} {str(path)!r}")


def _confidence(decoder: pocketsphinx.Decoder) -> float:
    """Mean posterior of the recognized words (fillers and silences left out), in [0, 1]."""
    probs = [
        seg.prob
        for seg in decoder.seg()
        if not (seg.word.startswith(("<", "[", "+")) or seg.word in ("<sil>",))
    ]
    if not probs:
        return 0.0
    mean = sum(probs) / len(probs)
    return 0.0 if math.isnan(mean) else min(1.0, max(0.0, mean))


class Recognizer:
    """The synchronous part of a stream: endpointing and decoding, one call per chunk of PCM.

    Not thread-safe; a stream calls it from its single worker thread. Each call returns the
    segments it produced, in order.
    """

    def __init__(
        self,
        model: PocketSphinxModel,
        *,
        language: str = DEFAULT_LANGUAGE,
        partial_interval: float = DEFAULT_PARTIAL_INTERVAL,
        vad_mode: int = 0,
        endpoint_window: float = 0.3,
    ) -> None:
        self.language = language
        self.partial_interval = partial_interval
        self._decoder = pocketsphinx.Decoder(
            hmm=str(model.hmm), lm=str(model.lm), dict=str(model.dict), loglevel="FATAL"
        )
        self._endpointer = pocketsphinx.Endpointer(
            window=endpoint_window, vad_mode=vad_mode, sample_rate=TRANSCRIPTION_SAMPLE_RATE
        )
        self._frame_bytes = self._endpointer.frame_bytes
        self._pending = bytearray()  # less than one endpointer frame, possibly an odd byte
        self._in_utterance = False
        self._utterance_start = 0.0
        self._speech_since_partial = 0.0
        self._last_partial = ""

    def process(self, pcm: bytes) -> list[TranscriptSegment]:
        self._pending += pcm
        out: list[TranscriptSegment] = []
        frame_bytes = self._frame_bytes
        usable = len(self._pending) - len(self._pending) % frame_bytes
        view = memoryview(self._pending)
        try:
            for offset in range(0, usable, frame_bytes):
                speech = self._endpointer.process(bytes(view[offset : offset + frame_bytes]))
                if speech is not None:
                    self._speech(speech, out)
        finally:
            view.release()
        del self._pending[:usable]
        return out

    def finish(self) -> list[TranscriptSegment]:
        """End of audio: flush the utterance in progress."""
        out: list[TranscriptSegment] = []
        if self._endpointer.in_speech:
            tail = bytes(self._pending[: len(self._pending) & ~1])
            speech = self._endpointer.end_stream(tail)
            if speech is not None:
                self._speech(speech, out)
        self._pending.clear()
        if self._in_utterance:
            self._end_utterance(self._endpointer.speech_end, out)
        return out

    def _speech(self, speech: bytes, out: list[TranscriptSegment]) -> None:
        if not self._in_utterance:
            self._decoder.start_utt()
            self._in_utterance = True
            self._utterance_start = self._endpointer.speech_start
            self._speech_since_partial = 0.0
            self._last_partial = ""
        self._decoder.process_raw(speech)
        if not self._endpointer.in_speech:
            self._end_utterance(self._endpointer.speech_end, out)
            return
        if self.partial_interval <= 0:
            return
        self._speech_since_partial += len(speech) / 2 / TRANSCRIPTION_SAMPLE_RATE
        if self._speech_since_partial >= self.partial_interval:
            self._speech_since_partial = 0.0
            hyp = self._decoder.hyp()
            text = hyp.hypstr.strip() if hyp is not None else ""
            if text and text != self._last_partial:
                self._last_partial = text
                end = self._endpointer.speech_end
                out.append(self._segment(text, end, final=False, confidence=0.0))

    def _end_utterance(self, end: float, out: list[TranscriptSegment]) -> None:
        self._decoder.end_utt()
        self._in_utterance = False
        hyp = self._decoder.hyp()
        text = hyp.hypstr.strip() if hyp is not None else ""
        # An utterance with no words ends silently unless a partial is on screen to replace.
        if text or self._last_partial:
            out.append(self._segment(text, end, final=True, confidence=_confidence(self._decoder)))

    def _segment(
        self, text: str, end: float, *, final: bool, confidence: float
    ) -> TranscriptSegment:
        start = max(0.0, self._utterance_start)
        return TranscriptSegment(
            text=text,
            start=start,
            end=max(start, end),
            final=final,
            confidence=confidence,
            language=self.language,
        )


_DONE = object()


class PocketSphinxStream(TranscriptionStream):
    """Feeds a :class:`Recognizer` in its own worker thread; segments come out in order."""

    def __init__(self, recognizer: Recognizer, executor: ThreadPoolExecutor) -> None:
        self._recognizer = recognizer
        self._executor = executor
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._closed = False
        self._failed: BaseException | None = None
        self._closing: asyncio.Future[None] | None = None

    def _publish(self, segments: list[TranscriptSegment]) -> None:
        for segment in segments:
            self._queue.put_nowait(segment)

    def _run(self, work: Callable[[], list[TranscriptSegment]]) -> None:
        # Runs in the worker thread. Segments are handed to the loop from here, in order, so a
        # cancelled feed() loses nothing.
        if self._failed is not None:
            raise RuntimeError("speech recognition failed earlier on this stream")
        try:
            segments = work()
        except BaseException as exc:
            self._failed = exc
            self._loop.call_soon_threadsafe(self._queue.put_nowait, exc)
            raise
        if segments:
            self._loop.call_soon_threadsafe(self._publish, segments)

    async def feed(self, pcm: bytes) -> None:
        if self._closed:
            raise RuntimeError("feed() after close()")
        if not isinstance(pcm, (bytes, bytearray, memoryview)):
            raise TypeError(f"pcm must be bytes, not {type(pcm).__name__}")
        if not pcm:
            return
        data = bytes(pcm)
        await self._loop.run_in_executor(
            self._executor, self._run, lambda: self._recognizer.process(data)
        )

    async def close(self) -> None:
        if self._closing is None:
            self._closed = True
            self._closing = self._loop.run_in_executor(self._executor, self._finish)
        await asyncio.shield(self._closing)

    def _finish(self) -> None:
        try:
            self._run(self._recognizer.finish)
        except BaseException:  # noqa: S110 - already handed to the iterator by _run
            pass
        finally:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, _DONE)
            self._executor.shutdown(wait=False)

    async def __aiter__(self) -> AsyncIterator[TranscriptSegment]:
        while True:
            item = await self._queue.get()
            if item is _DONE:
                self._queue.put_nowait(_DONE)  # a second iteration ends at once too
                return
            if isinstance(item, BaseException):
                raise RuntimeError("speech recognition failed") from item
            yield item


class PocketSphinxEngine(TranscriptionEngine):
    def __init__(
        self,
        model: PocketSphinxModel | None = None,
        *,
        language: str = DEFAULT_LANGUAGE,
        partial_interval: float = DEFAULT_PARTIAL_INTERVAL,
        vad_mode: int = 0,
        endpoint_window: float = 0.3,
    ) -> None:
        self.model = model or PocketSphinxModel.default()
        self.language = language
        self._options = {
            "partial_interval": partial_interval,
            "vad_mode": vad_mode,
            "endpoint_window": endpoint_window,
        }

    def languages(self) -> Sequence[str]:
        return (self.language,)

    def _accepts(self, language: str) -> bool:
        # The tag itself, in any case, or its bare language subtag ("en" for "en-US").
        wanted = language.lower()
        ours = self.language.lower()
        return wanted == ours or wanted == ours.split("-")[0]

    async def open_stream(
        self, language: str, *, sample_rate: int = TRANSCRIPTION_SAMPLE_RATE
    ) -> TranscriptionStream:
        if not isinstance(language, str) or not self._accepts(language):
            raise UnsupportedLanguageError(
                f"pocketsphinx has no model for {language!r}; it recognizes {self.language}"
            )
        if sample_rate != TRANSCRIPTION_SAMPLE_RATE:
            raise ValueError(
                f"sample_rate must be {TRANSCRIPTION_SAMPLE_RATE} (got {sample_rate}); "
                "resample before feeding"
            )
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pocketsphinx")
        loop = asyncio.get_running_loop()
        try:
            # Loading the model takes a few hundred milliseconds: off the event loop.
            recognizer = await loop.run_in_executor(
                executor,
                lambda: Recognizer(self.model, language=self.language, **self._options),
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return PocketSphinxStream(recognizer, executor)


def _number(options: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{key} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{key} must be a number, got {value!r}") from None
    if not (low <= number <= high) or math.isnan(number):
        raise ValueError(f"{key} must be between {low:g} and {high:g}, got {value!r}")
    return number


def create_engine(context: ProviderContext) -> PocketSphinxEngine:
    options = context.options
    unknown = set(options) - OPTIONS
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    language = options.get("language", DEFAULT_LANGUAGE)
    if not isinstance(language, str) or not language.strip():
        raise ValueError(f"language must be a BCP 47 tag such as 'en-US', got {language!r}")
    if "model_dir" in options:
        model = PocketSphinxModel.from_dir(Path(str(options["model_dir"])))
    else:
        model = PocketSphinxModel.default()
    model = PocketSphinxModel(
        hmm=Path(str(options.get("hmm", model.hmm))),
        lm=Path(str(options.get("lm", model.lm))),
        dict=Path(str(options.get("dict", model.dict))),
    )
    model.check()
    vad_mode = _number(options, "vad_mode", 0, 0, 3)
    if vad_mode != int(vad_mode):
        raise ValueError(f"vad_mode must be an integer from 0 to 3, got {options['vad_mode']!r}")
    return PocketSphinxEngine(
        model,
        language=language.strip(),
        partial_interval=_number(options, "partial_interval", DEFAULT_PARTIAL_INTERVAL, 0, 60),
        vad_mode=int(vad_mode),
        endpoint_window=_number(options, "endpoint_window", 0.3, 0.06, 5.0),
    )


@hookimpl
def classwire_register_transcription_engines(register: Callable[..., None]) -> None:
    register(
        "pocketsphinx",
        create_engine,
        description="PocketSphinx 5, US English model bundled, local and offline",
    )
