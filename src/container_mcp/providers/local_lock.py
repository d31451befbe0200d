"""Per-container mutual exclusion across every server process on one data dir.

Each container has a lock file ``<locks>/<id>.lock`` (0600). Holding a container means holding
this process's ``anyio.Lock`` for it (so one task of this process waits on the lock, not many)
and an exclusive ``flock`` on its lock file (so no other process holds it). ``flock`` is taken
non-blocking and retried with a short backoff, so the event loop never blocks and a cancelled
wait leaves nothing held. The kernel drops a ``flock`` when its holder dies, ``kill -9``
included, so a crash never leaves a container locked.

The file is also a crash marker: a holder writes its pid into it on taking the lock and empties
it on release. Finding it non-empty on taking the lock means the previous holder died mid
operation; ``hold`` says so, and the caller repairs the container before using it.

Deleting a container unlinks its lock file while holding it. A waiter that then wins the
``flock`` on the unlinked file notices (the path no longer names the inode it locked) and
starts over on the current file, so two processes can never hold "the" lock at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from ..private import FILE_MODE, private_dir

__all__ = ["ContainerLocks", "LockBusy"]

_FIRST_WAIT_S = 0.001
_MAX_WAIT_S = 0.02


class LockBusy(Exception):
    """``hold(..., wait=False)`` found the container held (by this process or another)."""


class ContainerLocks:
    """The per-container locks under ``root`` (see the module docstring)."""

    def __init__(self, root: Path, *, sleep: Callable[[float], Awaitable[None]] = anyio.sleep) -> None:
        private_dir(root)
        self.root = root
        self._sleep = sleep
        self._local: dict[str, anyio.Lock] = {}

    def _path(self, container_id: str) -> Path:
        return self.root / f"{container_id}.lock"

    def held_here(self, container_id: str) -> bool:
        """Whether a task of this process holds (or is taking) the container's lock."""
        lock = self._local.get(container_id)
        return lock is not None and lock.locked()

    @asynccontextmanager
    async def hold(self, container_id: str, *, wait: bool = True) -> AsyncIterator[bool]:
        """Hold the container for the block; yields True when the previous holder crashed.

        With ``wait=False``, raises ``LockBusy`` at once instead of waiting for a holder.
        """
        lock = self._local.setdefault(container_id, anyio.Lock())
        if not wait and lock.locked():
            raise LockBusy(container_id)
        async with lock:
            fd = await self._acquire(container_id, wait=wait)
            try:
                crashed = os.fstat(fd).st_size > 0
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
                yield crashed
            finally:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)  # released cleanly: not a crash
                os.close(fd)  # closing drops the flock

    async def _acquire(self, container_id: str, *, wait: bool) -> int:
        path = self._path(container_id)
        delay = _FIRST_WAIT_S
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if not wait:
                    raise LockBusy(container_id) from None
                await self._sleep(delay)
                delay = min(delay * 2, _MAX_WAIT_S)
                continue
            except BaseException:
                os.close(fd)
                raise
            try:
                current = os.stat(path, follow_symlinks=False).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                return fd
            os.close(fd)  # we locked a file a delete unlinked: the lock is the new file's now

    def remove(self, container_id: str) -> None:
        """Unlink the container's lock file (call while holding it: the container is gone)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(container_id))
        self._local.pop(container_id, None)

    def abandoned(self) -> list[str]:
        """Containers whose lock file names a holder (held now, or left by a crash). Blocking."""
        found: list[str] = []
        with os.scandir(self.root) as it:
            for entry in it:
                if entry.name.endswith(".lock"):
                    with contextlib.suppress(FileNotFoundError):
                        if entry.stat(follow_symlinks=False).st_size > 0:
                            found.append(entry.name.removesuffix(".lock"))
        return found
