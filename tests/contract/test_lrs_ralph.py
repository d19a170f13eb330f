"""The xapi_lrs provider, created through the plugin manager, passes the Learning Record Store
suite against a real ralph LRS on loopback, and reports an LRS that is down as FAILED (to retry)
rather than raising."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.ralph_lrs import RalphLrs

import classwire.plugins.xapi_lrs as lrs_plugin
from classwire.server.plugins import ConfigError, PluginManager
from classwire.server.plugins.types import LearningRecordStore, StatementOutcome
from classwire.server.testing import LearningRecordStoreConformance
from classwire.server.testing.learning_record_store import sample_statement


@pytest.fixture(scope="module")
async def ralph(tmp_path_factory):
    lrs = RalphLrs(tmp_path_factory.mktemp("ralph"))
    await lrs.start()
    yield lrs
    lrs.stop()


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    plugins = PluginManager(load_entry_points=False)
    # The plugin's classwire_register_learning_record_stores hook registers `xapi_lrs`.
    plugins.register_plugin(lrs_plugin, "xapi_lrs")
    return plugins


def create(manager: PluginManager, tmp_path: Path, options: dict) -> LearningRecordStore:
    return manager.create(
        "learning_record_store",
        "xapi_lrs",
        data_dir=tmp_path,
        database_url="sqlite+aiosqlite://",
        options=options,
    )


class TestRalph(LearningRecordStoreConformance):
    @pytest.fixture
    async def learning_record_store(self, manager, ralph, tmp_path):
        async with create(manager, tmp_path, ralph.options) as store:
            yield store


async def test_registered_by_the_hook(manager) -> None:
    assert manager.names("learning_record_store") == ["xapi_lrs"]


async def test_bad_options_are_config_errors(manager, tmp_path) -> None:
    with pytest.raises(ConfigError, match="providers.xapi_lrs"):
        create(manager, tmp_path, {"url": "ftp://lrs.example"})
    with pytest.raises(ConfigError, match="unknown options"):
        create(manager, tmp_path, {"url": "http://lrs.example/xAPI", "colour": "red"})
    with pytest.raises(ConfigError, match="username and password"):
        create(manager, tmp_path, {"url": "http://lrs.example/xAPI", "username": "u"})


async def test_wrong_password_fails_for_retry(manager, ralph, tmp_path) -> None:
    options = {**ralph.options, "password": "not-the-password"}
    async with create(manager, tmp_path, options) as store:
        statement = sample_statement()
        [result] = await store.store([statement])
    assert result.outcome is StatementOutcome.FAILED
    assert result.reason == "LRS_UNAUTHORIZED"


async def test_down_lrs_is_failed_then_stored_once_back(manager, tmp_path) -> None:
    lrs = RalphLrs(tmp_path / "own")
    await lrs.start()
    try:
        async with create(manager, tmp_path, lrs.options) as store:
            first, second = sample_statement(), sample_statement()
            assert (await store.store([first]))[0].outcome is StatementOutcome.STORED
            lrs.stop()
            results = await store.store([first, second])
            assert {r.outcome for r in results} == {StatementOutcome.FAILED}
            assert {r.reason for r in results} == {"LRS_UNAVAILABLE"}
            await lrs.start()
            results = await store.store([first, second])
            assert [r.outcome for r in results] == [
                StatementOutcome.ALREADY_STORED,
                StatementOutcome.STORED,
            ]
        held = await lrs.statements()
        assert sorted(s["id"] for s in held) == sorted([first["id"], second["id"]])
    finally:
        lrs.stop()
