"""The plugin manager: loading, allow and block lists, registrations, creation, isolation."""

from __future__ import annotations

import asyncio
import importlib.metadata
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from classwire.server.plugins import hookimpl
from classwire.server.plugins import manager as manager_module
from classwire.server.plugins.manager import (
    DuplicateProviderError,
    PluginError,
    PluginManager,
    call_provider,
    config_key,
    guard_iter,
    options_key,
    provider_guard,
)
from classwire.server.plugins.types import (
    BlobNotFoundError,
    ConfigError,
    EventBus,
    ProviderContext,
    ProviderError,
    ProviderKind,
)

BUILT_INS = {"localfs", "memory_bus", "postgres_bus"}


def make(**kwargs: Any) -> PluginManager:
    return PluginManager(**kwargs).load()


def bare() -> PluginManager:
    return PluginManager(load_entry_points=False)


class BusPlugin:
    """Registers an event bus named ``name`` that is really the in-process one."""

    def __init__(self, name: str = "test_bus", factory: Any = None) -> None:
        self.name = name
        self.factory = factory
        self.contexts: list[ProviderContext] = []

    @hookimpl
    def classwire_register_event_buses(self, register):
        def factory(context: ProviderContext):
            self.contexts.append(context)
            from classwire.plugins.memory_bus import MemoryBus

            return MemoryBus()

        register(self.name, self.factory or factory, description="for tests")


# -- loading --------------------------------------------------------------------------------


def test_built_ins_come_through_entry_points() -> None:
    pm = make()
    infos = {p.name: p for p in pm.plugins}
    assert BUILT_INS <= set(infos)
    assert all(infos[n].origin == "entry_point" for n in BUILT_INS)
    assert infos["localfs"].target == "classwire.plugins.localfs"
    assert infos["localfs"].distribution == "classwire"
    assert pm.names("blob_store") == ["localfs"]
    assert pm.names(ProviderKind.EVENT_BUS) == ["memory_bus", "postgres_bus"]
    assert pm.registrations("event_bus")["memory_bus"].plugin == "memory_bus"
    assert pm.names("media_backend") == ["aiortc_sfu", "janus"]
    assert pm.names("transcription_engine") == ["pocketsphinx"]


def test_allow_list() -> None:
    pm = make(allow=["localfs"])
    assert {p.name for p in pm.plugins} == {"localfs"}
    assert pm.names("event_bus") == []
    assert pm.skipped["memory_bus"] == "not allowed"


def test_block_list_wins_over_allow_list() -> None:
    pm = make(allow=["localfs", "postgres_bus", "memory_bus"], block=["postgres_bus"])
    assert pm.names("event_bus") == ["memory_bus"]
    assert pm.skipped["postgres_bus"] == "blocked"
    assert set(pm.skipped.values()) <= {"blocked", "not allowed"}
    assert not pm.is_enabled("postgres_bus") and pm.is_enabled("memory_bus")


def test_lists_apply_to_plugins_registered_in_process() -> None:
    pm = PluginManager(load_entry_points=False, block=["test_bus"])
    assert pm.register_plugin(BusPlugin(), "test_bus") is False
    assert pm.load().names("event_bus") == []
    pm = PluginManager(load_entry_points=False, allow=["other"])
    assert pm.register_plugin(BusPlugin(), "test_bus") is False


def test_unknown_names_in_lists_are_warned_about() -> None:
    with capture_logs() as logs:
        make(block=["no_such_plugin"])
    assert any(
        e["event"] == "plugin_not_installed" and e["plugin"] == "no_such_plugin" for e in logs
    )


def test_entry_points_deduplicated_and_conflicts_refused(monkeypatch) -> None:
    ep = importlib.metadata.EntryPoint("memory_bus", "classwire.plugins.memory_bus", "classwire")
    other = importlib.metadata.EntryPoint("memory_bus", "classwire.plugins.localfs", "classwire")

    def twice(group: str):
        assert group == "classwire"
        return [ep, ep]

    monkeypatch.setattr(manager_module.importlib.metadata, "entry_points", twice)
    assert make().names("event_bus") == ["memory_bus"]

    monkeypatch.setattr(
        manager_module.importlib.metadata, "entry_points", lambda group: [ep, other]
    )
    with pytest.raises(PluginError, match="two entry points"):
        make()


