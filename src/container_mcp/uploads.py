"""File content on its way into a container, without holding it all in memory.

An ``Upload`` yields its bytes in chunks. Providers that can use a host file directly (to stream
a multipart body) look at ``host_fd``: a host file is only ever read through the fd it was
opened (and checked) with, never reopened by path.
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator
from typing import IO, TYPE_CHECKING, Protocol

import anyio.to_thread

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["CHUNK_SIZE", "BytesUpload", "HostFileUpload", "SizedFile", "StreamUpload", "Upload"]

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


class SizedFile(io.RawIOBase):
    """The first ``size`` bytes of the open file ``fd``, as a seekable binary stream.

    For a library that reads a file object to its end (a multipart body): the file may have
    grown since it was checked, and only the checked bytes may leave. It reads with ``pread``
    (the fd's offset is never moved), has no ``fileno`` (so its length is measured by seeking,
    which ends at ``size``), and neither owns nor closes ``fd``.
    """

    def __init__(self, fd: int, size: int) -> None:
        super().__init__()
        self._fd = fd
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: WriteableBuffer, /) -> int:
        with memoryview(buffer) as view:
            want = min(view.nbytes, self._size - self._pos)
            if want <= 0:
                return 0
            data = os.pread(self._fd, want, self._pos)
            view.cast("B")[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def reader(self) -> IO[bytes]:
        """This stream, buffered: what a library that wants a binary file object gets."""
        return io.BufferedReader(self, CHUNK_SIZE)


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
