"""Shared fixtures: a real classwire server on an ephemeral loopback port, called through the
generated stubs as a user would.

The database is SQLite in a temporary directory, or a fresh PostgreSQL database when
CLASSWIRE_TEST_POSTGRES_URL is set (for example postgresql+asyncpg://postgres@127.0.0.1/test).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from classwire.server.app import Server
from classwire.server.config import Config, load_config

POSTGRES_URL = os.environ.get("CLASSWIRE_TEST_POSTGRES_URL", "")


def _asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def create_database(tmp: Path) -> tuple[str, callable]:
    """A fresh, empty database URL and a coroutine function that drops it."""
    if not POSTGRES_URL:
        return f"sqlite+aiosqlite:///{tmp / 'classwire.db'}", None
    import asyncpg

    name = f"classwire_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = POSTGRES_URL.rpartition("/")

    async def drop() -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(POSTGRES_URL))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    return f"{base}/{name}", drop


@dataclass
class RunningServer:
    server: Server
    address: str
    tenant_id: str
    api_key: str  # admin + operator scopes
    config: Config

    def channel(self, credential: str | None = None) -> grpc.aio.Channel:
        """An async channel that sends `credential` (default: the admin key) as a bearer token."""
        from classwire.client import connect

        token = self.api_key if credential is None else credential
        if token == "":
            return grpc.aio.insecure_channel(self.address)
        return connect(self.address, api_key=token, secure=False)


def make_config(tmp: Path, database_url: str, **overrides) -> Config:
    env = {
        "CLASSWIRE_LISTEN": "127.0.0.1:0",
        "CLASSWIRE_METRICS_LISTEN": "",
        "CLASSWIRE_DATA_DIR": str(tmp / "data"),
        "CLASSWIRE_DATABASE_URL": database_url,
        "CLASSWIRE_LOG_LEVEL": "warning",
        "CLASSWIRE_BOOTSTRAP": "false",
    }
    env.update(overrides)
    return load_config(env)


async def start_server(config: Config) -> RunningServer:
    server = Server(config)
    await server.start()
    created = await server.platform.platform.create_tenant(
        None,
        "test tenant",
        __import__("classwire.server.domain.platform", fromlist=["x"]).TenantSettings(),
        operator=True,
    )
    return RunningServer(
        server=server,
        address=f"127.0.0.1:{server.port}",
        tenant_id=created.tenant.tenant.id,
        api_key=created.secret,
        config=config,
    )


@pytest.fixture(scope="session")
async def server(tmp_path_factory) -> RunningServer:
    tmp = tmp_path_factory.mktemp("server")
    url, drop = await create_database(tmp)
    running = await start_server(make_config(tmp, url))
    yield running
    await running.server.stop(grace=1)
    if drop:
        await drop()
