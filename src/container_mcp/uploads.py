"""File content on its way into a container, without holding it all in memory.

An ``Upload`` yields its bytes in chunks. Providers that can use a host file directly (to stream
a multipart body, or to copy) look at ``host_path``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import anyio

__all__ = ["CHUNK_SIZE", "BytesUpload", "PathUpload", "StreamUpload", "Upload"]

CHUNK_SIZE = 1 << 20


class Upload(Protocol):
    """Content for a new file.

    ``size`` is the byte count when known in advance (None for a stream), used to refuse an
    over-quota upload before any byte is written. ``chunks()`` may be iterated once.
    """

    size: int | None
    host_path: Path | None

    def chunks(self) -> AsyncIterator[bytes]: ...


class BytesUpload:
    """Content already in memory (inline text or decoded base64)."""

    host_path: Path | None = None

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size: int | None = len(data)

    async def chunks(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), CHUNK_SIZE):
            yield self.data[start : start + CHUNK_SIZE]


class PathUpload:
    """A host file, read in chunks; memory stays flat whatever its size."""

    def __init__(self, path: Path) -> None:
        self.host_path: Path | None = path
        self.size: int | None = path.stat().st_size

    async def chunks(self) -> AsyncIterator[bytes]:
        assert self.host_path is not None
        async with await anyio.open_file(self.host_path, "rb") as f:
            while chunk := await f.read(CHUNK_SIZE):
                yield chunk


class StreamUpload:
    """Content arriving from elsewhere (an HTTP request body), size unknown or declared."""

    host_path: Path | None = None

    def __init__(self, stream: AsyncIterator[bytes], size: int | None = None) -> None:
        self._stream = stream
        self.size: int | None = size

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            if chunk:
                yield chunk
