"""Conformance suite for blob stores.

Subclass it in a test module, under a name pytest collects, and override ``blob_store``::

    class TestMyStore(BlobStoreConformance):
        @pytest.fixture
        async def blob_store(self, tmp_path):
            async with MyStore(...) as store:
                yield store

Every test uses keys under a fresh random prefix, so a store backed by shared infrastructure
(a bucket) need not be emptied between tests.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator

import pytest

from classwire.server.plugins.types import (
    BlobInfo,
    BlobNotFoundError,
    BlobStore,
    validate_blob_key,
)

__all__ = ["BlobStoreConformance"]


async def _chunks(*parts: bytes, fail_after: int | None = None) -> AsyncIterator[bytes]:
    for i, part in enumerate(parts):
        if fail_after is not None and i == fail_after:
            raise RuntimeError("source failed mid-stream")
        await asyncio.sleep(0)
        yield part


class BlobStoreConformance:
    """Behaviour every :class:`BlobStore` must show."""

    #: Big enough to need several chunks in any reasonable implementation.
    large_size = 3 * 1024 * 1024 + 17

    @pytest.fixture
    async def blob_store(self) -> AsyncIterator[BlobStore]:
        raise NotImplementedError("override the blob_store fixture")
        yield  # pragma: no cover

    @pytest.fixture
    def prefix(self) -> str:
        return f"conformance-{secrets.token_hex(6)}/"

    async def test_is_a_blob_store(self, blob_store: BlobStore) -> None:
        assert isinstance(blob_store, BlobStore)

    async def test_round_trip_bytes(self, blob_store: BlobStore, prefix: str) -> None:
        key = prefix + "a/b/c.bin"
        data = os.urandom(1000)
        info = await blob_store.put(key, data)
        assert isinstance(info, BlobInfo)
        assert info.key == key and info.size == len(data)
        assert await blob_store.read(key) == data
        assert await blob_store.exists(key)
        assert (await blob_store.stat(key)).size == len(data)

    async def test_empty_blob(self, blob_store: BlobStore, prefix: str) -> None:
        key = prefix + "empty"
        await blob_store.put(key, b"")
        assert await blob_store.exists(key)
        assert (await blob_store.stat(key)).size == 0
        assert await blob_store.read(key) == b""

    async def test_put_from_async_iterator(self, blob_store: BlobStore, prefix: str) -> None:
        key = prefix + "stream"
        parts = [os.urandom(n) for n in (1, 70_000, 0, 333, 1 << 20)]
        info = await blob_store.put(key, _chunks(*parts))
        assert info.size == sum(map(len, parts))
        assert await blob_store.read(key) == b"".join(parts)

    async def test_large_blob_is_read_in_chunks(self, blob_store: BlobStore, prefix: str) -> None:
        key = prefix + "large"
        data = os.urandom(self.large_size)
        await blob_store.put(key, data)
        chunks = [chunk async for chunk in await blob_store.open(key)]
        assert b"".join(chunks) == data
        assert len(chunks) > 1, "a multi-megabyte blob should stream in several chunks"
        assert all(isinstance(c, bytes) and c for c in chunks)

    async def test_range_reads(self, blob_store: BlobStore, prefix: str) -> None:
        key = prefix + "range"
        data = bytes(range(256)) * 40
        await blob_store.put(key, data)
        assert await blob_store.read(key, offset=10, length=5) == data[10:15]
        assert await blob_store.read(key, offset=1000) == data[1000:]
        assert await blob_store.read(key, length=3) == data[:3]
        assert await blob_store.read(key, offset=5, length=0) == b""
        # Past the end: truncated, never an error.
        assert await blob_store.read(key, offset=len(data) - 2, length=100) == data[-2:]
        assert await blob_store.read(key, offset=len(data) + 10) == b""

    async def test_negative_range_refused(self, blob_store: BlobStore, prefix: str) -> None:
        key = prefix + "neg"
        await blob_store.put(key, b"abc")
        with pytest.raises(ValueError):
            await blob_store.open(key, offset=-1)
        with pytest.raises(ValueError):
            await blob_store.open(key, length=-1)

    async def test_overwrite_replaces_content(self, blob_store: BlobStore, prefix: str) -> None:
        key = prefix + "over"
        await blob_store.put(key, b"first version, longer")
        await blob_store.put(key, b"second")
        assert await blob_store.read(key) == b"second"
        assert (await blob_store.stat(key)).size == len(b"second")
        assert [i.key async for i in blob_store.list(prefix)] == [key]

    async def test_failed_put_keeps_old_content(self, blob_store: BlobStore, prefix: str) -> None:
        key = prefix + "atomic"
        await blob_store.put(key, b"old content")
        with pytest.raises(RuntimeError, match="mid-stream"):
            await blob_store.put(key, _chunks(b"new ", b"partial", b"data", fail_after=2))
        assert await blob_store.read(key) == b"old content"
        # And no half-written object became visible under any key.
        assert [i.key async for i in blob_store.list(prefix)] == [key]

    async def test_failed_first_put_leaves_nothing(
        self, blob_store: BlobStore, prefix: str
    ) -> None:
        key = prefix + "never"
        with pytest.raises(RuntimeError):
            await blob_store.put(key, _chunks(b"x" * 1000, b"y", fail_after=1))
        assert not await blob_store.exists(key)
        assert [i async for i in blob_store.list(prefix)] == []

    async def test_readers_never_see_a_partial_write(
        self, blob_store: BlobStore, prefix: str
    ) -> None:
        key = prefix + "concurrent"
        old, new = b"o" * 500_000, b"n" * 700_000
        await blob_store.put(key, old)
        slow_done = asyncio.Event()

        async def slow_new() -> AsyncIterator[bytes]:
            for i in range(0, len(new), 100_000):
                await asyncio.sleep(0.001)
                yield new[i : i + 100_000]
            slow_done.set()

        writer = asyncio.create_task(blob_store.put(key, slow_new()))
        seen: list[bytes] = []
        while not writer.done():
            seen.append(await blob_store.read(key))
        await writer
        seen.append(await blob_store.read(key))
        assert slow_done.is_set()
        assert all(content in (old, new) for content in seen)
        assert seen[-1] == new

    async def test_open_pins_the_version_being_read(
        self, blob_store: BlobStore, prefix: str
    ) -> None:
        key = prefix + "pinned"
        old = os.urandom(self.large_size)
        await blob_store.put(key, old)
        stream = await blob_store.open(key)
        first = await anext(aiter(stream))
        await blob_store.put(key, b"replacement")
        rest = [chunk async for chunk in stream]
        # A stream that has started keeps reading the version it opened, never a mix.
        assert first + b"".join(rest) == old

    async def test_missing_key(self, blob_store: BlobStore, prefix: str) -> None:
        key = prefix + "missing"
        assert not await blob_store.exists(key)
        with pytest.raises(BlobNotFoundError) as info:
            await blob_store.open(key)
        assert info.value.key == key
        with pytest.raises(BlobNotFoundError):
            await blob_store.stat(key)
        with pytest.raises(BlobNotFoundError):
            await blob_store.read(key)
        # LookupError is the contract callers may rely on.
        with pytest.raises(LookupError):
            await blob_store.stat(key)

    async def test_delete(self, blob_store: BlobStore, prefix: str) -> None:
        key = prefix + "del/me"
        await blob_store.put(key, b"x")
        assert await blob_store.delete(key) is True
        assert not await blob_store.exists(key)
        assert await blob_store.delete(key) is False
        with pytest.raises(BlobNotFoundError):
            await blob_store.read(key)

    @pytest.mark.parametrize(
        "bad_key",
        [
            "",
            "/etc/passwd",
            "../escape",
            "a/../../escape",
            "a/..",
            "..",
            ".",
            "a/./b",
            "a//b",
            "a/",
            "a\\b",
            "..\\escape",
            "C:\\windows",
            "nul\x00byte",
            "line\nbreak",
        ],
    )
    async def test_unsafe_keys_refused(
        self, blob_store: BlobStore, prefix: str, bad_key: str
    ) -> None:
        with pytest.raises(ValueError):
            validate_blob_key(bad_key)
        with pytest.raises(ValueError):
            await blob_store.put(bad_key, b"x")
        for call in (blob_store.open, blob_store.stat, blob_store.exists, blob_store.delete):
            with pytest.raises(ValueError):
                await call(bad_key)

    async def test_list_by_prefix(self, blob_store: BlobStore, prefix: str) -> None:
        keys = [
            prefix + "rec/s1/a.webm",
            prefix + "rec/s1/b.webm",
            prefix + "rec/s10/a.webm",
            prefix + "rec/s2/a.webm",
            prefix + "exports/x.jsonl",
        ]
        for i, key in enumerate(keys):
            await blob_store.put(key, b"z" * i)
        listed = [info async for info in blob_store.list(prefix)]
        assert [i.key for i in listed] == sorted(keys)
        assert {i.key: i.size for i in listed} == {k: n for n, k in enumerate(keys)}
        # A prefix is a string prefix, not a directory: "s1" also matches "s10".
        assert [i.key async for i in blob_store.list(prefix + "rec/s1")] == sorted(keys[:3])
        assert [i.key async for i in blob_store.list(prefix + "rec/s1/")] == sorted(keys[:2])
        assert [i.key async for i in blob_store.list(prefix + "rec/s1/b")] == [keys[1]]
        assert [i async for i in blob_store.list(prefix + "nothing/")] == []
        assert [i async for i in blob_store.list(prefix + "rec/s3")] == []

    async def test_keys_with_unusual_but_safe_characters(
        self, blob_store: BlobStore, prefix: str
    ) -> None:
        keys = [prefix + k for k in ("with space.txt", "ünïcödé/ключ", "a.b-c_d~e", "..dots")]
        for key in keys:
            await blob_store.put(key, key.encode())
        for key in keys:
            assert await blob_store.read(key) == key.encode()
        assert [i.key async for i in blob_store.list(prefix)] == sorted(keys)

    async def test_rejects_non_bytes(self, blob_store: BlobStore, prefix: str) -> None:
        with pytest.raises(TypeError):
            await blob_store.put(prefix + "str", "not bytes")  # type: ignore[arg-type]
        assert not await blob_store.exists(prefix + "str")
