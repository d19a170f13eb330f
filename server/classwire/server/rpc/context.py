"""Per-call context: the authenticated principal of the RPC running in this task."""

from __future__ import annotations

from contextvars import ContextVar

from ..domain.auth import Principal

_principal: ContextVar[Principal | None] = ContextVar("classwire_principal", default=None)


def set_principal(principal: Principal | None) -> None:
    _principal.set(principal)


def principal() -> Principal:
    value = _principal.get()
    if value is None:  # the interceptor authenticates every classwire RPC first
        raise RuntimeError("no authenticated principal in this context")
    return value
