"""ASR benchmark: the PocketSphinx provider, streaming and live, against the bare engine decoding
the same audio offline, measured in the same run.

Audio: a fixed set of classroom sentences (tests/support/speech.py) spoken by Festival's
kal_diphone voice, cached in a temporary directory; played as one lesson, sentences separated by
0.8 s of silence.

- bare: pocketsphinx.Decoder on each sentence as one whole utterance (full_utt, batch
  normalization); the word error rate baseline.
- stream: the provider fed 20 ms chunks as fast as it takes them; real-time factor (decoding
  time / audio time) and word error rate.
- live: an aiortc client publishes the lesson over WebRTC (Opus, RTP on loopback) to the aiortc
  SFU; the SFU's audio tap (16 kHz) feeds the provider; captions out. Real-time paced.
- concurrent: K streams fed in real time (20 ms every 20 ms) on this one process (PocketSphinx
  holds the GIL, so K streams share one core); a stream keeps up when its last captions arrive
  within 2 s of its audio's end (the issue's caption latency bound). The RTF shown is the
  process's CPU time per stream over the audio's duration.

Goals: live WER within 2 points of bare; RTF <= 0.3 per stream; >= 3 concurrent streams per core.
Usage: python bench/asr.py [--sentences 20] [--streams 3,4] [--concurrent-seconds 20]
       [--skip-live]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import statistics
import sys
import tempfile
import time
from pathlib import Path

import jiwer
import pocketsphinx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classwire.plugins.pocketsphinx import PocketSphinxEngine  # noqa: E402
from classwire.server.plugins.types import TranscriptSegment  # noqa: E402
from tests.support import speech  # noqa: E402

CHUNK = 640  # 20 ms of 16 kHz s16 mono
GAP = 0.8
MAX_CAPTION_LAG = 2.0  # the bound: captions within 2 s of an utterance's end


def wer(references: list[str], hypothesis: str) -> float:
    return jiwer.wer(" ".join(references), hypothesis) if hypothesis else 1.0


def bare(parts: list[bytes]) -> tuple[str, float]:
    """Whole-utterance decoding of each sentence; (text, seconds of decoding)."""
    decoder = pocketsphinx.Decoder(loglevel="FATAL")
    words, elapsed = [], 0.0
    for pcm in parts:
        started = time.perf_counter()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        elapsed += time.perf_counter() - started
        hyp = decoder.hyp()
        words.append(hyp.hypstr if hyp else "")
    return " ".join(w for w in words if w), elapsed


async def stream_fast(engine: PocketSphinxEngine, pcm: bytes) -> tuple[str, float]:
    """Feed 20 ms chunks as fast as the stream takes them; (final text, seconds)."""
    stream = await engine.open_stream("en-US")
    reader = asyncio.create_task(_finals(stream))
    opened = time.perf_counter()  # model loading is not decoding
    for i in range(0, len(pcm), CHUNK):
        await stream.feed(pcm[i : i + CHUNK])
    await stream.close()
    finals = await reader
    return " ".join(s.text for s in finals if s.text), time.perf_counter() - opened


async def _finals(stream) -> list[TranscriptSegment]:
    return [s async for s in stream if s.final]


async def stream_paced(engine: PocketSphinxEngine, pcm: bytes) -> tuple[str, float]:
    """Feed 20 ms every 20 ms; (final text, caption lag after the audio's end in seconds)."""
    stream = await engine.open_stream("en-US")
    reader = asyncio.create_task(_finals(stream))
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n, i in enumerate(range(0, len(pcm), CHUNK)):
        delay = start + n * 0.02 - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await stream.feed(pcm[i : i + CHUNK])
    audio_end = start + speech.duration(pcm)
    await stream.close()
    finals = await reader
    lag = max(0.0, loop.time() - audio_end)
    return " ".join(s.text for s in finals if s.text), lag


async def concurrent(engine: PocketSphinxEngine, pcm: bytes, k: int) -> list[tuple[float, float]]:
    """K paced streams at once; [(rtf from process CPU time share, lag)]."""
    cpu0 = time.process_time()
    results = await asyncio.gather(*(stream_paced(engine, pcm) for _ in range(k)))
    cpu = time.process_time() - cpu0
    seconds = speech.duration(pcm)
    return [(cpu / k / seconds, lag) for _, lag in results]


async def live(engine: PocketSphinxEngine, pcm: bytes) -> tuple[str, float] | str:
    """RTP in -> captions out through the aiortc SFU; (final text, caption lag) or why skipped."""
    try:
        import av
        from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

        from classwire.plugins.aiortc_sfu import create_backend
        from classwire.server.plugins.types import (
            ProviderContext,
            RoomOptions,
            SessionDescription,
            TrackPublished,
        )
    except ImportError as exc:
        return f"the aiortc SFU is not importable ({exc})"

    class PcmTrack(MediaStreamTrack):
        """Plays 16 kHz PCM in real time, 20 ms per frame, then silence."""

        kind = "audio"

        def __init__(self, data: bytes) -> None:
            super().__init__()
            self.data = data
            self.sent = 0
            self.t0: float | None = None

        async def recv(self):
            loop = asyncio.get_running_loop()
            if self.t0 is None:
                self.t0 = loop.time()
            n = self.sent // CHUNK
            delay = self.t0 + n * 0.02 - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            chunk = self.data[self.sent : self.sent + CHUNK].ljust(CHUNK, b"\0")
            self.sent += CHUNK
            frame = av.AudioFrame(format="s16", layout="mono", samples=CHUNK // 2)
            frame.planes[0].update(chunk)
            frame.sample_rate = 16000
            frame.pts = n * (CHUNK // 2)
            frame.time_base = fractions.Fraction(1, 16000)
            return frame

    with tempfile.TemporaryDirectory() as tmp:
        backend = create_backend(ProviderContext(data_dir=Path(tmp), database_url="", options={}))
        published: asyncio.Queue = asyncio.Queue()

        async def sink(event) -> None:
            if isinstance(event, TrackPublished):
                published.put_nowait(event.track)

        client = RTCPeerConnection()
        async with backend:
            await backend.create_room("bench", RoomOptions(), sink)
            await backend.add_peer("bench", "instructor")
            track = PcmTrack(pcm + speech.silence(1.0))
            client.addTrack(track)
            await client.setLocalDescription(await client.createOffer())
            offer = SessionDescription("offer", client.localDescription.sdp)
            answer = await backend.publish("bench", "instructor", offer)
            await client.setRemoteDescription(RTCSessionDescription(answer.sdp, answer.type))
            info = await asyncio.wait_for(published.get(), 10)
            stream = await engine.open_stream("en-US")
            reader = asyncio.create_task(_finals(stream))
            expected = len(pcm) + 2 * 16000  # the audio and its trailing silence
            fed = 0
            tap = backend.audio_tap("bench", info.track_id, sample_rate=16000)
            async with contextlib.aclosing(tap):
                async for frame in tap:
                    await stream.feed(frame.pcm)
                    fed += len(frame.pcm)
                    if fed >= expected:
                        break
            audio_end = time.perf_counter()
            await stream.close()
            finals = await reader
            lag = time.perf_counter() - audio_end
            await client.close()
            await backend.close_room("bench")
    return " ".join(s.text for s in finals if s.text), lag


def pct(x: float) -> str:
    return f"{100 * x:5.1f}%"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=len(speech.CLASSROOM_SENTENCES))
    parser.add_argument("--streams", default="3,4")
    parser.add_argument("--concurrent-seconds", type=float, default=20.0)
    parser.add_argument("--skip-live", action="store_true")
    args = parser.parse_args()

    sentences = list(speech.CLASSROOM_SENTENCES[: args.sentences])
    t = time.perf_counter()
    parts = [speech.festival_pcm(s) for s in sentences]
    lesson = speech.join_with_silence(parts, gap=GAP)
    seconds = speech.duration(lesson)
    speech_seconds = sum(speech.duration(p) for p in parts)
    print(
        f"audio: {len(parts)} sentences, {speech_seconds:.1f} s of speech, {seconds:.1f} s "
        f"lesson (synthesized or cached in {time.perf_counter() - t:.1f} s)"
    )

    engine = PocketSphinxEngine()
    bare_text, bare_time = await asyncio.to_thread(bare, parts)
    bare_wer = wer(sentences, bare_text)
    print(f"bare    (whole utterances): WER {pct(bare_wer)}  RTF {bare_time / speech_seconds:.3f}")

    fast_text, fast_time = await stream_fast(engine, lesson)
    fast_wer = wer(sentences, fast_text)
    print(
        f"stream  (20 ms, unpaced):   WER {pct(fast_wer)}  RTF {fast_time / seconds:.3f}  "
        f"(vs bare {100 * (fast_wer - bare_wer):+.1f} points)"
    )

    if args.skip_live:
        print("live    skipped: --skip-live")
    else:
        result = await live(engine, lesson)
        if isinstance(result, str):
            print(f"live    skipped: {result}")
        else:
            live_text, live_lag = result
            live_wer = wer(sentences, live_text)
            diff = 100 * (live_wer - bare_wer)
            verdict = "ok" if diff <= 2.0 else "over the 2-point goal"
            print(
                f"live    (WebRTC -> SFU tap): WER {pct(live_wer)}  vs bare {diff:+.1f} points "
                f"({verdict}); caption lag after audio end {live_lag:.2f} s"
            )

    # Concurrency: a shorter piece of the lesson, K streams at once in real time.
    piece = lesson[: int(args.concurrent_seconds * 16000) * 2]
    sustained = 0
    for k in (int(x) for x in args.streams.split(",")):
        rows = await concurrent(engine, piece, k)
        rtfs = [r for r, _ in rows]
        lags = [lag for _, lag in rows]
        keeps_up = max(lags) <= MAX_CAPTION_LAG
        if keeps_up:
            sustained = k
        print(
            f"concurrent K={k}: RTF per stream median {statistics.median(rtfs):.3f}, "
            f"caption lag median {statistics.median(lags):.2f} s max {max(lags):.2f} s, "
            f"{'keeps up' if keeps_up else 'falls behind'}"
        )
    print(
        f"summary: bare WER {pct(bare_wer)}, stream WER {pct(fast_wer)}, "
        f"stream RTF {fast_time / seconds:.3f} (goal <= 0.3), "
        f"{sustained} concurrent real-time streams on one core (goal >= 3)"
    )


if __name__ == "__main__":
    asyncio.run(main())
