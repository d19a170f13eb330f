"""An in-process event bus: one asyncio queue per subscriber, fan-out on publish.

Right for a single server process (the embedded default). It does not cross processes: with
several replicas, use a shared bus such as ``postgres_bus``. Options:

- ``max_queue``: payloads buffered per subscriber (default 10000). A subscriber that falls
  further behind loses the newest payloads (at-most-once; the durable log has them all).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from classwire.server.plugins import hookimpl
from classwire.server.plugins.types import (
    EventBus,
    ProviderContext,
    Subscription,
    validate_bus_payload,
    validate_channel,
)

__all__ = ["MemoryBus", "MemorySubscription", "classwire_register_event_buses"]

_CLOSED = object()


class MemorySubscription(Subscription):
    def __init__(self, bus: MemoryBus, channel: str, max_queue: int) -> None:
        self.bus = bus
        self.channel = channel
        self.dropped = 0
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=max_queue + 1)
        self._max = max_queue
        self._closed = False
        self._started = False

    async def start(self) -> None:
        if self._closed:
            raise RuntimeError("subscription is closed")
        self.bus._attach(self)
        self._started = True

    def _deliver(self, payload: bytes) -> None:
        # One slot is kept free for the close marker, so closing never blocks or fails.
        if self._queue.qsize() >= self._max:
            self.dropped += 1
            return
        self._queue.put_nowait(payload)

    def _end(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put_nowait(_CLOSED)

    async def close(self) -> None:
        self.bus._detach(self)
        self._end()

    async def __anext__(self) -> bytes:
        if self._closed:
            raise StopAsyncIteration
        if not self._started:
            raise RuntimeError("enter the subscription with 'async with' before iterating")
        item = await self._queue.get()
        if item is _CLOSED:
            # Leave the marker for any other task iterating the same subscription.
            self._queue.put_nowait(_CLOSED)
            raise StopAsyncIteration
        assert isinstance(item, bytes)
        return item


class MemoryBus(EventBus):
    def __init__(self, *, max_queue: int = 10000) -> None:
        if max_queue <= 0:
            raise ValueError("max_queue must be positive")
        self.max_queue = max_queue
        self._subscribers: dict[str, set[MemorySubscription]] = {}
        self._closed = False

    async def publish(self, channel: str, payload: bytes) -> None:
        validate_channel(channel)
        data = validate_bus_payload(payload)
        if self._closed:
            raise RuntimeError("bus is closed")
        for subscription in tuple(self._subscribers.get(channel, ())):
            subscription._deliver(data)

    def subscribe(self, channel: str) -> MemorySubscription:
        return MemorySubscription(self, validate_channel(channel), self.max_queue)

    def _attach(self, subscription: MemorySubscription) -> None:
        if self._closed:
            raise RuntimeError("bus is closed")
        self._subscribers.setdefault(subscription.channel, set()).add(subscription)

    def _detach(self, subscription: MemorySubscription) -> None:
        subscribers = self._subscribers.get(subscription.channel)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.channel]

    async def close(self) -> None:
        self._closed = True
        subscribers, self._subscribers = self._subscribers, {}
        for group in subscribers.values():
            for subscription in group:
                subscription._end()


def create_bus(context: ProviderContext) -> MemoryBus:
    unknown = set(context.options) - {"max_queue"}
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    return MemoryBus(max_queue=int(context.options.get("max_queue", 10000)))


@hookimpl
def classwire_register_event_buses(register: Callable[..., None]) -> None:
    register("memory_bus", create_bus, description="in-process, single server only")
