"""The PostgreSQL LISTEN/NOTIFY bus passes the event-bus suite, between two replicas too.

Runs only when CLASSWIRE_TEST_POSTGRES_URL points at a PostgreSQL server.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

import asyncpg
import pytest

from classwire.plugins.postgres_bus import PostgresBus, encode, normalize_url
from classwire.server.plugins import ConfigError, PluginManager
from classwire.server.testing import EventBusConformance
from classwire.server.testing.event_bus import receive

POSTGRES_URL = os.environ.get("CLASSWIRE_TEST_POSTGRES_URL", "")

requires_postgres = pytest.mark.skipif(
    not POSTGRES_URL,
    reason="set CLASSWIRE_TEST_POSTGRES_URL (e.g. postgresql+asyncpg://postgres@127.0.0.1/test) "
    "to run the PostgreSQL event-bus contract tests",
)


def _create(tmp_path: Path, **options) -> PostgresBus:
    return (
        PluginManager()
        .load()
        .create(
            "event_bus",
            "postgres_bus",
            data_dir=tmp_path,
            database_url=POSTGRES_URL,
            options=options,
        )
    )


@requires_postgres
class TestPostgresBusConformance(EventBusConformance):
    @pytest.fixture
    async def event_bus(self, tmp_path: Path):
        async with _create(tmp_path) as bus:
            yield bus

    @pytest.fixture
    async def peer_bus(self, tmp_path: Path):
        # A second instance with its own connections: another replica.
        async with _create(tmp_path) as bus:
            yield bus


@requires_postgres
async def test_reconnects_after_the_connection_is_killed(tmp_path: Path) -> None:
    app, channel = f"cw-test-{secrets.token_hex(4)}", f"reconnect-{secrets.token_hex(4)}"
    async with (
        _create(tmp_path, health_check_interval=0.2, application_name=app) as bus,
        bus.subscribe(channel) as sub,
    ):
        await bus.publish(channel, b"before")
        assert await receive(sub) == b"before"
        admin = await asyncpg.connect(normalize_url(POSTGRES_URL))
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1",
                f"{app}-listen",
            )
        finally:
            await admin.close()
        assert killed >= 1
        # Payloads published while down may be lost (at most once); keep publishing until
        # one arrives through the new connection.
        for _ in range(100):
            await bus.publish(channel, b"after")
            try:
                got = await asyncio.wait_for(anext(sub), 0.1)
            except TimeoutError:
                continue
            assert got == b"after"
            break
        else:
            pytest.fail("no payload after reconnecting")
        assert bus.reconnects >= 1


@requires_postgres
async def test_publish_survives_pool_connections_being_killed(tmp_path: Path) -> None:
    app, channel = f"cw-test-{secrets.token_hex(4)}", f"pool-{secrets.token_hex(4)}"
    async with _create(tmp_path, application_name=app) as bus, bus.subscribe(channel) as sub:
        await bus.publish(channel, b"one")
        assert await receive(sub) == b"one"
        admin = await asyncpg.connect(normalize_url(POSTGRES_URL))
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1",
                f"{app}-publish",
            )
        finally:
            await admin.close()
        assert killed >= 1
        await asyncio.sleep(0.1)
        # The pooled connection is dead; publish retries once on a fresh one.
        await bus.publish(channel, b"two")
        assert await receive(sub) == b"two"


def test_url_forms() -> None:
    assert normalize_url("postgresql+asyncpg://u@h:5/db") == "postgresql://u@h:5/db"
    assert normalize_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql://u@h/db"
    with pytest.raises(ValueError):
        normalize_url("sqlite+aiosqlite:///x.db")


def test_sqlite_database_without_url_option_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        PluginManager().load().create(
            "event_bus", "postgres_bus", data_dir=tmp_path, database_url="sqlite:///x.db"
        )
    assert info.value.key == "providers.postgres_bus"


def test_framing_fits_notify() -> None:
    for payload in (b"x" * 7000, os.urandom(7000), "é".encode() * 3500):
        frames = encode(payload, utf8_ok=True)
        assert all(len(f.encode()) < 8000 for f in frames)
    assert len(encode(os.urandom(7000), utf8_ok=True)) == 2
    assert encode("é".encode(), utf8_ok=False)[0].startswith("b")
