"""E-mail notices over SMTP (aiosmtplib): a multipart/alternative message with a plain-text part
and, when the notice has one, an HTML part.

The ``Message-ID`` is derived from the notice's idempotency key, so a notice sent again after a
crash carries the same id and mail systems (and people) can recognise the duplicate. Options:

- ``host`` (required), ``port`` (default 587 with ``starttls``, 465 with ``tls``, else 25);
- ``username``, ``password``: log in when both are set;
- ``security``: ``none``, ``starttls`` (default) or ``tls`` (implicit TLS);
- ``from_address`` (required) and ``from_name``;
- ``timeout`` in seconds (default 30); ``validate_certs`` (default true);
- ``message_id_domain``: the right-hand side of Message-IDs (default: the sender's domain).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formataddr, formatdate
from typing import Any

import aiosmtplib

from classwire.server.plugins import hookimpl
from classwire.server.plugins.types import (
    DeliveryResult,
    DeliveryStatus,
    NotificationChannel,
    NotificationMessage,
    ProviderContext,
)

__all__ = ["SmtpChannel", "classwire_register_notification_channels", "message_id_for"]

SECURITY = ("none", "starttls", "tls")
DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}
OPTIONS = {
    "host",
    "port",
    "username",
    "password",
    "security",
    "from_address",
    "from_name",
    "timeout",
    "validate_certs",
    "message_id_domain",
}
# A deliberately plain check: the server is the judge of deliverability, this only refuses
# what can never be an addr-spec (and header injection through CR/LF).
_ADDRESS = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$")

# Headers a notice may not set itself: the channel owns them.
_RESERVED_HEADERS = {"from", "to", "subject", "message-id", "date", "mime-version", "content-type"}


def message_id_for(idempotency_key: str, domain: str) -> str:
    """The Message-ID of a notice: stable for a key, opaque (the key may carry ids)."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]
    return f"<{digest}@{domain}>"


class SmtpChannel(NotificationChannel):
    """Sends each notice as one e-mail; one SMTP connection per notice."""

    # The roster contact-channel kinds this channel reaches.
    contact_kinds = ("email",)

    def __init__(
        self,
        *,
        host: str,
        from_address: str,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        security: str = "starttls",
        from_name: str = "",
        timeout: float = 30.0,
        validate_certs: bool = True,
        message_id_domain: str = "",
    ) -> None:
        if not host:
            raise ValueError("host is required")
        if security not in SECURITY:
            raise ValueError(f"security must be one of {', '.join(SECURITY)}, got {security!r}")
        if not _ADDRESS.match(from_address or ""):
            raise ValueError(f"from_address {from_address!r} is not an e-mail address")
        if (username is None) != (password is None):
            raise ValueError("set both username and password, or neither")
        port = DEFAULT_PORTS[security] if port is None else int(port)
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is out of range")
        if float(timeout) <= 0:
            raise ValueError("timeout must be positive")
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.security = security
        self.from_address = from_address
        self.from_name = from_name
        self.timeout = float(timeout)
        self.validate_certs = bool(validate_certs)
        self.message_id_domain = message_id_domain or from_address.rsplit("@", 1)[1]

    def build(self, message: NotificationMessage) -> EmailMessage:
        """The e-mail for a notice (public so that tests and previews can inspect it)."""
        mail = EmailMessage()
        mail["From"] = formataddr((self.from_name, self.from_address))
        local, _, domain = message.recipient.partition("@")
        mail["To"] = Address(message.recipient_name or "", local, domain)
        mail["Subject"] = message.subject
        mail["Date"] = formatdate(localtime=False, usegmt=True)
        mail["Message-ID"] = message_id_for(message.idempotency_key, self.message_id_domain)
        for name, value in message.headers.items():
            if name.lower() in _RESERVED_HEADERS or "\n" in value or "\r" in value:
                continue
            mail[name] = value
        mail.set_content(message.text)
        if message.html:
            mail.add_alternative(message.html, subtype="html")
        return mail

    async def send(self, message: NotificationMessage) -> DeliveryResult:
        if not _ADDRESS.match(message.recipient or ""):
            return DeliveryResult(
                DeliveryStatus.REJECTED, detail="the recipient is not an e-mail address"
            )
        mail = self.build(message)
        try:
            await aiosmtplib.send(
                mail,
                hostname=self.host,
                port=self.port,
                username=self.username,
                password=self.password,
                use_tls=self.security == "tls",
                start_tls=self.security == "starttls",
                timeout=self.timeout,
                validate_certs=self.validate_certs,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            return DeliveryResult(DeliveryStatus.REJECTED, detail=_refusal(exc))
        except aiosmtplib.SMTPResponseException as exc:
            # 5xx is permanent (RFC 5321 4.2.1); 4xx asks to try again later.
            status = DeliveryStatus.REJECTED if exc.code >= 500 else DeliveryStatus.FAILED
            return DeliveryResult(status, detail=f"SMTP {exc.code}: {exc.message}"[:500])
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            return DeliveryResult(
                DeliveryStatus.FAILED, detail=f"{type(exc).__name__}: {exc}"[:500]
            )
        return DeliveryResult(DeliveryStatus.SENT, provider_message_id=mail["Message-ID"])


def _refusal(exc: aiosmtplib.SMTPRecipientsRefused) -> str:
    parts = [f"SMTP {r.code}: {r.message}" for r in exc.recipients] or [str(exc)]
    return "; ".join(parts)[:500]


def create_channel(context: ProviderContext) -> SmtpChannel:
    options: Mapping[str, Any] = context.options
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(unknown)}")
    for required in ("host", "from_address"):
        if not options.get(required):
            raise ValueError(f"{required} is required")
    return SmtpChannel(**dict(options))


@hookimpl
def classwire_register_notification_channels(register: Callable[..., None]) -> None:
    register("smtp", create_channel, description="e-mail over SMTP (aiosmtplib)")
