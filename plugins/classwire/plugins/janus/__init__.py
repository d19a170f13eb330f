"""Media backend ``janus``: a Janus server's VideoRoom plugin behind the MediaBackend interface.

The provider speaks Janus's HTTP API (long poll for events) with aiohttp: one Janus session per
provider, one VideoRoom room per classwire room, and per participant a publisher handle (the
participant's offer goes to ``configure``; Janus's answer is the ``publish`` result) and a
multistream subscriber handle (Janus offers, the participant answers with ``start``). Decoded
audio (``audio_tap``) and recordings come from VideoRoom ``rtp_forward`` to a local UDP port.

A subscriber learns that a track ended (unsubscribed, or its publisher left) from Janus's
re-offer, in which that section is ``a=inactive`` without ``a=msid``; Janus sends no RTCP BYE,
so clients that end remote tracks only on BYE (aiortc) must act on the re-offer themselves.
Janus reuses an inactive section for a later subscription of the same kind.

Options (``[providers.janus]``):

- ``url``: the Janus HTTP API, e.g. ``http://127.0.0.1:8088/janus`` (required).
- ``api_secret``: Janus's ``api_secret``, if it sets one.
- ``admin_url``, ``admin_secret``: the Admin API, used for ``stats`` (no figures without it).
- ``room_admin_key``: the VideoRoom ``admin_key``, if Janus requires one to create rooms.
- ``request_timeout``: seconds to wait for Janus to answer a request (default 10).
- ``forward_host``: the address of this host that Janus forwards RTP to (default 127.0.0.1).
"""

from __future__ import annotations

from collections.abc import Callable

from classwire.server.plugins import hookimpl
from classwire.server.plugins.types import ConfigError, ProviderContext

from .backend import JanusMediaBackend, janus_room_number
from .client import JanusError

__all__ = [
    "JanusError",
    "JanusMediaBackend",
    "classwire_register_media_backends",
    "create_backend",
    "janus_room_number",
]


def create_backend(context: ProviderContext) -> JanusMediaBackend:
    options = context.options
    prefix = f"providers.{context.name or 'janus'}"
    url = options.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ConfigError(f"{prefix}.url", "the Janus HTTP API URL (http://host:8088/janus)")
    try:
        timeout = float(options.get("request_timeout", 10.0))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix}.request_timeout", "must be a number of seconds") from exc
    if timeout <= 0:
        raise ConfigError(f"{prefix}.request_timeout", "must be positive")
    return JanusMediaBackend(
        url,
        api_secret=options.get("api_secret"),
        admin_url=options.get("admin_url"),
        admin_secret=options.get("admin_secret"),
        room_admin_key=options.get("room_admin_key"),
        request_timeout=timeout,
        forward_host=str(options.get("forward_host", "127.0.0.1")),
        logger=context.logger,
    )


@hookimpl
def classwire_register_media_backends(register: Callable[..., None]) -> None:
    register("janus", create_backend, description="a Janus server's VideoRoom plugin")
