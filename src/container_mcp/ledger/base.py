"""The Ledger protocol: who owns which container, and how much of each quota is in use.

The ``Gate`` and the ``Catalog`` talk to a ``Ledger``; ``SqliteLedger`` (one host, any number of
processes) and ``RedisLedger`` (any number of hosts) implement it. Every method that changes
state is one whole transaction: its check and its update cannot interleave with another caller's,
in this process or another one, and nothing is awaited halfway through. A transaction is never
cancelled halfway either: a caller cancelled while one runs gets its result discarded only after
it finished, so counters never drift from a cancelled call.

Session keys are secrets (a streamable-HTTP key is a live ``Mcp-Session-Id``), so a ledger never
stores them: each key is replaced by a keyed digest at this boundary (``digest``). Callers pass
and think in clear keys.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from ..errors import Hint, QuotaExceeded, RateLimited
from ..models import ContainerFile

__all__ = [
    "PENDING_TTL_S",
    "FileCursor",
    "Ledger",
    "Limits",
    "OwnedContainer",
    "Usage",
    "over_bytes",
    "over_containers",
    "over_files",
    "rate_limited",
    "session_digest",
]

PENDING_TTL_S = 600.0
"""A reservation older than this belongs to a create that crashed; it no longer counts."""


FileCursor = tuple[int, str, str]
"""A position in the file index: (container created_at, container id, file id)."""


@dataclass(frozen=True)
class Limits:
    """The per-session quota limits in force (see Settings for their meaning)."""

    max_containers: int
    max_files_per_container: int
    max_file_bytes: int
    max_session_bytes: int
    max_calls_per_minute: int


@dataclass(frozen=True)
class Usage:
    containers: int
    """Live containers (running, or being created)."""
    files: int
    """Files across live containers."""
    bytes: int
    """Stored bytes across live containers."""
    calls_last_minute: int


@dataclass(frozen=True)
class OwnedContainer:
    container_id: str
    owner: str
    """The owner as stored: a digest of its session key, not the key (compare with ``owns``)."""
    name: str
    created_at: int
    state: Literal["pending", "live", "expired"]
    files: int
    bytes: int
    meta: str | None = None
    """The container as last seen by an operation (``Container`` JSON), for views that must not
    ask the provider; None for rows written before it was kept."""


class Ledger(Protocol):
    """Ownership, quota counters and the rate limit, keyed by session key (an opaque secret string)."""

    kind: str
    """'sqlite' or 'redis': published in capabilities as ``state``."""

    async def reserve(self, owner: str, name: str, now: float, limits: Limits) -> str:
        """Check the live-container quota and hold a slot; returns a reservation id.

        Raises ``QuotaExceeded`` (and holds nothing) when the owner is at the limit.
        """
        ...

    async def commit(self, reservation: str, container_id: str, created_at: int, meta: str) -> None:
        """Turn a reservation into ownership of ``container_id``, recording ``meta`` for the views."""
        ...

    async def cancel(self, reservation: str) -> None: ...

    async def charge(self, owner: str, container_id: str, files: int, bytes_: int, limits: Limits) -> None:
        """Add ``files``/``bytes_`` to a live container's usage, checking growth first against
        files-per-container and the session's stored bytes: over a limit, raises
        ``QuotaExceeded`` and changes nothing."""
        ...

    async def release(self, container_id: str, files: int, bytes_: int) -> None:
        """Take ``files``/``bytes_`` off a container's usage, unchecked (deletions and rollbacks)."""
        ...

    async def hit(self, owner: str, now: float, limits: Limits) -> None:
        """Count one call; raises ``RateLimited`` (counting nothing) when the per-minute budget is spent."""
        ...

    async def usage(self, owner: str, now: float) -> Usage: ...

    async def page(
        self, owner: str, *, limit: int, order: str, after: str | None, name: str | None
    ) -> tuple[list[OwnedContainer], bool]:
        """One page of the owner's containers by (created_at, id); returns (rows, has_more).

        Raises ``InvalidRequest`` when ``after`` is not one of the owner's containers.
        """
        ...

    async def owns(self, owner: str, container_id: str) -> bool:
        """Whether ``owner`` owns the (committed) container ``container_id``."""
        ...

    async def owned(self, owner: str, container_id: str) -> OwnedContainer | None:
        """The (committed) container ``container_id`` if ``owner`` owns it, else None."""
        ...

    async def get(self, container_id: str) -> OwnedContainer | None: ...

    async def live(self, owner: str) -> list[OwnedContainer]:
        """The owner's containers not known to be expired, by (created_at, id)."""
        ...

    async def record(self, container_id: str, meta: str) -> None:
        """Keep ``meta`` (the container's ``Container`` JSON, as an operation just saw it) for views."""
        ...

    async def set_usage(self, container_id: str, files: int, bytes_: int) -> None:
        """Overwrite a container's counters with the backend's truth."""
        ...

    async def mark_expired(self, container_id: str) -> None:
        """The container expired: it stops counting, and its files are gone."""
        ...

    async def forget(self, container_id: str) -> None: ...

    # --- the file index: which files each live container holds, for the views ----------------

    async def put_files(self, container_id: str, files: Sequence[ContainerFile]) -> None:
        """Index ``files`` of a live container; one at a path already indexed replaces that one."""
        ...

    async def drop_files(self, container_id: str, *, file_ids: Sequence[str] = (), paths: Sequence[str] = ()) -> None:
        """Take files (by id or by path) out of a container's index."""
        ...

    async def set_files(self, container_id: str, files: Sequence[ContainerFile]) -> None:
        """Make ``files`` (the provider's whole listing) the container's index."""
        ...

    async def unindexed(self, owner: str) -> list[str]:
        """The owner's live containers whose index was never built (rows an older version wrote)."""
        ...

    async def file_page(
        self, owner: str, after: FileCursor | None, limit: int
    ) -> tuple[list[tuple[int, ContainerFile]], bool]:
        """Up to ``limit`` files of the owner's live containers after the position ``after``, by
        (container created_at, container id, file id), each with its container's created_at;
        and whether more follow. O(page) work, whatever the number of containers and files."""
        ...

    async def locate(self, owner: str, file_id: str) -> str | None:
        """Which of the owner's live containers holds ``file_id`` by the index (None: none does)."""
        ...

    async def totals(self) -> Usage:
        """Live containers, their files and bytes across every owner (``calls_last_minute`` is 0)."""
        ...

    def digest(self, owner: str) -> str:
        """The keyed hash (HMAC-SHA256 hex) the ledger keeps for the session key ``owner``; no secret."""
        ...

    async def aclose(self) -> None: ...


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


