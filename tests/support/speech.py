"""Synthesized speech for tests and benchmarks: 16 kHz mono s16le PCM, and the wav files it came
from.

Festival's ``kal_diphone`` voice (Debian packages festival and festvox-kallpc16k) is natural
enough for PocketSphinx to recognize; espeak-ng is there for tests that need speech-like audio
but no recognition (PocketSphinx gets over 80% of its words wrong). Results are cached by text
and voice in ``cache_dir`` (default: a directory under the system temporary directory), so a
test session synthesizes each sentence once.

    pcm = festival_pcm("Open your books to chapter three.")
    audio = join_with_silence([pcm, other], gap=0.8)
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "CLASSROOM_SENTENCES",
    "SAMPLE_RATE",
    "SpeechUnavailableError",
    "duration",
    "espeak_pcm",
    "espeak_wav",
    "festival_available",
    "festival_pcm",
    "festival_wav",
    "join_with_silence",
    "read_wav_pcm",
    "silence",
]

SAMPLE_RATE = 16000

# Words PocketSphinx's default US English model knows and Festival's kal_diphone voice says
# clearly enough; transcripts are lower-case and without punctuation, as WER tools expect.
CLASSROOM_SENTENCES: tuple[str, ...] = (
    "please open your books to chapter three",
    "today we will talk about the history of the city",
    "remember to finish your homework before friday",
    "can everyone see the picture on the screen",
    "the answer to the first question is seven",
    "write your name at the top of the page",
    "we will have a short test next week",
    "who would like to read the next paragraph",
    "the water cycle starts with the sun heating the ocean",
    "please raise your hand if you have a question",
    "let us look at the second example together",
    "the president of the united states lives in washington",
    "thank you for listening and see you tomorrow",
    "turn to page twenty and read the story",
    "the cat sat on the mat in the kitchen",
    "what do you think happens at the end of the story",
    "please close the door when you leave the room",
    "the students went to the library after lunch",
    "multiply both numbers and write down the result",
    "good morning class let us begin the lesson",
)

_DEFAULT_CACHE = Path(tempfile.gettempdir()) / "classwire-speech-cache"


class SpeechUnavailableError(RuntimeError):
    """The synthesizer is not installed."""


def festival_available() -> bool:
    return shutil.which("text2wave") is not None


def _cache_path(cache_dir: Path | None, voice: str, text: str) -> Path:
    directory = Path(cache_dir) if cache_dir is not None else _DEFAULT_CACHE
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(f"{voice}\0{text}".encode()).hexdigest()[:24]
    return directory / f"{voice}-{digest}.wav"


def _to_16k_mono(source: Path, target: Path) -> None:
    """Write ``source`` as 16 kHz mono s16 wav; sox when the rate differs, a copy otherwise."""
    with wave.open(str(source), "rb") as w:
        ok = (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (SAMPLE_RATE, 1, 2)
    if ok:
        shutil.copyfile(source, target)
        return
    if shutil.which("sox") is None:
        raise SpeechUnavailableError("sox is needed to resample synthesized speech")
    subprocess.run(
        ["sox", str(source), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(target)],
        check=True,
        capture_output=True,
    )


def _synthesize(command: list[str], text: str, target: Path) -> Path:
    # Written to a temporary name and renamed: concurrent test workers never read a partial file.
    raw = target.with_suffix(f".{os.getpid()}.raw.wav")
    tmp = target.with_suffix(f".{os.getpid()}.tmp.wav")
    subprocess.run([*command, str(raw)], input=text.encode(), check=True, capture_output=True)
    try:
        _to_16k_mono(raw, tmp)
        tmp.replace(target)
    finally:
        raw.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return target


def festival_wav(text: str, *, cache_dir: Path | None = None) -> Path:
    """A 16 kHz mono wav of ``text`` spoken by Festival's kal_diphone voice."""
    if not festival_available():
        raise SpeechUnavailableError("Festival's text2wave is not installed")
    target = _cache_path(cache_dir, "festival-kal", text)
    if not target.exists():
        _synthesize(["text2wave", "-eval", "(voice_kal_diphone)", "-o"], text, target)
    return target


def espeak_wav(text: str, *, cache_dir: Path | None = None) -> Path:
    """A 16 kHz mono wav of ``text`` spoken by espeak-ng (robotic; not for recognition)."""
    if shutil.which("espeak-ng") is None:
        raise SpeechUnavailableError("espeak-ng is not installed")
    target = _cache_path(cache_dir, "espeak-ng", text)
    if not target.exists():
        _synthesize(["espeak-ng", "--stdin", "-w"], text, target)
    return target


def read_wav_pcm(path: Path) -> bytes:
    """The s16le samples of a 16 kHz mono wav."""
    with wave.open(str(path), "rb") as w:
        if (w.getframerate(), w.getnchannels(), w.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise ValueError(f"{path} is not 16 kHz mono 16-bit")
        return w.readframes(w.getnframes())


def festival_pcm(text: str, *, cache_dir: Path | None = None) -> bytes:
    return read_wav_pcm(festival_wav(text, cache_dir=cache_dir))


def espeak_pcm(text: str, *, cache_dir: Path | None = None) -> bytes:
    return read_wav_pcm(espeak_wav(text, cache_dir=cache_dir))


def silence(seconds: float) -> bytes:
    return bytes(2 * round(seconds * SAMPLE_RATE))


def join_with_silence(parts: Sequence[bytes], *, gap: float = 0.8, lead: float = 0.5) -> bytes:
    """``lead`` seconds of silence, then each part followed by ``gap`` seconds of silence."""
    out = bytearray(silence(lead))
    for part in parts:
        out += part
        out += silence(gap)
    return bytes(out)


def duration(pcm: bytes) -> float:
    """Seconds of 16 kHz mono s16le audio."""
    return len(pcm) / 2 / SAMPLE_RATE
