"""The tar stream that makes a container's /mnt/data through the Engine's archive API.

``tar_dir`` is one directory entry, extracted before the engine container starts (no process can
race it then). Nothing else goes through the archive API: the engine writes and reads as root and
resolves symlinked parent directories, so files are written and read by helper commands as the
container's user (``DockerExec.write``, ``DockerExec.read``).
"""

from __future__ import annotations

import tarfile

__all__ = ["BLOCK", "tar_dir"]

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
