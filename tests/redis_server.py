"""A real ``redis-server`` on a free loopback port with its own temporary directory, for tests and benches.

Redis has no ``--port 0``: a free port is found by binding a socket, then the server is started on
it; if another process took the port in between, the start fails and is retried on a new one.
Persistence is the append-only file only (``--appendonly yes --appendfsync always``, no RDB
snapshots), so a restart in the same directory comes back with every acknowledged write.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc

__all__ = ["RedisServer", "redis_server"]

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    port: int
    directory: Path
    process: anyio.abc.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        """Start (or restart) the server on ``port`` in ``directory``; returns once it says it is ready
        (after loading its append-only file). Its few log lines stay in the pipe."""
        argv = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--protected-mode", "yes",
            "--loglevel", "notice",
        ]  # fmt: skip
        self.process = await anyio.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert self.process.stdout is not None
        seen = b""
        with anyio.fail_after(10):
            while b"Ready to accept connections" not in seen:
                try:
                    seen += await self.process.stdout.receive()
                except anyio.EndOfStream:
                    raise OSError(
                        f"redis-server exited before it was ready:\n{seen.decode(errors='replace')}"
                    ) from None

    async def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGKILL with ``kill``: a crash; otherwise SIGTERM) and wait for it."""
        if self.process is not None and self.process.returncode is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            with anyio.CancelScope(shield=True):
                await self.process.wait()
        self.process = None


@asynccontextmanager
async def redis_server(directory: Path) -> AsyncIterator[RedisServer]:
    """A running server in ``directory`` for the block, stopped at the end."""
    await anyio.Path(directory).mkdir(parents=True, exist_ok=True)
    for attempt in range(5):
        server = RedisServer(_free_port(), directory)
        try:
            await server.start()
        except OSError:  # the port was taken between the probe and the start
            await server.stop(kill=True)
            if attempt == 4:
                raise
            continue
        break
    try:
        yield server
    finally:
        await server.stop()
