"""The console script as a real process: start it, wait for its ``listening on`` line, stop it.

The tests that need the CLI's own assembly (flags, environment, signals, rlimits, umask) start it
here. Its stderr is read all along, so the server's logging never stalls on a full pipe, and what
it wrote is there to assert on afterwards.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio.abc import Process

__all__ = ["LISTENING", "ServerProcess", "console_script", "processes_running", "server_pids", "started"]

LISTENING = re.compile(rb"listening on (http://127\.0\.0\.1:(\d+))(/\S*)")
"""The line every HTTP entry point logs once bound: origin, port and path."""


def console_script() -> str:
    """The installed ``container-mcp`` script of this interpreter's environment."""
    script = Path(sys.executable).with_name("container-mcp")
    found = str(script) if script.exists() else shutil.which("container-mcp")
    assert found, "the console script is not installed: pip install -e ."
    return found


@dataclass
class ServerProcess:
    """A server process that has said where it listens."""

    process: Process
    origin: str
    """``http://127.0.0.1:<port>``"""
    port: int
    path: str
    """The path of its ``listening on`` URL: ``/v1``, ``/mcp`` or ``/sse``."""
    _stderr: bytearray = field(default_factory=bytearray)
    _closed: anyio.Event = field(default_factory=anyio.Event)

    @property
    def url(self) -> str:
        return self.origin + self.path

    @property
    def stderr(self) -> bytes:
        """Everything the process wrote to stderr so far."""
        return bytes(self._stderr)

    async def stop(self) -> bytes:
        """SIGTERM, then the whole of stderr once the process exited; a stop other than a clean exit fails."""
        self.process.send_signal(signal.SIGTERM)
        with anyio.fail_after(20):
            await self._closed.wait()
            assert await self.process.wait() == 0  # a graceful stop, not death by the signal
        return self.stderr


@asynccontextmanager
async def started(argv: Sequence[str], env: dict[str, str]) -> AsyncIterator[ServerProcess]:
    """Run ``argv`` (a server command line) under ``env`` until its ``listening on`` line, yield it; a
    process still running at the end is killed."""
    process = await anyio.open_process(list(argv), stderr=subprocess.PIPE, env=env)
    try:
        assert process.stderr is not None
        seen = bytearray()
        with anyio.fail_after(30):
            while not (match := LISTENING.search(seen)):
                try:
                    seen += await process.stderr.receive()
                except anyio.EndOfStream:
                    raise AssertionError(f"the server exited before listening:\n{seen.decode()}") from None
        server = ServerProcess(process, match[1].decode(), int(match[2]), match[3].decode(), seen)

        async def read_stderr() -> None:
            assert process.stderr is not None
            async for chunk in process.stderr:
                server._stderr += chunk
            server._closed.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(read_stderr)
            yield server
            tg.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def processes_running(command: str) -> list[int]:
    """Live (not zombie) processes whose command line holds ``command``."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes()
                state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            except (OSError, IndexError):
                continue
            if command.encode() in argv and state != "Z":
                found.append(int(entry.name))
    return found


def server_pids(data_dir: Path) -> list[int]:
    """Pids of the server processes started on ``data_dir`` (found by their command line)."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(data_dir).encode() in argv and any(a.endswith(b"container-mcp") for a in argv[:2]):
                found.append(int(entry.name))
    return found
