"""Real ``container-mcp`` server processes on one data dir, and the three views of what they store.

``ApiProcess`` runs the console script's ``api`` command on 127.0.0.1 port 0 (the port is read
from its ``listening on`` log line). ``stdio_params`` starts the stdio server through the
official ``mcp`` client. Both get an explicit environment: nothing of the test runner's
``CONTAINER_MCP_*`` settings leaks in. ``stored`` reads the three truths the crash tests compare:
the session store's counters, ``file_list``'s rows (the registry) and the files on disk.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
from mcp import StdioServerParameters

from container_mcp.providers.local_registry import Registry

from ..server.test_transports import console_script

KEY = "sk-test-crash-0123456789"
_LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)")


def server_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"}


def stdio_params(data_dir: Path, *flags: str) -> StdioServerParameters:
    return StdioServerParameters(command=console_script(), args=["--data-dir", str(data_dir), *flags], env=server_env())


@dataclass
class ApiProcess:
    process: anyio.abc.Process
    origin: str
    log: list[bytes] = field(default_factory=list)

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)


@asynccontextmanager
async def api_server(data_dir: Path, *flags: str) -> AsyncIterator[ApiProcess]:
    """``container-mcp api`` on ``data_dir`` (key ``KEY``) for the block; stopped (SIGTERM, then
    SIGKILL) when it ends, whatever happened, unless the test already killed it."""
    keys = data_dir.parent / f"{data_dir.name}.keys"
    if not keys.exists():
        keys.write_text(KEY + "\n")
        keys.chmod(0o600)
    argv = [console_script(), "api", "--data-dir", str(data_dir), "--port", "0", "--log-level", "INFO"]
    process = await anyio.open_process(
        [*argv, "--api-keys-file", str(keys), *flags],
        env=server_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    found = anyio.Event()
    port: list[int] = []
    log: list[bytes] = []
    assert process.stderr is not None
    stderr = process.stderr

    async def drain() -> None:
        buffer = b""
        async for chunk in stderr:
            log.append(chunk)
            if not port:
                buffer += chunk
                match = _LISTENING.search(buffer)
                if match:
                    port.append(int(match.group(1)))
                    found.set()
        found.set()  # exited: the check below fails with the log

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain)  # ends at EOF, once the process is gone (the finally below sees to it)
        try:
            with anyio.fail_after(30):
                await found.wait()
            assert port, b"".join(log).decode(errors="replace")
            yield ApiProcess(process, f"http://127.0.0.1:{port[0]}", log)
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                    with anyio.move_on_after(20):
                        await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()


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
