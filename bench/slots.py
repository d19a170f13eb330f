"""FindSlots benchmark: 400 instructors of one subject with generated weekly availability (six
hours a weekday, in four zones) and bookings inside it, one `classwire` server in this process
on a fresh SQLite database. The queried days are weekdays, so every instructor is a candidate.
Prints FindSlots p50/p99 over gRPC for a one-day window, next to the baseline measured in the
same run: the domain's slot computation alone (compute_slots on rows already in memory, no
gRPC, no database), and the ratio. Goal: p99 <= 50 ms.

    python bench/slots.py [--instructors 400] [--bookings 3] [--queries 200] [--gc-freeze]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from classwire.api.roster.v1 import resources_pb2 as rpb  # noqa: E402
from classwire.api.roster.v1 import service_pb2 as rapi  # noqa: E402
from classwire.api.roster.v1 import service_pb2_grpc as rgrpc  # noqa: E402
from classwire.api.scheduling.v1 import resources_pb2 as pb  # noqa: E402
from classwire.api.scheduling.v1 import service_pb2 as api  # noqa: E402
from classwire.api.scheduling.v1 import service_pb2_grpc as sgrpc  # noqa: E402
from classwire.server.app import Server  # noqa: E402
from classwire.server.config import load_config  # noqa: E402
from classwire.server.domain import scheduling as d  # noqa: E402
from classwire.server.domain.platform import TenantSettings  # noqa: E402
from classwire.server.domain.scheduling_time import Interval, zone  # noqa: E402
from classwire.server.logs import configure_logging  # noqa: E402
from classwire.server.store import scheduling_repositories as srepo  # noqa: E402

ZONES = ["America/New_York", "Europe/Berlin", "Asia/Tokyo", "America/Los_Angeles"]
SUBJECT = "math"


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main(args) -> None:
    configure_logging("console", "warning")
    rng = random.Random(7)
    tmp = Path(tempfile.mkdtemp(prefix="classwire-slots-"))
    config = load_config(
        {
            "CLASSWIRE_LISTEN": "127.0.0.1:0",
            "CLASSWIRE_METRICS_LISTEN": "",
            "CLASSWIRE_DATA_DIR": str(tmp / "data"),
            "CLASSWIRE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'bench.db'}",
            "CLASSWIRE_LOG_LEVEL": "warning",
            "CLASSWIRE_BOOTSTRAP": "false",
            "CLASSWIRE_RATE_LIMIT_PER_SECOND": "100000",
            "CLASSWIRE_RATE_LIMIT_BURST": "100000",
        }
    )
    server = Server(config)
    await server.start()
    created = await server.platform.platform.create_tenant(
        None, "bench", TenantSettings(), operator=True
    )
    metadata = (("authorization", f"Bearer {created.secret}"),)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    roster, sched = rgrpc.RosterServiceStub(channel), sgrpc.SchedulingServiceStub(channel)
    # A Monday at least two weeks ahead: notice and booking windows never cut the week.
    base = (datetime.now(UTC) + timedelta(days=14)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    base += timedelta(days=(7 - base.weekday()) % 7)
    print(f"generating {args.instructors} instructors ...", flush=True)
    ids = []
    hours = {}
    for i in range(args.instructors):
        tz_name = ZONES[i % len(ZONES)]
        person = (
            await roster.CreatePerson(
                rapi.CreatePersonRequest(
                    person=rpb.Person(
                        roles=[rpb.PERSON_ROLE_INSTRUCTOR],
                        given_name=f"I{i}",
                        time_zone=tz_name,
                        instructor_profile=rpb.InstructorProfile(
                            qualifications=[rpb.SubjectQualification(subject=SUBJECT)]
                        ),
                    )
                ),
                metadata=metadata,
            )
        ).person
        ids.append(person.id)
        start = rng.choice([7, 8, 9, 12, 14])
        hours[person.id] = (tz_name, start)
        rules = [
            pb.WeeklyRule(
                weekday=day,
                range=pb.LocalTimeRange(
                    start=rpb.LocalTime(hours=start), end=rpb.LocalTime(hours=start + 6)
                ),
            )
            for day in range(1, 6)
        ]
        await sched.SetAvailability(
            api.SetAvailabilityRequest(
                availability=pb.AvailabilitySchedule(
                    person_id=person.id,
                    weekly_rules=rules,
                    booking_policy=pb.BookingPolicy(
                        buffer_after=duration_pb2.Duration(seconds=600)
                    ),
                )
            ),
            metadata=metadata,
        )
    learners = []
    for i in range(50):
        learners.append(
            (
                await roster.CreatePerson(
                    rapi.CreatePersonRequest(
                        person=rpb.Person(
                            roles=[rpb.PERSON_ROLE_LEARNER], given_name=f"L{i}", time_zone="UTC"
                        )
                    ),
                    metadata=metadata,
                )
            ).person.id
        )
    print(f"booking about {args.bookings} lessons per instructor ...", flush=True)
    booked = 0
    for iid in ids:
        tz_name, first_hour = hours[iid]
        local_monday = base.astimezone(zone(tz_name)).date()
        for _ in range(args.bookings):
            # Inside the instructor's hours on a weekday of the week, in their zone.
            day = local_monday + timedelta(days=rng.randrange(5))
            local = datetime(
                day.year, day.month, day.day, first_hour, tzinfo=zone(tz_name)
            ) + timedelta(minutes=30 * rng.randrange(10))
            at = local.astimezone(UTC)
            try:
                await sched.CreateBooking(
                    api.CreateBookingRequest(
                        booking=pb.Booking(
                            subject=SUBJECT,
                            instructor_id=iid,
                            learner_ids=[rng.choice(learners)],
                            start_time=ts(at),
                            end_time=ts(at + timedelta(minutes=45)),
                        )
                    ),
                    metadata=metadata,
                )
                booked += 1
            except grpc.aio.AioRpcError:
                pass  # outside availability or taken: generated data, not every try lands
    print(f"{booked} bookings", flush=True)

    if args.gc_freeze:
        # What a server can do once started: move the start-up heap out of the collector's
        # reach, so full collections stop pausing requests for tens of milliseconds.
        gc.collect()
        gc.freeze()
    days = [base + timedelta(days=i) for i in range(1, 5)]  # Tuesday to Friday

    def request(day):
        return api.FindSlotsRequest(
            subject=SUBJECT,
            duration=duration_pb2.Duration(seconds=2700),
            window=pb.TimeInterval(start_time=ts(day), end_time=ts(day + timedelta(days=1))),
            time_zone="Europe/Berlin",
            max_slots=200,
        )

    for day in days:  # warm-up
        await sched.FindSlots(request(day), metadata=metadata)
    grpc_ms = []
    slot_count = 0
    for i in range(args.queries):
        t0 = time.perf_counter()
        found = await sched.FindSlots(request(days[i % len(days)]), metadata=metadata)
        grpc_ms.append((time.perf_counter() - t0) * 1000)
        slot_count = len(found.slots)

    # Baseline: the same computation on rows already in memory.
    platform = server.platform
    tenant = created.tenant.tenant.id
    async with platform.db.reader() as session:
        instructors = await d.slot_instructors(session, tenant, SUBJECT, "")
        busy_rows = await srepo.busy(
            session, tenant, ids, base - timedelta(days=8), base + timedelta(days=16), role=2
        )
    base_ms = []
    for i in range(args.queries):
        day = days[i % len(days)]
        t0 = time.perf_counter()
        d.compute_slots(
            instructors=instructors,
            settings={},
            busy_rows=busy_rows,
            learner_busy=[],
            window=Interval(day, day + timedelta(days=1)),
            duration=timedelta(minutes=45),
            now=datetime.now(UTC),
            learner_profile={},
            previous=set(),
            weights=d.DEFAULT_WEIGHTS,
            max_candidates=5,
        )
        base_ms.append((time.perf_counter() - t0) * 1000)

    await channel.close()
    await server.stop(grace=1)
    g50, g99 = statistics.median(grpc_ms), pct(grpc_ms, 0.99)
    b50, b99 = statistics.median(base_ms), pct(base_ms, 0.99)
    print(f"slots per answer: {slot_count}")
    print(f"FindSlots over gRPC : p50 {g50:7.2f} ms  p99 {g99:7.2f} ms  (goal p99 <= 50 ms)")
    print(f"baseline (compute)  : p50 {b50:7.2f} ms  p99 {b99:7.2f} ms")
    print(f"ratio gRPC/baseline : p50 {g50 / b50:5.2f}x  p99 {g99 / b99:5.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instructors", type=int, default=400)
    parser.add_argument("--bookings", type=int, default=3)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--gc-freeze", action="store_true", help="gc.freeze() after set-up, before measuring"
    )
    asyncio.run(main(parser.parse_args()))
