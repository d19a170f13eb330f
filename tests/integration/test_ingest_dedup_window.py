"""Ingest deduplication records are kept at least the promised 24 hours and then purged, by the
background loop the platform starts; concurrent requests committed together still deduplicate
across each other. Time is driven by ageing records in the database, not by waiting."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import struct_pb2
from sqlalchemy import select, update

from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.data.v1 import service_pb2_grpc as data_grpc
from classwire.api.events.v1 import data_events_pb2 as dev
from classwire.server.domain.ingest import DEDUP_WINDOW, IngestDomain
from classwire.server.store.data_models import IngestedEvent


def metadata(server):
    return (("authorization", f"Bearer {server.api_key}"),)


def custom(cid: str, score: float = 1.0) -> dev.CustomEvent:
    data = struct_pb2.Struct()
    data.update({"score": score})
    return dev.CustomEvent(client_event_id=cid, name="quiz.scored", data=data)


@pytest.fixture
async def stub(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield data_grpc.DataServiceStub(channel)


async def ingest(server, stub, events):
    response = await stub.IngestEventBatch(
        data_api.IngestEventBatchRequest(events=events), metadata=metadata(server)
    )
    return response.results


async def age(server, client_event_ids, by: timedelta) -> None:
    """Moves the first commit of these client_event_ids `by` into the past."""
    async with server.server.platform.db.writer() as s, s.begin():
        await s.execute(
            update(IngestedEvent)
            .where(
                IngestedEvent.tenant_id == server.tenant_id,
                IngestedEvent.client_event_id.in_(client_event_ids),
            )
            .values(create_time=datetime.now(UTC) - by)
        )


async def recorded(server, client_event_ids) -> set[str]:
    async with server.server.platform.db.reader() as s:
        rows = await s.scalars(
            select(IngestedEvent.client_event_id).where(
                IngestedEvent.tenant_id == server.tenant_id,
                IngestedEvent.client_event_id.in_(client_event_ids),
            )
        )
        return set(rows.all())


async def test_records_past_the_window_are_purged_and_recent_ones_still_deduplicate(server, stub):
    tag = uuid.uuid4().hex[:8]
    old = [f"{tag}-old-{i}" for i in range(3)]
    day_old, recent = f"{tag}-day-old", f"{tag}-recent"
    first = await ingest(server, stub, [custom(c) for c in [*old, day_old, recent]])
    assert [r.WhichOneof("outcome") for r in first] == ["accepted"] * 5
    await age(server, old, DEDUP_WINDOW * 3)
    # Past the promised 24 hours but inside the kept margin: still deduplicated.
    await age(server, [day_old], DEDUP_WINDOW + timedelta(hours=1))

    domain = IngestDomain(server.server.platform.db, server.server.platform.uow)
    # Batches of one, so the purge takes several bounded transactions.
    assert await domain.purge_dedup_records(batch=1) == 3
    assert await recorded(server, [*old, day_old, recent]) == {day_old, recent}

    again = await ingest(server, stub, [custom(old[0]), custom(day_old), custom(recent)])
    assert [r.WhichOneof("outcome") for r in again] == ["accepted", "duplicate", "duplicate"]
    assert again[0].accepted.event_id != first[0].accepted.event_id
    assert again[1].duplicate.event_id == first[3].accepted.event_id
    assert again[2].duplicate.event_id == first[4].accepted.event_id
    assert again[2].duplicate.sequence == first[4].accepted.sequence


async def test_the_platform_runs_the_purge_in_the_background(server, stub):
    names = [t.get_name() for t in server.server.platform.tasks]
    assert "ingest-purge" in names

    tag = uuid.uuid4().hex[:8]
    stale, fresh = f"{tag}-stale", f"{tag}-fresh"
    await ingest(server, stub, [custom(stale), custom(fresh)])
    await age(server, [stale], DEDUP_WINDOW * 3)
    domain = IngestDomain(server.server.platform.db, server.server.platform.uow)
    loop = asyncio.create_task(domain.run_purge(interval=0.05))
    try:
        async with asyncio.timeout(10):
            while stale in await recorded(server, [stale]):
                await asyncio.sleep(0.05)
    finally:
        loop.cancel()
    assert await recorded(server, [stale, fresh]) == {fresh}


async def test_concurrent_requests_deduplicate_across_each_other(server, stub):
    tag = uuid.uuid4().hex[:8]
    shared, reused = f"{tag}-shared", f"{tag}-reused"
    batches = [
        [custom(shared), custom(reused, score=float(n))]
        + [custom(f"{tag}-{n}-{i}") for i in range(20)]
        for n in range(8)
    ]
    results = await asyncio.gather(*(ingest(server, stub, b) for b in batches))

    firsts = [r[0] for r in results]
    accepted = [r.accepted for r in firsts if r.WhichOneof("outcome") == "accepted"]
    assert len(accepted) == 1
    assert all(
        r.duplicate.event_id == accepted[0].event_id
        for r in firsts
        if r.WhichOneof("outcome") == "duplicate"
    )
    # One id with eight different contents: one commit, the others refused.
    reuses = [r[1].WhichOneof("outcome") for r in results]
    assert reuses.count("accepted") == 1 and reuses.count("rejected") == 7
    assert {r[1].rejected.reason for r in results if r[1].WhichOneof("outcome") == "rejected"} == {
        "CLIENT_EVENT_ID_REUSED"
    }

    sequences = [
        x.accepted.sequence for r in results for x in r if x.WhichOneof("outcome") == "accepted"
    ]
    assert len(sequences) == len(set(sequences)) == 2 + 8 * 20
    events = await stub.ListEvents(
        data_api.ListEventsRequest(
            after_sequence=min(sequences) - 1,
            page_size=500,
            filter={"types": ["classwire.api.events.v1.CustomEvent"]},
        ),
        metadata=metadata(server),
    )
    mine = [e for e in events.events if e.data.custom_event.client_event_id.startswith(tag)]
    assert sorted(e.sequence for e in mine) == sorted(sequences)
    for event in mine:
        assert event.tenant_id == server.tenant_id
        assert event.actor.id
        assert event.HasField("occur_time")
