"""Webhook delivery over real HTTP: a receiver on loopback that is down and comes back, Standard
Webhooks signatures checked with the `standardwebhooks` package, ordering, Retry-After, HTTP 410,
redelivery and the delivery log."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid

import grpc
import pytest
from aiohttp import web
from google.protobuf import duration_pb2
from standardwebhooks.webhooks import Webhook

from classwire.api.data.v1 import service_pb2 as data_api
from classwire.api.data.v1 import service_pb2_grpc as data_grpc
from classwire.api.events.v1 import data_events_pb2 as dev
from classwire.api.platform.v1 import resources_pb2 as pb
from classwire.api.platform.v1 import service_pb2 as api
from classwire.api.platform.v1 import service_pb2_grpc as platform_grpc

CUSTOM = "classwire.api.events.v1.CustomEvent"
DISABLED = "classwire.api.events.v1.WebhookEndpointDisabled"
TIMEOUT = 15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """A webhook receiver: records every request and answers from a script (then 200)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.requests: list[tuple[dict, bytes, float]] = []
        self.script: list[tuple[int, dict]] = []
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read(), time.monotonic()))
        status, headers = self.script.pop(0) if self.script else (200, {})
        return web.Response(status=status, headers=headers)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()

    async def wait_for(self, count: int) -> None:
        for _ in range(TIMEOUT * 20):
            if len(self.requests) >= count:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{len(self.requests)} of {count} requests arrived")


@pytest.fixture(scope="module")
async def server(tmp_path_factory):
    """A server of this module's own: endpoints other tests register (to hosts this offline
    machine cannot resolve) would otherwise share the dispatcher's slots with these tests."""
    from tests.conftest import create_database, make_config, start_server

    tmp = tmp_path_factory.mktemp("webhooks")
    url, drop = await create_database(tmp)
    running = await start_server(make_config(tmp, url))
    yield running
    await running.server.stop(grace=1)
    if drop:
        await drop()


@pytest.fixture(scope="module", autouse=True)
def fast_dispatcher(server):
    """Short intervals so retries happen within the test."""
    dispatcher = server.server.platform.webhooks
    saved = (dispatcher.poll_interval, dispatcher.backoff_base, dispatcher.backoff_max)
    dispatcher.poll_interval, dispatcher.backoff_base, dispatcher.backoff_max = 0.2, 0.1, 0.4
    yield dispatcher
    dispatcher.poll_interval, dispatcher.backoff_base, dispatcher.backoff_max = saved


@pytest.fixture
async def stubs(server):
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield platform_grpc.PlatformServiceStub(channel), data_grpc.DataServiceStub(channel)


def md(server):
    return (("authorization", f"Bearer {server.api_key}"),)


async def create_endpoint(server, platform, url: str, types=(CUSTOM,)):
    return await platform.CreateWebhookEndpoint(
        api.CreateWebhookEndpointRequest(
            endpoint=pb.WebhookEndpoint(url=url, event_types=list(types))
        ),
        metadata=md(server),
    )


