"""The local provider's durable registry: containers and files in SQLite (WAL).

Blocking, short queries; the provider calls them from the event loop thread only. Every list
query walks an index from the cursor, so a page costs O(page) whatever the table size.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import astuple, dataclass
from pathlib import Path

from ..models import Container, ContainerFile, ExpiresAfter, NetworkPolicy
from ..paths import MOUNT
from ..sqlite import connect, transaction

__all__ = ["ContainerRow", "FileRow", "Registry"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_active_at REAL NOT NULL,
    expiry_minutes INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    memory_limit TEXT NOT NULL,
    network_policy TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'expired'))
);
CREATE INDEX IF NOT EXISTS containers_by_created ON containers (created_at, id);
CREATE INDEX IF NOT EXISTS containers_by_name ON containers (name, created_at, id);
CREATE INDEX IF NOT EXISTS containers_by_expiry ON containers (status, expires_at);
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    container_id TEXT NOT NULL REFERENCES containers (id) ON DELETE CASCADE,
    path TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    source TEXT NOT NULL,
    mime_type TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    mtime_ns INTEGER NOT NULL,
    UNIQUE (container_id, path)
);
CREATE INDEX IF NOT EXISTS files_by_created ON files (container_id, created_at, id);
"""


@dataclass(frozen=True)
class ContainerRow:
    id: str
    name: str
    created_at: int
    last_active_at: float
    expiry_minutes: int
    expires_at: float
    memory_limit: str
    network_policy: str
    status: str

    def model(self) -> Container:
        return Container(
            id=self.id,
            name=self.name,
            created_at=self.created_at,
            status="expired" if self.status == "expired" else "running",
            expires_after=ExpiresAfter(minutes=self.expiry_minutes),
            last_active_at=int(self.last_active_at),
            memory_limit=self.memory_limit,
            network_policy=NetworkPolicy.model_validate_json(self.network_policy),
            expires_at=int(self.expires_at),
        )


@dataclass(frozen=True)
class FileRow:
    id: str
    container_id: str
    path: str
    """Relative to /mnt/data."""
    created_at: int
    bytes: int
    source: str
    mime_type: str
    sha256: str
    mtime_ns: int

    def model(self) -> ContainerFile:
        return ContainerFile(
            id=self.id,
            container_id=self.container_id,
            created_at=self.created_at,
            bytes=self.bytes,
            path=f"{MOUNT}/{self.path}",
            source=self.source,
            mime_type=self.mime_type,
            sha256=self.sha256,
        )


