"""Directory-tree operations that never follow symlinks and survive hostile trees.

A command controls what it writes under /mnt/data: symlinks pointing anywhere, directories
nested thousands deep, ``chmod 000`` directories. Everything here walks with ``O_NOFOLLOW``
directory fds, bounds the number of fds it holds and never recurses deeper than a fixed depth.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DirFds", "Remover", "adopt_tree", "remove_tree", "strip_overlay_xattrs", "tree_usage"]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_OPEN_DEPTH = 64


class DirFds:
    """``O_NOFOLLOW`` directory fds below a root, opened on demand and cached."""

    def __init__(self, root: Path) -> None:
        self.root_fd = os.open(root, DIR_FLAGS)
        self._cache: dict[str, int] = {"": self.root_fd}

    def parent(self, rel: str) -> tuple[int, str]:
        """(fd of the parent directory of ``rel``, last component)."""
        head, _, name = rel.rpartition("/")
        return self.dir(head), name

    def dir(self, rel: str) -> int:
        fd = self._cache.get(rel)
        if fd is not None:
            return fd
        parent, name = self.parent(rel)
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise OSError(exc.errno, f"{rel} is not a plain directory") from None
            raise
        self._cache[rel] = fd
        return fd

    def forget(self) -> None:
        for rel, fd in list(self._cache.items()):
            if rel:
                os.close(fd)
                del self._cache[rel]

    def close(self) -> None:
        self.forget()
        os.close(self.root_fd)


def strip_overlay_xattrs(path: Path) -> None:
    with contextlib.suppress(OSError):
        for name in os.listxattr(path, follow_symlinks=False):
            if name.startswith(("user.overlay.", "trusted.overlay.")):
                with contextlib.suppress(OSError):
                    os.removexattr(path, name, follow_symlinks=False)


class Remover:
    """Removes trees without following symlinks and without deep recursion.

    Directories nested deeper than ``MAX_OPEN_DEPTH`` are renamed into ``park_fd`` (a directory
    on the same filesystem) and removed from there later, so neither the fd limit nor Python's
    recursion limit is reached however deep a command nested its directories. Permission bits
    (a command may ``chmod 000`` a directory) are overridden for the owner.
    """

    def __init__(self, park_fd: int, prefix: str) -> None:
        self.park_fd = park_fd
        self.prefix = prefix
        self.parked: list[str] = []
        self._counter = itertools.count()

    def remove_at(self, dir_fd: int, name: str) -> None:
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=dir_fd)
            return
        self._clear_child(dir_fd, name, 0)
        os.rmdir(name, dir_fd=dir_fd)

    def drain(self) -> None:
        while self.parked:
            self.remove_at(self.park_fd, self.parked.pop())

    def _clear_child(self, dir_fd: int, name: str, depth: int) -> None:
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        except PermissionError:
            os.chmod(name, 0o700, dir_fd=dir_fd)
            fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
        try:
            with contextlib.suppress(OSError):
                os.fchmod(fd, 0o700)
            with os.scandir(fd) as it:
                children = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
            for child, is_dir in children:
                if not is_dir:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(child, dir_fd=fd)
                elif depth >= MAX_OPEN_DEPTH:
                    parked = f"{self.prefix}.deep-{next(self._counter)}"
                    os.rename(child, parked, src_dir_fd=fd, dst_dir_fd=self.park_fd)
                    self.parked.append(parked)
                else:
                    self._clear_child(fd, child, depth + 1)
                    os.rmdir(child, dir_fd=fd)
        finally:
            os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove ``path`` and everything below it, however deep, without following symlinks."""
    parent_fd = os.open(path.parent, DIR_FLAGS)
    try:
        remover = Remover(parent_fd, f".{path.name}")
        remover.remove_at(parent_fd, path.name)
        remover.drain()
    finally:
        os.close(parent_fd)


def tree_usage(path: Path, *, max_entries: int) -> tuple[int, int, bool]:
    """(bytes allocated, entries, deeper than the fd budget) below ``path``, stopping after ``max_entries``.

    Depth first, one open directory per level: the fds held follow the tree's depth (at most
    ``MAX_OPEN_DEPTH * 4``; what is deeper is not walked and reported), never its breadth, so a
    directory of thousands of subdirectories (a ``node_modules``) is walked whole.
    Used while a command runs, so entries may vanish under it; those are skipped.
    """
    total = entries = 0
    too_deep = False
    try:
        top = os.open(path, DIR_FLAGS)
    except OSError:
        return 0, 0, False
    stack: list[tuple[int, Iterator[os.DirEntry[str]]]] = []
    try:
        stack.append((top, os.scandir(top)))
    except OSError:
        os.close(top)
        return 0, 0, False
    try:
        while stack and entries <= max_entries:
            fd, it = stack[-1]
            e = next(it, None)
            if e is None:
                stack.pop()
                it.close()  # type: ignore[attr-defined]
                os.close(fd)
                continue
            entries += 1
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            total += st.st_blocks * 512
            if not stat.S_ISDIR(st.st_mode):
                continue
            if len(stack) >= MAX_OPEN_DEPTH * 4:
                too_deep = True
                continue
            try:
                child = os.open(e.name, DIR_FLAGS, dir_fd=fd)
            except OSError:
                continue
            try:
                stack.append((child, os.scandir(child)))
            except OSError:
                os.close(child)
    finally:
        for fd, it in stack:
            it.close()  # type: ignore[attr-defined]
            os.close(fd)
    return total, entries, too_deep


def adopt_tree(root: Path, uid: int, gid: int) -> None:
    """Give ``root`` and everything below it to ``uid``/``gid`` (symlinks are not followed)."""
    stack = [root]
    while stack:
        d = stack.pop()
        st = os.lstat(d)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.chown(d, uid, gid, follow_symlinks=False)
        with os.scandir(d) as it:
            for e in it:
                est = e.stat(follow_symlinks=False)
                if stat.S_ISDIR(est.st_mode):
                    stack.append(Path(e.path))
                elif (est.st_uid, est.st_gid) != (uid, gid):
                    os.chown(e.path, uid, gid, follow_symlinks=False)
