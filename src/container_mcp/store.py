"""Session state: who owns which container, and how much of each quota is in use.

``SessionStore`` is the Protocol the ``ContainerService`` talks to. ``SqliteSessionStore`` is the
implementation: in memory (``":memory:"``, one process) or in a file in the data dir, where it
survives restarts and is shared, race-free, by every server process on the host (SQLite's write
lock serialises the check-and-update of each quota). A store for several hosts (Redis) can
implement the same Protocol.

Every check-and-update is one SQLite transaction with no ``await`` inside, so concurrent
coroutines of one process cannot interleave inside it either.

Session keys are secrets (a streamable-HTTP key is a live ``Mcp-Session-Id``: whoever reads one can
act as that session), so the file never holds them: each key is replaced by its HMAC-SHA256 under a
per-data-dir secret (``session.key``, 0600, beside the database) at this boundary, once, and every
query compares digests. Callers pass and think in clear keys. Rows an older version wrote with
clear keys are rewritten at open, and the database is vacuumed so no old page keeps them (a crash
in between is finished at the next start).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from .errors import Hint, InvalidRequest, QuotaExceeded, RateLimited
from .private import secret_key
from .sqlite import connect, transaction

__all__ = ["Limits", "OwnedContainer", "SessionStore", "SqliteSessionStore", "Usage"]

PENDING_TTL_S = 600.0
"""A reservation older than this belongs to a create that crashed; it no longer counts."""

KEY_FILE = "session.key"
"""The secret the session keys are hashed with, in the database's directory."""

_DIGEST_PREFIX = "hmac-sha256:"

_SCRUBBED = 1
"""``PRAGMA user_version`` once the file holds no clear session key, not even in a free page."""


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


