"""``file_create``'s ``source_path``: which host files a caller may copy in, and opening one safely.

**Which directories.** The operator's ``--allow-path`` directories bound everything; without one,
host files are not readable at all. A client's roots (stdio only, see ``client_roots``) can only
narrow that: a file must be under an allowed directory *and*, when the client declares roots,
under one of them (the intersection). Roots never widen what the operator allowed. The server's
data dir is never a source, even inside an allowed directory.

**Opening.** The ``--allow-path`` directories are resolved once, at start (``Settings``), and
reached later from ``/`` without following any symlink, so whoever owns one cannot swap it for a
link elsewhere. The path is resolved (``realpath``) to choose the directory and to word errors,
but the file is then opened by the kernel *beneath* that directory's fd (``beneath.open_beneath``:
``openat2`` with ``RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS``, else ``O_NOFOLLOW`` component by
component), so swapping a parent for a symlink between the check and the open cannot lead
outside. Symlinks that stay inside are followed with ``openat2``; without it, or when the data dir
lies inside the allowed directory, every symlink is refused. The opened fd is then checked: a
regular file (not a FIFO, device or directory), no bigger than the per-file limit. The content is
read only through that fd, and only as many bytes as the check saw.

**Not detectable here, so the operator's to avoid:** a hard link in an allowed directory to a
file outside it is that file (with ``fs.protected_hardlinks=1`` another user can only link what
they could already read and write), and a bind mount into an allowed directory (of the data dir,
say) is just a directory to every check. Both take an action outside the server.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from urllib.parse import unquote, urlparse

import anyio.to_thread
from mcp.server.mcpserver import Context

from ..beneath import EscapeError, open_beneath
from ..errors import FileTooLarge, InvalidRequest
from ..settings import Settings
from ..uploads import HostFileUpload

__all__ = ["client_roots", "host_upload", "open_host_file"]

_INLINE = "or send the content inline (text or base64)"

PATH_MAX = 4096
"""Linux's limit on a path passed to the kernel, terminating NUL included."""


def _err(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="source_path")


async def client_roots(ctx: Context) -> list[Path] | None:
    """The client's ``file://`` roots, or None when the client's roots do not apply.

    A client's roots name directories on the *client's* machine; only on stdio (and in memory) is
    that the server's machine too, so only there are they consulted. A client that declares the
    roots capability but does not answer ``roots/list`` is refused rather than ignored: ignoring
    it would widen what it meant to allow.
    """
    caps = ctx.session.client_capabilities
    local_client = ctx.request_context.request is None
    if not (local_client and caps is not None and caps.roots is not None and ctx.session.can_send_request):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # roots are deprecated in 2026-07-28 but still used
            result = await ctx.session.list_roots()
    except Exception as exc:
        raise _err(
            f"The client declares roots but did not list them ({type(exc).__name__}), so which host files it "
            f"allows is unknown and none are read. Fix the client's roots support, {_INLINE}."
        ) from None
    roots = []
    for root in result.roots:
        parsed = urlparse(str(root.uri))
        if parsed.scheme == "file":
            path = unquote(parsed.path)
            if "\x00" in path:
                # No host path holds a NUL, and ignoring the root would widen what the client allowed.
                raise _err(
                    f"The client's root {str(root.uri)[:200]!r} decodes to a path with a NUL character, so which "
                    f"host files it allows is unknown and none are read. Fix the root in the client, {_INLINE}."
                )
            roots.append(Path(path))
    return roots


async def host_upload(ctx: Context, settings: Settings, source_path: str) -> HostFileUpload:
    """The host file ``source_path`` as an upload, if this caller may read it (see the module docstring)."""
    if not settings.allow_paths:
        raise _err(
            "Reading host files is disabled: the server was started without --allow-path (client roots can "
            "only narrow the server's directories, never add to them). Send the content inline (text or "
            "base64), or ask the operator to start the server with --allow-path DIR."
        )
    roots = await client_roots(ctx)
    fd, size = await anyio.to_thread.run_sync(
        lambda: open_host_file(
            source_path,
            allowed=list(settings.allow_paths),
            roots=roots,
            data_dir=settings.data_dir,
            max_bytes=settings.max_file_bytes,
        )
    )
    return HostFileUpload(fd, size)


