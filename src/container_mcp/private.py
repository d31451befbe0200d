"""The data dir is private to the server's user: directories 0700, files 0600, whatever the umask.

Every creation site in the data dir passes an explicit mode (a umask only ever removes bits, so
``0o600`` stays ``0o600`` under umask 000). ``secure_data_dir`` runs at start: it creates the
data dir (and missing parents) 0700, refuses one that is not the server's own (another user's,
writable by others, or holding entries the server never makes), and strips group/other bits from
everything already in it (a data dir written by an older version, or copied with ``cp -r`` under
a loose umask), logging what it fixed.
``secret_key`` keeps the per-data-dir key the session store hashes session keys with.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import stat
from pathlib import Path

from .errors import ContainerMCPError

__all__ = ["DIR_MODE", "FILE_MODE", "create_private_file", "make_dirs", "private_dir", "secret_key", "secure_data_dir"]

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
KEY_BYTES = 32

_NOFOLLOW_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each 0700; existing ones are left as they are.

    Parents too (as the XDG spec asks of a missing data home): ``mkdir -p`` would give them the
    umask's mode, and a parent another user can write lets them rename the data dir away and put
    their own in its place.
    """
    for d in [*reversed(path.parents), path]:
        if not d.is_dir():
            with contextlib.suppress(FileExistsError):
                d.mkdir(mode=DIR_MODE)


def private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) 0700; tighten ``path`` itself if it exists."""
    make_dirs(path)
    st = path.stat()
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)


def create_private_file(path: Path) -> None:
    """Make sure ``path`` exists as a 0600 regular file (created empty if missing).

    SQLite gives its -wal, -shm and -journal files the mode of the database file, so creating
    the database this way first keeps all of them private.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            os.fchmod(fd, mode & ~0o077)
    finally:
        os.close(fd)


def secure_data_dir(data_dir: Path) -> int:
    """Create ``data_dir`` 0700 and strip group/other bits from every entry below it.

    Raises ``ContainerMCPError``, changing nothing, when the directory is not the server's own
    (``_check_dedicated``).

    Symlinks are neither followed nor changed (their mode means nothing). Returns how many entries
    were tightened; logs a warning naming the count when it is not zero. Blocking.
    """
    make_dirs(data_dir)
    _check_dedicated(data_dir)  # before changing anything in it
    private_dir(data_dir)
    # The operator may name the data dir through a symlink (a home directory's link to a bigger
    # disk): that is configuration, followed once here; everything below it is walked link-free.
    fixed = _tighten_tree(Path(os.path.realpath(data_dir)))
    if fixed:
        log.warning(
            "data dir %s had %d entries readable by other users; removed their group/other permissions",
            data_dir,
            fixed,
        )
    return fixed


SERVER_ENTRIES = ("local", "docker", "inline", "session.key", ".session.key.*", "sessions-*.sqlite3*", "lost+found")
"""Names the server (any version) makes at the top of its data dir, and a file system's own."""


def _check_dedicated(data_dir: Path) -> None:
    """Refuse a data dir that is not the server's own: another user's, writable by others, or in use.

    Someone who made the directory first (``--data-dir /tmp/...``, created by another local user)
    owns it whatever its mode: they could loosen it again, plant a session key they know, or swap
    its files. A directory others can write (``/tmp`` itself) or one holding entries the server
    never makes (``/var/lib``, a home directory) is shared: making it private, as the start does,
    would strip everyone else's permissions from it and from all it holds.
    """
    st = os.stat(data_dir)
    if st.st_uid != os.geteuid():
        raise ContainerMCPError(
            f"The data dir {data_dir} belongs to uid {st.st_uid}, not to this server's user (uid {os.geteuid()}): "
            "that user could read or replace the server's state. Use a data dir this user creates (a path "
            "that does not exist yet, in a directory only this user can write), or chown it to this user."
        )
    if stat.S_IMODE(st.st_mode) & 0o022:
        raise ContainerMCPError(
            f"The data dir {data_dir} is writable by other users (mode {stat.filemode(st.st_mode)}): it is a "
            "shared directory, and the server would make it private to itself. Give the server a directory of "
            "its own, e.g. a path inside it that does not exist yet (it is created 0700)."
        )
    foreign = sorted(n for n in os.listdir(data_dir) if not any(fnmatch.fnmatchcase(n, p) for p in SERVER_ENTRIES))
    if foreign:
        shown = ", ".join(repr(n) for n in foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ContainerMCPError(
            f"The data dir {data_dir} holds entries the server did not make ({shown}): it looks like a "
            "directory with other uses, and the server would remove group/other permissions from everything in "
            "it. Give the server a directory of its own, e.g. a path inside it that does not exist yet (it is "
            "created 0700), or move those entries out."
        )


def _tighten_tree(root: Path) -> int:
    # One directory fd open at a time, however wide or deep the tree (no fd exhaustion). A running
    # command of another server process on this data dir may swap an entry for a symlink at any
    # moment, so every change goes through an fd opened with O_NOFOLLOW, never a path.
    fixed = 0
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            fd = os.open(d, _NOFOLLOW_DIR)
        except OSError:
            # Gone, swapped for a symlink, or unreadable to us (a command's ``chmod 000``): its own
            # group/other bits are already stripped, so nobody else can enter it either.
            continue
        try:
            with os.scandir(fd) as it:
                entries = [(e.name, e.stat(follow_symlinks=False)) for e in it]
            for name, st in entries:
                if stat.S_ISLNK(st.st_mode):
                    continue
                if stat.S_IMODE(st.st_mode) & 0o077 and _tighten(fd, name):
                    fixed += 1
                if stat.S_ISDIR(st.st_mode):
                    stack.append(d / name)
        finally:
            os.close(fd)
    return fixed


def _tighten(dir_fd: int, name: str) -> bool:
    """Strip group/other bits from the file or directory ``name``, never through a symlink.

    An ``O_PATH | O_NOFOLLOW`` fd pins the very inode that was checked; it is changed through its
    ``/proc/self/fd`` link (works even when the owner lacks read permission), else through a
    read-only fd.
    """
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:  # gone by now: nothing to fix
        return False
    try:
        st = os.fstat(fd)
        mode = stat.S_IMODE(st.st_mode)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)) or not mode & 0o077:
            return False  # a symlink (its mode means nothing) or a special file: not ours to change
        try:
            os.chmod(f"/proc/self/fd/{fd}", mode & ~0o077)
        except OSError:  # no /proc
            rd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                if os.fstat(rd).st_ino != st.st_ino:
                    return False
                os.fchmod(rd, mode & ~0o077)
            finally:
                os.close(rd)
        return True
    finally:
        os.close(fd)


def secret_key(path: Path) -> bytes:
    """The 32-byte secret in ``path``, created (0600, atomically) on first use.

    Created as a temp file, fsynced, then hard-linked into place: concurrent first starts agree on
    one key (the loser reads the winner's), and a crash never leaves a partial key. A key file of
    the wrong size is an error, never silently replaced: a new key would disown every session.
    """
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        try:
            os.write(fd, os.urandom(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        os.unlink(tmp)
    # The directory as configured, a symlink to it included; only the key file itself is never a link.
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        data = os.read(fd, KEY_BYTES + 1) if stat.S_ISREG(st.st_mode) else b""
    finally:
        os.close(fd)
    if len(data) != KEY_BYTES:
        raise ContainerMCPError(
            f"The session key file {path} is damaged (it must hold exactly {KEY_BYTES} bytes). Restore it from "
            "a backup; deleting it makes the server forget which session owns which container."
        )
    return data
