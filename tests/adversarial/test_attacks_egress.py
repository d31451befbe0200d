"""Attacks on the egress proxy from inside a sandbox, and on network_policy from a caller.

Every proxy here is the real ``EgressProxy`` on a real Unix socket; upstreams are servers on the
host's 127.0.0.1 (the only address tests ever dial). Each test names the attack it replays.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from container_mcp.errors import InvalidRequest
from container_mcp.models import NetworkPolicy
from container_mcp.netpolicy import EgressRules, check_network_policy
from container_mcp.sandbox import Allowlist, EgressProxy, static_resolver
from tests.sandbox.test_egress_proxy import RecordingConnector, exchange, running

pytestmark = pytest.mark.anyio

ALL_PORTS = ("1-65535",)


@dataclass
class KeepAliveUpstream:
    """A loopback HTTP/1.1 server that answers *every* request it reads on a connection, whatever
    ``Connection: close`` said — the way a further proxy or a lax origin would. It records each
    request head, and each connection's end."""

    port: int
    heads: list[bytes] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def keepalive_upstream() -> Iterator[KeepAliveUpstream]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    upstream = KeepAliveUpstream(sock.getsockname()[1])
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        data = b""
        with conn:
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                data += chunk
                while b"\r\n\r\n" in data:
                    head, rest = data.split(b"\r\n\r\n", 1)
                    length = next(
                        (
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length:")
                        ),
                        0,
                    )
                    if len(rest) < length:
                        break  # the body is still on its way
                    upstream.heads.append(head)
                    upstream.bodies.append(rest[:length])
                    data = rest[length:]
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
        upstream.closed.set()

    def loop() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            if stop.is_set():  # the teardown's own wake-up call
                conn.close()
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield upstream
    finally:
        stop.set()
        socket.create_connection(("127.0.0.1", upstream.port)).close()
        thread.join(5)
        sock.close()


def proxy_to_loopback(
    *entries: str, max_connections: int = 64, max_log_entries: int = 1000
) -> tuple[EgressProxy, RecordingConnector]:
    """``allowed.test`` resolves to the host's loopback, opened by the operator (the test servers live there)."""
    connector = RecordingConnector()
    proxy = EgressProxy(
        Allowlist.from_domains(entries or ("allowed.test",)),
        rules=EgressRules.parse(["127.0.0.0/8"], ALL_PORTS),
        resolver=static_resolver({"allowed.test": "127.0.0.1"}),
        connector=connector,
        max_connections=max_connections,
        max_log_entries=max_log_entries,
    )
    return proxy, connector


async def _wait_closed(upstream: KeepAliveUpstream) -> None:
    with anyio.fail_after(5):
        await anyio.to_thread.run_sync(upstream.closed.wait)


# --- one request per connection ---------------------------------------------------------------


async def test_a_pipelined_second_request_to_another_host_is_never_forwarded(
    tmp_path: Path, keepalive_upstream: KeepAliveUpstream
) -> None:
    """Attack: one write carrying an allowed request and, right behind it, one for an unlisted host.
    The old proxy judged the first and spliced the rest to the upstream raw."""
    port = keepalive_upstream.port
    proxy, connector = proxy_to_loopback()
    async with running(proxy, tmp_path) as path, await anyio.connect_unix(path) as stream:
        await stream.send(
            f"GET http://allowed.test:{port}/a HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
            f"GET http://forbidden.test:{port}/secret HTTP/1.1\r\nHost: forbidden.test\r\n\r\n".encode()
        )
        await _wait_closed(keepalive_upstream)
    assert len(keepalive_upstream.heads) == 1, keepalive_upstream.heads
    assert keepalive_upstream.heads[0].startswith(b"GET /a HTTP/1.1\r\n")
    assert b"forbidden.test" not in b"".join(keepalive_upstream.heads)
    assert connector.calls == [(connector.calls[0][0], port)] and len(connector.calls) == 1


async def test_a_keep_alive_second_request_is_never_forwarded(
    tmp_path: Path, keepalive_upstream: KeepAliveUpstream
) -> None:
    """Attack: read the first (allowed) response, then reuse the connection for another host."""
    port = keepalive_upstream.port
    proxy, _ = proxy_to_loopback()
    async with running(proxy, tmp_path) as path, await anyio.connect_unix(path) as stream:
        await stream.send(f"GET http://allowed.test:{port}/a HTTP/1.1\r\nHost: allowed.test\r\n\r\n".encode())
        reply = b""
        with anyio.fail_after(5):
            while not reply.endswith(b"ok"):
                reply += await stream.receive()
        # The proxy tells the client the connection ends here, whatever the upstream said.
        assert b"\r\nConnection: close\r\n" in reply and b"keep-alive" not in reply
        await stream.send(f"GET http://forbidden.test:{port}/secret HTTP/1.1\r\nHost: forbidden.test\r\n\r\n".encode())
        await _wait_closed(keepalive_upstream)
        with anyio.fail_after(5):
            rest = b""
            try:
                while True:
                    rest += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    assert rest == b""
    assert len(keepalive_upstream.heads) == 1
    assert b"forbidden.test" not in b"".join(keepalive_upstream.heads)


