"""Helpers for code that writes media containers with PyAV (media providers' recorders and the
server's recording mix), beside the contract types in `types.py`."""

from __future__ import annotations

import io
from typing import Any

__all__ = ["ChunkSink"]


class ChunkSink(io.RawIOBase):
    """A write-only, non-seekable file for PyAV's muxer: what it writes is taken out in chunks
    as it is produced (live WebM clusters, Ogg pages), so no whole file is held in memory."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.chunks.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        """Everything written since the last take."""
        data = b"".join(self.chunks)
        self.chunks.clear()
        return data
