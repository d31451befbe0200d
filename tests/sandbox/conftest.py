"""Fixtures of the sandbox tests: a probed ``Sandbox``, container directories, host listeners.

Tests marked ``sandbox`` are skipped only when ``probe`` says the host cannot sandbox (no
bubblewrap, no namespaces); the skip message carries the probe's reason.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from container_mcp.netpolicy import EgressRules
from container_mcp.sandbox import Sandbox, SandboxConfig, SandboxProbe, static_resolver

TEST_DOMAIN = "allowed.test"
ALL_PORTS = ("1-65535",)
OPEN_LOOPBACK = EgressRules.parse(["127.0.0.0/8"], ALL_PORTS)
"""Operator rules of the sandbox tests: the host's loopback (where test servers listen) opened."""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def sandbox_config() -> SandboxConfig:
    # The test resolver maps allowed.test (and its subdomains we use) to the loopback HTTP server,
    # which the operator rules open (the test servers listen on 127.0.0.1, on any port).
    return SandboxConfig(
        resolver=static_resolver({TEST_DOMAIN: "127.0.0.1", f"api.{TEST_DOMAIN}": "127.0.0.1"}),
        egress=OPEN_LOOPBACK,
    )


@pytest.fixture
async def sandbox(sandbox_config: SandboxConfig) -> AsyncIterator[Sandbox]:
    """A probed sandbox keeping a launcher warm (the way the server uses it)."""
    async with Sandbox(sandbox_config) as box:
        probe = await box.probe()
        if not probe.available:
            pytest.skip(f"sandbox unavailable: {probe.reason}")
        yield box


@pytest.fixture
async def probe(sandbox: Sandbox) -> SandboxProbe:
    return await sandbox.probe()


@dataclass
class Containers:
    """Two container directories side by side, as the local provider lays them out."""

    root: Path

    def make(self, name: str) -> Path:
        files = self.root / "containers" / name / "files"
        files.mkdir(parents=True)
        return files


@pytest.fixture
def containers(tmp_path: Path) -> Containers:
    return Containers(tmp_path)


@pytest.fixture
def data_dir(containers: Containers) -> Path:
    return containers.make("cntr_a")


def listing(directory: Path) -> list[str]:
    """Names in ``directory``, sorted."""
    return sorted(p.name for p in directory.iterdir())


def snapshot(root: Path) -> dict[str, tuple[str, int, bytes | None]]:
    """Everything below ``root``: relative path -> (kind, permission bits, content of files)."""
    result: dict[str, tuple[str, int, bytes | None]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            kind = "dir" if p.is_dir() and not p.is_symlink() else "link" if p.is_symlink() else "file"
            content = p.read_bytes() if kind == "file" else None
            result[p.relative_to(root).as_posix()] = (kind, st.st_mode & 0o7777, content)
    return result


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from the test server; host={self.headers.get('Host')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[int]:
    """A plain HTTP server on the host's 127.0.0.1; yields its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class Listener:
    port: int
    accepted: list[tuple[str, int]]


@pytest.fixture
def tcp_listener() -> Iterator[Listener]:
    """A raw TCP listener on the host's 127.0.0.1 that records every connection it accepts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    accepted: list[tuple[str, int]] = []
    stop = threading.Event()

    def loop() -> None:
        while True:
            try:
                conn, addr = sock.accept()
            except OSError:
                return
            if stop.is_set():  # the teardown's own wake-up call
                conn.close()
                return
            accepted.append(addr)
            conn.close()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    port = sock.getsockname()[1]
    try:
        yield Listener(port, accepted)
    finally:
        stop.set()
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        thread.join()
        sock.close()


def processes_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker``."""
    found: list[int] = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry))
    return found
