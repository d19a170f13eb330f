"""The http_notify channel, created through the plugin manager, passes the notification-channel
suite against a real aiohttp.web receiver on loopback that verifies every signature."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp import web

import classwire.plugins.http_notify as http_plugin
from classwire.plugins.http_notify import SIGNATURE_HEADER, TIMESTAMP_HEADER, signature
from classwire.server.plugins import ConfigError, PluginManager
from classwire.server.plugins.types import DeliveryStatus, NotificationMessage
from classwire.server.testing import NotificationChannelConformance

SECRET = "s3cret-s3cret-s3cret"


class Receiver:
    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.keys: list[str] = []
        self.answer_status = 200

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = signature(SECRET, int(request.headers[TIMESTAMP_HEADER]), body)
        if request.headers.get(SIGNATURE_HEADER) != expected:
            return web.Response(status=401, text="bad signature")
        data = json.loads(body)
        if not data["recipient"].startswith("+"):
            return web.Response(status=422, text="not a phone number")
        if self.answer_status != 200:
            return web.Response(status=self.answer_status, headers={"Retry-After": "7"})
        self.bodies.append(body.decode())
        self.keys.append(request.headers["idempotency-key"])
        return web.json_response({"id": f"gw-{len(self.bodies)}"})


@pytest.fixture
async def receiver():
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/notify", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    receiver.url = f"http://127.0.0.1:{port}/notify"
    yield receiver
    await runner.cleanup()


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    plugins = PluginManager(load_entry_points=False)
    plugins.register_plugin(http_plugin, "http_notify")
    return plugins.load()


def create(manager: PluginManager, tmp_path: Path, **options):
    return manager.create(
        "notification_channel", "http_notify", data_dir=tmp_path, database_url="", options=options
    )


class TestHttpConformance(NotificationChannelConformance):
    @pytest.fixture
    async def notification_channel(self, manager, receiver, tmp_path):
        self.receiver = receiver
        async with create(manager, tmp_path, url=receiver.url, secret=SECRET) as channel:
            yield channel

    @pytest.fixture
    def recipient(self) -> str:
        return "+14155550100"

    @pytest.fixture
    def invalid_recipient(self) -> str:
        return "not-a-number"

    async def delivered(self):
        return list(self.receiver.bodies)


async def test_idempotency_key_and_gateway_id(manager, receiver, tmp_path):
    async with create(manager, tmp_path, url=receiver.url, secret=SECRET) as channel:
        result = await channel.send(
            NotificationMessage(
                recipient="+14155550100", subject="s", text="t", idempotency_key="ntf_1"
            )
        )
    assert result.status is DeliveryStatus.SENT
    assert result.provider_message_id == "gw-1"
    assert receiver.keys == ["ntf_1"]
    assert json.loads(receiver.bodies[0])["id"] == "ntf_1"


async def test_gateway_overload_is_failed_with_retry_after(manager, receiver, tmp_path):
    receiver.answer_status = 503
    async with create(manager, tmp_path, url=receiver.url, secret=SECRET) as channel:
        result = await channel.send(
            NotificationMessage(recipient="+1415", subject="s", text="t", idempotency_key="k")
        )
    assert result.status is DeliveryStatus.FAILED
    assert result.retry_after_seconds == 7


async def test_wrong_secret_is_rejected_by_the_receiver(manager, receiver, tmp_path):
    async with create(manager, tmp_path, url=receiver.url, secret="x" * 20) as channel:
        result = await channel.send(
            NotificationMessage(recipient="+1415", subject="s", text="t", idempotency_key="k")
        )
    assert result.status is DeliveryStatus.REJECTED and "401" in result.detail


@pytest.mark.parametrize(
    "options",
    [
        {"url": "ftp://x/", "secret": SECRET},
        {"url": "http://x/", "secret": "short"},
        {"url": "http://x/", "secret": SECRET, "kinds": ["pager"]},
    ],
)
def test_bad_options_are_config_errors(manager, tmp_path, options):
    with pytest.raises(ConfigError):
        create(manager, tmp_path, **options)
