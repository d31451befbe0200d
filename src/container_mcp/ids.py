"""Object ids in OpenAI's shapes: ``cntr_`` + 48 hex, ``cfile_`` + 32 hex.

The first 8 hex digits are the creation time in Unix seconds, as OpenAI's are; the next ones a
sequence that only grows within a process (nanoseconds, bumped on collision), so ids made in the
same second still sort in creation order, which cursor paging relies on; the rest is random, so
ids are unguessable.
"""

from __future__ import annotations

import re
import secrets
import threading
import time

from .errors import Hint, InvalidId

__all__ = ["check_container_id", "check_file_id", "new_container_id", "new_file_id"]

_CONTAINER_RE = re.compile(r"cntr_[0-9a-f]{48}")
_FILE_RE = re.compile(r"cfile_[0-9a-f]{32}")


_lock = threading.Lock()
_last_seq = 0


def _sequence() -> int:
    global _last_seq
    with _lock:
        _last_seq = max(_last_seq + 1, time.time_ns() % 1_000_000_000_000)
        return _last_seq


def new_container_id(now: float) -> str:
    return f"cntr_{int(now) & 0xFFFFFFFF:08x}{_sequence() & 0xFFFFFFFFFFFF:012x}{secrets.token_hex(14)}"


def new_file_id(now: float) -> str:
    return f"cfile_{int(now) & 0xFFFFFFFF:08x}{_sequence() & 0xFFFFFFFFFF:010x}{secrets.token_hex(7)}"


def check_container_id(value: str) -> str:
    """Return ``value`` if it is a well-formed local container id, else raise ``InvalidId``."""
    if not _CONTAINER_RE.fullmatch(value):
        raise InvalidId(
            f"Invalid container id {value[:80]!r}: container ids look like 'cntr_' followed by 48 "
            "lowercase hex characters.",
            hint=Hint(
                mcp="Copy the id from container_create or container_list.",
                rest="Copy the id from the response of POST /v1/containers or GET /v1/containers.",
            ),
            param="container_id",
        )
    return value


def check_file_id(value: str) -> str:
    """Return ``value`` if it is a well-formed local file id, else raise ``InvalidId``."""
    if not _FILE_RE.fullmatch(value):
        raise InvalidId(
            f"Invalid file id {value[:80]!r}: file ids look like 'cfile_' followed by 32 lowercase hex characters.",
            hint=Hint(
                mcp="Copy the id from file_create or file_list.",
                rest="Copy the id from the response of POST or GET /v1/containers/{container_id}/files.",
            ),
            param="file_id",
        )
    return value
