"""IngestEvents and IngestEventBatch over real gRPC: per-event results, a malformed event among
valid ones, deduplication by client_event_id, and the ingested events in the log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import struct_pb2

from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.data.v1 import service_pb2_grpc as data_grpc
from classwire.api.events.v1 import data_events_pb2 as dev

CUSTOM = "classwire.api.events.v1.CustomEvent"


def metadata(server):
    return (("authorization", f"Bearer {server.api_key}"),)


def custom(cid: str, name: str = "quiz.scored", score: float = 1.0, **kw) -> dev.CustomEvent:
    data = struct_pb2.Struct()
    data.update({"score": score})
    return dev.CustomEvent(client_event_id=cid, name=name, data=data, **kw)


@pytest.fixture
async def stub(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield data_grpc.DataServiceStub(channel)


async def test_batch_with_a_malformed_event_commits_the_valid_ones(server, stub):
    tag = uuid.uuid4().hex[:8]
    future = dev.CustomEvent(client_event_id=f"{tag}-3", name="quiz.scored")
    future.occur_time.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    events = [
        custom(f"{tag}-0", subject_identity="learner-1"),
        custom(f"{tag}-1", name="Not A Name"),
        custom(f"{tag}-2", session_id="ses_missing"),
        future,
        custom(f"{tag}-4", name="homework.submitted"),
    ]
    response = await stub.IngestEventBatch(
        data_api.IngestEventBatchRequest(events=events), metadata=metadata(server)
    )
    kinds = [r.WhichOneof("outcome") for r in response.results]
    assert kinds == ["accepted", "rejected", "rejected", "rejected", "accepted"]
    assert [r.index for r in response.results] == [0, 1, 2, 3, 4]
    assert (response.accepted_count, response.duplicate_count, response.rejected_count) == (2, 0, 3)
    bad = response.results[1].rejected
    assert bad.reason == "INVALID_EVENT"
    assert [v.field for v in bad.field_violations] == ["name"]
    assert response.results[2].rejected.reason == "SESSION_NOT_FOUND"
    assert response.results[3].rejected.field_violations[0].field == "occur_time"
    first, last = response.results[0].accepted, response.results[4].accepted
    assert last.sequence == first.sequence + 1

    got = await stub.GetEvent(
        data_api.GetEventRequest(event_id=first.event_id), metadata=metadata(server)
    )
    assert got.event.type == CUSTOM
    assert got.event.sequence == first.sequence
    assert got.event.data.custom_event.client_event_id == f"{tag}-0"
    assert got.event.data.custom_event.data["score"] == 1.0
    listed = await stub.ListEvents(
        data_api.ListEventsRequest(
            after_sequence=first.sequence - 1,
            filter={"types": [CUSTOM], "custom_event_names": ["homework.submitted"]},
        ),
        metadata=metadata(server),
    )
    assert [e.id for e in listed.events] == [last.event_id]


async def test_duplicates_come_back_with_the_first_commit(server, stub):
    tag = uuid.uuid4().hex[:8]
    first = await stub.IngestEventBatch(
        data_api.IngestEventBatchRequest(events=[custom(f"{tag}-a"), custom(f"{tag}-b")]),
        metadata=metadata(server),
    )
    again = await stub.IngestEventBatch(
        data_api.IngestEventBatchRequest(
            events=[
                custom(f"{tag}-a"),
                custom(f"{tag}-b", score=2.0),  # same id, other content
                custom(f"{tag}-c"),
                custom(f"{tag}-c"),  # repeated inside one batch
            ]
        ),
        metadata=metadata(server),
    )
    kinds = [r.WhichOneof("outcome") for r in again.results]
    assert kinds == ["duplicate", "rejected", "accepted", "duplicate"]
    assert again.results[0].duplicate.event_id == first.results[0].accepted.event_id
    assert again.results[0].duplicate.sequence == first.results[0].accepted.sequence
    assert again.results[1].rejected.reason == "CLIENT_EVENT_ID_REUSED"
    assert again.results[3].duplicate.event_id == again.results[2].accepted.event_id


async def test_stream_indexes_across_messages_and_acknowledges_all(server, stub):
    tag = uuid.uuid4().hex[:8]

    async def requests():
        yield data_api.IngestEventsRequest(events=[custom(f"{tag}-{i}") for i in range(3)])
        yield data_api.IngestEventsRequest(events=[custom(f"{tag}-1"), custom(f"{tag}-9", name="")])

    response = await stub.IngestEvents(requests(), metadata=metadata(server))
    assert [r.index for r in response.results] == [0, 1, 2, 3, 4]
    assert [r.WhichOneof("outcome") for r in response.results] == [
        "accepted",
        "accepted",
        "accepted",
        "duplicate",
        "rejected",
    ]
    assert response.results[4].rejected.field_violations[0].reason == "REQUIRED"
    sequences = [r.accepted.sequence for r in response.results[:3]]
    assert sequences == sorted(sequences) and len(set(sequences)) == 3


async def test_empty_and_oversized_batches_are_invalid(server, stub):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IngestEventBatch(data_api.IngestEventBatchRequest(), metadata=metadata(server))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    many = [custom(f"x-{i}") for i in range(501)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.IngestEventBatch(
            data_api.IngestEventBatchRequest(events=many), metadata=metadata(server)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
