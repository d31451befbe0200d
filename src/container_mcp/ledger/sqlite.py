"""``Ledger`` on SQLite: in memory (``":memory:"``, one process) or in a file in the data dir.

A file is shared, race-free, by every server process on the host: each transaction takes
SQLite's write lock up front (``BEGIN IMMEDIATE``), which serialises the check-and-update of each
quota across processes, and ``synchronous=FULL`` makes an acknowledged change survive a crash.
Each write transaction runs in a worker thread, one at a time per ledger, so its fsync never
blocks the event loop; it is shielded from cancellation (see ``base``). Reads run at once on a
connection of their own (a WAL reader neither waits nor syncs).

Session keys are replaced by their HMAC-SHA256 under a per-data-dir secret (``session.key``, 0600,
beside the database), once, and every query compares digests. Rows an older version wrote with
clear keys are rewritten at open, and the database is vacuumed so no old page keeps them (a crash
in between is finished at the next start).
"""

from __future__ import annotations

import hmac
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from ..errors import InvalidRequest
from ..models import ContainerFile
from ..private import secret_key
from ..sqlite import connect, transaction
from .base import (
    PENDING_TTL_S,
    FileCursor,
    Limits,
    OwnedContainer,
    Usage,
    over_bytes,
    over_containers,
    over_files,
    rate_limited,
    session_digest,
    sliding_calls,
)

__all__ = ["KEY_FILE", "SqliteLedger"]

_T = TypeVar("_T")

KEY_FILE = "session.key"
"""The secret the session keys are hashed with, in the database's directory."""

_DIGEST_PREFIX = "hmac-sha256:"

_QUICK_RUN = 100
"""Rate-limit counts in a row committed on the event loop before one goes to the worker thread."""

_SCRUBBED = 1
"""``PRAGMA user_version`` once the file holds no clear session key, not even in a free page."""


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
    meta TEXT,
    indexed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS owned_by_owner ON owned (owner, created_at, container_id);
