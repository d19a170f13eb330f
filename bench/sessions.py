"""Live-classroom fan-out benchmark: 200 participants connected across 4 sessions of one
`classwire serve` process, with chat (or, where chat is not available, room-lock toggles) and
hand raises sent through Connect actions at a steady rate. Prints the fan-out (pushes delivered
per second over all streams) and the p50/p99 delivery latency, next to a bare grpc.aio
bidirectional streaming server pushing the same messages to the same number of streams in the
same run, and the ratio. Each server runs in its own process, the 200 clients in this one.

    python bench/sessions.py [--seconds 10] [--rate 10] [--rounds 3]

`--rate` is chat messages per second per session (hand raises run at half that rate).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from classwire.api.common.v1 import common_pb2  # noqa: E402
from classwire.api.events.v1 import event_pb2  # noqa: E402
from classwire.api.events.v1 import session_events_pb2 as ev  # noqa: E402
from classwire.api.session.v1 import resources_pb2 as pb  # noqa: E402
from classwire.api.session.v1 import service_pb2 as api  # noqa: E402
from classwire.api.session.v1 import service_pb2_grpc  # noqa: E402

SESSIONS = 4
PER_SESSION = 50
CONNECT = "/classwire.api.session.v1.SessionService/Connect"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the bare baseline server ---------------------------------------------------------------


async def baseline_server(port: int) -> None:
    """Pushes each client action to every stream of the sender's group, as classwire would."""
    groups: dict[str, set[asyncio.Queue]] = {}
    sequence = 0

    async def connect(requests, context):
        nonlocal sequence
        queue: asyncio.Queue = asyncio.Queue()
        first = await requests.__anext__()
        group = first.join.client_info
        groups.setdefault(group, set()).add(queue)
        await context.write(api.ConnectResponse(joined=api.ConnectResponse.Joined()))

        async def reader():
            nonlocal sequence
            async for request in requests:
                sequence += 1
                envelope = event_pb2.Event(sequence=sequence, session_id=group)
                if request.WhichOneof("action") == "send_chat":
                    envelope.session.chat_message_posted.text = request.send_chat.text
                else:
                    envelope.session.hand_raised.participant_id = "p"
                push = api.ConnectResponse(sequence=sequence * 4, event=envelope)
                for member in list(groups[group]):
                    member.put_nowait(push)
                queue.put_nowait(api.ConnectResponse(action_id=request.action_id))

        task = asyncio.ensure_future(reader())
        try:
            while True:
                await context.write(await queue.get())
        finally:
            task.cancel()
            groups[group].discard(queue)

    handler = grpc.stream_stream_rpc_method_handler(
        connect,
        request_deserializer=api.ConnectRequest.FromString,
        response_serializer=api.ConnectResponse.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "classwire.api.session.v1.SessionService", {"Connect": handler}
            )
        ]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(json.dumps({"port": port}), flush=True)
    await server.wait_for_termination()


# -- the load -------------------------------------------------------------------------------


class Stream:
    def __init__(self, channel, token: str, group: str) -> None:
        self.channel, self.token, self.group = channel, token, group
        self.out: asyncio.Queue = asyncio.Queue()
        self.errors: list[str] = []

    async def start(self, stats) -> None:
        metadata = (("authorization", f"Bearer {self.token}"),) if self.token else ()

        async def requests():
            while (item := await self.out.get()) is not None:
                yield item

        self.out.put_nowait(
            api.ConnectRequest(join=api.ConnectRequest.Join(client_info=self.group))
        )
        self.call = self.channel.stream_stream(
            CONNECT,
            request_serializer=api.ConnectRequest.SerializeToString,
            response_deserializer=api.ConnectResponse.FromString,
        )(requests(), metadata=metadata)
        first = await self.call.read()
        assert first.WhichOneof("message") == "joined", first
        self.task = asyncio.ensure_future(self._read(stats))

    async def _read(self, stats) -> None:
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            while True:
                message = await self.call.read()
                if message is grpc.aio.EOF:
                    return
                kind = message.WhichOneof("message")
                if kind == "event":
                    stats.pushes += 1
                    payload = message.event.session
                    text = ""
                    if payload.WhichOneof("payload") == "chat_message_posted":
                        text = payload.chat_message_posted.text
                    elif payload.WhichOneof("payload") in ("room_locked", "room_unlocked"):
                        text = getattr(payload, payload.WhichOneof("payload")).message
                    if text.startswith("t="):
                        stats.latencies.append(time.perf_counter() - float(text[2:]))
                elif kind == "error":
                    self.errors.append(message.error.reason)

    def close(self) -> None:
        self.out.put_nowait(None)
        if hasattr(self, "call"):
            self.call.cancel()


