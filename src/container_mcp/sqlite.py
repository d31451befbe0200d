"""The one way this package opens SQLite and runs a write transaction.

Connections run in autocommit mode; every write goes through ``transaction``, which takes the
write lock up front (``BEGIN IMMEDIATE``), so a check-then-update inside it cannot interleave
with another writer, in this process or another one on the same file.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .private import create_private_file, make_dirs

__all__ = ["connect", "transaction"]


BUSY_TIMEOUT_MS = 5000
_WAL_RETRY_S = 0.01


def connect(
    path: Path | str, *, sleep: Callable[[float], None] = time.sleep, durable: bool = True
) -> sqlite3.Connection:
    """Open ``path`` (a file, created with its parent dir, or ``":memory:"``): WAL and
    ``synchronous=FULL`` for files, so an acknowledged write survives a crash or power loss.

    ``durable=False`` opens it with ``synchronous=NORMAL`` instead, for writes whose loss in a
    power cut is harmless (a call counted against the rate limit, a container's last-seen view,
    its activity time): in WAL mode a commit then skips the fsync, and still survives the
    process being killed; only an OS crash may roll back its last commits. Another connection's
    durable commit syncs them along with its own.

    The file is created 0600 (its dir, if missing, 0700) before SQLite opens it, so its -wal, -shm
    and -journal files, which SQLite gives the database's mode, are private too, whatever the umask.
    ``sleep`` waits between attempts to switch a new database to WAL (see ``_enable_wal``).
    """
    if isinstance(path, Path):
        # Created 0700 if missing, never changed if it exists: whether a directory that already
        # exists is the server's to make private is ``private.secure_data_dir``'s decision.
        make_dirs(path.parent)
        create_private_file(path)
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.row_factory = sqlite3.Row
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if str(path) != ":memory:":
        _enable_wal(db, sleep)
        db.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
    return db


def _enable_wal(db: sqlite3.Connection, sleep: Callable[[float], None]) -> None:
    # Two processes opening a new database at once (two servers started together) both switch
    # it to WAL. The loser's lock upgrade would deadlock, so SQLite refuses it at once with
    # SQLITE_BUSY instead of waiting out busy_timeout; retry for as long as that timeout.
    attempts = int(BUSY_TIMEOUT_MS / 1000 / _WAL_RETRY_S)
    for attempt in range(attempts + 1):
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or attempt == attempts:
                raise
            sleep(_WAL_RETRY_S)


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
