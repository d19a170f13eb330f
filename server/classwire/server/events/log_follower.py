"""The loop shared by the components that follow the tenants' event logs with a durable cursor
(the workflow runner, the analytics rollups, the xAPI pusher): one pass, then sleep until a
tenant's log grows past the head the pass saw, `wake()` is called, or the poll interval ends.

A subclass sets `poll_interval`, `wakeups` (may be None: polling only) and `label`, and
implements `run_once()` (one pass; returns the log head per tenant) and `release_all()` (gives
up the cursors it leased, so another replica takes over at once).
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

log = structlog.get_logger(__name__)

# Waiting on every tenant's head would cost a task each; the poll interval covers the rest.
MAX_WATCHED_TENANTS = 100


class LogFollower:
    label = "log follower"
    poll_interval: float = 1.0
    wakeups = None

    def __init__(self) -> None:
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run_once(self) -> dict[str, int]:
        raise NotImplementedError

    async def release_all(self) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        try:
            while True:
                try:
                    heads = await self.run_once()
                    await self._sleep(heads)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception(f"{self.label} pass failed")
                    await asyncio.sleep(self.poll_interval)
        finally:
            with contextlib.suppress(Exception):
                await self.release_all()

    async def _sleep(self, heads: dict[str, int]) -> None:
        self._wake.clear()
        waits = [asyncio.ensure_future(self._wake.wait())]
        if self.wakeups is not None:
            for tenant_id, head in list(heads.items())[:MAX_WATCHED_TENANTS]:
                waits.append(
                    asyncio.ensure_future(self.wakeups.wait(tenant_id, head, self.poll_interval))
                )
        try:
            await asyncio.wait(waits, timeout=self.poll_interval, return_when="FIRST_COMPLETED")
        finally:
            for task in waits:
                task.cancel()
            for task in waits:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