async def test_bytes_after_a_content_length_body_are_not_forwarded(
    tmp_path: Path, keepalive_upstream: KeepAliveUpstream
) -> None:
    """Attack: a second request hidden after the body the Content-Length frames."""
    port = keepalive_upstream.port
    proxy, _ = proxy_to_loopback()
    async with running(proxy, tmp_path) as path, await anyio.connect_unix(path) as stream:
        await stream.send(
            f"POST http://allowed.test:{port}/a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
            f"GET http://forbidden.test:{port}/ HTTP/1.1\r\nHost: forbidden.test\r\n\r\n".encode()
        )
        await _wait_closed(keepalive_upstream)
    assert keepalive_upstream.bodies == [b"hello"]
    assert len(keepalive_upstream.heads) == 1 and b"forbidden" not in keepalive_upstream.heads[0]


async def test_a_chunked_body_is_reframed_by_the_proxy(tmp_path: Path) -> None:
    """Chunk extensions and trailers (where parsers disagree) never reach the upstream; the data does."""
    received: list[bytes] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)

    def serve() -> None:
        conn, _ = sock.accept()
        with conn:
            data = b""
            while not data.endswith(b"0\r\n\r\n"):
                data += conn.recv(65536)
            received.append(data)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    proxy, _ = proxy_to_loopback()
    port = sock.getsockname()[1]
    async with running(proxy, tmp_path) as path:
        reply = await exchange(
            path,
            f"POST http://allowed.test:{port}/u HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            "5;ext=x\r\nhello\r\n3\r\n!!!\r\n0\r\nX-Trailer: GET /smuggled\r\n\r\n".encode(),
        )
    thread.join(5)
    sock.close()
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    head, _, body = received[0].partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"5\r\nhello\r\n3\r\n!!!\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    "fields",
    [
        "Transfer-Encoding : chunked\r\nContent-Length: 3",  # space before the colon
        "Transfer-Encoding: chunked\r\nContent-Length: 3",  # both framings
        "Transfer-Encoding: gzip, chunked",  # a coding the proxy does not frame
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
        "Content-Length: 3\r\nContent-Length: 30",
        "Content-Length: +3",
        "Content-Length: 0x3",
        "X-A: b\nHost: forbidden.test",  # a bare LF some parsers take for a line end
        "X-A: b\rHost: forbidden.test",
        "X-A: b\r\n Host: forbidden.test",  # obs-fold
        "X-A: \x00",
        "Bad Name: x",
    ],
)
async def test_ambiguous_requests_are_refused_before_any_connection(tmp_path: Path, fields: str) -> None:
    """Attack: request smuggling — framing or header lines that the upstream might read differently."""
    proxy, connector = proxy_to_loopback()
    async with running(proxy, tmp_path) as path:
        reply = await exchange(path, f"POST http://allowed.test:80/ HTTP/1.1\r\n{fields}\r\n\r\nabc".encode("latin-1"))
    assert reply.startswith(b"HTTP/1.1 400"), reply
    assert connector.calls == []


@pytest.mark.parametrize(
    "request_line",
    [
        "GET http://allowed.test:80/ HTTP/1.1\nHost:forbidden.test",  # a header line hidden in the version
        "GET http://allowed.test:80/ HTTP/1.1\x0b",
        "GET http://allowed.test:80/ HTTP/1.2",
        "GET http://allowed.test:80/a\x0bb HTTP/1.1",
        "GET http://allowed.test:80/a\x00b HTTP/1.1",
        "GET\thttp://allowed.test:80/ HTTP/1.1",
        "CONNECT allowed.test:\xb2 HTTP/1.1",  # '²' is a digit to str.isdigit, not to int(): it crashed the handler
    ],
)
async def test_control_characters_in_the_request_line_are_refused(tmp_path: Path, request_line: str) -> None:
    """Attack: the version and the path are copied into the upstream's request line."""
    proxy, connector = proxy_to_loopback()
    async with running(proxy, tmp_path) as path:
        reply = await exchange(path, f"{request_line}\r\n\r\n".encode("latin-1"))
    assert reply.startswith(b"HTTP/1.1 400"), reply
    assert connector.calls == []


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        ("CONNECT allowed.test@127.0.0.1:443", b"400"),  # user info in front of a loopback address
        ("CONNECT user:pw@allowed.test:443", b"400"),
        ("CONNECT [::ffff:7f00:1]:443", b"403"),  # IPv4-mapped loopback in hex
        ("CONNECT [::ffff:a9fe:a9fe]:80", b"403"),  # IPv4-mapped metadata address
        ("GET http://allowed%2etest/", b"400"),  # percent-encoded host
        ("GET http://127.0.0.1%2e/", b"400"),
        ("GET http://forbidden.test/ HTTP/1.1\r\nHost: allowed.test\r\nX:", b"403"),  # Host header lies
        ("CONNECT ALLOWED.TEST.evil.test:443", b"403"),
        ("CONNECT xn--allowed-test.evil.test:443", b"403"),
    ],
)
async def test_authority_tricks_are_refused_without_a_connection(
    tmp_path: Path, request_line: str, status: bytes
) -> None:
    proxy, connector = proxy_to_loopback()
    async with running(proxy, tmp_path) as path:
        reply = await exchange(path, f"{request_line} HTTP/1.1\r\n\r\n".encode())
    assert reply.split(b" ")[1] == status, reply
    assert connector.calls == []


