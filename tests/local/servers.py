"""Real ``container-mcp`` server processes on one data dir, and the three views of what they store.

``api_server`` runs the console script's ``api`` command on 127.0.0.1 port 0 (the port is read
from its ``listening on`` log line). ``stdio_params`` starts the stdio server through the
official ``mcp`` client. Both get an explicit environment: nothing of the test runner's
``CONTAINER_MCP_*`` settings leaks in. ``stored`` reads the three truths the crash tests compare:
the session store's counters, ``file_list``'s rows (the registry) and the files on disk.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
from mcp import StdioServerParameters

from container_mcp.providers.local_registry import Registry

from ..processes import ServerProcess, console_script, started

KEY = "sk-test-crash-0123456789"


def server_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"}


def stdio_params(data_dir: Path, *flags: str) -> StdioServerParameters:
    return StdioServerParameters(command=console_script(), args=["--data-dir", str(data_dir), *flags], env=server_env())


@asynccontextmanager
async def api_server(data_dir: Path, *flags: str) -> AsyncIterator[ServerProcess]:
    """``container-mcp api`` on ``data_dir`` (key ``KEY``) for the block; stopped (SIGTERM, then
    SIGKILL) when it ends, whatever happened, unless the test already killed it."""
    keys = data_dir.parent / f"{data_dir.name}.keys"
    if not keys.exists():
        keys.write_text(KEY + "\n")
        keys.chmod(0o600)
    argv = [console_script(), "api", "--data-dir", str(data_dir), "--port", "0", "--api-keys-file", str(keys)]
    async with started([*argv, *flags], server_env()) as server:
        try:
            yield server
        finally:
            with anyio.CancelScope(shield=True):
                if server.process.returncode is None:
                    server.process.send_signal(signal.SIGTERM)
                    with anyio.move_on_after(20):
                        await server.process.wait()


@dataclass(frozen=True)
class Stored:
    counted: tuple[int, int]
    """(files, bytes) the session store charges for the container."""
    listed: tuple[int, int]
    """(files, bytes) of the registry rows file_list pages through."""
    on_disk: tuple[int, int]
    """(files, bytes) really under the container's files/."""
    listed_paths: frozenset[str]
    disk_paths: frozenset[str]


def stored(data_dir: Path, container_id: str) -> Stored:
    """The three views of one container, read straight from the files the servers share."""
    db = sqlite3.connect(data_dir / "sessions-local.sqlite3")
    try:
        row = db.execute("SELECT files, bytes FROM owned WHERE container_id = ?", (container_id,)).fetchone()
    finally:
        db.close()
    assert row is not None, f"the session store has no row for {container_id}"
    registry = Registry(data_dir / "local" / "registry.sqlite3")
    try:
        rows = registry.files_of(container_id)
    finally:
        registry.close()
    root = data_dir / "local" / "containers" / container_id / "files"
    disk: dict[str, int] = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            full = Path(dirpath) / name
            disk[full.relative_to(root).as_posix()] = full.lstat().st_size
    return Stored(
        counted=(int(row[0]), int(row[1])),
        listed=(len(rows), sum(r.bytes for r in rows.values())),
        on_disk=(len(disk), sum(disk.values())),
        listed_paths=frozenset(rows),
        disk_paths=frozenset(disk),
    )
