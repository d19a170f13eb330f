"""Wakes readers of the event log when new events commit, on this replica and on others.

The durable log is the database; the event bus only carries "tenant T reached sequence N"
hints. A lost hint costs latency, never data: readers also poll on a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

CHANNEL = "classwire.events"
log = structlog.get_logger(__name__)


class Wakeups:
    def __init__(self, bus: Any | None = None) -> None:
        self.bus = bus
        self._latest: dict[str, int] = {}
        self._conditions: dict[str, asyncio.Condition] = {}
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        if self.bus is not None:
            self._task = asyncio.create_task(self._listen(), name="event-wakeups")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self) -> None:
        while True:
            try:
                async with self.bus.subscribe(CHANNEL) as messages:
                    async for message in messages:
                        tenant_id, _, sequence = message.decode().rpartition(":")
                        await self._local(tenant_id, int(sequence))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event bus subscription failed; retrying")
                await asyncio.sleep(1)

    async def announce(self, tenant_id: str, sequence: int) -> None:
        await self._local(tenant_id, sequence)
        if self.bus is not None:
            try:
                await self.bus.publish(CHANNEL, f"{tenant_id}:{sequence}".encode())
            except Exception:
                # Other replicas fall back to polling; the event itself is already durable.
                log.warning("event bus publish failed", exc_info=True)

    async def _local(self, tenant_id: str, sequence: int) -> None:
        if sequence <= self._latest.get(tenant_id, 0):
            return
        self._latest[tenant_id] = sequence
        condition = self._conditions.get(tenant_id)
        if condition is not None:
            async with condition:
                condition.notify_all()

    async def wait(self, tenant_id: str, after: int, timeout: float) -> None:
        """Returns when the tenant's log may have grown past `after`, or after `timeout`."""
        if self._latest.get(tenant_id, 0) > after:
            return
        condition = self._conditions.setdefault(tenant_id, asyncio.Condition())
        async with condition:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(condition.wait(), timeout)
