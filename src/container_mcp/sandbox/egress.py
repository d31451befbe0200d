"""The host-side egress proxy of ``network_policy: allowlist``.

A sandbox with an allowlist still has its own, empty network namespace: no route, no DNS. Its
only way out is a Unix socket bind-mounted into it, behind which this proxy listens (one proxy
per run, holding that run's allowlist). Inside, a small forwarder (``_forwarder.py``) listens on
127.0.0.1:3128 and ``HTTP_PROXY``/``HTTPS_PROXY`` point there. Clients that ignore the proxy
variables (``curl --noproxy '*'``, raw sockets) simply have no network.

The proxy speaks the two forms clients use:

* ``CONNECT host:port`` (HTTPS and any TLS): a blind tunnel once the target is approved;
* absolute-form plain HTTP (``GET http://host/path``): forwarded with ``Connection: close``,
  one request per connection, so a client cannot reuse an approved connection for another host.

A target is approved in this order, and a refusal never opens a connection:

1. its port is one the operator opened (``EgressRules.ports``: 80 and 443 by default);
2. its host is listed (``netpolicy.Allowlist``: a listed name or one of its subdomains, after
   case, trailing-dot and IDNA normalisation; or an IP literal, in any spelling, that is itself
   listed);
3. every address it stands for is judged (``EgressRules.refusal``): the literal itself, or what
   the proxy's own resolver returns for a name (the sandbox never does DNS). Loopback, private,
   link-local (the cloud metadata address), CGNAT, multicast, reserved addresses and the IPv6
   forms embedding them are refused unless the operator opened them.

The proxy then connects to exactly the address it approved (an ``ipaddress`` object handed to
the connector, never a name), so no second lookup can rebind the name in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from urllib.parse import urlsplit

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from ..addresses import IPAddress, unwrap
from ..netpolicy import Allowlist, EgressRules, InvalidHost, normalize_host, parse_host

__all__ = [
    "Allowlist",
    "Connector",
    "EgressProxy",
    "EgressRules",
    "InvalidHost",
    "Resolver",
    "connect_address",
    "normalize_host",
    "static_resolver",
    "system_resolver",
]

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""Resolve ``(host, port)`` to IP address strings; raise ``OSError`` when the name does not resolve."""

MAX_HEADER_BYTES = 32 * 1024
HEADER_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64

Connector = Callable[[IPAddress, int], Awaitable[anyio.abc.ByteStream]]
"""Open a TCP connection to exactly ``(address, port)``; raise ``OSError`` when it fails."""


async def connect_address(address: IPAddress, port: int) -> anyio.abc.ByteStream:
    """The default connector. anyio connects an address object as is: no name lookup happens."""
    return await anyio.connect_tcp(address, port)


