"""Conformance suite for notification channels.

Override ``notification_channel``, ``recipient`` (an address the test sink accepts) and
``invalid_recipient``; override ``delivered`` to return what the sink received (for example
the messages a loopback SMTP server collected) so that content is checked too.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Sequence

import pytest

from classwire.server.plugins.types import (
    DeliveryResult,
    DeliveryStatus,
    NotificationChannel,
    NotificationMessage,
)

__all__ = ["NotificationChannelConformance"]


class NotificationChannelConformance:
    """Behaviour every :class:`NotificationChannel` must show."""

    @pytest.fixture
    async def notification_channel(self) -> AsyncIterator[NotificationChannel]:
        raise NotImplementedError("override the notification_channel fixture")
        yield  # pragma: no cover

    @pytest.fixture
    def recipient(self) -> str:
        raise NotImplementedError("override the recipient fixture")

    @pytest.fixture
    def invalid_recipient(self) -> str:
        return ""

    async def delivered(self) -> Sequence[str] | None:
        """The raw texts the sink received so far, or None when the sink is not observable."""
        return None

    def _message(self, recipient: str, **kwargs: object) -> NotificationMessage:
        marker = secrets.token_hex(6)
        fields: dict = {
            "recipient": recipient,
            "subject": f"Lesson reminder {marker}",
            "text": f"Your lesson starts in 15 minutes. ({marker})",
            "idempotency_key": f"reminder-{marker}",
        }
        fields.update(kwargs)
        return NotificationMessage(**fields)

    async def test_is_a_notification_channel(
        self, notification_channel: NotificationChannel
    ) -> None:
        assert isinstance(notification_channel, NotificationChannel)

    async def test_send(self, notification_channel: NotificationChannel, recipient: str) -> None:
        message = self._message(recipient, html="<p>Your lesson starts in 15 minutes.</p>")
        result = await notification_channel.send(message)
        assert isinstance(result, DeliveryResult)
        assert result.status is DeliveryStatus.SENT, result
        received = await self.delivered()
        if received is not None:
            assert any(message.idempotency_key.split("-", 1)[1] in r for r in received)

    async def test_text_only(
        self, notification_channel: NotificationChannel, recipient: str
    ) -> None:
        result = await notification_channel.send(self._message(recipient, html=None))
        assert result.status is DeliveryStatus.SENT, result

    async def test_bad_recipient_is_a_result_not_an_exception(
        self, notification_channel: NotificationChannel, invalid_recipient: str
    ) -> None:
        result = await notification_channel.send(self._message(invalid_recipient))
        assert result.status is DeliveryStatus.REJECTED, result
        assert result.detail

    async def test_retry_with_same_key(
        self, notification_channel: NotificationChannel, recipient: str
    ) -> None:
        message = self._message(recipient)
        # A retry after a crash resends with the same key: the channel must accept it (and pass
        # the key on where its transport can deduplicate), not fail it.
        first = await notification_channel.send(message)
        second = await notification_channel.send(message)
        assert first.status is DeliveryStatus.SENT, first
        assert second.status is DeliveryStatus.SENT, second
