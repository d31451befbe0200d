"""Confined, atomic file operations inside one container's directory (blocking; run in a thread).

Every path is walked component by component from the container's root with ``O_NOFOLLOW``, so
a symlink planted by a command (``ln -s /etc /mnt/data/x``) is never followed: the operation
fails with ``InvalidPath`` and touches nothing outside the directory. Writes go to a temp file
outside the mounted tree, are fsynced, then renamed into place, so a file is either wholly
there or not at all. Everything is created private to the server's user (dirs 0700, files
0600) whatever the umask.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidPath
from ..private import DIR_MODE, FILE_MODE
from ..sandbox.tree import remove_tree, tree_usage

__all__ = ["ContainerDir", "FileStat"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class FileStat:
    """What the registry records about a file on disk."""

    rel: str
    size: int
    mtime_ns: int
    ino: int


def _symlink_error(rel: str) -> InvalidPath:
    return InvalidPath(
        f"The path /mnt/data/{rel} goes through a symlink or a non-directory; files can only be stored "
        "at plain paths inside /mnt/data. Choose another path, or delete what is in the way.",
        param="path",
    )


class ContainerDir:
    """The on-disk home of one container: ``files/`` (mounted at /mnt/data), ``home/`` (commands'
    persistent ``$HOME``, never read as container files) and ``tmp/``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = root / "files"
        self.home = root / "home"
        self.tmp = root / "tmp"

    def create(self) -> None:
        for d in (self.root, self.files, self.home, self.tmp):
            d.mkdir(mode=DIR_MODE, exist_ok=True)

    def home_usage(self) -> int:
        """Bytes the home holds (allocated, directories included)."""
        return tree_usage(self.home, max_entries=1 << 62)[0]

    # ``adopted`` marks that every entry under ``files/`` belongs to the sandbox's uid (root mode:
    # a run handed them over, and only runs wrote since). Whatever the server itself writes there
    # removes the mark first, so a crash at any point leaves it absent (and the next run adopts).

    @property
    def _adopted(self) -> Path:
        return self.root / "adopted"

    def adopted(self) -> bool:
        return self._adopted.exists()

    def mark_adopted(self) -> None:
        os.close(os.open(self._adopted, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))

    def _unadopt(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._adopted)

    @contextlib.contextmanager
    def _parent(self, rel: str, *, create: bool) -> Iterator[tuple[int, str]]:
        """Yield (fd of the parent directory, final name) for ``rel``, never following symlinks."""
        parts = rel.split("/")
        fd = os.open(self.files, _DIR_FLAGS)
        try:
            for part in parts[:-1]:
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, DIR_MODE, dir_fd=fd)
                    try:
                        nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    except OSError as exc:
                        raise _symlink_error(rel) from exc
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise _symlink_error(rel) from exc
                    raise
                os.close(fd)
                fd = nxt
            yield fd, parts[-1]
        finally:
            os.close(fd)

    def open_read(self, rel: str) -> int:
        """An fd for reading the regular file at ``rel``. Raises FileNotFoundError or InvalidPath."""
        with self._parent(rel, create=False) as (parent, name):
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise _symlink_error(rel) from exc
                raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise _symlink_error(rel)
        return fd

    def read_range(self, rel: str, offset: int, length: int | None, chunk: int) -> Generator[bytes, None, None]:
        fd = self.open_read(rel)
        try:
            if offset >= os.fstat(fd).st_size:
                return  # past the end: nothing to read (an offset past the filesystem's limit is EINVAL/overflow)
            os.lseek(fd, offset, os.SEEK_SET)
            remaining = length
            while remaining is None or remaining > 0:
                size = chunk if remaining is None else min(chunk, remaining)
                data = os.read(fd, size)
                if not data:
                    break
                if remaining is not None:
                    remaining -= len(data)
                yield data
        finally:
            os.close(fd)

    def new_temp(self) -> tuple[int, str]:
        """A fresh temp file in ``tmp/`` (outside /mnt/data): (fd, name)."""
        self.tmp.mkdir(mode=DIR_MODE, exist_ok=True)
        name = f"upload-{os.urandom(8).hex()}"
        fd = os.open(self.tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        return fd, name

    def discard_temp(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp / name)

    def clear_temps(self, older_than_s: float) -> None:
        """Drop temp files a crash left behind (those older than ``older_than_s``: younger ones may
        be uploads in progress in another server process)."""
        self.tmp.mkdir(mode=DIR_MODE, exist_ok=True)
        cutoff = time.time() - older_than_s
        for entry in self.tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if entry.lstat().st_mtime < cutoff:
                    entry.unlink()

    def existing_size(self, rel: str) -> int | None:
        """Size of the regular file at ``rel``, or None when there is none."""
        try:
            fd = self.open_read(rel)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    def ensure_dir(self, rel: str) -> None:
        """Create the directory ``rel`` (and its parents) unless it exists; never through a symlink."""
        try:
            with self._parent(rel + "/x", create=False):
                return
        except FileNotFoundError:
            pass
        self._unadopt()
        with self._parent(rel + "/x", create=True):
            pass

    def stat(self, rel: str) -> FileStat | None:
        """The regular file at ``rel``, or None when there is none."""
        try:
            with self._parent(rel, create=False) as (parent, name):
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError, InvalidPath):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return FileStat(rel=rel, size=st.st_size, mtime_ns=st.st_mtime_ns, ino=st.st_ino)

    def install(self, temp_name: str, rel: str) -> FileStat:
        """Atomically move a finished temp file to ``rel`` (replacing a file there) and fsync the dir."""
        self._unadopt()
        tmp_fd = os.open(self.tmp, _DIR_FLAGS)
        try:
            with self._parent(rel, create=True) as (parent, name):
                try:
                    existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
                except FileNotFoundError:
                    existing = None
                if existing is not None and not stat.S_ISREG(existing.st_mode):
                    raise InvalidPath(
                        f"/mnt/data/{rel} exists and is not a regular file (a directory or a symlink). "
                        "Choose another path, or delete what is there first.",
                        param="path",
                    )
                os.rename(temp_name, name, src_dir_fd=tmp_fd, dst_dir_fd=parent)
                os.fsync(parent)
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(tmp_fd)
        return FileStat(rel=rel, size=st.st_size, mtime_ns=st.st_mtime_ns, ino=st.st_ino)

    def remove(self, rel: str) -> None:
        """Remove the file at ``rel`` and any directories it leaves empty."""
        try:
            with self._parent(rel, create=False) as (parent, name):
                os.unlink(name, dir_fd=parent)
        except (FileNotFoundError, NotADirectoryError):
            return
        self._prune(rel)

    def _prune(self, rel: str) -> None:
        parts = rel.split("/")[:-1]
        while parts:
            try:
                with self._parent("/".join(parts), create=False) as (parent, name):
                    os.rmdir(name, dir_fd=parent)
            except OSError:
                return
            parts.pop()

    def scan(self) -> dict[str, FileStat]:
        """Every regular file under ``files/`` (symlinks and special files are not files to us)."""
        found: dict[str, FileStat] = {}
        for dirpath, dirnames, filenames in os.walk(self.files, followlinks=False):
            for name in filenames:
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                if stat.S_ISREG(st.st_mode):
                    rel = os.path.relpath(full, self.files)
                    found[rel] = FileStat(rel=rel, size=st.st_size, mtime_ns=st.st_mtime_ns, ino=st.st_ino)
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        return found

    def measure(self, rel: str, chunk: int = 1 << 20) -> tuple[FileStat, str] | None:
        """(stat, sha256) of the regular file at ``rel`` from one open, or None when there is none."""
        try:
            fd = self.open_read(rel)
        except (FileNotFoundError, NotADirectoryError, InvalidPath):
            return None
        try:
            st = os.fstat(fd)
            h = hashlib.sha256()
            while data := os.read(fd, chunk):
                h.update(data)
        finally:
            os.close(fd)
        return FileStat(rel=rel, size=st.st_size, mtime_ns=st.st_mtime_ns, ino=st.st_ino), h.hexdigest()

    def sha256(self, rel: str, chunk: int = 1 << 20) -> str:
        h = hashlib.sha256()
        for data in self.read_range(rel, 0, None, chunk):
            h.update(data)
        return h.hexdigest()

    def clear_files(self) -> None:
        """Delete every file (expiry): the directory stays, empty."""
        self._unadopt()
        for d in (self.files, self.home, self.tmp):
            _remove(d)
        self.files.mkdir(mode=DIR_MODE, exist_ok=True)

    def destroy(self) -> None:
        _remove(self.root)


def _remove(path: Path) -> None:
    """Remove the tree at ``path`` whatever its permission bits: a command may ``chmod 000`` a
    directory in its home (written in place), which only root could otherwise walk into."""
    try:
        remove_tree(path)
    except FileNotFoundError:
        pass
    except OSError:
        shutil.rmtree(path, ignore_errors=True)
