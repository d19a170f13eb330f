"""Engine and session set-up for SQLite (embedded default) and PostgreSQL (asyncpg)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import event, make_url
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from .sqlite_inline import inline_creator

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

    async def migrate(self) -> None:
        await upgrade(self.write_engine)

    async def dispose(self) -> None:
        await self.write_engine.dispose()
        if self.read_engine is not self.write_engine:
            await self.read_engine.dispose()


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
