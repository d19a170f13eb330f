"""Following sessions going live and ending, for in-process components that act on them
(recording auto-start and stop, transcription auto-start and flush).

Every replica follows from the log heads it saw at start; what happened before is the
component's `catch_up`. The components' actions are idempotent, so several replicas may follow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from classwire.api.events.v1 import event_pb2
from classwire.api.events.v1 import session_events_pb2 as sev

from ..store import log_cursors
from ..store import repositories as repo
from ..store.engine import Database

log = structlog.get_logger(__name__)

LIFECYCLE_TYPES = (
    sev.SessionStateChanged.DESCRIPTOR.full_name,
    sev.SessionEnded.DESCRIPTOR.full_name,
)
BATCH = 500


async def follow_session_lifecycle(
    db: Database,
    on_event: Callable[[event_pb2.Event], Awaitable[None]],
    *,
    interval: float,
    label: str,
    catch_up: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Calls `on_event` with every SessionStateChanged and SessionEnded committed from now on,
    in each tenant's order; runs until cancelled."""
    async with db.reader() as session:
        cursors = await log_cursors.tenant_heads(session)
    if catch_up is not None:
        await catch_up()
    while True:
        try:
            async with db.reader() as session:
                heads = await log_cursors.tenant_heads(session)
                batch = []
                for tenant_id, head in heads.items():
                    after = cursors.get(tenant_id, 0)
                    if head <= after:
                        continue
                    rows = await repo.events_after(
                        session, tenant_id, after, BATCH, types=LIFECYCLE_TYPES
                    )
                    batch.extend(rows)
                    cursors[tenant_id] = rows[-1].sequence if len(rows) == BATCH else head
            for row in batch:
                await on_event(event_pb2.Event.FromString(row.payload))
            await asyncio.sleep(interval)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(f"{label} lifecycle pass failed; retrying")
            await asyncio.sleep(1.0)