def test_import_failure_names_the_plugin(monkeypatch) -> None:
    broken = importlib.metadata.EntryPoint(
        "broken", "classwire.plugins.does_not_exist", "classwire"
    )
    monkeypatch.setattr(manager_module.importlib.metadata, "entry_points", lambda group: [broken])
    with pytest.raises(PluginError) as info:
        make()
    assert info.value.plugin == "broken"
    assert "does_not_exist" in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)
    # A broken plugin can be blocked by name, and then nothing is imported.
    assert make(block=["broken"]).skipped == {"broken": "blocked"}


def test_misspelt_hook_is_refused() -> None:
    class Typo:
        @hookimpl
        def classwire_register_blobstores(self, register):
            pass

    with pytest.raises(PluginError) as info:
        bare().register_plugin(Typo(), "typo")
    assert "classwire_register_blobstores" in str(info.value)
    assert info.value.plugin == "typo"


def test_duplicate_plugin_name() -> None:
    pm = bare()
    pm.register_plugin(BusPlugin("a"), "same")
    with pytest.raises(PluginError, match="already loaded"):
        pm.register_plugin(BusPlugin("b"), "same")


def test_duplicate_provider_name_is_a_clear_error() -> None:
    pm = bare()
    pm.register_plugin(BusPlugin("memory_bus"), "acme")
    pm.register_plugin(BusPlugin("memory_bus"), "globex")
    with pytest.raises(DuplicateProviderError) as info:
        pm.load()
    err = info.value
    assert isinstance(err, ConfigError) and err.key == "plugins.block"
    assert "'memory_bus'" in str(err) and "'acme'" in str(err) and "'globex'" in str(err)


def test_duplicate_with_a_built_in() -> None:
    pm = PluginManager()
    pm.register_plugin(BusPlugin("memory_bus"), "acme")
    with pytest.raises(DuplicateProviderError, match="event_bus provider 'memory_bus'"):
        pm.load()
    pm = PluginManager(block=["memory_bus"])
    pm.register_plugin(BusPlugin("memory_bus"), "acme")
    assert pm.load().registrations("event_bus")["memory_bus"].plugin == "acme"


def test_failing_registration_hook_names_the_plugin() -> None:
    class Crashing:
        @hookimpl
        def classwire_register_blob_stores(self, register):
            raise RuntimeError("cannot read my settings")

    pm = bare()
    pm.register_plugin(Crashing(), "crashing")
    with capture_logs() as logs, pytest.raises(PluginError) as info:
        pm.load()
    assert info.value.plugin == "crashing"
    assert "classwire_register_blob_stores" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert any(e["event"] == "plugin_hook_failed" for e in logs)


def test_bad_registration_arguments() -> None:
    class BadName:
        @hookimpl
        def classwire_register_blob_stores(self, register):
            register("", lambda ctx: None)

    class NotCallable:
        @hookimpl
        def classwire_register_blob_stores(self, register):
            register("x", "not a factory")

    for plugin in (BadName(), NotCallable()):
        pm = bare()
        pm.register_plugin(plugin, "bad")
        with pytest.raises(PluginError):
            pm.load()


# -- creating providers ---------------------------------------------------------------------


def test_create_passes_context(tmp_path: Path) -> None:
    plugin = BusPlugin()
    pm = bare()
    pm.register_plugin(plugin, "tests")
    bus = pm.create(
        "event_bus",
        "test_bus",
        data_dir=str(tmp_path),
        database_url="sqlite+aiosqlite:///x.db",
        options={"a": 1},
    )
    assert isinstance(bus, EventBus)
    (context,) = plugin.contexts
    assert context.data_dir == tmp_path and isinstance(context.data_dir, Path)
    assert context.database_url == "sqlite+aiosqlite:///x.db"
    assert context.options == {"a": 1}
    with pytest.raises(TypeError):
        context.options["a"] = 2  # type: ignore[index]
    assert context.name == "test_bus" and context.kind is ProviderKind.EVENT_BUS
    with capture_logs() as logs:
        context.logger.info("hello")
    assert logs == [
        {
            "event": "hello",
            "log_level": "info",
            "provider_kind": "event_bus",
            "provider": "test_bus",
        }
    ]