# --- resource caps ----------------------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_connections_beyond_the_cap_are_refused_not_queued(tmp_path: Path) -> None:
    """Attack: a command opens hundreds of idle connections to the proxy's socket. The old proxy
    accepted and queued every one (a descriptor each in the server) behind its limiter."""
    proxy, connector = proxy_to_loopback(max_connections=4)
    async with running(proxy, tmp_path) as path:
        holders = [await anyio.connect_unix(path) for _ in range(4)]
        before = _open_fds()
        refused = []
        for _ in range(100):
            async with await anyio.connect_unix(path) as extra:
                with anyio.fail_after(5):
                    reply = await extra.receive()
                refused.append(reply.split(b" ")[1])
        assert refused == [b"503"] * 100
        assert _open_fds() <= before + 2
        # A slot that frees up serves again.
        await holders.pop().aclose()
        with anyio.fail_after(5):
            while True:
                reply = await exchange(path, b"CONNECT unlisted.test:443 HTTP/1.1\r\n\r\n")
                if not reply.startswith(b"HTTP/1.1 503"):
                    break
        assert reply.startswith(b"HTTP/1.1 403")
        for holder in holders:
            await holder.aclose()
    assert connector.calls == []
    assert proxy.log.count(("busy", "", 0)) >= 100


# --- the caller's allowlist -------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["*.com", "com", "COM.", "*.io", "intranet"])
def test_a_whole_top_level_domain_is_refused_at_validation(entry: str) -> None:
    """Attack: a prompt-injected agent lists '*.com' to open every .com host to its commands."""
    with pytest.raises(InvalidRequest) as caught:
        check_network_policy(NetworkPolicy(type="allowlist", allowed_domains=["pypi.org", entry]), EgressRules())
    assert caught.value.param == "network_policy.allowed_domains[1]"
    assert "top-level domain" in str(caught.value)
    check_network_policy(
        NetworkPolicy(type="allowlist", allowed_domains=["pypi.org", "*.pythonhosted.org"]), EgressRules()
    )


async def test_the_decision_log_stays_bounded(tmp_path: Path) -> None:
    """Attack: millions of refused requests in one run; the proxy lives in the server, whose memory
    grew by one log entry per request."""
    proxy, connector = proxy_to_loopback(max_log_entries=10)
    async with running(proxy, tmp_path) as path:
        for i in range(25):
            reply = await exchange(path, f"CONNECT unlisted{i}.test:443 HTTP/1.1\r\n\r\n".encode())
            assert reply.startswith(b"HTTP/1.1 403")
    assert proxy.log == [("denied", f"unlisted{i}.test", 443) for i in range(15, 25)]
    assert connector.calls == []


async def test_name_lookups_are_bounded_per_run(tmp_path: Path) -> None:
    """Attack: many concurrent CONNECTs to names whose lookups hang (a listed '*.attacker.example'
    whose name server never answers) tie up the event loop's executor that every run's lookups share."""
    entered = 0
    active = 0
    most = 0
    release = anyio.Event()

    async def hanging(host: str, port: int) -> list[str]:
        nonlocal entered, active, most
        entered += 1
        active += 1
        most = max(most, active)
        try:
            await release.wait()
        finally:
            active -= 1
        raise OSError(f"{host}: name does not resolve")

    proxy = EgressProxy(
        Allowlist.from_domains(["attacker.example"]),
        rules=EgressRules.parse([], ALL_PORTS),
        resolver=hanging,
        connector=RecordingConnector(),
        max_lookups=3,
    )
    replies: list[bytes] = []

    async def ask(path: Path, i: int) -> None:
        replies.append(await exchange(path, f"CONNECT n{i}.attacker.example:443 HTTP/1.1\r\n\r\n".encode()))

    async with running(proxy, tmp_path) as path, anyio.create_task_group() as tg:
        for i in range(12):
            tg.start_soon(ask, path, i)
        with anyio.fail_after(5):
            # Every request is in: 3 lookups hang, the others wait (or, unbounded, hang as well).
            while entered < 3 or proxy._active < 12:
                await anyio.wait_all_tasks_blocked()
            await anyio.wait_all_tasks_blocked()
        release.set()
    assert most == 3
    assert entered == 12 and sorted(r.split(b" ")[1] for r in replies) == [b"502"] * 12
