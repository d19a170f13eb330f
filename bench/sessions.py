"""Live-classroom fan-out benchmark: 200 participants connected across 4 sessions of one
`classwire serve` process, with chat (or, where chat is not available, room-lock toggles) and
hand raises (each learner raises, then lowers its hand) sent through Connect actions at a
steady rate. Prints the fan-out (replayable pushes delivered per second over all streams:
events and hand queue updates) and the p50/p99 delivery latency of chat messages, next to a
bare grpc.aio bidirectional streaming server pushing the same messages (same envelopes, same
hand queue updates, same acks) to the same number of streams in the same run, and the ratio.
Each server runs in its own process, the 200 clients in this one. Every round uses fresh
sessions whose participants all leave and whose sessions end before the next round starts;
the summary gives medians over rounds.

    python bench/sessions.py [--seconds 10] [--rate 10] [--rounds 3]

`--rate` is chat messages per second per session (hand raises and lowers run at half that
rate).
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
import uuid
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
    """Pushes what classwire pushes for each client action, to every stream of the sender's
    group: the full event envelope (ids, times, actor, sequences, payload) of a chat message,
    a raised or lowered hand, and after each hand change the room's hand queue; plus the
    sender's ack. Each push is built once and written to every stream of the group."""
    groups: dict[str, set[asyncio.Queue]] = {}
    queues: dict[str, list[tuple[str, float]]] = {}
    sequence = 0

    def envelope(group: str, identity: str) -> event_pb2.Event:
        nonlocal sequence
        sequence += 1
        event = event_pb2.Event(
            id=str(uuid.uuid4()),
            tenant_id="ten_bench",
            session_id=group,
            sequence=sequence,
            session_sequence=sequence,
            actor=common_pb2.Actor(
                kind=common_pb2.Actor.KIND_PARTICIPANT, id=f"par_{identity}", identity=identity
            ),
        )
        event.occur_time.GetCurrentTime()
        return event

    def hand_queue(group: str, stamp: int) -> api.ConnectResponse:
        update = api.ConnectResponse.HandQueueUpdate()
        for position, (identity, raised) in enumerate(queues.setdefault(group, []), 1):
            entry = update.entries.add(
                participant_id=f"par_{identity}",
                identity=identity,
                display_name=identity.title(),
                position=position,
            )
            entry.raise_time.FromSeconds(int(raised))
        return api.ConnectResponse(sequence=stamp * 4 + 2, hand_queue_update=update)

    async def connect(requests, context):
        queue: asyncio.Queue = asyncio.Queue()
        first = await requests.__anext__()
        group, _, identity = first.join.client_info.partition("/")
        groups.setdefault(group, set()).add(queue)
        await context.write(api.ConnectResponse(joined=api.ConnectResponse.Joined()))

        async def reader():
            async for request in requests:
                pushes, created = [], ""
                kind = request.WhichOneof("action")
                hands = queues.setdefault(group, [])
                if kind == "send_chat":
                    event = envelope(group, identity)
                    event.type = "classwire.api.events.v1.ChatMessagePosted"
                    created = f"msg_{uuid.uuid4().hex}"
                    event.session.chat_message_posted.CopyFrom(
                        ev.ChatMessagePosted(
                            message_id=created,
                            sender_participant_id=f"par_{identity}",
                            sender_identity=identity,
                            sender_display_name=identity.title(),
                            audience=request.send_chat.audience,
                            text=request.send_chat.text,
                        )
                    )
                    pushes.append(api.ConnectResponse(sequence=event.sequence * 4, event=event))
                elif kind == "raise_hand" and identity not in [h for h, _ in hands]:
                    hands.append((identity, time.time()))
                    event = envelope(group, identity)
                    event.type = "classwire.api.events.v1.HandRaised"
                    event.session.hand_raised.CopyFrom(
                        ev.HandRaised(
                            participant_id=f"par_{identity}",
                            identity=identity,
                            queue_position=len(hands),
                        )
                    )
                    pushes.append(api.ConnectResponse(sequence=event.sequence * 4, event=event))
                    pushes.append(hand_queue(group, event.sequence))
                elif kind == "lower_hand" and identity in [h for h, _ in hands]:
                    raised = next(t for h, t in hands if h == identity)
                    hands[:] = [(h, t) for h, t in hands if h != identity]
                    event = envelope(group, identity)
                    event.type = "classwire.api.events.v1.HandLowered"
                    lowered = ev.HandLowered(participant_id=f"par_{identity}", identity=identity)
                    lowered.raised_duration.FromNanoseconds(int((time.time() - raised) * 1e9))
                    event.session.hand_lowered.CopyFrom(lowered)
                    pushes.append(api.ConnectResponse(sequence=event.sequence * 4, event=event))
                    pushes.append(hand_queue(group, event.sequence))
                for push in pushes:
                    for member in list(groups[group]):
                        member.put_nowait(push)
                queue.put_nowait(
                    api.ConnectResponse(
                        action_id=request.action_id,
                        ack=api.ConnectResponse.ActionAck(created_id=created),
                    )
                )

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
                if message.sequence:  # every replayable push: events and hand queue updates
                    stats.pushes += 1
                if kind == "event":
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

    async def leave(self) -> None:
        """Leaves the room and waits for the server to end the stream, so no participant of
        this round is left reconnecting (and later timing out) during the next one."""
        self.out.put_nowait(api.ConnectRequest(leave=api.ConnectRequest.Leave()))
        self.out.put_nowait(None)
        if hasattr(self, "task"):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.task), 10)

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
                # The same learner raises its hand and lowers it at the next turn.
                raiser = learners[(i // 4) % len(learners)]
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


async def classwire_sessions(address: str, key: str) -> list[tuple[str, list[str]]]:
    """Four fresh sessions (id, join tokens): the first token is the instructor's."""
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
            groups.append((session.id, tokens))
    return groups


async def end_sessions(address: str, key: str, session_ids: list[str]) -> None:
    metadata = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = service_pb2_grpc.SessionServiceStub(channel)
        for session_id in session_ids:
            await stub.EndSession(
                api.EndSessionRequest(session_id=session_id, message="round over"),
                metadata=metadata,
            )


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
        await stream.leave()
        stream.close()
        return "NOT_YET_AVAILABLE" not in stream.errors and not stream.errors


async def run_streams(address: str, groups_tokens, seconds, rate, chat) -> dict:
    """One round on one server: connect every participant, drive the load, then leave."""
    channels = [grpc.aio.insecure_channel(address) for _ in range(8)]
    groups = [
        [
            Stream(channels[(g * PER_SESSION + i) % 8], token, f"g{g}/u{g}-{i}")
            for i, token in enumerate(tokens)
        ]
        for g, tokens in enumerate(groups_tokens)
    ]
    try:
        return await drive(groups, seconds, rate, chat)
    finally:
        await asyncio.gather(*[stream.leave() for streams in groups for stream in streams])
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
                probe = await classwire_sessions(server.address, server.api_key)
                chat = await chat_available(server.address, probe[0][1][1])
                await end_sessions(server.address, server.api_key, [sid for sid, _ in probe])
                if args.pid_file:
                    Path(args.pid_file).write_text(str(server.process.pid))
                for n in range(args.rounds):
                    # Each round has its own sessions and participants, all gone at its end.
                    sessions = await classwire_sessions(server.address, server.api_key)
                    tokens = [t for _, t in sessions]
                    ours = await run_streams(server.address, tokens, args.seconds, args.rate, chat)
                    await end_sessions(server.address, server.api_key, [sid for sid, _ in sessions])
                    blanks = [[""] * PER_SESSION for _ in range(SESSIONS)]
                    bare = await run_streams(
                        f"127.0.0.1:{port}", blanks, args.seconds, args.rate, chat
                    )
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
                "rounds": args.rounds,
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
    parser.add_argument("--pid-file", default="", help="write the classwire server's pid here")
    arguments = parser.parse_args()
    if arguments.baseline_server:
        asyncio.run(baseline_server(arguments.baseline_server))
    else:
        asyncio.run(main(arguments))