class Registry:
    """SQLite tables of containers and files. ``path`` is the database file."""

    def __init__(self, path: Path) -> None:
        self._db = connect(path)
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.executescript(_SCHEMA)
        # Activity times need no fsync (``sqlite.connect``): every operation touches, and losing
        # the last touches in a power cut only makes a container expire a little early.
        self._relaxed = connect(path, durable=False)

    def close(self) -> None:
        self._relaxed.close()
        self._db.close()

    def tx(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db)

    # --- containers ------------------------------------------------------------------------

    def insert_container(self, row: ContainerRow) -> None:
        self.insert_containers([row])

    def insert_containers(self, rows: Sequence[ContainerRow]) -> None:
        """Insert rows in one transaction (the dataclass fields are the table's columns, in order)."""
        with self.tx() as db:
            db.executemany("INSERT INTO containers VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [astuple(r) for r in rows])

    def container(self, container_id: str) -> ContainerRow | None:
        row = self._db.execute("SELECT * FROM containers WHERE id = ?", (container_id,)).fetchone()
        return ContainerRow(**dict(row)) if row else None

    def touch(self, container_id: str, now: float) -> ContainerRow | None:
        """Mark a running container active at ``now``; its row as updated, or None if it was not running."""
        with transaction(self._relaxed) as db:
            row = db.execute(
                "UPDATE containers SET last_active_at = ?, expires_at = ? + expiry_minutes * 60 "
                "WHERE id = ? AND status = 'running' RETURNING *",
                (now, now, container_id),
            ).fetchone()
        return ContainerRow(**dict(row)) if row else None

    def hold(self, container_id: str, until: float) -> None:
        """Keep a running container from expiring before ``until`` (a command is running in it).

        Not synced to disk (like ``touch``): a hold only matters while its command runs, and a commit
        survives the process being killed; only an OS crash can lose it, and takes the command with it."""
        with transaction(self._relaxed) as db:
            db.execute(
                "UPDATE containers SET expires_at = max(expires_at, ?) WHERE id = ? AND status = 'running'",
                (until, container_id),
            )

    def expire(self, container_id: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE containers SET status = 'expired' WHERE id = ?", (container_id,))
            db.execute("DELETE FROM files WHERE container_id = ?", (container_id,))

    def due(self, now: float, limit: int = 500) -> list[str]:
        """Running containers whose expiry time has passed."""
        rows = self._db.execute(
            "SELECT id FROM containers WHERE status = 'running' AND expires_at < ? ORDER BY expires_at LIMIT ?",
            (now, limit),
        ).fetchall()
        return [r[0] for r in rows]

    def all_ids(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT id FROM containers")}

    def delete_container(self, container_id: str) -> bool:
        with self.tx() as db:
            db.execute("DELETE FROM files WHERE container_id = ?", (container_id,))
            cur = db.execute("DELETE FROM containers WHERE id = ?", (container_id,))
        return cur.rowcount > 0

    def page_containers(
        self, *, limit: int, order: str, after: str | None, name: str | None
    ) -> tuple[list[ContainerRow], bool, bool]:
        """(rows, has_more, after_found). Walks (name,)created_at,id indexes from the cursor."""
        args: list[object] = [] if name is None else [name]
        if after is not None:
            anchor = self._db.execute("SELECT created_at FROM containers WHERE id = ?", (after,)).fetchone()
            if anchor is None:
                return [], False, False
            args.extend([anchor[0], after])
        sql = _page_sql(order=order, after=after is not None, name=name is not None)
        rows = self._db.execute(sql, (*args, limit + 1)).fetchall()
        return [ContainerRow(**dict(r)) for r in rows[:limit]], len(rows) > limit, True

    def explain_page(self, *, order: str, after: bool, name: bool) -> str:
        """SQLite's plan for the very query ``page_containers`` runs (tests assert it walks an index)."""
        sql = _page_sql(order=order, after=after, name=name)
        placeholders = ["x"] * name + [1, "x"] * after + [21]
        return "\n".join(str(r[3]) for r in self._db.execute("EXPLAIN QUERY PLAN " + sql, placeholders))

    # --- files -----------------------------------------------------------------------------

    def file(self, container_id: str, file_id: str) -> FileRow | None:
        row = self._db.execute(
            "SELECT * FROM files WHERE id = ? AND container_id = ?", (file_id, container_id)
        ).fetchone()
        return FileRow(**dict(row)) if row else None

    def file_at(self, container_id: str, rel: str) -> FileRow | None:
        row = self._db.execute(
            "SELECT * FROM files WHERE container_id = ? AND path = ?", (container_id, rel)
        ).fetchone()
        return FileRow(**dict(row)) if row else None

    def files_of(self, container_id: str) -> dict[str, FileRow]:
        rows = self._db.execute("SELECT * FROM files WHERE container_id = ?", (container_id,)).fetchall()
        return {r["path"]: FileRow(**dict(r)) for r in rows}

    def files_at(self, container_id: str, rels: Sequence[str]) -> dict[str, FileRow]:
        """The rows at ``rels`` (those that exist), looked up by the (container_id, path) index."""
        found: dict[str, FileRow] = {}
        for i in range(0, len(rels), _IN_BATCH):
            batch = rels[i : i + _IN_BATCH]
            rows = self._db.execute(
                f"SELECT * FROM files WHERE container_id = ? AND path IN ({','.join('?' * len(batch))})",
                (container_id, *batch),
            ).fetchall()
            found.update((r["path"], FileRow(**dict(r))) for r in rows)
        return found

    def usage_of(self, container_id: str) -> tuple[int, int]:
        """(files, bytes) the container's rows record."""
        row = self._db.execute(
            "SELECT count(*), coalesce(sum(bytes), 0) FROM files WHERE container_id = ?", (container_id,)
        ).fetchone()
        return int(row[0]), int(row[1])

    def put_file(self, row: FileRow) -> None:
        """Insert ``row``, replacing whatever row held the same path."""
        with self.tx() as db:
            self._put(db, row)

    @staticmethod
    def _put(db: sqlite3.Connection, row: FileRow) -> None:
        db.execute("DELETE FROM files WHERE container_id = ? AND path = ?", (row.container_id, row.path))
        db.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", _values(row))

    def apply(self, container_id: str, put: Sequence[FileRow], removed: Sequence[str]) -> None:
        """Apply a batch of file changes in one transaction, one fsync (``removed`` are relative paths)."""
        with self.tx() as db:
            gone = [(container_id, rel) for rel in removed] + [(container_id, r.path) for r in put]
            db.executemany("DELETE FROM files WHERE container_id = ? AND path = ?", gone)
            db.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [_values(r) for r in put])

    def delete_file(self, container_id: str, file_id: str) -> bool:
        with self.tx() as db:
            cur = db.execute("DELETE FROM files WHERE id = ? AND container_id = ?", (file_id, container_id))
        return cur.rowcount > 0

    def page_files(
        self, container_id: str, *, limit: int, order: str, after: str | None, prefix: str | None = None
    ) -> tuple[list[FileRow], bool, bool]:
        """A page of the container's files by (created_at, id); ``prefix``: only paths starting with it."""
        where = ["container_id = ?"]
        args: list[object] = [container_id]
        if prefix:
            where.append("substr(path, 1, ?) = ?")
            args.extend([len(prefix), prefix])
        if after is not None:
            anchor = self._db.execute(
                "SELECT created_at FROM files WHERE id = ? AND container_id = ?", (after, container_id)
            ).fetchone()
            if anchor is None:
                return [], False, False
            where.append(f"(created_at, id) {'>' if order == 'asc' else '<'} (?, ?)")
            args.extend([anchor[0], after])
        direction = "ASC" if order == "asc" else "DESC"
        rows = self._db.execute(
            f"SELECT * FROM files WHERE {' AND '.join(where)} ORDER BY created_at {direction}, id {direction} LIMIT ?",
            (*args, limit + 1),
        ).fetchall()
        return [FileRow(**dict(r)) for r in rows[:limit]], len(rows) > limit, True


_IN_BATCH = 500
"""Paths per ``IN (...)`` lookup: well under SQLite's bound-parameter limit."""


def _values(row: FileRow) -> tuple[object, ...]:
    """The row's columns in table order (``astuple`` deep-copies: 10x slower on 10,000 rows)."""
    return (
        row.id,
        row.container_id,
        row.path,
        row.created_at,
        row.bytes,
        row.source,
        row.mime_type,
        row.sha256,
        row.mtime_ns,
    )


def _page_sql(*, order: str, after: bool, name: bool) -> str:
    """A page of containers: filtered by name, after a (created_at, id) cursor, ordered, limited."""
    where = (["name = ?"] if name else []) + (
        [f"(created_at, id) {'>' if order == 'asc' else '<'} (?, ?)"] if after else []
    )
    direction = "ASC" if order == "asc" else "DESC"
    sql = "SELECT * FROM containers"
    if where:
        sql += " WHERE " + " AND ".join(where)
    return sql + f" ORDER BY created_at {direction}, id {direction} LIMIT ?"


def policy_json(policy: NetworkPolicy) -> str:
    return json.dumps(policy.model_dump(exclude_none=True), separators=(",", ":"))
