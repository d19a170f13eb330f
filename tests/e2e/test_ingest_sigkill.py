"""A server killed with SIGKILL during a steady ingest loses no acknowledged event and stores
none twice: after a restart on the same data every acknowledged event is in the log exactly
once, and resending everything (the client's whole recovery) adds nothing twice."""

from __future__ import annotations

import signal
import threading
import uuid
from collections import Counter

import grpc
from support.subprocess_server import free_port, fresh_database, subprocess_server

from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.data.v1 import service_pb2_grpc as data_grpc
from classwire.api.events.v1 import data_events_pb2 as dev

CUSTOM = "classwire.api.events.v1.CustomEvent"
BATCH = 50


def batch(tag: str, n: int) -> list[dev.CustomEvent]:
    return [
        dev.CustomEvent(client_event_id=f"{tag}-{n}-{i}", name="engagement.tick")
        for i in range(BATCH)
    ]


def logged_client_ids(address: str, key: str) -> Counter:
    found: Counter = Counter()
    md = (("authorization", f"Bearer {key}"),)
    with grpc.insecure_channel(address) as channel:
        stub = data_grpc.DataServiceStub(channel)
        token = ""
        while True:
            page = stub.ListEvents(
                data_api.ListEventsRequest(
                    filter={"types": [CUSTOM]}, page_size=500, page_token=token
                ),
                metadata=md,
                timeout=30,
            )
            found.update(e.data.custom_event.client_event_id for e in page.events)
            token = page.next_page_token
            if not token:
                return found


def test_sigkill_during_ingest_loses_no_acknowledged_event(tmp_path):
    tag = uuid.uuid4().hex[:8]
    port = free_port()
    data_dir = tmp_path / "data"
    acknowledged: list[str] = []
    attempted: list[list[dev.CustomEvent]] = []
    acked_enough = threading.Event()
    with fresh_database() as url:
        with subprocess_server(
            tmp_path, port=port, data_dir=data_dir, database_url=url, expect_api_key=True
        ) as server:
            key = server.api_key
            md = (("authorization", f"Bearer {key}"),)

            def steady_ingest() -> None:
                with grpc.insecure_channel(server.address) as channel:
                    stub = data_grpc.DataServiceStub(channel)
                    n = 0
                    while True:
                        events = batch(tag, n)
                        attempted.append(events)
                        n += 1
                        try:
                            response = stub.IngestEventBatch(
                                data_api.IngestEventBatchRequest(events=events),
                                metadata=md,
                                timeout=10,
                            )
                        except grpc.RpcError:
                            return  # the server died under the call: not acknowledged
                        assert response.accepted_count == BATCH
                        acknowledged.extend(r.client_event_id for r in response.results)
                        if len(acknowledged) >= 20 * BATCH:
                            acked_enough.set()

            client = threading.Thread(target=steady_ingest)
            client.start()
            assert acked_enough.wait(60), "the ingest never got going"
            server.stop(signal.SIGKILL)
            client.join(30)
            assert server.process.returncode == -signal.SIGKILL

        with subprocess_server(
            tmp_path, port=port, data_dir=data_dir, database_url=url, expect_api_key=False
        ) as restarted:
            found = logged_client_ids(restarted.address, key)
            assert not [cid for cid in acknowledged if found[cid] != 1]
            assert max(found.values()) == 1  # nothing stored twice, acknowledged or not

            # Recovery: resend every batch; committed events come back as duplicates.
            last_acknowledged = set(acknowledged[-BATCH * 3 :])
            with grpc.insecure_channel(restarted.address) as channel:
                stub = data_grpc.DataServiceStub(channel)
                for events in attempted:
                    response = stub.IngestEventBatch(
                        data_api.IngestEventBatchRequest(events=events),
                        metadata=(("authorization", f"Bearer {key}"),),
                        timeout=30,
                    )
                    assert response.rejected_count == 0
                    for result in response.results:
                        if result.client_event_id in last_acknowledged:
                            assert result.WhichOneof("outcome") == "duplicate"
            after = logged_client_ids(restarted.address, key)
            assert set(after) == {e.client_event_id for events in attempted for e in events}
            assert max(after.values()) == 1
