"""network_policy in the sandbox: no network at all, or only the allowlist through the host proxy.

Nothing here touches the internet: public addresses are only ever *attempted* (and must fail
without a route), and allowlisted names resolve to a server on the host's 127.0.0.1 through the
test resolver (see conftest.py).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from container_mcp.models import NetworkPolicy
from container_mcp.netpolicy import EgressRules
from container_mcp.sandbox import Sandbox, SandboxConfig, SandboxJob, static_resolver

from .conftest import ALL_PORTS, TEST_DOMAIN, Listener
from .helpers import py

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]

CONNECT = """
import socket, sys
def attempt(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return "connected"
    except OSError as exc:
        return type(exc).__name__
"""

ALLOW = NetworkPolicy(type="allowlist", allowed_domains=[TEST_DOMAIN])


async def test_disabled_network_reaches_nothing(sandbox: Sandbox, data_dir: Path, tcp_listener: Listener) -> None:
    code = (
        CONNECT
        + f"""
print("loopback", attempt("127.0.0.1", {tcp_listener.port}))
print("public", attempt("1.1.1.1", 80))
print("public6", attempt("2606:4700:4700::1111", 80))
try:
    socket.getaddrinfo("example.com", 80)
    print("dns resolved")
except OSError as exc:
    print("dns", type(exc).__name__)
import os
print("interfaces", sorted(os.listdir("/sys/class/net")) if os.path.exists("/sys/class/net") else "none")
print("env", sorted(k for k in os.environ if "proxy" in k.lower()))
"""
    )
    async with await py(sandbox, data_dir, code) as run:
        out = dict(line.split(" ", 1) for line in run.stdout_text.splitlines())
    assert out["loopback"] == "ConnectionRefusedError"  # the sandbox's own, empty loopback
    assert out["public"] != "connected" and out["public6"] != "connected"
    assert out["dns"] == "gaierror"
    assert out["env"] == "[]"
    assert tcp_listener.accepted == []


async def test_allowlist_reaches_listed_domain_over_http_and_connect(
    sandbox: Sandbox,
    data_dir: Path,
    http_server: int,
) -> None:
    code = f"""
import http.client, urllib.request
body = urllib.request.urlopen("http://{TEST_DOMAIN}:{http_server}/plain", timeout=5).read().decode()
print("http", body.strip())
conn = http.client.HTTPConnection("127.0.0.1", 3128, timeout=5)
conn.set_tunnel("API.{TEST_DOMAIN.upper()}.", {http_server})
conn.request("GET", "/tunnel")
print("connect", conn.getresponse().status)
"""
    async with await py(sandbox, data_dir, code, network=ALLOW) as run:
        assert run.exit_code == 0, run.stderr_text
        lines = run.stdout_text.splitlines()
    assert lines[0] == f"http hello from the test server; host={TEST_DOMAIN}:{http_server}"
    assert lines[1] == "connect 200"


async def test_allowlist_bypasses_fail(
    sandbox: Sandbox,
    data_dir: Path,
    http_server: int,
    tcp_listener: Listener,
) -> None:
    code = (
        CONNECT
        + f"""
import http.client, os, urllib.request
def via_proxy(target):
    conn = http.client.HTTPConnection("127.0.0.1", 3128, timeout=5)
    host, port = target.rsplit(":", 1)
    conn.set_tunnel(host, int(port))
    try:
        conn.request("GET", "/")
        return str(conn.getresponse().status)
    except OSError as exc:
        return exc.args[0] if exc.args else type(exc).__name__
print("unlisted|" + via_proxy("evil.test:{http_server}"))
print("suffix-trick|" + via_proxy("not{TEST_DOMAIN}:{http_server}"))
print("ip-literal|" + via_proxy("127.0.0.1:{http_server}"))
print("ip-decimal|" + via_proxy("2130706433:{http_server}"))
print("ip6-literal|" + via_proxy("[::1]:{http_server}"))
def absolute_form(url):
    conn = http.client.HTTPConnection("127.0.0.1", 3128, timeout=5)
    conn.request("GET", url)
    return str(conn.getresponse().status)
print("http-ip|" + absolute_form("http://127.0.0.1:{tcp_listener.port}/"))
print("http-userinfo|" + absolute_form("http://{TEST_DOMAIN}@evil.test:{tcp_listener.port}/"))
print("direct-ip|" + attempt("127.0.0.1", {tcp_listener.port}))
print("direct-public|" + attempt("1.1.1.1", 443))
try:
    socket.getaddrinfo("{TEST_DOMAIN}", 80)
    print("dns|resolved")
except OSError as exc:
    print("dns|" + type(exc).__name__)
"""
    )
    async with await py(sandbox, data_dir, code, network=ALLOW) as run:
        assert run.exit_code == 0, run.stderr_text
        out = dict(line.split("|", 1) for line in run.stdout_text.splitlines())
    for key in ("unlisted", "suffix-trick", "ip-literal", "ip-decimal", "ip6-literal"):
        assert "403" in out[key], (key, out[key])
    assert out["http-ip"] == "403"
    assert out["http-userinfo"] == "400"
    assert out["direct-ip"] == "ConnectionRefusedError"
    assert out["direct-public"] != "connected"
    assert out["dns"] == "gaierror"
    assert tcp_listener.accepted == []


async def test_operator_opened_ip_literal_is_reached(sandbox: Sandbox, data_dir: Path, http_server: int) -> None:
    # The test sandbox's operator rules open 127.0.0.0/8 (OPEN_LOOPBACK); without them, see below.
    # 127.0.0.1 is in NO_PROXY (the sandbox's own loopback), so talk to the proxy explicitly.
    code = f"""
import http.client
conn = http.client.HTTPConnection("127.0.0.1", 3128, timeout=5)
conn.request("GET", "http://127.0.0.1:{http_server}/")
print(conn.getresponse().status)
"""
    policy = NetworkPolicy(type="allowlist", allowed_domains=["127.0.0.1"])
    async with await py(sandbox, data_dir, code, network=policy) as run:
        assert run.stdout_text.strip() == "200", run.stderr_text


async def test_command_not_found_under_allowlist(sandbox: Sandbox, data_dir: Path) -> None:
    job = SandboxJob(data_dir=data_dir, argv=["no-such-command"], network=ALLOW)
    async with await sandbox.run(job) as run:
        assert run.exit_code == 127
        assert "not found" in run.stderr_text


# --- the attack: a listed loopback literal reached the host's own services ------------

ATTACK = """
import http.client, sys
def via_proxy(method, target):
    conn = http.client.HTTPConnection("127.0.0.1", 3128, timeout=5)
    if method == "CONNECT":
        host, port = target.rsplit(":", 1)
        conn.set_tunnel(host, int(port))
        try:
            conn.request("GET", "/v1/containers")
            return str(conn.getresponse().status)
        except OSError as exc:
            return exc.args[0] if exc.args else type(exc).__name__
    conn.request("GET", target)
    return str(conn.getresponse().status)
for line in sys.argv[1:]:
    method, target = line.split(" ", 1)
    print(line + "|" + via_proxy(method, target))
"""

LISTED = ["127.0.0.1", "0.0.0.0", "2130706433", "::ffff:127.0.0.1", "0x7f.1", "169.254.169.254", TEST_DOMAIN]


def _targets(port: int) -> list[str]:
    hosts = ["127.0.0.1", "0.0.0.0", "2130706433", "[::ffff:127.0.0.1]", "0x7f.1", "127.1", "[::1]", TEST_DOMAIN]
    return [f"CONNECT {h}:{port}" for h in hosts] + [f"GET http://{h}:{port}/v1/containers" for h in hosts]


@pytest.fixture(params=["ports-open", "production"])
async def strict_sandbox(request: pytest.FixtureRequest) -> AsyncIterator[Sandbox]:
    """The production address rules; 'ports-open' also opens every port, so that the address
    judgement alone must stop the attack (the test servers listen on random ports)."""
    rules = EgressRules.parse([], ALL_PORTS) if request.param == "ports-open" else EgressRules()
    config = SandboxConfig(resolver=static_resolver({TEST_DOMAIN: "127.0.0.1"}), egress=rules, warm_launchers=0)
    async with Sandbox(config) as box:
        probe = await box.probe()
        if not probe.available:
            pytest.skip(f"sandbox unavailable: {probe.reason}")
        yield box


async def test_listed_loopback_literals_do_not_reach_host_services(
    strict_sandbox: Sandbox, data_dir: Path, tcp_listener: Listener
) -> None:
    """Reproduces the issue: a container whose allowlist lists the host's loopback (in several
    spellings, as one stored before create-time validation) must not reach a host service."""
    targets = _targets(tcp_listener.port)
    job = SandboxJob(
        data_dir=data_dir,
        argv=["/usr/bin/python3", "-c", ATTACK, *targets],
        network=NetworkPolicy(type="allowlist", allowed_domains=LISTED),
    )
    async with await strict_sandbox.run(job) as run:
        assert run.exit_code == 0, run.stderr_text
        out = dict(line.rsplit("|", 1) for line in run.stdout_text.splitlines())
    assert sorted(out) == sorted(targets)
    for target, status in out.items():
        assert "403" in status, (target, status)
    assert tcp_listener.accepted == []


LOWER_LAYERS = """
import json, socket
seen = {}
def attempt(name, make):
    try:
        make()
        seen[name] = "ok"
    except OSError as exc:
        seen[name] = type(exc).__name__
