"""The localfs blob store, created through the plugin manager, passes the blob-store suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from classwire.plugins.localfs import LocalFSBlobStore
from classwire.server.plugins import ConfigError, PluginManager
from classwire.server.plugins.types import BlobStore, InvalidBlobKeyError
from classwire.server.testing import BlobStoreConformance


@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return PluginManager().load()


class TestLocalFSConformance(BlobStoreConformance):
    @pytest.fixture
    async def blob_store(self, manager: PluginManager, tmp_path: Path):
        store = manager.create(
            "blob_store",
            "localfs",
            data_dir=tmp_path,
            database_url="sqlite+aiosqlite:///:memory:",
            options={"chunk_size": 64 * 1024},
        )
        async with store:
            yield store


async def test_default_root_is_data_dir_blobs(manager: PluginManager, tmp_path: Path) -> None:
    store = manager.create("blob_store", "localfs", data_dir=tmp_path, database_url="")
    async with store:
        await store.put("t1/recordings/r.webm", b"data")
    assert (tmp_path / "blobs" / "t1" / "recordings" / "r.webm").read_bytes() == b"data"


async def test_root_option(manager: PluginManager, tmp_path: Path) -> None:
    root = tmp_path / "elsewhere"
    store = manager.create(
        "blob_store", "localfs", data_dir=tmp_path, database_url="", options={"root": str(root)}
    )
    async with store:
        await store.put("k", b"v")
    assert (root / "k").read_bytes() == b"v"
    assert not (tmp_path / "blobs").exists()


def test_bad_options_name_the_key(manager: PluginManager, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        manager.create(
            "blob_store", "localfs", data_dir=tmp_path, database_url="", options={"rooot": "/x"}
        )
    assert info.value.key == "providers.localfs"
    assert "rooot" in str(info.value)


async def test_no_temporary_files_left_after_failures(tmp_path: Path) -> None:
    async def failing():
        yield b"abc"
        raise RuntimeError("boom")

    async with LocalFSBlobStore(tmp_path) as store:
        await store.put("a/b", b"ok")
        for _ in range(3):
            with pytest.raises(RuntimeError):
                await store.put("a/b", failing())
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]


async def test_symlink_out_of_root_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "link")
    async with LocalFSBlobStore(root) as store:
        with pytest.raises(InvalidBlobKeyError):
            await store.read("link/secret")
        with pytest.raises(InvalidBlobKeyError):
            await store.put("link/new", b"x")
    assert not (outside / "new").exists()


async def test_key_that_is_a_prefix_directory(tmp_path: Path) -> None:
    async with LocalFSBlobStore(tmp_path) as store:
        await store.put("a/b", b"x")
        with pytest.raises(ValueError):
            await store.put("a", b"y")
        await store.put("f", b"x")
        with pytest.raises(ValueError):
            await store.put("f/g", b"y")
        assert isinstance(store, BlobStore)
        assert await store.read("a/b") == b"x"
