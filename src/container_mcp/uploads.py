"""File content on its way into a container, without holding it all in memory.

An ``Upload`` yields its bytes in chunks. Providers that can use a host file directly (to stream
a multipart body) look at ``host_fd``: a host file is only ever read through the fd it was
opened (and checked) with, never reopened by path.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Protocol

import anyio.to_thread

__all__ = ["CHUNK_SIZE", "BytesUpload", "HostFileUpload", "StreamUpload", "Upload"]

CHUNK_SIZE = 1 << 20


class Upload(Protocol):
    """Content for a new file.

    ``size`` is the byte count when known in advance (None for a stream), used to refuse an
    over-quota upload before any byte is written. ``chunks()`` may be iterated once.
    """

    size: int | None
    host_fd: int | None
    """An open, readable regular host file with this content (owned by the upload), or None."""

    def chunks(self) -> AsyncIterator[bytes]: ...


class BytesUpload:
    """Content already in memory (inline text or decoded base64)."""

    host_fd: int | None = None

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size: int | None = len(data)

    async def chunks(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.data), CHUNK_SIZE):
            yield self.data[start : start + CHUNK_SIZE]


class HostFileUpload:
    """A host file already opened and checked (see ``server/host_files.py``), read in chunks.

    Reads stop at ``size``, the size the file had when it was checked, so a file that grows
    meanwhile cannot push more than was approved; memory stays flat whatever the size. The
    upload owns the fd: ``close()`` releases it (idempotent).
    """

    def __init__(self, fd: int, size: int) -> None:
        self.host_fd: int | None = fd
        self.size: int | None = size

    async def chunks(self) -> AsyncIterator[bytes]:
        fd, size = self.host_fd, self.size
        assert fd is not None and size is not None
        offset = 0
        while offset < size:
            chunk = await anyio.to_thread.run_sync(os.pread, fd, min(CHUNK_SIZE, size - offset), offset)
            if not chunk:
                return
            offset += len(chunk)
            yield chunk

    def close(self) -> None:
        if self.host_fd is not None:
            fd, self.host_fd = self.host_fd, None
            os.close(fd)


class StreamUpload:
    """Content arriving from elsewhere (an HTTP request body), size unknown or declared."""

    host_fd: int | None = None

    def __init__(self, stream: AsyncIterator[bytes], size: int | None = None) -> None:
        self._stream = stream
        self.size: int | None = size

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            if chunk:
                yield chunk
