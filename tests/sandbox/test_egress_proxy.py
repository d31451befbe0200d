"""The host-side egress proxy on its own (no sandbox): decisions, both request forms, errors."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from container_mcp.addresses import IPAddress
from container_mcp.netpolicy import EgressRules
from container_mcp.sandbox import Allowlist, EgressProxy, static_resolver
from container_mcp.sandbox.egress import Resolver
from tests.core.test_netpolicy import LOOPBACK_SPELLINGS, METADATA_SPELLINGS, OTHER_FORBIDDEN

from .conftest import ALL_PORTS, OPEN_LOOPBACK, Listener

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


# --- addresses are judged, not names --------------------------------------------------------


class RecordingConnector:
    """Records every connection the proxy opens. Only loopback is really dialled (tests never send
    traffic anywhere else); any other address fails as unreachable after being recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[IPAddress, int]] = []

    async def __call__(self, address: IPAddress, port: int) -> anyio.abc.ByteStream:
        self.calls.append((address, port))
        if not address.is_loopback:
            raise OSError("the test connector dials loopback only")
        return await anyio.connect_tcp(address, port)


def strict_proxy(
    *entries: str, resolver: Resolver | None = None, rules: EgressRules | None = None
) -> tuple[EgressProxy, RecordingConnector]:
    """A proxy with the production address rules (ports opened: the test servers use random ones)
    whose allowlist *lists* ``entries`` — as a container created before validation existed would."""
    connector = RecordingConnector()
    proxy = EgressProxy(
        Allowlist.from_domains(entries),
        rules=rules or EgressRules.parse([], ALL_PORTS),
        resolver=resolver or static_resolver({}),
        connector=connector,
    )
    return proxy, connector


FORBIDDEN_LITERALS = LOOPBACK_SPELLINGS + METADATA_SPELLINGS + OTHER_FORBIDDEN


def _authority(literal: str, port: int) -> str:
    host = literal if literal.startswith("[") or ":" not in literal else f"[{literal}]"
    return f"{host}:{port}"


@pytest.mark.parametrize("literal", FORBIDDEN_LITERALS)
async def test_listed_forbidden_literal_is_refused_without_a_connection(
    tmp_path: Path, tcp_listener: Listener, literal: str
) -> None:
    """The issue's attack: allowed_domains ["127.0.0.1"] (or any spelling of a forbidden address)."""
    proxy, connector = strict_proxy(literal.strip("[]").replace("%25", "%"))
    authority = _authority(literal, tcp_listener.port)
    async with running(proxy, tmp_path) as path:
        tunnel = await exchange(path, f"CONNECT {authority} HTTP/1.1\r\n\r\n".encode())
        plain = await exchange(path, f"GET http://{authority}/secret HTTP/1.1\r\n\r\n".encode())
    for reply in (tunnel, plain):
        assert reply.startswith(b"HTTP/1.1 403"), (literal, reply)
    assert connector.calls == []
    assert tcp_listener.accepted == []
    assert [decision for decision, _, _ in proxy.log] == ["forbidden", "forbidden"]


@pytest.mark.parametrize(
    ("name", "addresses"),
    [
        ("internal.test", ["127.0.0.1"]),
        ("metadata.test", ["169.254.169.254"]),
        ("mapped.test", ["::ffff:127.0.0.1"]),
        ("nat64.test", ["64:ff9b::7f00:1"]),
        ("sixtofour.test", ["2002:7f00:1::"]),
        ("private.test", ["10.0.0.1", "192.168.1.1", "fd00::1"]),
        ("zero.test", ["0.0.0.0"]),
        ("scoped.test", ["fe80::1%2"]),
    ],
)
async def test_names_resolving_to_forbidden_addresses_are_refused(
    tmp_path: Path, tcp_listener: Listener, name: str, addresses: list[str]
) -> None:
    proxy, connector = strict_proxy(name, resolver=static_resolver({name: addresses}))
    async with running(proxy, tmp_path) as path:
        reply = await exchange(path, f"CONNECT {name}:{tcp_listener.port} HTTP/1.1\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 403"), reply
    assert b"resolves only to addresses commands may not reach" in reply
    assert connector.calls == [] and tcp_listener.accepted == []
    assert proxy.log == [("forbidden", name, tcp_listener.port)]


async def test_only_the_judged_addresses_are_dialled_and_dns_is_asked_once(tmp_path: Path) -> None:
    """A name with a forbidden and a public address: the forbidden one is skipped, the public one is
    dialled as the very address object that was judged; a rebinding resolver gets no second ask."""
    answers = [["127.0.0.1", "93.184.216.34"], ["127.0.0.1"]]
    asked: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        asked.append(host)
        return answers[len(asked) - 1]

    proxy, connector = strict_proxy("mixed.test", resolver=rebinding)
    async with running(proxy, tmp_path) as path:
        reply = await exchange(path, b"CONNECT mixed.test:443 HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 502")  # the test connector never dials a public address
    assert asked == ["mixed.test"]
    assert connector.calls == [(ipaddress.ip_address("93.184.216.34"), 443)]


async def test_ports_outside_the_operators_list_are_refused(tmp_path: Path, tcp_listener: Listener) -> None:
    rules = EgressRules.parse(["127.0.0.0/8"])  # default ports: 80, 443
    proxy, connector = strict_proxy(
        "allowed.test", resolver=static_resolver({"allowed.test": "127.0.0.1"}), rules=rules
    )
    async with running(proxy, tmp_path) as path:
        reply = await exchange(path, f"CONNECT allowed.test:{tcp_listener.port} HTTP/1.1\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 403") and b"CONTAINER_MCP_EGRESS_PORTS" in reply
    assert connector.calls == [] and tcp_listener.accepted == []
    assert proxy.log == [("port", "allowed.test", tcp_listener.port)]


async def test_operator_opened_destinations_are_reached(tmp_path: Path, http_server: int) -> None:
    rules = EgressRules.parse(["127.0.0.1", "mirror.test"], ALL_PORTS)
    proxy, connector = strict_proxy(
        "127.0.0.1", "mirror.test", resolver=static_resolver({"mirror.test": "10.9.8.7"}), rules=rules
    )
    async with running(proxy, tmp_path) as path:
        direct = await exchange(path, f"GET http://127.0.0.1:{http_server}/ HTTP/1.1\r\n\r\n".encode())
        mirror = await exchange(path, b"CONNECT mirror.test:443 HTTP/1.1\r\n\r\n")
    assert direct.startswith(b"HTTP/1.0 200")
    assert mirror.startswith(b"HTTP/1.1 502")  # dialled (and the test connector refuses 10.9.8.7)
    assert connector.calls == [
        (ipaddress.ip_address("127.0.0.1"), http_server),
        (ipaddress.ip_address("10.9.8.7"), 443),
    ]


async def test_an_operator_host_rule_never_opens_loopback(tmp_path: Path, tcp_listener: Listener) -> None:
    rules = EgressRules.parse(["mirror.test"], ALL_PORTS)
    proxy, connector = strict_proxy("mirror.test", resolver=static_resolver({"mirror.test": "127.0.0.1"}), rules=rules)
    async with running(proxy, tmp_path) as path:
        reply = await exchange(path, f"CONNECT mirror.test:{tcp_listener.port} HTTP/1.1\r\n\r\n".encode())
    assert reply.startswith(b"HTTP/1.1 403")
    assert connector.calls == [] and tcp_listener.accepted == []
