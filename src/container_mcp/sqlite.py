"""The one way this package opens SQLite and runs a write transaction.

Connections run in autocommit mode; every write goes through ``transaction``, which takes the
write lock up front (``BEGIN IMMEDIATE``), so a check-then-update inside it cannot interleave
with another writer, in this process or another one on the same file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .private import create_private_file, private_dir

__all__ = ["connect", "transaction"]


def connect(path: Path | str) -> sqlite3.Connection:
    """Open ``path`` (a file, created with its parent dir, or ``":memory:"``): WAL and
    ``synchronous=FULL`` for files, so an acknowledged write survives a crash or power loss.

    The file is created 0600 (its dir 0700) before SQLite opens it, so its -wal, -shm and -journal
    files, which SQLite gives the database's mode, are private too, whatever the umask.
    """
    if isinstance(path, Path):
        private_dir(path.parent)
        create_private_file(path)
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA busy_timeout = 5000")
    if str(path) != ":memory:":
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
    return db


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction: committed when the block ends, rolled back if it raises."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    else:
        db.execute("COMMIT")
