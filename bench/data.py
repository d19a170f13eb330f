"""Data benchmark, ingest part: custom events through DataService.IngestEvents against raw
sqlite3 `executemany` of the same rows into the same schema, measured in the same run.

The server runs as `classwire serve` in its own process on SQLite (WAL, synchronous=NORMAL);
the client streams batches of 500 events on several concurrent streams. The baseline inserts
the rows the server writes (events and their deduplication records), prepared in advance, with
one executemany per 500-event batch and a commit each, on a database migrated the same way.
Usage: python bench/data.py [--events 100000] [--streams 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from grpc import aio

from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.data.v1 import service_pb2_grpc as data_grpc
from classwire.api.events.v1 import data_events_pb2 as dev
from classwire.api.events.v1 import event_pb2

BATCH = 500
KEY_PREFIX = "export CLASSWIRE_API_KEY="


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def custom(tag: str, n: int) -> dev.CustomEvent:
    event = dev.CustomEvent(
        client_event_id=f"{tag}-{n}", name="quiz.scored", subject_identity=f"learner-{n % 300}"
    )
    event.data.update({"score": n % 100, "quiz": "q-7"})
    return event


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLASSWIRE_")}
    env.update(
        {
            "CLASSWIRE_LISTEN": f"127.0.0.1:{port}",
            "CLASSWIRE_DATA_DIR": str(data_dir),
            "CLASSWIRE_METRICS_LISTEN": "",
            "CLASSWIRE_LOG_FORMAT": "json",
            "CLASSWIRE_LOG_LEVEL": "warning",
            "CLASSWIRE_RATE_LIMIT_PER_SECOND": "1000000",
            "CLASSWIRE_RATE_LIMIT_BURST": "1000000",
            "PYTHONUNBUFFERED": "1",
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "classwire.server.cli", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    for line in proc.stdout:
        if line.strip().startswith(KEY_PREFIX):
            # Keep reading what the server prints, so a full pipe never blocks it.
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, f"127.0.0.1:{port}", line.strip().removeprefix(KEY_PREFIX)
    raise SystemExit("the server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if the server has not stopped within 30 s (said on stderr: a slow
    shutdown is a bug to look at, but it does not change the rates measured before it)."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        print("warning: the server did not stop within 30 s of SIGTERM; killed", file=sys.stderr)
        proc.kill()
        proc.wait()


async def ingest_rate(events: int, streams: int) -> float:
    with tempfile.TemporaryDirectory(prefix="classwire-bench-") as tmp:
        proc, address, key = start_server(Path(tmp))
        try:
            md = (("authorization", f"Bearer {key}"),)
            per_stream = events // streams
            tag = uuid.uuid4().hex[:8]
            # Messages are built before the clock starts: the client's cost is not the server's.
            plans = [
                [
                    data_api.IngestEventsRequest(
                        events=[custom(f"{tag}-{s}", n + i) for i in range(BATCH)]
                    )
                    for n in range(0, per_stream, BATCH)
                ]
                for s in range(streams)
            ]
            async with aio.insecure_channel(address) as channel:
                stub = data_grpc.DataServiceStub(channel)
                warm = [custom(f"{tag}-warm", i) for i in range(BATCH)]
                await stub.IngestEventBatch(
                    data_api.IngestEventBatchRequest(events=warm), metadata=md
                )

                async def one(plan):
                    async def requests():
                        for message in plan:
                            yield message

                    response = await stub.IngestEvents(requests(), metadata=md)
                    assert response.accepted_count == len(plan) * BATCH, response.rejected_count
                    return response.accepted_count

                started = time.perf_counter()
                done = sum(await asyncio.gather(*(one(p) for p in plans)))
                return done / (time.perf_counter() - started)
        finally:
            stop_server(proc)


def baseline_rate(events: int) -> float:
    """Raw sqlite3 executemany of the same rows into a database migrated like the server's."""
    with tempfile.TemporaryDirectory(prefix="classwire-bench-") as tmp:
        proc, _, _ = start_server(Path(tmp))  # migrates and creates the tenant
        stop_server(proc)
        db = sqlite3.connect(Path(tmp) / "classwire.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        tenant = db.execute("SELECT id FROM tenants").fetchone()[0]
        (head,) = db.execute(
            "SELECT last_sequence FROM event_counters WHERE tenant_id=? AND stream=''", (tenant,)
        ).fetchone()
        now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
        tag = uuid.uuid4().hex[:8]
        batches = []
        for start in range(0, events, BATCH):
            rows, dedup = [], []
            for n in range(start, start + BATCH):
                payload = custom(tag, n)
                envelope = event_pb2.Event(
                    id=str(uuid.uuid4()), tenant_id=tenant, sequence=head + n + 1
                )
                envelope.data.custom_event.CopyFrom(payload)
                blob = envelope.SerializeToString()
                rows.append((envelope.id, tenant, envelope.sequence, None, None,
                             "classwire.api.events.v1.CustomEvent", now, blob))  # fmt: skip
                digest = hashlib.sha256(payload.SerializeToString(deterministic=True)).hexdigest()
                dedup.append(
                    (tenant, payload.client_event_id, digest, envelope.id, envelope.sequence, now)
                )
            batches.append((rows, dedup))
        started = time.perf_counter()
        for rows, dedup in batches:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO events (id, tenant_id, sequence, session_id, session_sequence, "
                "type, occur_time, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.executemany(
                "INSERT INTO ingested_events (tenant_id, client_event_id, fingerprint, "
                "event_id, sequence, create_time) VALUES (?, ?, ?, ?, ?, ?)",
                dedup,
            )
            db.execute("COMMIT")
        elapsed = time.perf_counter() - started
        db.close()
        return events / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3, help="median over rounds")
    args = parser.parse_args()
    ingest, raw = [], []
    for _ in range(args.rounds):
        # Interleaved, so a noisy neighbour hurts both alike.
        ingest.append(await ingest_rate(args.events, args.streams))
        raw.append(baseline_rate(args.events))
    ingest_med, raw_med = statistics.median(ingest), statistics.median(raw)
    print(
        f"ingest {args.events} events, {args.streams} streams, batches of {BATCH} "
        f"(median of {args.rounds} rounds)"
    )
    print(f"IngestEvents over gRPC:     {ingest_med:>10.0f} events/s")
    print(f"raw sqlite3 executemany:    {raw_med:>10.0f} events/s")
    print(f"ratio IngestEvents/raw: {ingest_med / raw_med:.2f} (goal >= 0.3)")


if __name__ == "__main__":
    asyncio.run(main())