def _under(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def _deepest(path: Path, roots: list[Path]) -> Path | None:
    containing = [r for r in roots if _under(path, r)]
    return max(containing, key=lambda r: len(r.parts)) if containing else None


def _listed(paths: list[Path]) -> str:
    return ", ".join(str(p) for p in paths)


def open_host_file(
    source_path: str, *, allowed: list[Path], roots: list[Path] | None, data_dir: Path, max_bytes: int
) -> tuple[int, int]:
    """Open ``source_path`` for reading if it is a regular file under ``allowed`` ∩ ``roots``.

    ``allowed``: absolute directories as resolved at start (``Settings`` resolves them); no
    symlink below ``/`` is followed to reach one now. ``roots`` None: the client's roots do not
    apply. Returns (fd, size); the caller owns the fd.
    Raises ``InvalidRequest`` (``param="source_path"``) saying why not and what to do, or
    ``FileTooLarge``. Blocking.
    """
    shown = repr(source_path[:200])
    if not source_path.startswith("/"):
        raise _err(f"source_path must be an absolute host path; got {shown}.")
    if "\x00" in source_path:
        raise _err(f"source_path {shown} contains a NUL character.")
    try:
        encoded = os.fsencode(source_path)
    except UnicodeEncodeError:
        raise _err(
            f"source_path {shown} contains a character that cannot be a host path (a lone UTF-16 surrogate). "
            "Name the file by its path as the host spells it."
        ) from None
    if len(encoded) >= PATH_MAX:
        # Checked before realpath, whose cost grows with the square of the component count: a
        # megabyte of "a/a/a/..." would pin a worker thread for minutes.
        raise _err(
            f"source_path is {len(encoded)} bytes long; a host path is shorter than {PATH_MAX} bytes. "
            "Name the file by a shorter path."
        )
    real = _resolve(source_path, shown)
    data = Path(os.path.realpath(data_dir))
    if _under(real, data):
        # Our own state (every session's files, the session store) is never a source.
        raise _err(
            f"source_path {shown} is inside the server's data directory, which is never readable this way. "
            "Copy files between your containers with container_create's file_ids instead."
        )
    op = _deepest(real, allowed)
    if op is None:
        raise _err(
            f"source_path {shown} is outside the server's --allow-path directories ({_listed(allowed)}); "
            "symlinks are resolved before the check. Copy the file into one of them, ask the operator for "
            f"another --allow-path, {_INLINE}."
        )
    base = op
    if roots is not None:
        if not roots:
            raise _err(
                f"source_path {shown} is outside the client's roots: the client declared no file:// roots, so it "
                f"allows no host file. A file must be under one of the client's roots and under the server's "
                f"--allow-path directories ({_listed(allowed)}); add a root for its directory in the client, "
                f"{_INLINE}."
            )
        root = _deepest(real, [_resolve(str(r), shown) for r in roots])
        if root is None:
            raise _err(
                f"source_path {shown} is under the server's --allow-path directories but outside the client's "
                f"roots ({_listed(roots)}). Add a root for its directory in the client, {_INLINE}."
            )
        if len(root.parts) > len(op.parts):
            base = root  # the narrower of the two; both contain the file
    rel = os.path.relpath(real, base)
    if rel == ".":
        raise _err(f"source_path {shown} is a directory, not a regular file. Name a file inside it.")
    data_id = _dir_id(data) if _under(data, op) else None
    op_fd = _open_allowed(op, shown)
    try:
        fd = _open_in(op_fd, op, base, rel, data_id)
    except EscapeError:
        raise _err(
            f"source_path {shown} goes through a symlink or '..' that leaves {base} (or the path changed while "
            "it was opened), so it was not read. Name the file by a path without such links."
        ) from None
    except FileNotFoundError:
        raise _err(f"source_path {shown} does not exist. Check the path.") from None
    except PermissionError:
        raise _err(f"source_path {shown} is not readable by the server. Check the file's permissions.") from None
    except NotADirectoryError:
        raise _err(f"A component of source_path {shown} is not a directory. Check the path.") from None
    except OSError as exc:
        raise _err(f"source_path {shown} could not be opened: {exc.strerror or exc}.") from None
    finally:
        os.close(op_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _err(f"source_path {shown} is not a regular file (it is a {_kind(st.st_mode)}). Name a regular file.")
        if st.st_size > max_bytes:
            raise FileTooLarge.over(max_bytes, st.st_size)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def _resolve(path: str, shown: str) -> Path:
    """``realpath``, whose ``lstat`` then ``readlink`` fails when a link is renamed in between."""
    try:
        return Path(os.path.realpath(path))
    except OSError:
        raise _err(
            f"source_path {shown} changed while it was being resolved (a symlink on the way was replaced), so it "
            "was not read. Try again once the path stays put."
        ) from None


def _open_allowed(op: Path, shown: str) -> int:
    """The operator's directory ``op``, reached from ``/`` without following any symlink.

    ``op`` was resolved at start. Whoever owns it (or a directory above it) may since have swapped
    it for a symlink to a place the server can read and they cannot; that is refused.
    """
    root = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    if op == Path("/"):
        return root
    try:
        return open_beneath(root, str(op).lstrip("/"), directory=True, openat2=False)
    except EscapeError:
        raise _err(
            f"source_path {shown} is under the --allow-path directory {op}, but that path is now a symlink (or "
            "goes through one), not the directory the server was started with, so nothing was read. Ask the "
            "operator to check the directory and restart the server."
        ) from None
    except OSError as exc:
        raise _err(
            f"The --allow-path directory {op} for source_path {shown} could not be opened: {exc.strerror or exc}. "
            "Ask the operator to check it."
        ) from None
    finally:
        os.close(root)


def _open_in(op_fd: int, op: Path, base: Path, rel: str, avoid: tuple[int, int] | None) -> int:
    """Open ``rel`` beneath ``base``; ``base`` (a client root inside ``op``) is itself opened beneath ``op_fd``."""
    if base == op:
        return open_beneath(op_fd, rel, avoid=avoid)
    base_fd = open_beneath(op_fd, os.path.relpath(base, op), directory=True, avoid=avoid)
    try:
        return open_beneath(base_fd, rel, avoid=avoid)
    finally:
        os.close(base_fd)


def _dir_id(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"
