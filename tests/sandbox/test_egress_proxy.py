"""The host-side egress proxy on its own (no sandbox): decisions, both request forms, errors."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from container_mcp.netpolicy import EgressRules
from container_mcp.sandbox import Allowlist, EgressProxy, static_resolver

from .conftest import ALL_PORTS, OPEN_LOOPBACK

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def running(proxy: EgressProxy, tmp_path: Path) -> AsyncIterator[Path]:
    path = tmp_path / "proxy.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    listener.setblocking(False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(proxy.serve, listener)
        try:
            yield path
        finally:
            tg.cancel_scope.cancel()
    listener.close()


async def exchange(path: Path, request: bytes, then: bytes = b"") -> bytes:
    """Send ``request`` (and ``then`` once the proxy answered), return everything received."""
    async with await anyio.connect_unix(path) as stream:
        await stream.send(request)
        received = b""
        with anyio.fail_after(5):
            if then:
                while b"\r\n\r\n" not in received:
                    received += await stream.receive()
                await stream.send(then)
            try:
                while True:
                    received += await stream.receive()
            except anyio.EndOfStream:
                pass
        return received


def make_proxy(*domains: str, allow_private: bool = True) -> EgressProxy:
    return EgressProxy(
        Allowlist.from_domains(domains),
        resolver=static_resolver({"allowed.test": "127.0.0.1", "sub.allowed.test": "127.0.0.1"}),
        rules=OPEN_LOOPBACK if allow_private else EgressRules.parse([], ALL_PORTS),
    )


async def test_connect_tunnel_to_allowed_domain(tmp_path: Path, http_server: int) -> None:
    proxy = make_proxy("allowed.test")
    async with running(proxy, tmp_path) as path:
        reply = await exchange(
            path,
            f"CONNECT sub.allowed.test:{http_server} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
            then=b"GET /t HTTP/1.0\r\nHost: sub.allowed.test\r\n\r\n",
        )
    assert reply.startswith(b"HTTP/1.1 200 Connection Established\r\n\r\nHTTP/1.0 200")
    assert b"host=sub.allowed.test" in reply
    assert proxy.log == [("allowed", "sub.allowed.test", http_server)]


async def test_absolute_form_http_is_rewritten(tmp_path: Path, http_server: int) -> None:
    proxy = make_proxy("allowed.test")
    async with running(proxy, tmp_path) as path:
        reply = await exchange(
            path,
            f"GET http://allowed.test:{http_server}/p?q=1 HTTP/1.1\r\nHost: evil.test\r\n"
            "Proxy-Connection: keep-alive\r\n\r\n".encode(),
        )
    assert reply.startswith(b"HTTP/1.0 200")
    assert f"host=allowed.test:{http_server}".encode() in reply


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        ("CONNECT evil.test:443", b"403"),
        ("CONNECT allowed.test.evil.test:443", b"403"),
        ("CONNECT 127.0.0.1:443", b"403"),
        ("CONNECT [::ffff:127.0.0.1]:443", b"403"),
        ("CONNECT allowed.test", b"400"),
        ("CONNECT allowed.test:99999", b"400"),
        ("CONNECT ::1:443", b"400"),
        ("GET https://allowed.test/ ", b"400"),
        ("GET /relative", b"400"),
        ("GET http://allowed.test@evil.test/", b"400"),
        ("CONNECT unknown.allowed.test:443", b"502"),
    ],
)
async def test_refusals(tmp_path: Path, request_line: str, status: bytes) -> None:
    proxy = make_proxy("allowed.test")
    async with running(proxy, tmp_path) as path:
        reply = await exchange(path, f"{request_line.strip()} HTTP/1.1\r\n\r\n".encode())
    assert reply.split(b" ")[1] == status, reply
    assert b"container-mcp egress proxy" in reply


async def test_private_addresses_are_refused_by_default(tmp_path: Path, http_server: int) -> None:
    proxy = make_proxy("allowed.test", allow_private=False)
    async with running(proxy, tmp_path) as path:
        reply = await exchange(path, f"CONNECT allowed.test:{http_server} HTTP/1.1\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 403")
    assert b"127.0.0.1 is a loopback address" in reply
    assert proxy.log == [("forbidden", "allowed.test", http_server)]


async def test_oversized_header(tmp_path: Path) -> None:
    proxy = make_proxy("allowed.test")
    async with running(proxy, tmp_path) as path:
        reply = await exchange(path, b"GET http://allowed.test/ HTTP/1.1\r\nX: " + b"a" * 40000 + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431")