async def system_resolver(host: str, port: int) -> Sequence[str]:
    """Resolve with the host's resolver (``getaddrinfo``), keeping the order it returns."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def static_resolver(table: Mapping[str, Sequence[str] | str]) -> Resolver:
    """A resolver from a fixed table (tests: map ``allowed.test`` to ``127.0.0.1``).

    Names are matched after normalisation; an unknown name fails like NXDOMAIN.
    """
    fixed = {normalize_host(k): [v] if isinstance(v, str) else list(v) for k, v in table.items()}

    async def resolve(host: str, port: int) -> Sequence[str]:
        try:
            return fixed[normalize_host(host)]
        except (KeyError, InvalidHost):
            raise OSError(f"{host}: name does not resolve") from None

    return resolve


class _Refused(Exception):
    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


class EgressProxy:
    """A filtering HTTP/HTTPS (CONNECT) proxy for one sandbox run.

    ``serve(listener)`` handles connections until cancelled; ``handle(stream)`` serves one
    connection (useful in tests). ``log`` keeps ``(decision, host, port)`` tuples of every
    request, for diagnostics and tests.
    """

    def __init__(
        self,
        allowlist: Allowlist,
        *,
        rules: EgressRules | None = None,
        resolver: Resolver | None = None,
        connector: Connector | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.allowlist = allowlist
        self.rules = rules or EgressRules()
        self._resolve = resolver or system_resolver
        self._connect = connector or connect_address
        self._connect_timeout_s = connect_timeout_s
        self._limiter = anyio.CapacityLimiter(max_connections)
        self.log: list[tuple[str, str, int]] = []

    async def serve(self, sock: socket.socket) -> None:
        """Serve connections on the listening Unix socket ``sock`` until cancelled.

        Uses asyncio's transport-based streams: anyio's raw-socket Unix streams can report an
        ``InvalidStateError`` from the event loop when a pending receive is cancelled, which is
        exactly what happens to live tunnels when a run ends.
        """
        tasks: set[asyncio.Task[None]] = set()

        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.add(task)
            try:
                await self.handle(_StreamAdapter(reader, writer))
            finally:
                tasks.discard(task)

        server = await asyncio.start_unix_server(on_connection, sock=sock)
        try:
            await anyio.sleep_forever()
        finally:
            server.close()
            for task in list(tasks):
                task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(*tasks, return_exceptions=True)

    async def handle(self, client: anyio.abc.ByteStream) -> None:
        async with client, self._limiter:
            try:
                await self._handle(client)
            except _Refused as refused:
                await _respond(client, refused.status, refused.reason, refused.detail)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
                pass

    async def _handle(self, client: anyio.abc.ByteStream) -> None:
        reader = BufferedByteReceiveStream(client)
        try:
            with anyio.fail_after(HEADER_TIMEOUT_S):
                head = await reader.receive_until(b"\r\n\r\n", MAX_HEADER_BYTES)
        except anyio.DelimiterNotFound:
            raise _Refused(431, "Request Header Fields Too Large", "request header too large") from None
        except (TimeoutError, anyio.IncompleteRead):
            return
        if len(head) > MAX_HEADER_BYTES:
            raise _Refused(431, "Request Header Fields Too Large", "request header too large")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise _Refused(400, "Bad Request", "malformed request line")
        method, target, version = parts
        if method.upper() == "CONNECT":
            host, port = _split_authority(target, default_port=None)
            upstream = await self._open(host, port)
            async with upstream:
                await client.send(f"{version} 200 Connection Established\r\n\r\n".encode())
                await _splice(client, upstream, reader.buffer)
            return
        url = urlsplit(target)
        if url.scheme.lower() != "http" or not url.netloc or "@" in url.netloc:
            raise _Refused(
                400, "Bad Request", "only absolute http:// URLs are proxied; use CONNECT (an https:// URL) for TLS"
            )
        host, port = _split_authority(url.netloc, default_port=80)
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        headers = [
            line
            for line in lines[1:]
            if line
            and line.split(":", 1)[0].strip().lower()
            not in {"host", "connection", "proxy-connection", "proxy-authorization", "keep-alive"}
        ]
        request = "\r\n".join([f"{method} {path} {version}", f"Host: {url.netloc}", *headers, "Connection: close"])
        upstream = await self._open(host, port)
        async with upstream:
            await upstream.send(request.encode("latin-1") + b"\r\n\r\n")
            await _splice(client, upstream, reader.buffer)

    async def _open(self, host: str, port: int) -> anyio.abc.ByteStream:
        name, literal = parse_host(host)  # already validated by _split_authority
        if not self.rules.port_allowed(port):
            self.log.append(("port", name, port))
            raise _Refused(
                403,
                "Forbidden",
                f"port {port} is not open for egress (open: {self.rules.describe_ports()}; the operator sets "
                "CONTAINER_MCP_EGRESS_PORTS)",
            )
        if not self.allowlist.allows(name):
            self.log.append(("denied", name, port))
            raise _Refused(
                403,
                "Forbidden",
                f"{host} is not in this container's network_policy allowlist (allowed: {self.allowlist.describe()})",
            )
        candidates: list[IPAddress]
        if literal is not None:
            candidates = [literal]
        else:
            try:
                resolved = await self._resolve(name, port)
            except OSError:
                self.log.append(("unresolved", name, port))
                raise _Refused(502, "Bad Gateway", f"{host} does not resolve") from None
            candidates = [ip for ip in (_address(a) for a in resolved) if ip is not None]
        approved: list[IPAddress] = []
        refusals: list[str] = []
        for ip in candidates:
            reason = self.rules.refusal(ip, None if literal is not None else name)
            if reason is None:
                approved.append(unwrap(ip))
            else:
                refusals.append(f"{ip} is {reason}")
        if not approved:
            self.log.append(("forbidden", name, port))
            detail = "; ".join(refusals[:3]) or "no usable address"
            what = host if literal is not None else f"{host} resolves only to addresses commands may not reach"
            raise _Refused(403, "Forbidden", f"{what}: {detail}")
        last: Exception | None = None
        for address in approved:
            try:
                with anyio.fail_after(self._connect_timeout_s):
                    stream = await self._connect(address, port)
            except (OSError, TimeoutError) as exc:
                last = exc
                continue
            self.log.append(("allowed", name, port))
            return stream
        self.log.append(("unreachable", name, port))
        raise _Refused(502, "Bad Gateway", f"cannot connect to {host}:{port}: {last}")


def _address(text: str) -> IPAddress | None:
    """A resolver's answer as an address; anything else (it should not happen) is dropped."""
    try:
        return ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None


