"""grpc.health.v1 that lets go of its watchers when the server drains.

The stock servicer keeps every `Watch` stream open until the shutdown grace period runs out, so
one client doing gRPC health checking would hold every rollout for the full grace period. Here
a watcher gets the NOT_SERVING update and then its stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib

from grpc_health.v1 import health

# Time for the NOT_SERVING update to be written before the stream ends.
FINAL_UPDATE_DELAY = 0.2


class DrainingHealthServicer(health.aio.HealthServicer):
    def __init__(self) -> None:
        super().__init__()
        self._draining = asyncio.Event()

    async def Watch(self, request, context):  # noqa: N802 - gRPC method name
        watching = asyncio.ensure_future(super().Watch(request, context))
        draining = asyncio.ensure_future(self._draining.wait())
        try:
            await asyncio.wait({watching, draining}, return_when=asyncio.FIRST_COMPLETED)
            if not watching.done():
                await asyncio.sleep(FINAL_UPDATE_DELAY)
        finally:
            for task in (watching, draining):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def enter_graceful_shutdown(self) -> None:
        await super().enter_graceful_shutdown()
        self._draining.set()
