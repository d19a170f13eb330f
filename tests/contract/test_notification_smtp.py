"""The smtp channel, created through the plugin manager, passes the notification-channel suite
against a real SMTP server (aiosmtpd) on loopback, and what arrives is a proper multipart e-mail."""

from __future__ import annotations

import email
import socket
from email import policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

import classwire.plugins.smtp as smtp_plugin
from classwire.plugins.smtp import message_id_for
from classwire.server.plugins import ConfigError, PluginManager
from classwire.server.plugins.types import DeliveryStatus, NotificationMessage
from classwire.server.testing import NotificationChannelConformance


class Sink:
    """An aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        self.messages.append(envelope.original_content or envelope.content)
        return "250 OK"


@pytest.fixture(scope="module")
def smtp_server():
    sink = Sink()
    # aiosmtpd's start-up check connects to the configured port, so it cannot be 0.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    yield sink, controller.port
    controller.stop()


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    plugins = PluginManager(load_entry_points=False)
    plugins.register_plugin(smtp_plugin, "smtp")
    return plugins.load()


def create(manager: PluginManager, tmp_path: Path, **options):
    return manager.create(
        "notification_channel", "smtp", data_dir=tmp_path, database_url="", options=options
    )


class TestSmtpConformance(NotificationChannelConformance):
    @pytest.fixture(autouse=True)
    def _sink(self, smtp_server):
        self.sink = smtp_server[0]

    @pytest.fixture
    async def notification_channel(self, manager, smtp_server, tmp_path):
        channel = create(
            manager,
            tmp_path,
            host="127.0.0.1",
            port=smtp_server[1],
            security="none",
            from_address="school@example.org",
        )
        async with channel:
            yield channel

    @pytest.fixture
    def recipient(self) -> str:
        return "guardian@example.org"

    async def delivered(self):
        return [m.decode() for m in self.sink.messages]


async def test_multipart_with_message_id_from_key(manager, smtp_server, tmp_path):
    sink, port = smtp_server
    channel = create(
        manager,
        tmp_path,
        host="127.0.0.1",
        port=port,
        security="none",
        from_address="school@example.org",
        from_name="Example School",
    )
    before = len(sink.messages)
    result = await channel.send(
        NotificationMessage(
            recipient="ana@example.org",
            recipient_name="Ana Díaz",
            subject="Report: Algebra",
            text="Plain body",
            html="<p>HTML body</p>",
            idempotency_key="ntf_123",
        )
    )
    assert result.status is DeliveryStatus.SENT
    assert result.provider_message_id == message_id_for("ntf_123", "example.org")
    mail = email.message_from_bytes(sink.messages[before], policy=policy.default)
    assert mail["Message-ID"] == message_id_for("ntf_123", "example.org")
    assert mail.get_content_type() == "multipart/alternative"
    assert mail.get_body(("plain",)).get_content().strip() == "Plain body"
    assert mail.get_body(("html",)).get_content().strip() == "<p>HTML body</p>"
    assert "Example School" in mail["From"]


async def test_unreachable_server_is_failed_not_an_exception(manager, tmp_path):
    channel = create(
        manager,
        tmp_path,
        host="127.0.0.1",
        port=1,
        security="none",
        from_address="school@example.org",
        timeout=2,
    )
    result = await channel.send(
        NotificationMessage(recipient="a@example.org", subject="s", text="t", idempotency_key="k")
    )
    assert result.status is DeliveryStatus.FAILED and result.detail


@pytest.mark.parametrize(
    "options",
    [
        {"host": "h"},
        {"host": "h", "from_address": "x@y.z", "colour": "blue"},
        {"host": "h", "from_address": "x@y.z", "security": "ssl"},
    ],
)
def test_bad_options_are_config_errors(manager, tmp_path, options):
    with pytest.raises(ConfigError):
        create(manager, tmp_path, **options)
