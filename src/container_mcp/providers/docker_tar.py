"""Tar streams for the Engine's archive API, in both directions, with flat memory.

``tar_one_file`` yields a tar archive of one regular file (and the directories above it) from a
chunk iterator whose size is known; ``tar_dir`` one directory entry. ``untar_one_file`` reads
the archive the engine sends for a single path and yields that file's bytes, from ``offset``
and at most ``length`` of them. Only what the engine produces is understood: ustar headers,
PAX extended headers and GNU long names (skipped: the one entry is the file we asked for).
"""

from __future__ import annotations

import tarfile
from collections.abc import AsyncIterator

__all__ = ["BLOCK", "tar_dir", "tar_one_file", "untar_one_file"]

BLOCK = 512
_REGULAR = (b"0", b"\0", b"7")
_SKIPPED_META = (b"x", b"g", b"L", b"K")


def _dir_header(name: str, *, uid: int, gid: int, mtime: float, shared: bool) -> bytes:
    info = tarfile.TarInfo(name.rstrip("/") + "/")
    info.type = tarfile.DIRTYPE
    info.mode = 0o777 if shared else 0o755
    info.uid, info.gid = uid, gid
    info.mtime = int(mtime)
    return info.tobuf(format=tarfile.PAX_FORMAT)


def tar_dir(name: str, *, uid: int, gid: int, mtime: float, shared: bool = False) -> bytes:
    """A whole archive holding one directory ``name`` owned by ``uid:gid`` (``shared``: writable by all)."""
    return _dir_header(name, uid=uid, gid=gid, mtime=mtime, shared=shared) + b"\0" * (2 * BLOCK)


async def tar_one_file(
    rel: str, size: int, chunks: AsyncIterator[bytes], *, uid: int, gid: int, mtime: float, shared: bool = False
) -> AsyncIterator[bytes]:
    """A tar archive of ``rel`` (``a/b/c.txt``: its parent directories first), ``size`` bytes from ``chunks``.

    ``shared``: the file and directories are writable by every user (for a user whose uid is not known).

    Raises ``ValueError`` when ``chunks`` yields more or fewer than ``size`` bytes (the archive
    would be corrupt).
    """
    parts = rel.split("/")
    for depth in range(1, len(parts)):
        yield _dir_header("/".join(parts[:depth]), uid=uid, gid=gid, mtime=mtime, shared=shared)
    info = tarfile.TarInfo(rel)
    info.size = size
    info.mode = 0o666 if shared else 0o644
    info.uid, info.gid = uid, gid
    info.mtime = int(mtime)
    yield info.tobuf(format=tarfile.PAX_FORMAT)
    sent = 0
    async for chunk in chunks:
        sent += len(chunk)
        if sent > size:
            raise ValueError("the content grew while it was being sent")
        yield chunk
    if sent != size:
        raise ValueError("the content shrank while it was being sent")
    yield b"\0" * (-size % BLOCK) + b"\0" * (2 * BLOCK)


def _size(header: bytes) -> int:
    field = header[124:136]
    if field[0] & 0x80:  # base-256, for sizes over 8 GiB
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.rstrip(b"\0 ").strip()
    return int(text or b"0", 8)


class _Reader:
    def __init__(self, source: AsyncIterator[bytes]) -> None:
        self._source = source
        self._buffer = bytearray()

    async def exactly(self, n: int) -> bytes | None:
        while len(self._buffer) < n:
            chunk = await anext(self._source, None)
            if chunk is None:
                return None
            self._buffer += chunk
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        return out

    async def some(self, most: int) -> bytes | None:
        """Up to ``most`` bytes (at least one), or None at the end."""
        if not self._buffer:
            chunk = await anext(self._source, None)
            if chunk is None:
                return None
            self._buffer += chunk
        out = bytes(self._buffer[:most])
        del self._buffer[:most]
        return out


async def untar_one_file(
    source: AsyncIterator[bytes], *, offset: int = 0, length: int | None = None
) -> AsyncIterator[bytes]:
    """The bytes of the first regular file in the tar stream ``source`` (see the module docstring).

    Raises ``IsADirectoryError`` when the first entry is not a regular file, ``EOFError`` when the
    stream ends early.
    """
    reader = _Reader(source)
    while True:
        header = await reader.exactly(BLOCK)
        if header is None or header == b"\0" * BLOCK:
            raise EOFError("the archive holds no file")
        kind = header[156:157]
        size = _size(header)
        if kind in _SKIPPED_META:
            if await reader.exactly(size + (-size % BLOCK)) is None:
                raise EOFError("the archive ended inside a header")
            continue
        if kind not in _REGULAR:
            raise IsADirectoryError("not a regular file")
        break
    skip = min(offset, size)
    remaining = size
    wanted = size - skip if length is None else min(length, size - skip)
    while remaining:
        chunk = await reader.some(min(remaining, 1 << 20))
        if chunk is None:
            raise EOFError("the archive ended inside the file")
        remaining -= len(chunk)
        if skip:
            cut = min(skip, len(chunk))
            chunk, skip = chunk[cut:], skip - cut
        if chunk and wanted:
            chunk = chunk[:wanted]
            wanted -= len(chunk)
            yield chunk
        if not wanted and not skip:
            return
