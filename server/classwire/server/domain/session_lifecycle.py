"""Following sessions going live and ending, for in-process components that act on them
(recording auto-start and stop, transcription auto-start and flush).

One follower per process reads the log and hands every SessionStateChanged and SessionEnded to
each listener, so adding a listener adds no reads. Every replica follows from the log heads it
saw at start; what happened before is each listener's `catch_up`. The listeners' actions are
idempotent, so several replicas may follow.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

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
# Auto-started captions and recordings should not lag the session going live.
FOLLOW_INTERVAL = 0.25
RETRY_DELAY = 1.0

EventCallback = Callable[[event_pb2.Event], Awaitable[None]]


@dataclass(frozen=True, eq=False)
class _Listener:
    label: str
    on_event: EventCallback
    catch_up: Callable[[], Awaitable[None]] | None


class SessionLifecycle:
    """Register listeners with `listen`, then `start` once; cancel the task to stop."""

    def __init__(self, db: Database, *, interval: float = FOLLOW_INTERVAL) -> None:
        self.db = db
        self.interval = interval
        self._listeners: list[_Listener] = []

    def listen(
        self,
        on_event: EventCallback,
        *,
        label: str,
        catch_up: Callable[[], Awaitable[None]] | None = None,
    ) -> Callable[[], None]:
        """`on_event` gets every lifecycle event committed after the start, in each tenant's
        order; `catch_up` runs once at the start, for what happened before (a listener added
        later gets no catch-up). Returns a function that removes the listener."""
        listener = _Listener(label, on_event, catch_up)
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def start(self) -> asyncio.Task:
        return asyncio.create_task(self.run(), name="session-lifecycle")

    async def run(self) -> None:
        """Runs until cancelled. A failing listener is logged and skipped; the others and the
        following events still reach their listeners."""
        async with self.db.reader() as session:
            cursors = await log_cursors.tenant_heads(session)
        await asyncio.gather(
            *(self._catch_up(listener) for listener in self._listeners if listener.catch_up)
        )
        while True:
            try:
                batch = await self._read(cursors)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("session lifecycle read failed; retrying")
                await asyncio.sleep(RETRY_DELAY)
                continue
            for row in batch:
                event = event_pb2.Event.FromString(row.payload)
                # The listeners act on one event side by side; each sees the events in order.
                listeners = list(self._listeners)
                await asyncio.gather(*(self._deliver(lsn, event) for lsn in listeners))
            await asyncio.sleep(self.interval)

    async def _read(self, cursors: dict[str, int]) -> list:
        """The lifecycle events after `cursors`, oldest first per tenant; moves the cursors
        past them only once the whole read succeeded (a failed read loses nothing)."""
        moved: dict[str, int] = {}
        batch = []
        async with self.db.reader() as session:
            heads = await log_cursors.tenant_heads(session)
            for tenant_id, head in heads.items():
                after = cursors.get(tenant_id, 0)
                if head <= after:
                    continue
                rows = await repo.events_after(
                    session, tenant_id, after, BATCH, types=LIFECYCLE_TYPES
                )
                batch.extend(rows)
                moved[tenant_id] = rows[-1].sequence if len(rows) == BATCH else head
        cursors.update(moved)
        return batch

    async def _catch_up(self, listener: _Listener) -> None:
        try:
            await listener.catch_up()
        except Exception:
            log.exception(f"{listener.label} catch-up failed")

    async def _deliver(self, listener: _Listener, event: event_pb2.Event) -> None:
        try:
            await listener.on_event(event)
        except Exception:
            log.exception(
                f"{listener.label} lifecycle event failed", event_type=event.type, id=event.id
            )
