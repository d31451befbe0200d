"""Tar streams for the Engine's archive API (uploads), with flat memory.

``tar_one_file`` yields a tar archive of one regular file (and the directories above it) from a
chunk iterator whose size is known; ``tar_dir`` one directory entry. Nothing is read back through
the archive API: the engine reads as root and follows symlinked parent directories, so files are
read by a helper command as the container's user (``DockerExec.read``).
"""

from __future__ import annotations

import tarfile
from collections.abc import AsyncIterator

__all__ = ["BLOCK", "tar_dir", "tar_one_file"]

BLOCK = 512


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
