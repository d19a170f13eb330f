"""Media benchmark: the passthrough aiortc SFU against aiortc's decode-and-re-encode relay
(MediaRelay), measured in the same run.

One publisher sends 720p VP8 video and another Opus audio; N subscribers receive both. The
media server (SFU or relay) runs in a child process of its own, driven over a local socket, so
that its CPU time (``time.process_time`` in that process) counts nothing of the clients. The
clients run in this process; subscribers use receivers that do not decode (the SFU's own
connection class), so that client CPU stays small and does not starve the server on a small
machine.

Printed per server and N: CPU seconds per subscriber-stream per second (marginal over N=0),
microseconds of server CPU per forwarded packet, subscriber packet loss; then the ratios.

The passthrough SFU's real limit comes from a sweep of audio-only subscribers: N doubles from
``--sweep-start`` until loss reaches 1%, the server process saturates its core, the clients
saturate theirs (then the limit measured is the clients', and the output says so) or the time
budget ends; the remaining budget then bisects between the last N under 1% loss and the first
over. It prints the largest N under 1% loss found and audio subscriber-streams per core at it.
Medians over rounds.
Usage: python bench/media.py [--sfu-n 1,4,8] [--relay-n 1,2] [--seconds 6] [--rounds 1]
                             [--sweep-start 16] [--sweep-max 512] [--sweep-budget 120]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fractions
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import av
import numpy as np
from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamTrack

from classwire.plugins.aiortc_sfu import AiortcSfu
from classwire.plugins.aiortc_sfu.forwarding import SfuPeerConnection
from classwire.server.plugins.types import PeerSignal, RoomOptions, SessionDescription
from classwire.server.testing.media_backend import SineAudioTrack

CONFIG = dict(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


# --------------------------------------------------------------------------------------------
# Servers (child process)
# --------------------------------------------------------------------------------------------


class RelayServer:
    """aiortc's documented way to fan a track out: MediaRelay over the decoded track, one
    encoder per subscriber sender. Same calls as the SFU's, for the driver below."""

    def __init__(self, emit: Any) -> None:
        self.emit = emit
        self.relay = MediaRelay()
        self.tracks: dict[str, Any] = {}
        self.pcs: dict[tuple[str, str], RTCPeerConnection] = {}

    async def publish(self, peer: str, sdp: str) -> str:
        pc = RTCPeerConnection(RTCConfiguration(**CONFIG))
        self.pcs[(peer, "pub")] = pc

        @pc.on("track")
        def on_track(track: Any) -> None:
            self.tracks[f"{peer}-{track.kind}"] = track

        await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        return pc.localDescription.sdp

    async def subscribe(self, peer: str, track_ids: list[str]) -> None:
        pc = RTCPeerConnection(RTCConfiguration(**CONFIG))
        self.pcs[(peer, "sub")] = pc
        for track_id in track_ids:
            pc.addTransceiver(self.relay.subscribe(self.tracks[track_id]), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        await self.emit({"peer": peer, "offer": pc.localDescription.sdp})

    async def answer(self, peer: str, sdp: str) -> None:
        await self.pcs[(peer, "sub")].setRemoteDescription(RTCSessionDescription(sdp, "answer"))

    def track_ids(self) -> list[str]:
        return sorted(self.tracks)

    async def sent(self) -> tuple[int, int]:
        return await _sent([pc for (p, r), pc in self.pcs.items() if r == "sub"])

    async def close(self) -> None:
        for pc in self.pcs.values():
            await pc.close()


class SfuServer:
    def __init__(self, emit: Any) -> None:
        self.emit = emit
        self.sfu = AiortcSfu()
        self.ids: dict[str, str] = {}

    async def start(self) -> None:
        async def sink(event: Any) -> None:
            if isinstance(event, PeerSignal) and event.description is not None:
                await self.emit({"peer": event.peer_id, "offer": event.description.sdp})

        await self.sfu.create_room("bench", RoomOptions(), sink)

    async def publish(self, peer: str, sdp: str) -> str:
        await self.sfu.add_peer("bench", peer)
        answer = await self.sfu.publish("bench", peer, SessionDescription("offer", sdp))
        for info in (await self.sfu.room_info("bench")).tracks:
            self.ids[f"{info.peer_id}-{info.kind}"] = info.track_id
        return answer.sdp

    async def subscribe(self, peer: str, track_ids: list[str]) -> None:
        await self.sfu.add_peer("bench", peer)
        for track_id in track_ids:
            await self.sfu.subscribe("bench", peer, self.ids[track_id])

    async def answer(self, peer: str, sdp: str) -> None:
        await self.sfu.set_remote_description("bench", peer, SessionDescription("answer", sdp))

    def track_ids(self) -> list[str]:
        return sorted(self.ids)

    async def sent(self) -> tuple[int, int]:
        room = self.sfu._rooms["bench"]
        return await _sent([p.subscriber for p in room.peers.values() if p.subscriber])

    async def close(self) -> None:
        await self.sfu.close()


async def _sent(pcs: list[Any]) -> tuple[int, int]:
    audio = video = 0
    for pc in pcs:
        for t in pc.getTransceivers():
            for s in (await t.sender.getStats()).values():
                if s.type == "outbound-rtp":
                    if t.kind == "audio":
                        audio += s.packetsSent
                    else:
                        video += s.packetsSent
    return audio, video


def serve(kind: str, path: str) -> None:
    async def main() -> None:
        writer_box: list[Any] = []

        async def emit(message: dict[str, Any]) -> None:
            writer_box[0].write((json.dumps(message) + "\n").encode())

        server: Any = SfuServer(emit) if kind == "sfu" else RelayServer(emit)
        if kind == "sfu":
            await server.start()
        done = asyncio.Event()

        async def handle(reader: Any, writer: Any) -> None:
            writer_box.append(writer)
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await serve_connection(reader, writer)

        async def serve_connection(reader: Any, writer: Any) -> None:
            while line := await reader.readline():
                msg = json.loads(line)
                op, rid = msg.pop("op"), msg.pop("id")
                if op == "cpu":
                    result: Any = time.process_time()
                elif op == "sent":
                    result = await server.sent()
                elif op == "tracks":
                    result = server.track_ids()
                elif op == "stop":
                    await server.close()
                    result = None
                    done.set()
                else:
                    try:
                        result = await getattr(server, op)(**msg)
                    except Exception as exc:  # e.g. an answer to a superseded offer
                        reply = {"id": rid, "error": f"{type(exc).__name__}: {exc}"}
                        writer.write((json.dumps(reply) + "\n").encode())
                        continue
                writer.write((json.dumps({"id": rid, "result": result}) + "\n").encode())
                await writer.drain()

        srv = await asyncio.start_unix_server(handle, path)
        async with srv:
            await done.wait()

    asyncio.run(main())


# --------------------------------------------------------------------------------------------
# Clients (this process)
# --------------------------------------------------------------------------------------------


class Remote:
    def __init__(self, path: str) -> None:
        self.path = path
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.on_offer: Any = None

    async def connect(self) -> None:
        for _ in range(100):
            try:
                self.reader, self.writer = await asyncio.open_unix_connection(self.path)
                break
            except OSError:
                await asyncio.sleep(0.05)
        self.task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionError):
            await self._read_lines()

    async def _read_lines(self) -> None:
        while line := await self.reader.readline():
            msg = json.loads(line)
            if "offer" in msg:
                asyncio.ensure_future(self.on_offer(msg["peer"], msg["offer"]))
            elif "error" in msg:
                self.pending.pop(msg["id"]).set_exception(RuntimeError(msg["error"]))
            else:
                self.pending.pop(msg["id"]).set_result(msg["result"])

    async def call(self, op: str, **args: Any) -> Any:
        self.next_id += 1
        future = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = future
        self.writer.write((json.dumps({"op": op, "id": self.next_id, **args}) + "\n").encode())
        return await asyncio.wait_for(future, 60)