class SessionStore(Protocol):
    """Ownership and quota counters, keyed by session key (an opaque string, a secret).

    An implementation that persists state must not store the keys in clear.
    """

    def reserve_container(self, owner: str, name: str, now: float, limits: Limits) -> str:
        """Atomically check the live-container quota and hold a slot; returns a reservation id.

        Raises ``QuotaExceeded`` (and holds nothing) when the owner is at the limit.
        """
        ...

    def commit_container(self, reservation: str, container_id: str, created_at: int) -> None:
        """Turn a reservation into ownership of ``container_id``."""
        ...

    def cancel_reservation(self, reservation: str) -> None: ...

    def record(self, container_id: str, meta: str) -> None:
        """Keep ``meta`` (the container's ``Container`` JSON, as an operation just saw it) for views."""
        ...

    def owns(self, owner: str, container_id: str) -> bool:
        """Whether ``owner`` owns the (committed) container ``container_id``."""
        ...

    def get(self, container_id: str) -> OwnedContainer | None: ...

    def page(
        self, owner: str, *, limit: int, order: str, after: str | None, name: str | None
    ) -> tuple[list[OwnedContainer], bool]:
        """One page of the owner's containers by (created_at, id); returns (rows, has_more)."""
        ...

    def live(self, owner: str) -> list[OwnedContainer]:
        """The owner's containers not known to be expired."""
        ...

    def apply_delta(self, owner: str, container_id: str, files: int, bytes_: int, limits: Limits | None) -> None:
        """Atomically add ``files``/``bytes_`` to a container's usage.

        With ``limits``, growth is checked first against files-per-container and the session's
        stored bytes, raising ``QuotaExceeded`` and changing nothing when over. Without, it is
        applied unchecked (releases and rollbacks).
        """
        ...

    def set_usage(self, container_id: str, files: int, bytes_: int) -> None:
        """Overwrite a container's counters with the backend's truth."""
        ...

    def mark_expired(self, container_id: str) -> None:
        """The container expired: it stops counting, and its files are gone."""
        ...

    def forget(self, container_id: str) -> None: ...

    def usage(self, owner: str, now: float) -> Usage: ...

    def hit(self, owner: str, now: float, limits: Limits) -> None:
        """Count one call; raises ``RateLimited`` when the per-minute budget is spent."""
        ...

    def digest(self, owner: str) -> str:
        """The keyed hash (HMAC-SHA256 hex) the store keeps for the session key ``owner``; no secret."""
        ...

    def totals(self) -> Usage:
        """Live containers, their files and bytes across every owner (``calls_last_minute`` is 0).
        One cheap query: metrics read it at every scrape."""
        ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS owned (
    container_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'live', 'expired')),
    files INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    reserved_at REAL,
    meta TEXT
);
CREATE INDEX IF NOT EXISTS owned_by_owner ON owned (owner, created_at, container_id);
CREATE INDEX IF NOT EXISTS owned_by_name ON owned (owner, name, created_at, container_id);
CREATE TABLE IF NOT EXISTS calls (
    owner TEXT NOT NULL,
    window INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (owner, window)
);
"""


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


class SqliteSessionStore:
    """``SessionStore`` on SQLite. ``path`` is a file path or ``":memory:"``.

    ``key`` is the HMAC secret; by default ``session.key`` beside a database file (created on
    first use), or a fresh random one for ``":memory:"``.
    """

    def __init__(self, path: Path | str = ":memory:", *, key: bytes | None = None) -> None:
        self._db = connect(path)  # creates the directory the key file goes in
        if key is None:
            key = secret_key(path.parent / KEY_FILE) if isinstance(path, Path) else secrets.token_bytes(32)
        self._key = key
        self._db.executescript(_SCHEMA)
        self._add_meta_column()
        self._migrate_clear_keys()

    def _add_meta_column(self) -> None:
        """A database an older version made has no ``meta`` column: add it (rows keep NULL)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(owned)").fetchall()}
        if "meta" not in columns:
            with self._tx() as db:
                db.execute("ALTER TABLE owned ADD COLUMN meta TEXT")

    def digest(self, owner: str) -> str:
        mac = hmac.new(self._key, owner.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return mac.hexdigest()

    def _k(self, owner: str) -> str:
        """The stored form of the session key ``owner``."""
        return _DIGEST_PREFIX + self.digest(owner)

    def _migrate_clear_keys(self) -> None:
        """Replace the clear session keys an older version stored by their digests.

        The stdio user's containers stay theirs: ``stdio:local`` becomes the digest that
        ``stdio:local`` is looked up by from now on. VACUUM then rewrites the file from scratch and
        the WAL is truncated, so no free page or old frame keeps a clear key; ``user_version``
        records that this has finished, so a start after a crash in between finishes it.
        """
        self._db.create_function("session_digest", 1, self._k, deterministic=True)
        clear = f"{_DIGEST_PREFIX}%"
        with self._tx() as db:
            moved = db.execute(
                "UPDATE owned SET owner = session_digest(owner) WHERE owner NOT LIKE ?", (clear,)
            ).rowcount
            moved += db.execute(
                "UPDATE calls SET owner = session_digest(owner) WHERE owner NOT LIKE ?", (clear,)
            ).rowcount
            if moved:  # committed together with the UPDATE: its old pages are still in the file
                db.execute("PRAGMA user_version = 0")
            scrubbed = db.execute("PRAGMA user_version").fetchone()[0] == _SCRUBBED
        # The scrub is marked done only once it is: a crash after the UPDATE committed or before
        # the checkpoint finished leaves the mark unset, and the next start scrubs again, though
        # it has nothing left to migrate.
        if moved or not scrubbed:
            self._db.execute("VACUUM")
            busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            if not busy:  # another process still reads old frames: the next start tries again
                self._db.execute(f"PRAGMA user_version = {_SCRUBBED}")

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db)

    @staticmethod
    def _row(row: sqlite3.Row) -> OwnedContainer:
        return OwnedContainer(
            container_id=row["container_id"],
            owner=row["owner"],
            name=row["name"],
            created_at=row["created_at"],
            state=row["state"],
            files=row["files"],
            bytes=row["bytes"],
            meta=row["meta"],
        )

    def _live_count(self, db: sqlite3.Connection, owner: str, now: float) -> int:
        (count,) = db.execute(
            "SELECT count(*) FROM owned WHERE owner = ? AND (state = 'live' "
            "OR (state = 'pending' AND reserved_at > ?))",
            (owner, now - PENDING_TTL_S),
        ).fetchone()
        return int(count)

    def reserve_container(self, owner: str, name: str, now: float, limits: Limits) -> str:
        owner = self._k(owner)
        reservation = f"pending_{secrets.token_hex(16)}"
        with self._tx() as db:
            db.execute("DELETE FROM owned WHERE state = 'pending' AND reserved_at <= ?", (now - PENDING_TTL_S,))
            used = self._live_count(db, owner, now)
            if used >= limits.max_containers:
                raise QuotaExceeded(
                    f"Quota exceeded: this session holds {used} of {limits.max_containers} live containers "
                    "(expired containers do not count).",
                    hint=Hint(
                        mcp="Delete one with container_delete, or ask the operator to raise "
                        "CONTAINER_MCP_MAX_CONTAINERS.",
                        rest="Delete one with DELETE /v1/containers/{container_id}, or ask the operator to raise "
                        "CONTAINER_MCP_MAX_CONTAINERS.",
                    ),
                    limit_name="CONTAINER_MCP_MAX_CONTAINERS",
                    limit=limits.max_containers,
                    used=used,
                )
            db.execute(
                "INSERT INTO owned (container_id, owner, name, created_at, state, reserved_at) "
                "VALUES (?, ?, ?, ?, 'pending', ?)",
                (reservation, owner, name, int(now), now),
            )
        return reservation

    def commit_container(self, reservation: str, container_id: str, created_at: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE owned SET container_id = ?, created_at = ?, state = 'live', reserved_at = NULL "
                "WHERE container_id = ?",
                (container_id, created_at, reservation),
            )

    def cancel_reservation(self, reservation: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM owned WHERE container_id = ? AND state = 'pending'", (reservation,))

    def record(self, container_id: str, meta: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE owned SET meta = ? WHERE container_id = ? AND state != 'pending'", (meta, container_id))

    def get(self, container_id: str) -> OwnedContainer | None:
        row = self._db.execute(
            "SELECT * FROM owned WHERE container_id = ? AND state != 'pending'", (container_id,)
        ).fetchone()
        return self._row(row) if row else None

    def owns(self, owner: str, container_id: str) -> bool:
        owned = self.get(container_id)
        return owned is not None and hmac.compare_digest(owned.owner, self._k(owner))

    def page(
        self, owner: str, *, limit: int, order: str, after: str | None, name: str | None
    ) -> tuple[list[OwnedContainer], bool]:
        owner = self._k(owner)
        where = ["owner = ?", "state != 'pending'"]
        args: list[object] = [owner]
        if name is not None:
            where.append("name = ?")
            args.append(name)
        if after is not None:
            anchor = self._db.execute(
                "SELECT created_at, container_id FROM owned WHERE container_id = ? AND owner = ?",
                (after, owner),
            ).fetchone()
            if anchor is None:
                raise InvalidRequest(
                    f"'after' is {after[:80]!r}, which is not one of your containers. Pass the last_id of "
                    "the previous page, or omit 'after' to start from the first page.",
                    param="after",
                )
            cmp = ">" if order == "asc" else "<"
            where.append(f"(created_at, container_id) {cmp} (?, ?)")
            args.extend([anchor["created_at"], anchor["container_id"]])
        direction = "ASC" if order == "asc" else "DESC"
        rows = self._db.execute(
            f"SELECT * FROM owned WHERE {' AND '.join(where)} "
            f"ORDER BY created_at {direction}, container_id {direction} LIMIT ?",
            (*args, limit + 1),
        ).fetchall()
        return [self._row(r) for r in rows[:limit]], len(rows) > limit

    def live(self, owner: str) -> list[OwnedContainer]:
        rows = self._db.execute(
            "SELECT * FROM owned WHERE owner = ? AND state = 'live' ORDER BY created_at, container_id",
            (self._k(owner),),
        ).fetchall()
        return [self._row(r) for r in rows]

    def apply_delta(self, owner: str, container_id: str, files: int, bytes_: int, limits: Limits | None) -> None:
        owner = self._k(owner)
        with self._tx() as db:
            row = db.execute(
                "SELECT files, bytes FROM owned WHERE container_id = ? AND state = 'live'", (container_id,)
            ).fetchone()
            if row is None:
                return
            if limits is not None:
                if files > 0 and row["files"] + files > limits.max_files_per_container:
                    raise QuotaExceeded(
                        f"Quota exceeded: container {container_id} would hold {row['files'] + files} files; "
                        f"the limit is {limits.max_files_per_container}.",
                        hint=Hint(
                            mcp="Delete files with file_delete, or ask the operator to raise "
                            "CONTAINER_MCP_MAX_FILES_PER_CONTAINER.",
                            rest=f"Delete files with DELETE /v1/containers/{container_id}/files/{{file_id}}, or ask "
                            "the operator to raise CONTAINER_MCP_MAX_FILES_PER_CONTAINER.",
                        ),
                        limit_name="CONTAINER_MCP_MAX_FILES_PER_CONTAINER",
                        limit=limits.max_files_per_container,
                        used=row["files"],
                    )
                if bytes_ > 0:
                    (used,) = db.execute(
                        "SELECT coalesce(sum(bytes), 0) FROM owned WHERE owner = ? AND state = 'live'",
                        (owner,),
                    ).fetchone()
                    if used + bytes_ > limits.max_session_bytes:
                        raise QuotaExceeded(
                            f"Quota exceeded: this session stores {_mib(used)} of {_mib(limits.max_session_bytes)}, "
                            f"and this needs {_mib(bytes_)} more. Delete files or containers you no longer "
                            "need, or ask the operator to raise CONTAINER_MCP_MAX_SESSION_BYTES.",
                            limit_name="CONTAINER_MCP_MAX_SESSION_BYTES",
                            limit=limits.max_session_bytes,
                            used=int(used),
                        )
            db.execute(
                "UPDATE owned SET files = max(files + ?, 0), bytes = max(bytes + ?, 0) WHERE container_id = ?",
                (files, bytes_, container_id),
            )

    def set_usage(self, container_id: str, files: int, bytes_: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE owned SET files = ?, bytes = ? WHERE container_id = ? AND state = 'live'",
                (files, bytes_, container_id),
            )

    def mark_expired(self, container_id: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE owned SET state = 'expired', files = 0, bytes = 0 WHERE container_id = ?",
                (container_id,),
            )

    def forget(self, container_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM owned WHERE container_id = ?", (container_id,))

    def _calls(self, db: sqlite3.Connection, owner: str, now: float) -> float:
        """Calls in the sliding minute ending now, estimated from two fixed windows."""
        window = int(now // 60)
        rows = dict(
            db.execute(
                "SELECT window, count FROM calls WHERE owner = ? AND window IN (?, ?)",
                (owner, window, window - 1),
            ).fetchall()
        )
        elapsed = (now % 60) / 60
        return float(rows.get(window, 0)) + float(rows.get(window - 1, 0)) * (1 - elapsed)

    def usage(self, owner: str, now: float) -> Usage:
        owner = self._k(owner)
        row = self._db.execute(
            "SELECT count(*), coalesce(sum(files), 0), coalesce(sum(bytes), 0) FROM owned "
            "WHERE owner = ? AND state = 'live'",
            (owner,),
        ).fetchone()
        return Usage(
            containers=int(row[0]),
            files=int(row[1]),
            bytes=int(row[2]),
            calls_last_minute=round(self._calls(self._db, owner, now)),
        )

    def totals(self) -> Usage:
        row = self._db.execute(
            "SELECT count(*), coalesce(sum(files), 0), coalesce(sum(bytes), 0) FROM owned WHERE state = 'live'"
        ).fetchone()
        return Usage(containers=int(row[0]), files=int(row[1]), bytes=int(row[2]), calls_last_minute=0)

    def hit(self, owner: str, now: float, limits: Limits) -> None:
        owner = self._k(owner)
        window = int(now // 60)
        with self._tx() as db:
            calls = self._calls(db, owner, now)
            if calls + 1 > limits.max_calls_per_minute:
                retry_after = max(1.0, 60 - (now % 60))
                raise RateLimited(
                    f"Rate limit: this session made {int(calls)} calls in the last minute; the limit is "
                    f"{limits.max_calls_per_minute}. Wait about {int(retry_after)} s and retry, or ask the "
                    "operator to raise CONTAINER_MCP_MAX_CALLS_PER_MINUTE.",
                    limit_name="CONTAINER_MCP_MAX_CALLS_PER_MINUTE",
                    limit=limits.max_calls_per_minute,
                    used=int(calls),
                    retry_after=retry_after,
                )
            db.execute(
                "INSERT INTO calls (owner, window, count) VALUES (?, ?, 1) "
                "ON CONFLICT (owner, window) DO UPDATE SET count = count + 1",
                (owner, window),
            )
            db.execute("DELETE FROM calls WHERE window < ?", (window - 1,))

    def close(self) -> None:
        self._db.close()
