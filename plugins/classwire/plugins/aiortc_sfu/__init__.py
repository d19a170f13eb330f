"""The default media backend: an in-process selective forwarding unit on aiortc.

aiortc on its own decodes every received track and encodes it again for every subscriber. This
backend forwards the publisher's encoded frames instead (see :mod:`.forwarding`): frames leave
the receiver's jitter buffer before the decoder, are fanned out to one lightweight track per
subscriber, and the subscriber's RTP sender packetizes them without an encoder. Samples are
decoded only for audio taps (once per track) and nothing is decoded for recording, which remuxes
the encoded packets.

Options (``[providers.media_backend.aiortc_sfu]``):

- ``keyframe_interval_ms``: the least time between two keyframe requests (PLI) to one publisher,
  default 300.
- ``renegotiation_delay_ms``: how long subscription changes are gathered into one subscriber
  offer, default 20.
- ``stun_servers``: list of STUN URLs for the SFU's ICE agent (default none: host candidates,
  enough on a LAN or loopback).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from classwire.server.plugins import hookimpl
from classwire.server.plugins.types import ConfigError, ProviderContext

from .backend import AiortcSfu

__all__ = ["AiortcSfu", "classwire_register_media_backends", "create_backend"]


def _number(options: dict[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ConfigError(f"providers.media_backend.aiortc_sfu.{key}", "must be a number >= 0")
    return float(value)


def create_backend(context: ProviderContext) -> AiortcSfu:
    options = dict(context.options)
    stun = options.get("stun_servers", [])
    if not isinstance(stun, list) or not all(isinstance(s, str) for s in stun):
        raise ConfigError("providers.media_backend.aiortc_sfu.stun_servers", "must be a list")
    return AiortcSfu(
        keyframe_interval=_number(options, "keyframe_interval_ms", 300) / 1000,
        renegotiation_delay=_number(options, "renegotiation_delay_ms", 20) / 1000,
        stun_servers=stun,
        logger=context.logger,
    )


@hookimpl
def classwire_register_media_backends(register: Callable[..., None]) -> None:
    register(
        "aiortc_sfu",
        create_backend,
        description="in-process WebRTC SFU (aiortc) forwarding encoded Opus and VP8",
    )
