"""Confinement of file paths to /mnt/data.

``normalize_path`` is pure string work, shared by every provider: it turns what a caller wrote
into a canonical absolute path under ``/mnt/data`` or raises ``InvalidPath`` without touching
anything. Filesystem-level defences (symlinks a command may have planted) live in the local
provider, which opens every component with ``O_NOFOLLOW``.
"""

from __future__ import annotations

import posixpath

from .errors import InvalidPath

__all__ = ["MAX_NAME_BYTES", "MAX_PATH_BYTES", "MOUNT", "check_path_prefix", "normalize_path", "relative_path"]

MOUNT = "/mnt/data"
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 1024

_HINT = "Give a relative path such as 'data/input.csv', or an absolute one under /mnt/data."


def normalize_path(path: str) -> str:
    """Return the canonical absolute form of ``path`` under /mnt/data.

    Accepts ``report.csv``, ``dir/report.csv`` and ``/mnt/data/dir/report.csv``. Raises
    ``InvalidPath`` for: empty paths, NUL or other control characters, backslashes, a ``..``
    that climbs above /mnt/data (``a/../b`` is ``b``), absolute paths outside /mnt/data,
    /mnt/data itself, a trailing slash, a component over 255 bytes, or a whole path over 1024 bytes.
    """
    if not isinstance(path, str) or not path.strip():
        raise InvalidPath(f"The file path is empty. {_HINT}", param="path")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise InvalidPath(f"The file path {path[:80]!r} contains a NUL or control character. {_HINT}", param="path")
    if "\\" in path:
        raise InvalidPath(
            f"The file path {path[:80]!r} contains a backslash; paths use '/' as separator. {_HINT}",
            param="path",
        )
    if path.endswith("/"):
        raise InvalidPath(f"The file path {path[:80]!r} names a directory, not a file. {_HINT}", param="path")
    if path.startswith("/"):
        if path != MOUNT and not path.startswith(MOUNT + "/"):
            raise InvalidPath(f"The file path {path[:80]!r} is outside /mnt/data. {_HINT}", param="path")
        rel = path[len(MOUNT) + 1 :]
    else:
        rel = path
    # Normalised before confinement is judged: 'a/./b/../c.txt' is 'a/c.txt', inside. The resolution
    # is lexical (as posixpath.normpath), which is what confinement means here: providers then open
    # every component without following links (the local one with O_NOFOLLOW), so a link named in
    # the path cannot take '..' anywhere else.
    parts: list[str] = []
    for part in rel.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise InvalidPath(f"The file path {path[:80]!r} climbs out with '..'. {_HINT}", param="path")
            parts.pop()
            continue
        parts.append(part)
    if not parts:
        raise InvalidPath(f"The file path {path[:80]!r} names /mnt/data itself, not a file. {_HINT}", param="path")
    for part in parts:
        if len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise InvalidPath(
                f"A component of the file path is {len(part.encode('utf-8', 'surrogatepass'))} bytes long; "
                f"the limit is {MAX_NAME_BYTES} bytes per name. Use a shorter name.",
                param="path",
            )
    full = posixpath.join(MOUNT, *parts)
    if len(full.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidPath(
            f"The file path is {len(full.encode('utf-8', 'surrogatepass'))} bytes long; the limit is "
            f"{MAX_PATH_BYTES} bytes. Use a shorter path.",
            param="path",
        )
    try:
        full.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidPath("The file path is not valid UTF-8 text. " + _HINT, param="path") from None
    return full


def relative_path(path: str) -> str:
    """The part of a normalized path below /mnt/data (``/mnt/data/a/b`` -> ``a/b``)."""
    return normalize_path(path)[len(MOUNT) + 1 :]


def check_path_prefix(prefix: str) -> None:
    """Refuse a file_list ``path_prefix`` that no file path could start with (it must be under /mnt/data)."""
    try:
        size = len(prefix.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidPath(
            "path_prefix is not valid UTF-8 text (it holds a lone surrogate).", param="path_prefix"
        ) from None
    if not (prefix == MOUNT or prefix.startswith(MOUNT + "/")) or size > MAX_PATH_BYTES:
        raise InvalidPath(
            f"path_prefix must start with {MOUNT}/ (e.g. {MOUNT}/out/); got {prefix[:200]!r}.", param="path_prefix"
        )
