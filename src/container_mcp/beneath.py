"""Opening a path beneath a directory so that no component can lead out of it, race-free.

Checking a path (``realpath``) and then opening it leaves a window: someone who can write inside
the directory swaps a parent for a symlink to ``/etc`` in between, and the open follows it. Here
the kernel resolves the path *relative to an open directory fd* and refuses to leave it:

* ``openat2(2)`` with ``RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`` (Linux >= 5.6): symlinks are
  followed only while they stay beneath the directory; absolute symlinks, ``..`` above it and
  ``/proc`` magic links (``/proc/self/root``, ``/proc/<pid>/fd/<n>``) fail with ``EXDEV``/``ELOOP``.
* Without it (``ENOSYS``, or ``openat2=False``): each component is opened with
  ``O_NOFOLLOW`` from the previous directory fd, so *every* symlink is refused, even one that
  would stay inside. ``..`` and ``.`` components are refused too.

Either way the last component is opened ``O_NONBLOCK`` (a FIFO must not hang the open) and
``O_NOCTTY``; callers check what they got with ``fstat`` on the fd.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat
import sys
from collections.abc import Callable

__all__ = ["EscapeError", "open_beneath", "openat2_available"]

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_BENEATH = 0x08

# openat2 has the same number on every architecture that uses the unified syscall table (5.1+).
_OPENAT2_NR = {"x86_64": 437, "aarch64": 437, "arm64": 437, "riscv64": 437, "ppc64le": 437, "s390x": 437}
_EAGAIN_RETRIES = 16

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LEAF_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


class EscapeError(OSError):
    """The path goes through a symlink, ``..`` or magic link that leaves (or, in the fallback,
    could leave) the directory."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _load_syscall() -> Callable[..., int] | None:
    nr = _OPENAT2_NR.get(platform.machine())
    if not sys.platform.startswith("linux") or nr is None:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    syscall = libc.syscall
    syscall.restype = ctypes.c_long

    def call(dir_fd: int, path: bytes, how: _OpenHow) -> int:
        return int(
            syscall(
                ctypes.c_long(nr),
                ctypes.c_int(dir_fd),
                ctypes.c_char_p(path),
                ctypes.byref(how),
                ctypes.c_size_t(ctypes.sizeof(how)),
            )
        )

    return call


_syscall = _load_syscall()
_openat2_works: bool | None = None  # None: not tried yet


def openat2_available() -> bool:
    """Whether this process can use ``openat2`` (tried once: seccomp may refuse it where the kernel
    has it, with ``ENOSYS`` or ``EPERM``)."""
    global _openat2_works
    if _openat2_works is None:
        if _syscall is None:
            _openat2_works = False
        else:
            root = os.open("/", _DIR_FLAGS)
            try:
                fd = _openat2(root, ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError as exc:
                _openat2_works = exc.errno not in (errno.ENOSYS, errno.EPERM)
            else:
                os.close(fd)
                _openat2_works = True
            finally:
                os.close(root)
    return _openat2_works


def _openat2(dir_fd: int, rel: str, flags: int) -> int:
    if _syscall is None:
        raise OSError(errno.ENOSYS, "openat2 is not available on this platform", rel)
    how = _OpenHow(flags=flags, mode=0, resolve=RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)
    path = os.fsencode(rel)
    for _ in range(_EAGAIN_RETRIES):
        fd = _syscall(dir_fd, path, how)
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        if err == errno.EAGAIN:  # a concurrent rename or mount; the kernel asks for a retry
            continue
        if err in (errno.EXDEV, errno.ELOOP):
            raise EscapeError(err, os.strerror(err), rel)
        raise OSError(err, os.strerror(err), rel)
    raise OSError(errno.EAGAIN, "the path kept changing while it was opened", rel)


def _walk(dir_fd: int, rel: str, leaf_flags: int, avoid: tuple[int, int] | None) -> int:
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise EscapeError(errno.EXDEV, "the path has an empty, '.' or '..' component", rel)
    fd = os.dup(dir_fd)
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_symlink(fd, part):
                    raise EscapeError(errno.ELOOP, "a component is a symlink", rel) from None
                raise
            os.close(fd)
            fd = nxt
            st = os.fstat(fd)
            if avoid is not None and (st.st_dev, st.st_ino) == avoid:
                raise EscapeError(errno.EXDEV, "the path enters a directory that is never opened this way", rel)
        try:
            return os.open(parts[-1], leaf_flags | os.O_NOFOLLOW, dir_fd=fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise EscapeError(errno.ELOOP, "the file is a symlink", rel) from None
            raise
    finally:
        os.close(fd)


def _is_symlink(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_beneath(
    dir_fd: int,
    rel: str,
    *,
    directory: bool = False,
    openat2: bool | None = None,
    avoid: tuple[int, int] | None = None,
) -> int:
    """Open ``rel`` (a relative path) beneath the directory ``dir_fd``; returns a new fd.

    ``directory``: open a directory (``O_DIRECTORY``) instead of a file for reading. ``openat2``:
    force (True) or forbid (False) the ``openat2`` path; by default it is used where it works.
    ``avoid``: the (st_dev, st_ino) of a directory below ``dir_fd`` the path must not go through;
    it forces the component walk (no symlink followed), which checks every directory it enters.
    Raises ``EscapeError`` when the path leaves (or in the fallback, could leave) the directory,
    and ``OSError`` as ``open`` does otherwise (``FileNotFoundError``, ``PermissionError``, ...).
    """
    if not rel or rel.startswith("/"):
        raise EscapeError(errno.EXDEV, "not a relative path", rel)
    flags = (os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if directory else _LEAF_FLAGS
    use = openat2_available() if openat2 is None else openat2
    if use and avoid is None:
        return _openat2(dir_fd, rel, flags)
    return _walk(dir_fd, rel, flags, avoid)
