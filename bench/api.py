"""API overhead benchmark: one load client, three servers, measured in the same run.

Prints QPS and p50/p99 latency of an authenticated read RPC that touches the database
(PlatformService.GetApiKey on SQLite), of a bare grpc.aio echo server, and of the same RPC
without classwire's interceptor stack; then the ratios. Each server runs in its own process,
the load client in this one. Usage: python bench/api.py [--seconds 10] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from grpc import aio

from classwire.api.platform.v1 import service_pb2, service_pb2_grpc

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(mode: str) -> tuple[subprocess.Popen, int, dict]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "api_server.py"), mode, str(port)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    line = proc.stdout.readline()
    if not line:
        raise SystemExit(f"{mode} server failed to start")
    return proc, port, json.loads(line)


async def load(call, seconds: float, concurrency: int) -> dict:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - t0)

    # Warm-up: connections, caches, the JIT-free paths of the first calls.
    for _ in range(200):
        await call()
    started = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "qps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "calls": len(latencies),
    }


async def measure(mode: str, seconds: float, concurrency: int) -> dict:
    proc, port, info = start(mode)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            if mode == "echo":
                payload = service_pb2.GetApiKeyRequest(id="key_" + "0" * 32).SerializeToString()
                rpc = channel.unary_unary("/bench.Echo/Echo")

                async def call():
                    await rpc(payload)
            else:
                stub = service_pb2_grpc.PlatformServiceStub(channel)
                request = service_pb2.GetApiKeyRequest(id=info["key_id"])
                metadata = (("authorization", f"Bearer {info['api_key']}"),)

                async def call():
                    await stub.GetApiKey(request, metadata=metadata)

            return await load(call, seconds, concurrency)
    finally:
        proc.terminate()
        proc.wait(10)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="median over rounds")
    args = parser.parse_args()

    results: dict[str, list[dict]] = {"echo": [], "classwire": [], "no-stack": []}
    for _ in range(args.rounds):
        # Interleaved, so a noisy neighbour hurts every scenario alike.
        for mode in results:
            results[mode].append(await measure(mode, args.seconds, args.concurrency))

    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in results[mode])

    print(
        f"{'server':<12}{'QPS':>10}{'p50 ms':>10}{'p99 ms':>10}   (median of {args.rounds} rounds, "
        f"{args.seconds:.0f}s each, concurrency {args.concurrency})"
    )
    labels = {
        "echo": "bare echo",
        "classwire": "classwire",
        "no-stack": "no-stack",
    }
    for mode in results:
        print(
            f"{labels[mode]:<12}{med(mode, 'qps'):>10.0f}"
            f"{med(mode, 'p50_ms'):>10.2f}{med(mode, 'p99_ms'):>10.2f}"
        )
    ratio = med("classwire", "qps") / med("echo", "qps")
    stack_cost = 1 - med("classwire", "qps") / med("no-stack", "qps")
    print(f"ratio classwire/echo QPS: {ratio:.2f} (goal >= 0.6)")
    print(
        f"interceptor stack cost: {stack_cost * 100:.1f}% of QPS against the same RPC "
        "without it (goal <= 20%)"
    )


if __name__ == "__main__":
    asyncio.run(main())
