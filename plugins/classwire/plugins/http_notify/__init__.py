"""A generic HTTP notification channel for SMS and chat gateways: each notice is POSTed as JSON to
one configured URL, signed with HMAC-SHA256.

Body: ``{"id", "recipient", "recipient_name", "subject", "text", "html", "headers"}``, where
``id`` is the notice's idempotency key (also sent as the ``Idempotency-Key`` header, so a gateway
can drop a retry it already handled). Signature: ``X-Classwire-Signature: v1=<hex>`` over
``"<timestamp>.<body>"`` with ``X-Classwire-Timestamp`` the Unix time in seconds; a receiver
recomputes it and refuses stale timestamps, so a captured request cannot be replayed later.

Outcomes: 2xx is SENT (``provider_message_id`` from a JSON ``id`` in the answer when there is
one); 408, 425, 429 and 5xx are FAILED (``Retry-After`` honoured); other 4xx are REJECTED;
no answer is FAILED. Options:

- ``url`` (required, http or https), ``secret`` (required, at least 16 characters);
- ``timeout`` in seconds (default 10); ``headers``: extra request headers (an API token);
- ``kinds``: the roster contact-channel kinds it serves (default ``["sms", "chat", "webhook"]``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from classwire.server.plugins import hookimpl
from classwire.server.plugins.types import (
    DeliveryResult,
    DeliveryStatus,
    NotificationChannel,
    NotificationMessage,
    ProviderContext,
)

__all__ = ["HttpNotifyChannel", "classwire_register_notification_channels", "signature"]

SIGNATURE_HEADER = "X-Classwire-Signature"
TIMESTAMP_HEADER = "X-Classwire-Timestamp"
OPTIONS = {"url", "secret", "timeout", "headers", "kinds"}
KINDS = {"sms", "chat", "webhook", "email"}
_RETRYABLE = {408, 425, 429}


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The signature header's value for a request body sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


class HttpNotifyChannel(NotificationChannel):
    def __init__(
        self,
        *,
        url: str,
        secret: str,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        kinds: list[str] | tuple[str, ...] = ("sms", "chat", "webhook"),
    ) -> None:
        parts = urlsplit(url or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be an http(s) URL, got {url!r}")
        if not secret or len(secret) < 16:
            raise ValueError("secret must be at least 16 characters")
        if float(timeout) <= 0:
            raise ValueError("timeout must be positive")
        bad = sorted(set(kinds) - KINDS)
        if bad or not kinds:
            raise ValueError(f"kinds must be a non-empty subset of {sorted(KINDS)}")
        self.url = url
        self.secret = secret
        self.timeout = float(timeout)
        self.headers = dict(headers or {})
        self.contact_kinds = tuple(kinds)
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"user-agent": "classwire-notify/1"},
            )

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def send(self, message: NotificationMessage) -> DeliveryResult:
        if not message.recipient or not message.recipient.strip():
            return DeliveryResult(DeliveryStatus.REJECTED, detail="the recipient is empty")
        await self.start()
        assert self._http is not None
        body = json.dumps(
            {
                "id": message.idempotency_key,
                "recipient": message.recipient,
                "recipient_name": message.recipient_name or "",
                "subject": message.subject,
                "text": message.text,
                "html": message.html or "",
                "headers": dict(message.headers),
            },
            separators=(",", ":"),
            ensure_ascii=False,
        ).encode()
        timestamp = int(time.time())
        headers = {
            **self.headers,
            "content-type": "application/json",
            "idempotency-key": message.idempotency_key,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: signature(self.secret, timestamp, body),
        }
        try:
            async with self._http.post(
                self.url, data=body, headers=headers, allow_redirects=False
            ) as response:
                text = await response.text()
                status = response.status
                retry_after = _retry_after(response.headers.get("retry-after"))
        except TimeoutError:
            return DeliveryResult(DeliveryStatus.FAILED, detail="the gateway did not answer")
        except aiohttp.ClientError as exc:
            return DeliveryResult(
                DeliveryStatus.FAILED, detail=f"{type(exc).__name__}: {exc}"[:500]
            )
        if 200 <= status < 300:
            return DeliveryResult(DeliveryStatus.SENT, provider_message_id=_message_id(text))
        detail = f"HTTP {status}: {text[:200]}"
        if status in _RETRYABLE or status >= 500:
            return DeliveryResult(
                DeliveryStatus.FAILED, detail=detail, retry_after_seconds=retry_after
            )
        return DeliveryResult(DeliveryStatus.REJECTED, detail=detail)


def _message_id(text: str) -> str | None:
    try:
        value = json.loads(text).get("id") if text else None
    except (ValueError, AttributeError):
        return None
    return str(value) if value else None


def create_channel(context: ProviderContext) -> HttpNotifyChannel:
    options: Mapping[str, Any] = context.options
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(unknown)}")
    return HttpNotifyChannel(**dict(options))


@hookimpl
def classwire_register_notification_channels(register: Callable[..., None]) -> None:
    register("http_notify", create_channel, description="JSON over HTTP for SMS and chat gateways")
