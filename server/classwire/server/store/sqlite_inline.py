"""SQLite reads on the event loop's own thread.

aiosqlite hands every DB-API call (cursor, execute, fetch, rollback) to a worker thread and
back; for the short indexed reads an RPC makes, those hops cost about 6x the query itself
(measured: ~900 us per ORM lookup against ~140 us run directly). A WAL reader never waits for
the writer, so reader connections run their calls inline instead. Writers keep aiosqlite's
thread: they take locks, fsync and checkpoint, which must not stall the loop.

This relies on aiosqlite's `_execute` hook (pinned range in pyproject.toml).
"""

from __future__ import annotations

import sqlite3
from functools import partial

import aiosqlite

# A reader only waits on SQLite's own WAL-index recovery; never block the loop for long.
READER_BUSY_TIMEOUT_SECONDS = 1.0


class InlineConnection(aiosqlite.Connection):
    async def _execute(self, fn, *args, **kwargs):
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)


def inline_creator(path: str):
    """An `async_creator` for create_async_engine that yields inline reader connections."""

    async def create() -> InlineConnection:
        connector = partial(
            sqlite3.connect,
            path,
            timeout=READER_BUSY_TIMEOUT_SECONDS,
            check_same_thread=False,  # created on the worker thread, used on the loop's
        )
        return await InlineConnection(connector, 64)

    return create
