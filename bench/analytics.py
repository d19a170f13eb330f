"""Analytics benchmark: rollup queries against a full scan of the event log, in the same run.

Generates N session events (default 10 million: live sessions of a year, 25 learners each, with
joins, leaves, attendance intervals, speaking intervals, camera tracks, chat, hands, reactions,
graded polls and ratings) and writes them in bulk into the events table through the store's
functions (sequence reservation and batched inserts). Then:

1. runs the rollup consumer over them until it reaches the log's head (the fold time);
2. times each analytics query shape through the analytics domain (median of --rounds);
3. computes the same answers by a full scan of the events table (read, parse and fold every
   event in memory; one scan answers every shape, so its time is each shape's baseline) and
   checks that the answers agree.

Usage: python bench/analytics.py [--events 10000000] [--rounds 5] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from classwire.api.common.v1 import common_pb2 as common
from classwire.api.events.v1 import data_events_pb2 as dev
from classwire.api.events.v1 import event_pb2
from classwire.api.events.v1 import media_events_pb2 as mev
from classwire.api.events.v1 import session_events_pb2 as ev
from classwire.server.domain.analytics import AnalyticsDomain, validate_scope
from classwire.server.domain.analytics_fold import FOLDED_TYPES, LEARNER, TEACHING, Fold
from classwire.server.domain.auth import Principal
from classwire.server.events.catalogue import unwrap, wrap
from classwire.server.events.rollups import RollupConsumer
from classwire.server.store import events as event_store
from classwire.server.store.engine import Database
from classwire.server.store.models import Tenant

LEARNERS_PER_SESSION = 25
CLASSES = 80
LEARNERS = 2000
INSTRUCTORS = 40
BATCH = 5000
ROLLUP_BATCH = 20000
DAY, WEEK = 1, 2


def ts(target, value: datetime) -> None:
    target.FromDatetime(value)


def session_events(rng: random.Random, n: int, start: datetime):
    """The (payload, occur_time) of one generated session."""
    class_no = n % CLASSES
    class_id = f"class-{class_no:03d}"
    teacher = f"teacher-{class_no % INSTRUCTORS:02d}"
    learners = [f"learner-{(class_no * 25 + i) % LEARNERS:04d}" for i in range(25)]
    end = start + timedelta(hours=1)
    out = []
    created = ev.SessionCreated(title="Lesson", class_id=class_id, state=2)
    ts(created.scheduled_start_time, start)
    ts(created.scheduled_end_time, end)
    out.append((created, start - timedelta(days=1)))
    people = [(teacher, common.PARTICIPANT_ROLE_INSTRUCTOR)] + [
        (name, common.PARTICIPANT_ROLE_LEARNER) for name in learners
    ]
    for i, (identity, role) in enumerate(people):
        out.append(
            (
                ev.JoinTokenIssued(
                    token_id=f"tok-{n}-{i}", participant_id=f"p-{n}-{i}", identity=identity,
                    role=role,
                ),
                start - timedelta(hours=1),
            )
        )  # fmt: skip
    out.append((ev.SessionStateChanged(previous_state=2, state=3), start))
    poll = ev.PollCreated(poll_id=f"poll-{n}", question="?", correct_option_ids=["2"])
    for i, (identity, role) in enumerate(people):
        if role == common.PARTICIPANT_ROLE_LEARNER and rng.random() < 0.1:
            continue  # absent
        pid = f"p-{n}-{i}"
        joined = start + timedelta(seconds=rng.randint(-120, 600))
        left = end - timedelta(seconds=rng.randint(0, 900))
        out.append(
            (ev.ParticipantJoined(participant_id=pid, identity=identity, display_name=identity,
                                  role=role), joined)
        )  # fmt: skip
        out.append(
            (mev.TrackPublished(track_id=f"cam-{pid}", participant_id=pid, identity=identity,
                                source=common.TRACK_SOURCE_CAMERA), joined)
        )  # fmt: skip
        for k in range(rng.randint(0, 3)):
            out.append(
                (ev.ChatMessagePosted(message_id=f"m-{pid}-{k}", sender_participant_id=pid,
                                      sender_identity=identity, text="hi"), joined)
            )  # fmt: skip
        if rng.random() < 0.5:
            out.append((ev.HandRaised(participant_id=pid, identity=identity), joined))
        for _ in range(rng.randint(0, 2)):
            out.append((ev.ReactionSent(participant_id=pid, identity=identity, emoji="👍"), joined))
        for k in range(6):
            speak = joined + timedelta(minutes=5 + 7 * k)
            item = mev.SpeakingIntervalRecorded(participant_id=pid, identity=identity)
            ts(item.start_time, speak)
            ts(item.end_time, speak + timedelta(seconds=rng.randint(2, 40)))
            out.append((item, speak))
        if rng.random() < 0.05:
            out.append((ev.ParticipantReconnecting(participant_id=pid), joined))
        out.append((mev.TrackUnpublished(track_id=f"cam-{pid}", participant_id=pid,
                                         source=common.TRACK_SOURCE_CAMERA), left))  # fmt: skip
        interval = ev.AttendanceIntervalRecorded(participant_id=pid, identity=identity, role=role)
        ts(interval.join_time, joined)
        ts(interval.leave_time, left)
        out.append((ev.ParticipantLeft(participant_id=pid, identity=identity, reason=1), left))
        out.append((interval, left))
    out.append((poll, start + timedelta(minutes=30)))
    for i, (identity, _) in enumerate(people[1:], 1):
        if rng.random() < 0.7:
            answer = ev.PollAnswered(poll_id=poll.poll_id, participant_id=f"p-{n}-{i}",
                                     identity=identity, option_ids=[rng.choice("12")])  # fmt: skip
            out.append((answer, start + timedelta(minutes=31)))
    out.append((ev.SessionEnded(reason=1), end))
    for i, (identity, _) in enumerate(people[1:4], 1):
        out.append(
            (dev.RatingSubmitted(rating_id=f"r-{n}-{i}", rater_identity=identity,
                                 instructor_identity=teacher, score=rng.randint(1, 5)), end)
        )  # fmt: skip
    # In time order, as the server writes them (stable: ties keep their causal order).
    return sorted(out, key=lambda item: item[1])


async def generate(db: Database, tenant_id: str, total: int) -> tuple[int, datetime, datetime]:
    rng = random.Random(7)
    first = datetime(2026, 1, 5, 9, tzinfo=UTC)
    actor = common.Actor(kind=common.Actor.KIND_SYSTEM, id="bench")
    written, n = 0, 0
    pending: list[tuple] = []

    async def flush():
        async with db.writer() as session, session.begin():
            seq = await event_store.next_sequences(
                session, tenant_id, event_store.TENANT_STREAM, len(pending)
            )
            rows = []
            for payload, occur, session_id in pending:
                envelope = event_pb2.Event(
                    id=str(uuid.uuid4()), tenant_id=tenant_id, session_id=session_id,
                    sequence=seq,
                )  # fmt: skip
                envelope.type = wrap(payload, envelope)
                envelope.occur_time.FromDatetime(occur)
                envelope.actor.CopyFrom(actor)
                rows.append(
                    {"id": envelope.id, "tenant_id": tenant_id, "sequence": seq,
                     "session_id": session_id, "session_sequence": None, "type": envelope.type,
                     "occur_time": occur, "payload": envelope.SerializeToString()}
                )  # fmt: skip
                seq += 1
            await event_store.insert_events(session, rows)
        pending.clear()

    last = first
    while written < total:
        # Sessions spread over a year of school days, several an hour.
        start = first + timedelta(hours=(n // 6) % 8 + 24 * ((n // 48) % 365))
        last = max(last, start)
        session_id = f"ses-{n:07d}"
        for payload, occur in session_events(rng, n, start):
            if written >= total:
                break
            pending.append((payload, occur, session_id))
            written += 1
            if len(pending) >= BATCH:
                await flush()
        n += 1
    if pending:
        await flush()
    return n, first, last + timedelta(days=1)


async def full_scan(db: Database, tenant_id: str) -> tuple[float, dict]:
    """Every event of the tenant read, parsed and folded in memory: the answer without rollups."""
    started = time.perf_counter()
    fold = Fold(tenant_id, [], [])
    after = 0
    while True:
        async with db.reader() as session:
            rows = await event_store.read_after(session, tenant_id, after, 50_000)
        if not rows:
            break
        for row in rows:
            if row.type in FOLDED_TYPES:
                envelope = event_pb2.Event.FromString(row.payload)
                fold.apply(envelope, unwrap(envelope))
        after = rows[-1].sequence
    facts = [r for by in fold.rows.values() for r in by.values() if not r["cancelled"]]
    return time.perf_counter() - started, facts


def scan_answers(facts: list[dict], start_slot: int, end_slot: int) -> dict:
    inside = [f for f in facts if start_slot <= f["slot"] < end_slot]
    learners = [f for f in inside if f["role"] == LEARNER]
    one = [f for f in learners if f["identity"] == "learner-0042"]
    klass = [f for f in learners if f["class_id"] == "class-007"]
    teachers = [f for f in inside if f["role"] in TEACHING]
    return {
        "learner": (sum(f["attended"] for f in one), sum(f["present_ms"] for f in one)),
        "class": (sum(f["chat_messages"] for f in klass), sum(f["talk_ms"] for f in klass)),
        "instructor": (
            sum(f["rating_count"] for f in teachers),
            sum(f["disconnects"] for f in teachers),
        ),
        "tenant": (sum(f["attended"] for f in learners), sum(f["expected"] for f in learners)),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=5, help="median over rounds")
    parser.add_argument("--database-url", default="", help="default: SQLite in a temp dir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="classwire-bench-") as tmp:
        url = args.database_url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        db = Database(url)
        await db.migrate()
        tenant_id = f"ten_{uuid.uuid4().hex}"
        now = datetime.now(UTC)
        async with db.writer() as session, session.begin():
            session.add(
                Tenant(id=tenant_id, display_name="bench", settings={}, create_time=now,
                       update_time=now)
            )  # fmt: skip

        started = time.perf_counter()
        sessions, first, last = await generate(db, tenant_id, args.events)
        generate_s = time.perf_counter() - started
        print(f"generated {args.events} events ({sessions} sessions) in {generate_s:.1f} s")

        consumer = RollupConsumer(db, batch=ROLLUP_BATCH)
        started = time.perf_counter()
        await consumer.catch_up()
        fold_s = time.perf_counter() - started
        print(f"rollup fold: {fold_s:.1f} s ({args.events / fold_s:.0f} events/s)")

        domain = AnalyticsDomain(db, None)
        principal = Principal(tenant_id, frozenset({"admin"}))
        shapes = {
            "learner": (domain.query_attendance, dict(group_by=1, learners=["learner-0042"])),
            "class": (domain.query_engagement, dict(group_by=2, class_ids=["class-007"])),
            "instructor": (domain.query_instructor_quality, dict()),
            "tenant": (domain.query_attendance, dict(group_by=4, time_zone="Europe/Paris")),
        }
        answers, timings = {}, {}
        for name, (query, options) in shapes.items():
            runs = []
            for _ in range(args.rounds):
                options = dict(options)
                zone = options.pop("time_zone", "")
                group_by = options.pop("group_by", None)
                scope = validate_scope(first, last, WEEK, zone, group_by, **options)
                t0 = time.perf_counter()
                groups, _, _ = await query(principal, scope)
                runs.append(time.perf_counter() - t0)
            timings[name] = statistics.median(runs)
            totals = [g.total for g in groups]
            answers[name] = {
                "learner": lambda t: (t["attended"], t["present_ms"]),
                "class": lambda t: (t["chat_messages"], t["talk_ms"]),
                "instructor": lambda t: (t["rating_count"], t["disconnects"]),
                "tenant": lambda t: (t["attended"], t["expected"]),
            }[name](
                {k: sum(int(x.get(k, 0)) for x in totals) for k in set().union(*totals)}
                if totals
                else {}
            )

        scan_s, facts = await full_scan(db, tenant_id)
        slot = lambda moment: int(moment.timestamp()) - int(moment.timestamp()) % 900  # noqa: E731
        expected = scan_answers(facts, slot(first), int(last.timestamp()))
        print(f"\nqueries on {args.events} events, median of {args.rounds} runs:")
        print(f"{'shape':<12}{'rollups':>12}{'full scan':>12}{'ratio':>10}  same answer")
        for name in shapes:
            same = answers[name] == expected[name]
            print(
                f"{name:<12}{timings[name] * 1000:>10.1f}ms{scan_s:>11.1f}s"
                f"{scan_s / timings[name]:>9.0f}x  {same} {answers[name]}"
            )
            assert same, (name, answers[name], expected[name])
        print(f"(one full scan answers all four shapes: {scan_s:.1f} s)")
        await db.dispose()


if __name__ == "__main__":
    asyncio.run(main())