async def ingest(server, data, count: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    events = [
        dev.CustomEvent(client_event_id=f"{tag}-{i}", name="quiz.scored") for i in range(count)
    ]
    response = await data.IngestEventBatch(
        data_api.IngestEventBatchRequest(events=events), metadata=md(server)
    )
    return [r.accepted.event_id for r in response.results]


async def deliveries(server, platform, endpoint_id: str):
    response = await platform.ListWebhookDeliveries(
        api.ListWebhookDeliveriesRequest(endpoint_id=endpoint_id), metadata=md(server)
    )
    return list(response.deliveries)


async def eventually(check, what: str):
    for _ in range(TIMEOUT * 20):
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_receiver_down_then_back_gets_every_event_in_order_signed(server, stubs):
    platform, data = stubs
    receiver = Receiver()  # nothing listens on its port yet: connections are refused
    created = await create_endpoint(server, platform, receiver.url)
    endpoint_id = created.endpoint.id
    sent = await ingest(server, data, 3)
    sent += await ingest(server, data, 2)

    async def failed_twice():
        found = await deliveries(server, platform, endpoint_id)
        return any(len(d.attempts) >= 2 for d in found)

    await eventually(failed_twice, "failed attempts while the receiver is down")
    await receiver.start()
    try:
        await receiver.wait_for(len(sent))
        await asyncio.sleep(0.3)  # nothing more than once per event should follow
    finally:
        await receiver.stop()

    verifier = Webhook(created.secret)
    ids = []
    for headers, body, _ in receiver.requests:
        payload = verifier.verify(body, headers)  # raises unless a signature matches
        assert payload["id"] == headers["webhook-id"]
        assert payload["type"] == CUSTOM
        ids.append(headers["webhook-id"])
    assert ids == sent  # every event, once, in sequence order

    log = await deliveries(server, platform, endpoint_id)
    assert {d.event_id for d in log} == set(sent)
    assert all(d.state == pb.WEBHOOK_DELIVERY_STATE_SUCCEEDED for d in log)
    first = next(d for d in log if d.event_id == sent[0])
    assert len(first.attempts) >= 3
    assert first.attempts[0].http_status == 0 and first.attempts[0].error
    assert first.attempts[-1].http_status == 200
    times = [a.attempt_time.ToDatetime() for a in first.attempts]
    assert times == sorted(times)
    created_times = [d.create_time.ToDatetime() for d in log]
    assert created_times == sorted(created_times, reverse=True)  # newest first


async def test_retry_after_is_honoured(server, stubs):
    platform, data = stubs
    receiver = Receiver()
    receiver.script = [(503, {"Retry-After": "1"})]
    await receiver.start()
    try:
        await create_endpoint(server, platform, receiver.url)
        await ingest(server, data, 1)
        await receiver.wait_for(2)
    finally:
        await receiver.stop()
    (h1, _, t1), (h2, _, t2) = receiver.requests[:2]
    assert h1["webhook-id"] == h2["webhook-id"]
    # The test's backoff is at most 0.4 s: only Retry-After explains a longer wait.
    assert t2 - t1 >= 0.9


async def test_http_410_disables_the_endpoint(server, stubs):
    platform, data = stubs
    receiver = Receiver()
    receiver.script = [(410, {})]
    await receiver.start()
    try:
        created = await create_endpoint(server, platform, receiver.url)
        sent = await ingest(server, data, 2)

        async def disabled():
            got = await platform.GetWebhookEndpoint(
                api.GetWebhookEndpointRequest(id=created.endpoint.id), metadata=md(server)
            )
            return (
                got.endpoint if got.endpoint.state == pb.WEBHOOK_ENDPOINT_STATE_DISABLED else None
            )

        endpoint = await eventually(disabled, "the endpoint to be disabled")
    finally:
        await receiver.stop()
    assert endpoint.disabled_reason == "HTTP 410 Gone"
    assert len(receiver.requests) == 1
    log = await deliveries(server, platform, created.endpoint.id)
    assert {d.event_id: d.state for d in log} == {
        sent[0]: pb.WEBHOOK_DELIVERY_STATE_FAILED,
        sent[1]: pb.WEBHOOK_DELIVERY_STATE_FAILED,
    }
    events = await data.ListEvents(
        data_api.ListEventsRequest(filter={"types": [DISABLED]}), metadata=md(server)
    )
    assert any(
        e.platform.webhook_endpoint_disabled.endpoint_id == created.endpoint.id
        for e in events.events
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await platform.RedeliverWebhook(
            api.RedeliverWebhookRequest(endpoint_id=created.endpoint.id, event_id=sent[0]),
            metadata=md(server),
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_redelivery_keeps_the_webhook_id_and_rotation_signs_twice(server, stubs):
    platform, data = stubs
    receiver = Receiver()
    await receiver.start()
    try:
        created = await create_endpoint(server, platform, receiver.url)
        endpoint_id = created.endpoint.id
        (event_id,) = await ingest(server, data, 1)
        await receiver.wait_for(1)
        rotated = await platform.RotateWebhookSecret(
            api.RotateWebhookSecretRequest(
                id=endpoint_id, overlap=duration_pb2.Duration(seconds=3600)
            ),
            metadata=md(server),
        )
        again = await platform.RedeliverWebhook(
            api.RedeliverWebhookRequest(endpoint_id=endpoint_id, event_id=event_id),
            metadata=md(server),
        )
        assert again.delivery.event_id == event_id
        assert again.delivery.state == pb.WEBHOOK_DELIVERY_STATE_PENDING
        await receiver.wait_for(2)
    finally:
        await receiver.stop()
    (first, body1, _), (second, body2, _) = receiver.requests[:2]
    assert first["webhook-id"] == second["webhook-id"] == event_id
    assert json.loads(body1) == json.loads(body2)
    assert len(second["webhook-signature"].split(" ")) == 2
    Webhook(created.secret).verify(body2, second)  # the old secret, during the overlap
    Webhook(rotated.secret).verify(body2, second)  # and the new one
    log = await deliveries(server, platform, endpoint_id)
    assert [d.event_id for d in log] == [event_id, event_id]
    assert log[0].id == again.delivery.id and log[0].id != log[1].id

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await platform.RedeliverWebhook(
            api.RedeliverWebhookRequest(endpoint_id=endpoint_id, event_id="missing"),
            metadata=md(server),
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await platform.ListWebhookDeliveries(
            api.ListWebhookDeliveriesRequest(endpoint_id="whe_missing"), metadata=md(server)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_usage_days_cover_the_range(server, stubs):
    platform, _ = stubs
    from datetime import UTC, datetime, timedelta

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    request = api.GetUsageRequest()
    request.start_time.FromDatetime(today - timedelta(days=2))
    request.end_time.FromDatetime(today + timedelta(days=1))
    response = await platform.GetUsage(request, metadata=md(server))
    assert [d.day_time.ToDatetime(tzinfo=UTC) for d in response.days] == [
        today - timedelta(days=2),
        today - timedelta(days=1),
        today,
    ]
    assert all(d.recording_minutes == 0 and d.transcription_minutes == 0 for d in response.days)
    bad = api.GetUsageRequest()
    bad.start_time.FromDatetime(today)
    bad.end_time.FromDatetime(today - timedelta(days=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await platform.GetUsage(bad, metadata=md(server))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