CREATE INDEX IF NOT EXISTS owned_by_name ON owned (owner, name, created_at, container_id);
CREATE TABLE IF NOT EXISTS files (
    container_id TEXT NOT NULL,
    file_id TEXT NOT NULL,
    path TEXT NOT NULL,
    meta TEXT NOT NULL,
    PRIMARY KEY (container_id, file_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS files_by_path ON files (container_id, path);
CREATE TABLE IF NOT EXISTS calls (
    owner TEXT NOT NULL,
    window INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (owner, window)
);
"""


class SqliteLedger:
    """``Ledger`` on SQLite. ``path`` is a file path or ``":memory:"``.

    ``key`` is the HMAC secret; by default ``session.key`` beside a database file (created on
    first use), or a fresh random one for ``":memory:"``.
    """

    kind = "sqlite"

    def __init__(self, path: Path | str = ":memory:", *, key: bytes | None = None) -> None:
        self._db = connect(path)  # creates the directory the key file goes in
        # The rate limit's counts and the views' last-seen containers need no fsync (``connect``):
        # one per call would be most of a call's cost.
        self._relaxed = connect(path, durable=False) if isinstance(path, Path) else self._db
        # Reads need no worker thread: a WAL reader never waits for a writer and never syncs. They
        # get their own connection, so they never see another transaction half-done; an in-memory
        # database has only the one connection, so its reads queue in the worker thread too.
        self._reader = connect(path, durable=False) if isinstance(path, Path) else None
        # The rate limit's count, the one write of every call, is first tried on the event loop: on
        # a connection that never waits for the write lock (busy_timeout 0: another writer holds
        # it, and the count goes to the worker thread instead), never syncs (NORMAL) and never
        # checkpoints (that is the other connections' job: every ``_QUICK_RUN``-th count goes to the
        # worker thread, whose commit checkpoints a grown WAL), so it cannot block the loop.
        self._quick = connect(path, durable=False) if isinstance(path, Path) else None
        self._quick_hits = 0
        if self._quick is not None:
            self._quick.execute("PRAGMA busy_timeout = 0")
            self._quick.execute("PRAGMA wal_autocheckpoint = 0")
        if key is None:
            key = secret_key(path.parent / KEY_FILE) if isinstance(path, Path) else secrets.token_bytes(32)
        self._key = key
        self._limiter = anyio.CapacityLimiter(1)
        self._add_columns()
        self._db.executescript(_SCHEMA)
        self._migrate_clear_keys()

    def _add_columns(self) -> None:
        """A database an older version made lacks ``meta`` (rows keep NULL) or ``indexed`` (rows
        keep 0: their file index is built from the provider once, ``Catalog.file_index``)."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(owned)").fetchall()}
        if not columns or {"meta", "indexed"} <= columns:
            return  # a new database (the schema makes them), or one that has them
        with self._tx() as db:
            if "meta" not in columns:
                db.execute("ALTER TABLE owned ADD COLUMN meta TEXT")
            if "indexed" not in columns:
                db.execute("ALTER TABLE owned ADD COLUMN indexed INTEGER NOT NULL DEFAULT 0")

    def digest(self, owner: str) -> str:
        return session_digest(self._key, owner)

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

    async def _read(self, fn: Callable[..., _T], *args: object) -> _T:
        """The read-only ``fn(db, *args)``: at once on the reader connection, or (in memory) queued."""
        if self._reader is not None:
            return fn(self._reader, *args)
        return await self._run(fn, self._db, *args)

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        """``fn(*args)`` in a worker thread, one at a time, never cancelled halfway."""
        with anyio.CancelScope(shield=True):
            result = await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        return result

    # --- transactions (each runs whole in a worker thread) ---------------------------------

    def _reserve(self, owner: str, name: str, now: float, limits: Limits) -> str:
        owner = self._k(owner)
        reservation = f"pending_{secrets.token_hex(16)}"
        with self._tx() as db:
            db.execute("DELETE FROM owned WHERE state = 'pending' AND reserved_at <= ?", (now - PENDING_TTL_S,))
            used = self._live_count(db, owner, now)
            if used >= limits.max_containers:
                raise over_containers(used, limits)
            db.execute(
                "INSERT INTO owned (container_id, owner, name, created_at, state, reserved_at) "
                "VALUES (?, ?, ?, ?, 'pending', ?)",
                (reservation, owner, name, int(now), now),
            )
        return reservation

    async def reserve(self, owner: str, name: str, now: float, limits: Limits) -> str:
        return await self._run(self._reserve, owner, name, now, limits)

    def _commit(self, reservation: str, container_id: str, created_at: int, meta: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE owned SET container_id = ?, created_at = ?, state = 'live', reserved_at = NULL, meta = ?, "
                "indexed = 1 WHERE container_id = ?",
                (container_id, created_at, meta, reservation),
            )

    async def commit(self, reservation: str, container_id: str, created_at: int, meta: str) -> None:
        await self._run(self._commit, reservation, container_id, created_at, meta)

    def _write(self, sql: str, *args: object) -> None:
        with self._tx() as db:
            db.execute(sql, args)

    def _record(self, container_id: str, meta: str) -> None:
        with transaction(self._relaxed) as db:
            db.execute("UPDATE owned SET meta = ? WHERE container_id = ? AND state != 'pending'", (meta, container_id))

    async def cancel(self, reservation: str) -> None:
        await self._run(self._write, "DELETE FROM owned WHERE container_id = ? AND state = 'pending'", reservation)

    async def record(self, container_id: str, meta: str) -> None:
        await self._run(self._record, container_id, meta)

    def _get(self, db: sqlite3.Connection, container_id: str) -> OwnedContainer | None:
        row = db.execute(
            "SELECT * FROM owned WHERE container_id = ? AND state != 'pending'", (container_id,)
        ).fetchone()
        return self._row(row) if row else None

    async def get(self, container_id: str) -> OwnedContainer | None:
        return await self._read(self._get, container_id)

    def _owned(self, db: sqlite3.Connection, owner: str, container_id: str) -> OwnedContainer | None:
        owned = self._get(db, container_id)
        return owned if owned is not None and hmac.compare_digest(owned.owner, self._k(owner)) else None

    async def owned(self, owner: str, container_id: str) -> OwnedContainer | None:
        return await self._read(self._owned, owner, container_id)

    async def owns(self, owner: str, container_id: str) -> bool:
        return await self.owned(owner, container_id) is not None

    def _page(
        self, db: sqlite3.Connection, owner: str, limit: int, order: str, after: str | None, name: str | None
    ) -> tuple[list[OwnedContainer], bool]:
        owner = self._k(owner)
        where = ["owner = ?", "state != 'pending'"]
        args: list[object] = [owner]
        if name is not None:
            where.append("name = ?")
            args.append(name)
        if after is not None:
            anchor = db.execute(
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
        rows = db.execute(
            f"SELECT * FROM owned WHERE {' AND '.join(where)} "
            f"ORDER BY created_at {direction}, container_id {direction} LIMIT ?",
            (*args, limit + 1),
        ).fetchall()
        return [self._row(r) for r in rows[:limit]], len(rows) > limit

    async def page(
        self, owner: str, *, limit: int, order: str, after: str | None, name: str | None
    ) -> tuple[list[OwnedContainer], bool]:
        return await self._read(self._page, owner, limit, order, after, name)

    def _live(self, db: sqlite3.Connection, owner: str) -> list[OwnedContainer]:
        rows = db.execute(
            "SELECT * FROM owned WHERE owner = ? AND state = 'live' ORDER BY created_at, container_id",
            (self._k(owner),),
        ).fetchall()
        return [self._row(r) for r in rows]

    async def live(self, owner: str) -> list[OwnedContainer]:
        return await self._read(self._live, owner)

    def _charge(self, owner: str, container_id: str, files: int, bytes_: int, limits: Limits) -> None:
        owner = self._k(owner)
        with self._tx() as db:
            row = db.execute(
                "SELECT files, bytes FROM owned WHERE container_id = ? AND state = 'live'", (container_id,)
            ).fetchone()
            if row is None:
                return
            if files > 0 and row["files"] + files > limits.max_files_per_container:
                raise over_files(container_id, row["files"], files, limits)
            if bytes_ > 0:
                (used,) = db.execute(
                    "SELECT coalesce(sum(bytes), 0) FROM owned WHERE owner = ? AND state = 'live'", (owner,)
                ).fetchone()
                if used + bytes_ > limits.max_session_bytes:
                    raise over_bytes(int(used), bytes_, limits)
            self._add(db, container_id, files, bytes_)

    @staticmethod
    def _add(db: sqlite3.Connection, container_id: str, files: int, bytes_: int) -> None:
        db.execute(
            "UPDATE owned SET files = max(files + ?, 0), bytes = max(bytes + ?, 0) "
            "WHERE container_id = ? AND state = 'live'",
            (files, bytes_, container_id),
        )

    async def charge(self, owner: str, container_id: str, files: int, bytes_: int, limits: Limits) -> None:
        await self._run(self._charge, owner, container_id, files, bytes_, limits)

    def _release(self, container_id: str, files: int, bytes_: int) -> None:
        with self._tx() as db:
            self._add(db, container_id, -files, -bytes_)

    async def release(self, container_id: str, files: int, bytes_: int) -> None:
        await self._run(self._release, container_id, files, bytes_)

    def set_usage_now(self, container_id: str, files: int, bytes_: int) -> None:
        """``set_usage`` on the calling thread: for a provider's repair, already in a worker thread."""
        self._write(
            "UPDATE owned SET files = ?, bytes = ? WHERE container_id = ? AND state = 'live'",
            files,
            bytes_,
            container_id,
        )

    async def set_usage(self, container_id: str, files: int, bytes_: int) -> None:
        await self._run(self.set_usage_now, container_id, files, bytes_)

    def _gone(self, container_id: str, sql: str) -> None:
        with self._tx() as db:
            db.execute(sql, (container_id,))
            db.execute("DELETE FROM files WHERE container_id = ?", (container_id,))

    async def mark_expired(self, container_id: str) -> None:
        sql = "UPDATE owned SET state = 'expired', files = 0, bytes = 0 WHERE container_id = ?"
        await self._run(self._gone, container_id, sql)

    async def forget(self, container_id: str) -> None:
        await self._run(self._gone, container_id, "DELETE FROM owned WHERE container_id = ?")

    # --- the file index ------------------------------------------------------------------

    @staticmethod
    def _put(db: sqlite3.Connection, container_id: str, files: Sequence[ContainerFile]) -> None:
        for f in files:
            db.execute(
                "DELETE FROM files WHERE container_id = ? AND (path = ? OR file_id = ?)", (container_id, f.path, f.id)
            )
            db.execute(
                "INSERT INTO files (container_id, file_id, path, meta) SELECT ?, ?, ?, ? "
                "WHERE EXISTS (SELECT 1 FROM owned WHERE container_id = ? AND state = 'live')",
                (container_id, f.id, f.path, f.model_dump_json(), container_id),
            )

    def _put_files(self, container_id: str, files: Sequence[ContainerFile]) -> None:
        with self._tx() as db:
            self._put(db, container_id, files)

    async def put_files(self, container_id: str, files: Sequence[ContainerFile]) -> None:
        if files:
            await self._run(self._put_files, container_id, list(files))

    def _drop_files(self, container_id: str, file_ids: Sequence[str], paths: Sequence[str]) -> None:
        with self._tx() as db:
            db.executemany(
                "DELETE FROM files WHERE container_id = ? AND file_id = ?", [(container_id, f) for f in file_ids]
            )
            db.executemany("DELETE FROM files WHERE container_id = ? AND path = ?", [(container_id, p) for p in paths])

    async def drop_files(self, container_id: str, *, file_ids: Sequence[str] = (), paths: Sequence[str] = ()) -> None:
        if file_ids or paths:
            await self._run(self._drop_files, container_id, list(file_ids), list(paths))

    def _set_files(self, container_id: str, files: Sequence[ContainerFile]) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM files WHERE container_id = ?", (container_id,))
            self._put(db, container_id, files)
            db.execute("UPDATE owned SET indexed = 1 WHERE container_id = ?", (container_id,))

    async def set_files(self, container_id: str, files: Sequence[ContainerFile]) -> None:
        await self._run(self._set_files, container_id, list(files))

    def _unindexed(self, db: sqlite3.Connection, owner: str) -> list[str]:
        rows = db.execute(
            "SELECT container_id FROM owned WHERE owner = ? AND state = 'live' AND indexed = 0 "
            "ORDER BY created_at, container_id",
            (self._k(owner),),
        ).fetchall()
        return [r[0] for r in rows]

    async def unindexed(self, owner: str) -> list[str]:
        return await self._read(self._unindexed, owner)

    def _file_page(
        self, db: sqlite3.Connection, owner: str, after: FileCursor | None, limit: int
    ) -> tuple[list[tuple[int, ContainerFile]], bool]:
        # The containers from the cursor's on (an index range), and in each the files past it: the
        # container at the cursor is only the first of those, gone or not.
        at, cid, fid = after if after is not None else (-(2**62), "", "")
        rows = db.execute(
            "SELECT o.created_at, f.meta FROM owned o JOIN files f ON f.container_id = o.container_id "
            "WHERE o.owner = ? AND o.state = 'live' AND (o.created_at, o.container_id) >= (?, ?) "
            "AND (o.created_at, o.container_id, f.file_id) > (?, ?, ?) "
            "ORDER BY o.created_at, o.container_id, f.file_id LIMIT ?",
            (self._k(owner), at, cid, at, cid, fid, limit + 1),
        ).fetchall()
        page = [(int(r[0]), ContainerFile.model_validate_json(r[1])) for r in rows[:limit]]
        return page, len(rows) > limit

    async def file_page(
        self, owner: str, after: FileCursor | None, limit: int
    ) -> tuple[list[tuple[int, ContainerFile]], bool]:
        return await self._read(self._file_page, owner, after, limit)

    def _locate(self, db: sqlite3.Connection, owner: str, file_id: str) -> str | None:
        row = db.execute(
            "SELECT o.container_id FROM files f JOIN owned o ON o.container_id = f.container_id "
            "WHERE f.file_id = ? AND o.owner = ? AND o.state = 'live' ORDER BY o.created_at LIMIT 1",
            (file_id, self._k(owner)),
        ).fetchone()
        return str(row[0]) if row else None

    async def locate(self, owner: str, file_id: str) -> str | None:
        return await self._read(self._locate, owner, file_id)

    def _calls(self, db: sqlite3.Connection, owner: str, now: float) -> float:
        window = int(now // 60)
        rows = dict(
            db.execute(
                "SELECT window, count FROM calls WHERE owner = ? AND window IN (?, ?)",
                (owner, window, window - 1),
            ).fetchall()
        )
        return sliding_calls(rows.get(window, 0), rows.get(window - 1, 0), now)

    def _usage(self, db: sqlite3.Connection, owner: str, now: float) -> Usage:
        owner = self._k(owner)
        row = db.execute(
            "SELECT count(*), coalesce(sum(files), 0), coalesce(sum(bytes), 0) FROM owned "
            "WHERE owner = ? AND state = 'live'",
            (owner,),
        ).fetchone()
        return Usage(
            containers=int(row[0]),
            files=int(row[1]),
            bytes=int(row[2]),
            calls_last_minute=round(self._calls(db, owner, now)),
        )

    async def usage(self, owner: str, now: float) -> Usage:
        return await self._read(self._usage, owner, now)

    def _totals(self, db: sqlite3.Connection) -> Usage:
        row = db.execute(
            "SELECT count(*), coalesce(sum(files), 0), coalesce(sum(bytes), 0) FROM owned WHERE state = 'live'"
        ).fetchone()
        return Usage(containers=int(row[0]), files=int(row[1]), bytes=int(row[2]), calls_last_minute=0)

    async def totals(self) -> Usage:
        return await self._read(self._totals)

    def _hit(self, owner: str, now: float, limits: Limits, conn: sqlite3.Connection | None = None) -> None:
        owner = self._k(owner)
        window = int(now // 60)
        with transaction(conn or self._relaxed) as db:
            calls = self._calls(db, owner, now)
            if calls + 1 > limits.max_calls_per_minute:
                raise rate_limited(calls, now, limits)
            db.execute(
                "INSERT INTO calls (owner, window, count) VALUES (?, ?, 1) "
                "ON CONFLICT (owner, window) DO UPDATE SET count = count + 1",
                (owner, window),
            )
            db.execute("DELETE FROM calls WHERE window < ?", (window - 1,))

    async def hit(self, owner: str, now: float, limits: Limits) -> None:
        self._quick_hits += 1
        if self._quick is not None and self._quick_hits % _QUICK_RUN:
            try:
                return self._hit(owner, now, limits, self._quick)
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY:
                    raise
        await self._run(self._hit, owner, now, limits)

    def close(self) -> None:
        if self._quick is not None:
            self._quick.close()
        if self._reader is not None:
            self._reader.close()
        if self._relaxed is not self._db:
            self._relaxed.close()
        self._db.close()

    async def aclose(self) -> None:
        await self._run(self.close)