class _StreamAdapter(anyio.abc.ByteStream):
    """anyio's ``ByteStream`` over an asyncio reader/writer pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            data = await self._reader.read(max_bytes)
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        try:
            self._writer.write(item)
            await self._writer.drain()
        except (OSError, RuntimeError) as exc:
            raise anyio.BrokenResourceError from exc

    async def send_eof(self) -> None:
        with contextlib.suppress(OSError, RuntimeError):
            if self._writer.can_write_eof():
                self._writer.write_eof()

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError), anyio.CancelScope(shield=True):
            await self._writer.wait_closed()


def _split_authority(authority: str, *, default_port: int | None) -> tuple[str, int]:
    """Split ``host[:port]`` / ``[v6][:port]``; raises ``_Refused`` (400) when malformed."""
    a = authority.strip()
    port_text: str | None
    if a.startswith("["):
        end = a.find("]")
        host, rest = (a[1:end], a[end + 1 :]) if end > 0 else ("", "!")
        if rest and not rest.startswith(":"):
            raise _Refused(400, "Bad Request", f"malformed target {authority[:200]!r}")
        port_text = rest[1:] if rest else None
    else:
        if a.count(":") > 1:
            raise _Refused(400, "Bad Request", f"malformed target {authority[:200]!r}; bracket IPv6 addresses")
        host, sep, port_text = a.partition(":")
        port_text = port_text if sep else None
    if port_text is None:
        if default_port is None:
            raise _Refused(400, "Bad Request", f"malformed target {authority[:200]!r}; expected host:port")
        port = default_port
    elif port_text.isdigit() and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise _Refused(400, "Bad Request", f"malformed port in {authority[:200]!r}")
    try:
        normalize_host(host)
    except InvalidHost:
        raise _Refused(400, "Bad Request", f"malformed host in {authority[:200]!r}") from None
    return host, port


async def _respond(client: anyio.abc.ByteStream, status: int, reason: str, detail: str) -> None:
    body = f"container-mcp egress proxy: {detail}\n".encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await client.send(head.encode() + body)


async def _splice(client: anyio.abc.ByteStream, upstream: anyio.abc.ByteStream, pending: bytes) -> None:
    """Copy bytes both ways until both directions reached end of stream."""

    async def copy(src: anyio.abc.ByteStream, dst: anyio.abc.ByteStream) -> None:
        try:
            async for chunk in src:
                await dst.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await dst.send_eof()

    if pending:
        await upstream.send(pending)
    async with anyio.create_task_group() as tg:
        tg.start_soon(copy, client, upstream)
        tg.start_soon(copy, upstream, client)