class HdVideoTrack(MediaStreamTrack):
    """1280x720 at 30 fps from a few precomputed frames (generating them would cost more
    than encoding)."""

    kind = "video"

    def __init__(self) -> None:
        super().__init__()
        y, x = np.mgrid[0:720, 0:1280]
        self.frames = []
        for i in range(8):
            img = np.stack([(x + 8 * i) % 256, (y + 4 * i) % 256, (x + y) % 256], -1)
            self.frames.append(
                av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24").reformat(
                    format="yuv420p"
                )
            )
        self.count = 0
        self.start: float | None = None

    async def recv(self) -> Any:
        if self.start is None:
            self.start = time.time()
        wait = self.start + self.count / 30 - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        frame = self.frames[self.count % len(self.frames)]
        frame.pts = self.count * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        self.count += 1
        return frame


async def run_once(kind: str, n: int, seconds: float, audio_only: bool) -> dict[str, float]:
    path = tempfile.mktemp(prefix="cw-bench-media-", suffix=".sock")
    child = multiprocessing.Process(target=serve, args=(kind, path), daemon=True)
    child.start()
    remote = Remote(path)
    await remote.connect()
    pcs: list[Any] = []
    subscribers: dict[str, Any] = {}

    async def on_offer(peer: str, sdp: str) -> None:
        pc = subscribers[peer]
        if pc.connectionState == "closed":
            return  # the run is ending
        # A newer offer can overtake this one under load; the newer answer is what counts.
        with contextlib.suppress(RuntimeError, TimeoutError):
            await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            await remote.call("answer", peer=peer, sdp=pc.localDescription.sdp)

    remote.on_offer = on_offer
    try:
        publishers = [("speaker", SineAudioTrack())]
        if not audio_only:
            publishers.append(("camera", HdVideoTrack()))
        for peer, track in publishers:
            pc = RTCPeerConnection(RTCConfiguration(**CONFIG))
            pcs.append(pc)
            pc.addTransceiver(track, direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            answer = await remote.call("publish", peer=peer, sdp=pc.localDescription.sdp)
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        track_ids = await remote.call("tracks")
        while len(track_ids) < len(publishers):
            await asyncio.sleep(0.1)
            track_ids = await remote.call("tracks")
        for i in range(n):
            peer = f"sub-{i}"
            pc = SfuPeerConnection(RTCConfiguration(**CONFIG))  # receives without decoding
            subscribers[peer] = pc
            pcs.append(pc)
            await remote.call("subscribe", peer=peer, track_ids=track_ids)
        # Many subscribers take a while to connect; a late one would count as loss.
        deadline = time.monotonic() + 30 + n / 10
        while time.monotonic() < deadline and any(
            pc.connectionState != "connected" for pc in subscribers.values()
        ):
            await asyncio.sleep(0.2)
        connected = sum(pc.connectionState == "connected" for pc in subscribers.values())
        await asyncio.sleep(3)  # warm up, first keyframes
        cpu0, sent0, t0 = await remote.call("cpu"), await remote.call("sent"), time.monotonic()
        own0, published0 = time.process_time(), await _sent(pcs[: len(publishers)])
        recv0 = await _received(list(subscribers.values()))
        await asyncio.sleep(seconds)
        cpu1, sent1, t1 = await remote.call("cpu"), await remote.call("sent"), time.monotonic()
        own1, published1 = time.process_time(), await _sent(pcs[: len(publishers)])
        recv1 = await _received(list(subscribers.values()))
        await remote.call("stop")
    finally:
        for pc in pcs:
            await pc.close()
        child.join(10)
        if child.is_alive():
            child.kill()
        if os.path.exists(path):
            os.unlink(path)
    packets = (sent1[0] - sent0[0]) + (sent1[1] - sent0[1])
    received = recv1[0] - recv0[0]
    lost = recv1[1] - recv0[1]
    # What every subscriber should have got; one that never connected reports no loss in RTCP.
    published = (published1[0] - published0[0]) + (published1[1] - published0[1])
    expected = n * published
    return {
        "cpu_per_s": (cpu1 - cpu0) / (t1 - t0),
        "client_cpu_per_s": (own1 - own0) / (t1 - t0),
        "packets": packets,
        "us_per_packet": (cpu1 - cpu0) * 1e6 / packets if packets else float("nan"),
        "loss": lost / (received + lost) if received + lost > 0 else (1.0 if n else 0.0),
        "streams": n * len(publishers),
        "connected": connected,
        "delivered": received / expected if expected else float("nan"),
    }


async def _received(pcs: list[Any]) -> tuple[int, int]:
    received = lost = 0
    for pc in pcs:
        for t in pc.getTransceivers():
            for s in (await t.receiver.getStats()).values():
                if s.type == "inbound-rtp":
                    received += s.packetsReceived
                    lost += max(0, s.packetsLost)
    return received, lost


def measure(kind: str, n: int, args: argparse.Namespace, audio_only: bool = False) -> dict:
    rounds = [asyncio.run(run_once(kind, n, args.seconds, audio_only)) for _ in range(args.rounds)]
    return {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}


# A process at this share of one core is saturated: its event loop falls behind and drops.
SATURATED = 0.9


def sweep(args: argparse.Namespace) -> None:
    """The largest N of audio-only SFU subscribers under 1% loss: doubling, then bisection."""
    began = time.monotonic()
    print(
        f"sweep: audio-only SFU subscribers (1 Opus publisher), N doubling from "
        f"{args.sweep_start} up to {args.sweep_max}, then bisecting; stops at 1% loss, "
        f"server or client CPU >= {SATURATED:.0%} of a core, or {args.sweep_budget:.0f} s",
        flush=True,
    )
    print("    N  connected  server cpu/s  client cpu/s  us/packet    loss  verdict", flush=True)
    base = measure("sfu", 0, args, audio_only=True)
    good: tuple[int, dict] | None = None
    bad: tuple[int, str] | None = None
    run_time = 0.0
    n = args.sweep_start
    while True:
        remaining = args.sweep_budget - (time.monotonic() - began)
        if remaining < 2 * run_time:  # the next run is larger, so at least as long
            stop = "time budget spent"
            break
        started = time.monotonic()
        try:
            r = measure("sfu", n, args, audio_only=True)
        except (RuntimeError, TimeoutError) as exc:  # the setup itself gave way
            print(f"{n:5}  run failed: {exc!r}", flush=True)
            bad = (n, "run failed")
            stop = "run failed"
            break
        run_time = time.monotonic() - started
        # The SFU forwards every packet it gets: a packet not delivered is lost.
        r["loss"] = max(r["loss"], 1 - r["delivered"])
        if r["loss"] >= 0.01:
            verdict = "loss >= 1%"
        elif r["cpu_per_s"] >= SATURATED:
            verdict = "server saturated"
        elif r["client_cpu_per_s"] >= SATURATED:
            verdict = "clients saturated"
        else:
            verdict = "ok"
        print(
            f"{n:5}  {r['connected']:9.0f}  {r['cpu_per_s']:12.3f}  {r['client_cpu_per_s']:12.3f}  "
            f"{r['us_per_packet']:9.1f}  {r['loss']:6.2%}  {verdict}",
            flush=True,
        )
        if verdict == "ok":
            good = (n, r)
        elif verdict == "loss >= 1%":
            bad = (n, verdict)
        else:
            # Under 1% loss but at the end of a core: the last N this machine can show.
            good, bad = (n, r), (n, verdict)
            stop = verdict
            break
        if bad is None:
            if n >= args.sweep_max:
                stop = f"reached --sweep-max {args.sweep_max}"
                break
            n = min(2 * n, args.sweep_max)
            continue
        low = good[0] if good else 0
        n = (low + bad[0]) // 2
        if bad[0] - low <= max(2, low // 8):  # within about 12%: close enough
            stop = f"bisected to within {bad[0] - low}"
            break
    if good is None:
        print(f"sfu audio-only: no N under 1% loss (sweep stopped: {stop})")
        return
    n, r = good
    per = (r["cpu_per_s"] - base["cpu_per_s"]) / max(1, r["streams"])
    over = f"first N over: {bad[0]} ({bad[1]})" if bad and bad[0] != n else "no N over 1% found"
    print(
        f"sfu audio-only: largest N under 1% loss found by the sweep: {n} ({over}; sweep "
        f"stopped: {stop}; {time.monotonic() - began:.0f} s); at N={n}: server cpu/s "
        f"{r['cpu_per_s']:.3f}, cpu-s/stream/s {per:.5f}, {r['us_per_packet']:.1f} us/packet, "
        f"loss {r['loss']:.2%}, {1 / per if per > 0 else float('inf'):.0f} audio streams per "
        f"core (goal >= 100)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sfu-n", default="1,4,8", help="subscriber counts for the SFU")
    parser.add_argument("--relay-n", default="1,2", help="subscriber counts for the relay")
    parser.add_argument("--sweep-start", type=int, default=16, help="first N of the sweep")
    parser.add_argument("--sweep-max", type=int, default=512, help="largest N of the sweep")
    parser.add_argument(
        "--sweep-budget", type=float, default=120.0, help="seconds for the audio-only sweep"
    )
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=1, help="median over rounds")
    args = parser.parse_args()
    print(f"cpus={os.cpu_count()} seconds={args.seconds} rounds={args.rounds}", flush=True)
    print("server  N   cpu/s   cpu-s/stream/s  us/packet  loss", flush=True)
    results: dict[str, dict[int, dict]] = {}
    for kind, ns in (("sfu", args.sfu_n), ("relay", args.relay_n)):
        results[kind] = {}
        for n in [0, *(int(x) for x in ns.split(","))]:
            r = results[kind][n] = measure(kind, n, args)
            per = (r["cpu_per_s"] - results[kind][0]["cpu_per_s"]) / r["streams"] if n else 0
            r["per_stream"] = per
            print(
                f"{kind:6} {n:3} {r['cpu_per_s']:7.3f}  {per:14.5f}  "
                f"{r['us_per_packet']:9.1f}  {r['loss']:.2%}",
                flush=True,
            )
    for kind in results:
        ok = [n for n, r in results[kind].items() if n and r["loss"] < 0.01]
        print(f"{kind}: largest N under 1% loss (of those tried): {max(ok) if ok else 'none'}")
    sfu = statistics.median(r["per_stream"] for n, r in results["sfu"].items() if n)
    relay = statistics.median(r["per_stream"] for n, r in results["relay"].items() if n)
    sfu_us = statistics.median(r["us_per_packet"] for n, r in results["sfu"].items() if n)
    print(
        f"median cpu-s per subscriber-stream per s: sfu {sfu:.5f}, relay {relay:.5f}, "
        f"ratio relay/sfu {relay / sfu if sfu > 0 else float('inf'):.1f}x (goal >= 10x)"
    )
    print(f"sfu us per forwarded packet (median over N): {sfu_us:.1f} (goal <= 150)", flush=True)
    sweep(args)


if __name__ == "__main__":
    sys.exit(main())
