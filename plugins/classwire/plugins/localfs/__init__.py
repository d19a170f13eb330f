"""Blob storage on the local filesystem: the embedded default.

Blobs live under ``<data_dir>/blobs`` (or ``options["root"]``), one file per key, the key's
slashes becoming directories. Writes go to a temporary file in the target's directory, are
fsynced, then renamed over the target with ``os.replace``, so a reader sees the old file or the
new one, never a part. Options:

- ``root``: directory to store blobs in (default ``<data_dir>/blobs``).
- ``chunk_size``: bytes per chunk when reading (default 256 KiB).
- ``fsync``: set to false to skip fsync (tests on slow disks); default true.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from classwire.server.plugins import hookimpl
from classwire.server.plugins.types import (
    BlobInfo,
    BlobNotFoundError,
    BlobStore,
    InvalidBlobKeyError,
    ProviderContext,
    validate_blob_key,
)

__all__ = ["LocalFSBlobStore", "classwire_register_blob_stores"]

DEFAULT_CHUNK_SIZE = 256 * 1024

# Temporary files carry a backslash, a character no valid key may contain: a half-written file
# can therefore never collide with a key nor show up in list().
_TMP_MARK = "\\tmp-"


class LocalFSBlobStore(BlobStore):
    def __init__(
        self, root: Path, *, chunk_size: int = DEFAULT_CHUNK_SIZE, fsync: bool = True
    ) -> None:
        if chunk_size <= 0:
            raise ValueError("chunk_size must be positive")
        self.root = Path(root)
        self.chunk_size = chunk_size
        self._fsync = fsync

    async def start(self) -> None:
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)

    # -- paths --------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        validate_blob_key(key)
        path = self.root.joinpath(*key.split("/"))
        # Belt and braces: validation already refuses '..', but a symlinked directory under the
        # root could still lead out; resolve and compare.
        root = self.root.resolve()
        resolved = path.resolve()
        if resolved != root and root not in resolved.parents:
            raise InvalidBlobKeyError(f"blob key {key!r} leads outside the store")
        return path

    # -- writing ------------------------------------------------------------------------------

    async def put(self, key: str, data: bytes | AsyncIterable[bytes]) -> BlobInfo:
        path = self._path(key)
        if isinstance(data, (bytes, bytearray, memoryview)):
            chunks: AsyncIterable[bytes] | None = None
            first = bytes(data)
        elif isinstance(data, AsyncIterable):
            chunks, first = data, b""
        else:
            raise TypeError(f"blob data must be bytes or an async iterable of bytes, not {data!r}")

        tmp = path.with_name(f"{path.name}{_TMP_MARK}{secrets.token_hex(8)}")
        f = await asyncio.to_thread(self._open_tmp, path, tmp, key)
        try:
            if first:
                await asyncio.to_thread(f.write, first)
            if chunks is not None:
                async for chunk in chunks:
                    if not isinstance(chunk, (bytes, bytearray, memoryview)):
                        raise TypeError(f"blob chunks must be bytes, got {type(chunk).__name__}")
                    if chunk:
                        await asyncio.to_thread(f.write, chunk)
            await asyncio.to_thread(self._commit, f, tmp, path)
        except BaseException:
            # Also on cancellation: never leave the temporary file behind.
            await asyncio.shield(asyncio.to_thread(self._discard, f, tmp))
            raise
        return await self.stat(key)

    def _open_tmp(self, path: Path, tmp: Path, key: str) -> BinaryIO:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_dir():
                raise InvalidBlobKeyError(f"blob key {key!r} is a prefix of other keys here")
            return open(tmp, "xb")  # closed in _commit or _discard
        except (NotADirectoryError, FileExistsError) as exc:
            # 'a' is a blob and 'a/b' is asked for: a filesystem cannot hold both.
            raise InvalidBlobKeyError(
                f"blob key {key!r} conflicts with an existing blob on its path"
            ) from exc

    def _commit(self, f: BinaryIO, tmp: Path, path: Path) -> None:
        f.flush()
        if self._fsync:
            os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
        if self._fsync:
            # Make the rename itself durable.
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    @staticmethod
    def _discard(f: BinaryIO, tmp: Path) -> None:
        f.close()
        tmp.unlink(missing_ok=True)

    # -- reading ------------------------------------------------------------------------------

    async def open(
        self, key: str, *, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        path = self._path(key)
        try:
            # Opening now pins this version of the file: a concurrent put renames a new file
            # over the name, and we keep reading the old inode to its end.
            f = await asyncio.to_thread(open, path, "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise BlobNotFoundError(key) from None
        return self._iterate(f, offset, length)

    async def _iterate(self, f: BinaryIO, offset: int, length: int | None) -> AsyncIterator[bytes]:
        try:
            if offset:
                await asyncio.to_thread(f.seek, offset)
            remaining = length
            while remaining is None or remaining > 0:
                size = self.chunk_size if remaining is None else min(self.chunk_size, remaining)
                chunk = await asyncio.to_thread(f.read, size)
                if not chunk:
                    break
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            f.close()

    async def stat(self, key: str) -> BlobInfo:
        path = self._path(key)
        try:
            st = await asyncio.to_thread(os.stat, path)
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFoundError(key) from None
        if not os.path.isfile(path):
            raise BlobNotFoundError(key)
        return BlobInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def delete(self, key: str) -> bool:
        path = self._path(key)

        def unlink() -> bool:
            try:
                if path.is_dir():
                    return False
                path.unlink()
                return True
            except (FileNotFoundError, NotADirectoryError):
                return False

        return await asyncio.to_thread(unlink)

    async def list(self, prefix: str = "") -> AsyncIterator[BlobInfo]:
        if not isinstance(prefix, str) or "\\" in prefix or prefix.startswith("/"):
            raise InvalidBlobKeyError(f"bad blob prefix {prefix!r}")
        # Only the directory holding the prefix's last segment needs walking.
        head, _, _ = prefix.rpartition("/")
        if head:
            validate_blob_key(head)
        start = self.root.joinpath(*head.split("/")) if head else self.root
        infos = await asyncio.to_thread(self._scan, start, head, prefix)
        for info in infos:
            yield info

    def _scan(self, start: Path, head: str, prefix: str) -> list[BlobInfo]:
        found: list[BlobInfo] = []

        def walk(directory: Path, key_prefix: str) -> None:
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                return
            for entry in entries:
                if _TMP_MARK in entry.name:
                    continue
                key = f"{key_prefix}{entry.name}"
                if entry.is_dir(follow_symlinks=False):
                    # Descend only where keys can still start with the prefix.
                    if key.startswith(prefix) or prefix.startswith(key + "/"):
                        walk(Path(entry.path), key + "/")
                elif entry.is_file(follow_symlinks=False) and key.startswith(prefix):
                    st = entry.stat(follow_symlinks=False)
                    found.append(
                        BlobInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))
                    )

        walk(start, f"{head}/" if head else "")
        found.sort(key=lambda info: info.key)
        return found


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no"):
        return value.lower() in ("1", "true", "yes", "on")
    raise ValueError(f"expected a boolean, got {value!r}")


def create_store(context: ProviderContext) -> LocalFSBlobStore:
    options = context.options
    unknown = set(options) - {"root", "chunk_size", "fsync"}
    if unknown:
        raise ValueError(f"unknown option(s): {', '.join(sorted(unknown))}")
    root = Path(options["root"]) if "root" in options else Path(context.data_dir) / "blobs"
    return LocalFSBlobStore(
        root,
        chunk_size=int(options.get("chunk_size", DEFAULT_CHUNK_SIZE)),
        fsync=_bool(options.get("fsync", True)),
    )


@hookimpl
def classwire_register_blob_stores(register: Callable[..., None]) -> None:
    register("localfs", create_store, description="files under the data directory")