def over_containers(used: int, limits: Limits) -> QuotaExceeded:
    return QuotaExceeded(
        f"Quota exceeded: this session holds {used} of {limits.max_containers} live containers "
        "(expired containers do not count).",
        hint=Hint(
            mcp="Delete one with container_delete, or ask the operator to raise CONTAINER_MCP_MAX_CONTAINERS.",
            rest="Delete one with DELETE /v1/containers/{container_id}, or ask the operator to raise "
            "CONTAINER_MCP_MAX_CONTAINERS.",
        ),
        limit_name="CONTAINER_MCP_MAX_CONTAINERS",
        limit=limits.max_containers,
        used=used,
    )


def over_files(container_id: str, files: int, adding: int, limits: Limits) -> QuotaExceeded:
    return QuotaExceeded(
        f"Quota exceeded: container {container_id} would hold {files + adding} files; "
        f"the limit is {limits.max_files_per_container}.",
        hint=Hint(
            mcp="Delete files with file_delete, or ask the operator to raise CONTAINER_MCP_MAX_FILES_PER_CONTAINER.",
            rest=f"Delete files with DELETE /v1/containers/{container_id}/files/{{file_id}}, or ask "
            "the operator to raise CONTAINER_MCP_MAX_FILES_PER_CONTAINER.",
        ),
        limit_name="CONTAINER_MCP_MAX_FILES_PER_CONTAINER",
        limit=limits.max_files_per_container,
        used=files,
    )


def over_bytes(used: int, adding: int, limits: Limits) -> QuotaExceeded:
    return QuotaExceeded(
        f"Quota exceeded: this session stores {_mib(used)} of {_mib(limits.max_session_bytes)}, "
        f"and this needs {_mib(adding)} more. Delete files or containers you no longer "
        "need, or ask the operator to raise CONTAINER_MCP_MAX_SESSION_BYTES.",
        limit_name="CONTAINER_MCP_MAX_SESSION_BYTES",
        limit=limits.max_session_bytes,
        used=used,
    )


def rate_limited(calls: float, now: float, limits: Limits) -> RateLimited:
    retry_after = max(1.0, 60 - (now % 60))
    return RateLimited(
        f"Rate limit: this session made {int(calls)} calls in the last minute; the limit is "
        f"{limits.max_calls_per_minute}. Wait about {int(retry_after)} s and retry, or ask the "
        "operator to raise CONTAINER_MCP_MAX_CALLS_PER_MINUTE.",
        limit_name="CONTAINER_MCP_MAX_CALLS_PER_MINUTE",
        limit=limits.max_calls_per_minute,
        used=int(calls),
        retry_after=retry_after,
    )


@functools.lru_cache(maxsize=4096)
def session_digest(key: bytes, owner: str) -> str:
    """The HMAC-SHA256 (hex) of the session key ``owner`` under ``key``: a ledger's ``digest``.

    Remembered for the most recent keys: every call hashes its caller's key two or three times (the
    rate limit, ownership, the audit record)."""
    return hmac.new(key, owner.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def sliding_calls(current: int, previous: int, now: float) -> float:
    """Calls in the sliding minute ending ``now``, estimated from two fixed one-minute windows."""
    elapsed = (now % 60) / 60
    return float(current) + float(previous) * (1 - elapsed)
