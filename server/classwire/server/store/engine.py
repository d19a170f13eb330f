"""Engine and session set-up for SQLite (embedded default) and PostgreSQL (asyncpg)."""

from __future__ import annotations

import sqlite3
import threading
from collections import namedtuple
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event, make_url
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.sql import Executable

from .sqlite_inline import READER_BUSY_TIMEOUT_SECONDS, inline_creator

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def create_engine(url: str, *, writer: bool = False) -> AsyncEngine:
    """An engine for `url`. On SQLite, `writer` engines take the write lock at BEGIN.

    SQLite allows one writer at a time: the writer engine has a single connection, so writers
    queue in the pool instead of spinning on SQLITE_BUSY, and it begins with BEGIN IMMEDIATE so
    a transaction that reads and then writes cannot fail half-way. Readers use their own pool
    with plain BEGIN and run beside the writer thanks to WAL, on the loop's thread
    (see sqlite_inline).
    """
    if not url.startswith("sqlite"):
        return create_async_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    if writer:
        engine = create_async_engine(
            url, connect_args={"timeout": 30}, pool_size=1, max_overflow=0, pool_timeout=60
        )
    else:
        path = make_url(url).database
        if path and path != ":memory:":
            engine = create_async_engine(url, async_creator=inline_creator(path), pool_size=4)
        else:
            engine = create_async_engine(url, connect_args={"timeout": 30}, pool_size=8)

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record) -> None:
        # pysqlite's own transaction handling steps aside for the BEGIN emitted below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL lets readers run beside the writer; NORMAL is durable with WAL except for the
        # last transactions on power loss, the documented trade-off.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        if writer:
            cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    begin = "BEGIN IMMEDIATE" if writer else "BEGIN"

    @event.listens_for(engine.sync_engine, "begin")
    def _sqlite_begin(conn) -> None:
        conn.exec_driver_sql(begin)

    return engine


class Database:
    """The engines and session factories of one database.

    `reader()` sessions are for queries; `writer()` sessions for units of work that change
    state. On PostgreSQL both come from the same pool.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.write_engine = create_engine(url, writer=True)
        self.read_engine = create_engine(url) if self.is_sqlite else self.write_engine
        self.writer = sessionmaker(self.write_engine)
        self.reader = sessionmaker(self.read_engine)
        path = make_url(url).database if self.is_sqlite else None
        self._point_reader = PointReader(path) if path and path != ":memory:" else None

    async def fetch_first(self, statement: Executable, params: Mapping[str, Any]) -> Any:
        """The first row of a read-only Core statement (attribute access by column key), or None:
        the point reads of hot paths.

        Build `statement` once (module level, with bindparams): it is compiled once per process.
        On PostgreSQL this is a Core connection from the pool, without an ORM session.
        """
        if self._point_reader is not None:
            return self._point_reader.first(statement, params)
        async with self.read_engine.connect() as conn:
            return (await conn.execute(statement, params)).first()

    async def migrate(self) -> None:
        await upgrade(self.write_engine)

    async def dispose(self) -> None:
        if self._point_reader is not None:
            self._point_reader.dispose()
        await self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()


class PointReader:
    """Single-statement reads of a SQLite file on the calling thread, in autocommit.

    An indexed lookup takes a few microseconds in SQLite; through an async ORM session it costs
    ~400 us (session, pool checkout, greenlet switches, BEGIN and ROLLBACK), and even a Core
    execution ~60 us of generic bookkeeping. Here each statement is compiled once by
    SQLAlchemy's SQLite compiler, with its columns' type processors, and then run on a plain
    sqlite3 connection: ~10 us. Each statement is its own WAL snapshot, so a read never sees
    half a transaction, and a reader never waits for the writer. Connections are read-only
    (query_only), held per thread and dropped after any error.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.dialect = sqlite_dialect.dialect()
        self._prepared: dict[Executable, _Prepared] = {}
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=READER_BUSY_TIMEOUT_SECONDS,
                isolation_level=None,  # autocommit: one snapshot per statement
                check_same_thread=False,
            )
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
        return conn

    def first(self, statement: Executable, params: Mapping[str, Any]) -> Any:
        prepared = self._prepared.get(statement)
        if prepared is None:
            prepared = self._prepared[statement] = _Prepared(statement, self.dialect)
        conn = self._connection()
        try:
            raw = conn.execute(prepared.sql, prepared.bind(params)).fetchone()
        except BaseException:
            self._local.conn = None
            conn.close()
            raise
        return None if raw is None else prepared.row(raw)

    def dispose(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            self._local.conn = None
            conn.close()


class _Prepared:
    """A statement compiled once for SQLite: its SQL, parameter order and type processors."""

    def __init__(self, statement: Executable, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self.names = list(compiled.positiontup or ())
        binds = compiled._bind_processors
        self.bind_processors = [binds.get(name) for name in self.names]
        # Literal values in the statement itself (a LIMIT, a constant in a WHERE).
        self.defaults = {
            name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required
        }
        columns = compiled._result_columns
        self.result_processors = [
            column.type._cached_result_processor(dialect, None) for column in columns
        ]
        self.row_type = namedtuple("PointRow", [column.keyname for column in columns])  # noqa: PYI024

    def bind(self, params: Mapping[str, Any]) -> tuple:
        values = [params[n] if n in params else self.defaults[n] for n in self.names]
        return tuple(
            value if process is None else process(value)
            for value, process in zip(values, self.bind_processors, strict=True)
        )

    def row(self, raw: tuple) -> tuple:
        return self.row_type._make(
            value if process is None else process(value)
            for value, process in zip(raw, self.result_processors, strict=True)
        )


def sessionmaker(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Applies migrations up to `revision` on the engine's database."""

    def _run(connection: Connection) -> None:
        cfg = alembic_config(engine.url.render_as_string(hide_password=False))
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)

    async with engine.begin() as conn:
        await conn.run_sync(_run)