def test_unknown_provider_names_key_and_choices(tmp_path: Path) -> None:
    pm = make()
    with pytest.raises(ConfigError) as info:
        pm.create("event_bus", "nats", data_dir=tmp_path, database_url="")
    assert info.value.key == "providers.event_bus" == config_key("event_bus")
    assert "'nats'" in str(info.value) and "memory_bus, postgres_bus" in str(info.value)
    assert isinstance(info.value, ValueError)

    with pytest.raises(ConfigError) as info:
        pm.create("media_backend", "aiortc", data_dir=tmp_path, database_url="", key="x.media")
    assert info.value.key == "x.media"
    assert "available: aiortc_sfu, janus" in str(info.value)

    with pytest.raises(ConfigError) as info:
        make(allow=["localfs"]).create(
            "media_backend", "aiortc_sfu", data_dir=tmp_path, database_url=""
        )
    assert "none" in str(info.value)


def test_unknown_kind(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make().create("teleporter", "x", data_dir=tmp_path, database_url="")


@pytest.mark.parametrize(
    ("factory", "error", "match"),
    [
        (lambda ctx: object(), ProviderError, "not a EventBus"),
        (lambda ctx: (_ for _ in ()).throw(RuntimeError("disk on fire")), ProviderError, "fire"),
        (lambda ctx: int("nope"), ConfigError, "invalid literal"),
    ],
)
def test_factory_failures(tmp_path: Path, factory, error, match) -> None:
    pm = bare()
    pm.register_plugin(BusPlugin("b", factory), "p")
    with pytest.raises(error, match=match) as info:
        pm.create("event_bus", "b", data_dir=tmp_path, database_url="")
    if error is ConfigError:
        assert info.value.key == options_key("event_bus", "b") == "providers.b"
    else:
        assert info.value.name == "b" and info.value.operation == "create"


def test_async_factory_is_refused(tmp_path: Path) -> None:
    async def factory(ctx):
        return None

    pm = bare()
    pm.register_plugin(BusPlugin("b", factory), "p")
    with pytest.raises(ProviderError, match="synchronous"):
        pm.create("event_bus", "b", data_dir=tmp_path, database_url="")


# -- isolation ------------------------------------------------------------------------------


async def test_provider_guard_wraps_faults_and_logs() -> None:
    with (
        capture_logs() as logs,
        pytest.raises(ProviderError) as info,
        provider_guard("blob_store", "s3", "put"),
    ):
        raise KeyError("bucket")
    err = info.value
    assert (err.kind, err.name, err.operation) == ("blob_store", "s3", "put")
    assert "'s3'" in str(err) and isinstance(err.__cause__, KeyError)
    (entry,) = logs
    assert entry["event"] == "provider_failed" and entry["provider"] == "s3"
    assert entry["exc_info"] is True


async def test_provider_guard_passes_contract_errors_and_cancellation() -> None:
    with (
        pytest.raises(BlobNotFoundError),
        provider_guard(ProviderKind.BLOB_STORE, "localfs", "open"),
    ):
        raise BlobNotFoundError("k")

    async def slow() -> None:
        with provider_guard("event_bus", "x", "publish"):
            await asyncio.sleep(10)

    task = asyncio.create_task(slow())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_call_provider() -> None:
    async def ok(a: int, *, b: int) -> int:
        return a + b

    async def bad() -> None:
        raise ZeroDivisionError

    assert await call_provider("matcher", "greedy", "assign", ok, 1, b=2) == 3
    with capture_logs(), pytest.raises(ProviderError, match="ZeroDivisionError"):
        await call_provider("matcher", "greedy", "assign", bad)


async def test_guard_iter() -> None:
    async def chunks():
        yield b"a"
        yield b"b"
        raise OSError("disk gone")

    got = []
    with capture_logs(), pytest.raises(ProviderError, match="disk gone"):
        async for chunk in guard_iter("blob_store", "localfs", "read", chunks()):
            got.append(chunk)
    assert got == [b"a", b"b"]

    async def fine():
        yield 1
        yield 2

    assert [x async for x in guard_iter("blob_store", "localfs", "read", fine())] == [1, 2]
