"""Servicers for services whose behaviour arrives in a later release.

Every RPC of the v1 contract is registered, authenticated and answers UNIMPLEMENTED with a
message naming the capability it belongs to, so clients can be written against the whole
contract today.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

from ..domain.errors import Unimplemented

# Service full name -> the capability that brings its behaviour.
CAPABILITIES = {
    "classwire.api.roster.v1.RosterService": "rosters and scheduling",
    "classwire.api.scheduling.v1.SchedulingService": "rosters and scheduling",
    "classwire.api.session.v1.SessionService": "live classrooms",
    "classwire.api.media.v1.MediaService": "the media plane",
    "classwire.api.data.v1.DataService": "data and integrations",
}


def unimplemented_servicer(servicer_base: type, service_name: str, implemented=None) -> object:
    """An instance of `servicer_base` whose methods not in `implemented` answer UNIMPLEMENTED."""
    capability = CAPABILITIES.get(service_name, "a later release")
    implemented = implemented or {}
    namespace = {}
    for name, attr in vars(servicer_base).items():
        if name.startswith("_") or not callable(attr):
            continue
        if name in implemented:
            continue
        namespace[name] = _make(service_name, name, capability)
    namespace.update(implemented)
    cls = type(f"Pending{servicer_base.__name__}", (servicer_base,), namespace)
    return cls()


def _make(service: str, method: str, capability: str):
    message = (
        f"{service.rsplit('.', 1)[-1]}.{method} is part of the v1 contract; its behaviour "
        f"arrives with the {capability} capability and is not available in this release"
    )

    async def not_yet(self, request, context):
        raise Unimplemented(
            message, reason="NOT_YET_AVAILABLE", metadata={"capability": capability}
        )

    not_yet.__name__ = method
    return not_yet


def delegates(handler: object, names: Iterable[str]) -> dict:
    """Servicer methods that forward to `handler`'s bound methods, for unimplemented_servicer,
    which builds its servicer class without constructor arguments."""

    def forward(bound):
        if inspect.isasyncgenfunction(bound):

            async def method(_self, request, context):
                async for item in bound(request, context):
                    yield item
        else:

            async def method(_self, request, context):
                return await bound(request, context)

        method.__name__ = bound.__name__
        return method

    return {name: forward(getattr(handler, name)) for name in names}
