"""Point reads (`Database.fetch_first`) return exactly what the ORM reads, on both engines:
type processing (aware UTC datetimes, JSON), NULLs, literals in the statement, missing rows,
and a row committed by the writer is visible to the next read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, select

from classwire.server.store.engine import Database
from classwire.server.store.models import ApiKey, Tenant
from tests.conftest import create_database

KEY_ROW = (
    select(ApiKey.__table__)
    .where(ApiKey.tenant_id == bindparam("tenant_id"), ApiKey.id == bindparam("key_id"))
    .limit(1)
)
# A literal in the WHERE clause besides the bound parameters.
ACTIVE_KEY_IDS = select(ApiKey.id, ApiKey.scopes).where(
    ApiKey.tenant_id == bindparam("tenant_id"), ApiKey.revoke_time.is_(None)
)


async def test_point_reads_match_the_orm(tmp_path):
    url, drop = await create_database(tmp_path)
    db = Database(url)
    try:
        await db.migrate()
        created = datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=UTC)
        async with db.writer() as session, session.begin():
            session.add(
                Tenant(
                    id="ten_a",
                    display_name="A",
                    settings={},
                    create_time=created,
                    update_time=created,
                )
            )
            await session.flush()
            session.add(
                ApiKey(
                    id="key_a",
                    tenant_id="ten_a",
                    display_name="ci",
                    secret_hash="h",
                    scopes=["platform:read", "admin"],
                    create_time=created,
                    expire_time=created + timedelta(days=30),
                )
            )
        params = {"tenant_id": "ten_a", "key_id": "key_a"}
        row = await db.fetch_first(KEY_ROW, params)
        async with db.reader() as session:
            model = await session.get(ApiKey, "key_a")
        for column in ApiKey.__table__.columns:
            assert getattr(row, column.key) == getattr(model, column.key), column.key
        assert row.create_time == created and row.create_time.tzinfo is not None
        assert row.scopes == ["platform:read", "admin"]
        assert row.revoke_time is None

        assert await db.fetch_first(KEY_ROW, {"tenant_id": "ten_b", "key_id": "key_a"}) is None
        active = await db.fetch_first(ACTIVE_KEY_IDS, {"tenant_id": "ten_a"})
        assert (active.id, active.scopes) == ("key_a", ["platform:read", "admin"])

        # A commit is visible to the very next point read (no stale snapshot is held).
        async with db.writer() as session, session.begin():
            (await session.get(ApiKey, "key_a")).revoke_time = created + timedelta(hours=1)
        assert (await db.fetch_first(KEY_ROW, params)).revoke_time == created + timedelta(hours=1)
        assert await db.fetch_first(ACTIVE_KEY_IDS, {"tenant_id": "ten_a"}) is None
    finally:
        await db.dispose()
        if drop is not None:
            await drop()