class Stats:
    def __init__(self) -> None:
        self.pushes = 0
        self.latencies: list[float] = []


async def drive(groups: list[list[Stream]], seconds: float, rate: float, chat: bool) -> dict:
    stats = Stats()
    for streams in groups:
        for stream in streams:
            await stream.start(stats)
    await asyncio.sleep(0.5)

    async def load(streams: list[Stream], phase: str) -> None:
        host, learners = streams[0], streams[1:]
        interval, i = 1.0 / rate, 0
        next_at = time.perf_counter()
        deadline = next_at + (1.0 if phase == "warm" else seconds)
        while time.perf_counter() < deadline:
            stamp = f"t={time.perf_counter()!r}"
            if chat:
                sender = learners[i % len(learners)]
                sender.out.put_nowait(
                    api.ConnectRequest(
                        action_id=f"c{i}",
                        send_chat=api.ConnectRequest.SendChat(
                            text=stamp, audience=ev.CHAT_AUDIENCE_EVERYONE
                        ),
                    )
                )
            else:
                host.out.put_nowait(
                    api.ConnectRequest(
                        action_id=f"l{i}",
                        set_room_lock=api.ConnectRequest.SetRoomLock(
                            locked=i % 2 == 0, message=stamp
                        ),
                    )
                )
            if i % 2 == 0:
                raiser = learners[(i // 2) % len(learners)]
                action = (
                    {"raise_hand": api.ConnectRequest.RaiseHand()}
                    if (i // 2) % 2 == 0
                    else {"lower_hand": api.ConnectRequest.LowerHand()}
                )
                raiser.out.put_nowait(api.ConnectRequest(action_id=f"h{i}", **action))
            i += 1
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    await asyncio.gather(*[load(streams, "warm") for streams in groups])
    await asyncio.sleep(0.5)
    stats.pushes, stats.latencies = 0, []
    started = time.perf_counter()
    await asyncio.gather(*[load(streams, "run") for streams in groups])
    await asyncio.sleep(0.5)  # let the last pushes arrive
    elapsed = time.perf_counter() - started
    latencies = sorted(stats.latencies)
    errors = sorted({e for streams in groups for s in streams for e in s.errors})
    return {
        "pushes_per_second": stats.pushes / elapsed,
        "p50_ms": statistics.median(latencies) * 1000 if latencies else float("nan"),
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000
        if latencies
        else float("nan"),
        "samples": len(latencies),
        "action_errors": errors,
    }


async def classwire_tokens(address: str, key: str) -> list[list[str]]:
    metadata = (("authorization", f"Bearer {key}"),)
    now = datetime.now(UTC)
    start, end = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
    start.FromDatetime(now + timedelta(minutes=1))
    end.FromDatetime(now + timedelta(hours=2))
    groups = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = service_pb2_grpc.SessionServiceStub(channel)
        for n in range(SESSIONS):
            session = (
                await stub.CreateSession(
                    api.CreateSessionRequest(
                        session=pb.Session(
                            title=f"bench {n}",
                            scheduled_start_time=start,
                            scheduled_end_time=end,
                            settings=pb.SessionSettings(learners_join_before_instructor=True),
                        )
                    ),
                    metadata=metadata,
                )
            ).session
            tokens = []
            for i in range(PER_SESSION):
                role = (
                    common_pb2.PARTICIPANT_ROLE_INSTRUCTOR
                    if i == 0
                    else common_pb2.PARTICIPANT_ROLE_LEARNER
                )
                issued = await stub.CreateJoinToken(
                    api.CreateJoinTokenRequest(
                        session_id=session.id,
                        identity=f"u{n}-{i}",
                        display_name=f"User {i}",
                        role=role,
                    ),
                    metadata=metadata,
                )
                tokens.append(issued.token)
            groups.append(tokens)
    return groups


async def chat_available(address: str, token: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        stream = Stream(channel, token, "probe")
        stats = Stats()
        await stream.start(stats)
        stream.out.put_nowait(
            api.ConnectRequest(
                action_id="probe",
                send_chat=api.ConnectRequest.SendChat(
                    text="probe", audience=ev.CHAT_AUDIENCE_EVERYONE
                ),
            )
        )
        await asyncio.sleep(1.0)
        stream.close()
        return "NOT_YET_AVAILABLE" not in stream.errors and not stream.errors


async def run_classwire(address: str, groups_tokens, seconds, rate, chat) -> dict:
    channels = [grpc.aio.insecure_channel(address) for _ in range(8)]
    groups = [
        [Stream(channels[(g * PER_SESSION + i) % 8], t, f"g{g}") for i, t in enumerate(tokens)]
        for g, tokens in enumerate(groups_tokens)
    ]
    try:
        return await drive(groups, seconds, rate, chat)
    finally:
        for streams in groups:
            for stream in streams:
                stream.close()
        for channel in channels:
            await channel.close()


async def run_baseline(address: str, seconds, rate, chat) -> dict:
    channels = [grpc.aio.insecure_channel(address) for _ in range(8)]
    groups = [
        [Stream(channels[(g * PER_SESSION + i) % 8], "", f"g{g}") for i in range(PER_SESSION)]
        for g in range(SESSIONS)
    ]
    try:
        return await drive(groups, seconds, rate, True)
    finally:
        for streams in groups:
            for stream in streams:
                stream.close()
        for channel in channels:
            await channel.close()


async def main(args) -> None:
    import tempfile

    from tests.support.subprocess_server import subprocess_server

    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        with subprocess_server(
            Path(tmp),
            env={
                "CLASSWIRE_LOG_LEVEL": "warning",
                "CLASSWIRE_RATE_LIMIT_BURST": "100000",
                "CLASSWIRE_RATE_LIMIT_PER_SECOND": "100000",
            },
        ) as server:
            port = free_port()
            baseline = subprocess.Popen(
                [sys.executable, __file__, "--baseline-server", str(port)],
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            try:
                baseline.stdout.readline()
                chat = await chat_available(
                    server.address, (await classwire_tokens(server.address, server.api_key))[0][1]
                )
                for n in range(args.rounds):
                    tokens = await classwire_tokens(server.address, server.api_key)
                    ours = await run_classwire(
                        server.address, tokens, args.seconds, args.rate, chat
                    )
                    bare = await run_baseline(f"127.0.0.1:{port}", args.seconds, args.rate, chat)
                    ratio = ours["pushes_per_second"] / bare["pushes_per_second"]
                    rounds.append((ours, bare, ratio))
                    print(
                        f"round {n + 1}: classwire {ours['pushes_per_second']:.0f} pushes/s "
                        f"p50 {ours['p50_ms']:.1f} ms p99 {ours['p99_ms']:.1f} ms | bare grpc.aio "
                        f"{bare['pushes_per_second']:.0f} pushes/s p50 {bare['p50_ms']:.1f} ms "
                        f"p99 {bare['p99_ms']:.1f} ms | ratio {ratio:.2f}"
                        + (
                            f" | action errors {ours['action_errors']}"
                            if ours["action_errors"]
                            else ""
                        ),
                        flush=True,
                    )
            finally:
                baseline.terminate()
                baseline.wait()
    med = statistics.median
    print(
        json.dumps(
            {
                "load": "chat + hand raises" if chat else "room-lock toggles + hand raises",
                "participants": SESSIONS * PER_SESSION,
                "sessions": SESSIONS,
                "rate_per_session": args.rate,
                "classwire_pushes_per_second": round(
                    med(r[0]["pushes_per_second"] for r in rounds)
                ),
                "classwire_p50_ms": round(med(r[0]["p50_ms"] for r in rounds), 1),
                "classwire_p99_ms": round(med(r[0]["p99_ms"] for r in rounds), 1),
                "bare_pushes_per_second": round(med(r[1]["pushes_per_second"] for r in rounds)),
                "bare_p50_ms": round(med(r[1]["p50_ms"] for r in rounds), 1),
                "bare_p99_ms": round(med(r[1]["p99_ms"] for r in rounds), 1),
                "ratio": round(med(r[2] for r in rounds), 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rate", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-server", type=int, default=0)
    arguments = parser.parse_args()
    if arguments.baseline_server:
        asyncio.run(baseline_server(arguments.baseline_server))
    else:
        asyncio.run(main(arguments))