def abstract():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(b"\\0" + NAME.encode())
attempt("abstract", abstract)
attempt("raw", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
attempt("raw6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6))
attempt("packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))
def link_local():
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(("fe80::1", 80, 0, 1))
attempt("link-local", link_local)
seen["interfaces"] = [name for _, name in socket.if_nameindex()]
print(json.dumps(seen))
"""


@pytest.mark.parametrize("policy", [NetworkPolicy(), ALLOW], ids=["disabled", "allowlist"])
async def test_host_abstract_sockets_raw_sockets_and_link_local_are_out_of_reach(
    sandbox: Sandbox, data_dir: Path, policy: NetworkPolicy
) -> None:
    """A host service on an abstract Unix socket (dbus, X11 live there) belongs to the host's network
    namespace; the sandbox has its own, with only loopback, and no capability for raw sockets."""
    name = f"container-mcp-test-{os.getpid()}-{id(policy)}"
    host = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    host.bind(b"\0" + name.encode())
    host.listen(4)
    host.setblocking(False)
    try:
        async with await py(sandbox, data_dir, LOWER_LAYERS.replace("NAME", repr(name)), network=policy) as run:
            assert run.exit_code == 0, run.stderr_text
            seen = json.loads(run.stdout_text)
        with pytest.raises(BlockingIOError):
            host.accept()  # nobody knocked
    finally:
        host.close()
    assert seen["abstract"] == "ConnectionRefusedError"
    assert seen["raw"] == seen["raw6"] == seen["packet"] == "PermissionError"
    assert seen["link-local"] != "ok"
    assert seen["interfaces"] == ["lo"]
