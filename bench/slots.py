"""FindSlots benchmark: 400 instructors of one subject with generated weekly availability (in
four zones) and bookings, one `classwire` server in this process on a fresh SQLite database.
Prints FindSlots p50/p99 over gRPC for a one-day window, next to the baseline measured in the
same run: the domain's slot computation alone (compute_slots on rows already in memory, no
gRPC, no database), and the ratio. Goal: p99 <= 50 ms.

    python bench/slots.py [--instructors 400] [--bookings 3] [--queries 200]
"""

from __future__ import annotations

import argparse
import asyncio
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
from classwire.server.domain.scheduling_time import Interval  # noqa: E402
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
    base = (datetime.now(UTC) + timedelta(days=14)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    print(f"generating {args.instructors} instructors ...", flush=True)
    ids = []
    for i in range(args.instructors):
        zone = ZONES[i % len(ZONES)]
        person = (
            await roster.CreatePerson(
                rapi.CreatePersonRequest(
                    person=rpb.Person(
                        roles=[rpb.PERSON_ROLE_INSTRUCTOR],
                        given_name=f"I{i}",
                        time_zone=zone,
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
        for _ in range(args.bookings):
            at = base + timedelta(days=rng.randrange(7), minutes=30 * rng.randrange(48))
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

    days = [base + timedelta(days=i) for i in range(1, 5)]

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
        people = await srepo.people(session, tenant, ids)
        avail = {a.person_id: a for a in await srepo.availabilities(session, tenant, ids)}
        busy_rows = await srepo.busy(
            session, tenant, ids, base - timedelta(days=8), base + timedelta(days=16)
        )
    base_ms = []
    for i in range(args.queries):
        day = days[i % len(days)]
        t0 = time.perf_counter()
        d.compute_slots(
            people=people,
            avail=avail,
            settings={},
            busy_rows=busy_rows,
            learner_busy=[],
            window=Interval(day, day + timedelta(days=1)),
            duration=timedelta(minutes=45),
            now=datetime.now(UTC),
            learner_profile={},
            previous=set(),
            weights=d.DEFAULT_WEIGHTS,
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
    asyncio.run(main(parser.parse_args()))
