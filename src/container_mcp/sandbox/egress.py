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

A target is approved when its host is a listed domain or a subdomain of one (case, trailing
dots and IDNA normalised; ``*.example.com`` means ``example.com``), or an IP literal that is
itself listed (IP literals are never matched as domains; legacy forms like ``2130706433`` count
as IP literals). The proxy resolves the name itself and connects to the address it got, so the
sandbox never does DNS. Unless ``allow_private_addresses`` is set, names resolving to loopback,
private, link-local or otherwise non-global addresses are refused (no SSRF to the host's own
services or a cloud metadata endpoint through a listed domain).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

__all__ = [
    "Allowlist",
    "EgressProxy",
    "Resolver",
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

_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_LEGACY_IPV4 = re.compile(r"^[0-9a-fx.]+$")


class InvalidHost(ValueError):
    """A host name that is neither a valid DNS name nor an IP literal."""


def normalize_host(host: str) -> str:
    """The canonical form of a host: lower-case ASCII (IDNA) without trailing dot, or a canonical IP.

    Raises ``InvalidHost`` for anything else (empty labels, ports, user info, zone ids...).
    """
    h = host.strip()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    h = h.rstrip(".").lower()
    if not h:
        raise InvalidHost("empty host")
    ip = _ip_literal(h)
    if ip is not None:
        return ip
    try:
        h = h.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise InvalidHost(f"invalid host {host!r}") from exc
    if len(h) > 253 or not all(_LABEL.match(label) for label in h.split(".")):
        raise InvalidHost(f"invalid host {host!r}")
    return h


def _ip_literal(h: str) -> str | None:
    """The canonical text of ``h`` if it is an IP literal in any form the C library accepts."""
    if "%" in h:
        raise InvalidHost(f"zone ids are not allowed: {h!r}")
    try:
        return ipaddress.ip_address(h).compressed
    except ValueError:
        pass
    if _LEGACY_IPV4.match(h):
        try:
            return socket.inet_ntoa(socket.inet_aton(h))
        except OSError:
            return None
    return None


def is_ip_literal(host: str) -> bool:
    try:
        return _ip_literal(host.strip("[]").rstrip(".").lower()) is not None
    except InvalidHost:
        return False


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class Allowlist:
    """Normalised allowlist: domains (matching themselves and their subdomains) and exact IPs."""

    domains: frozenset[str]
    addresses: frozenset[str]

    @classmethod
    def from_domains(cls, entries: Iterable[str]) -> Allowlist:
        """Build from ``network_policy.allowed_domains``; raises ``InvalidHost`` for a bad entry."""
        domains: set[str] = set()
        addresses: set[str] = set()
        for entry in entries:
            e = entry.strip()
            if e.startswith("*."):
                e = e[2:]
            norm = normalize_host(e)
            (addresses if is_ip_literal(norm) else domains).add(norm)
        return cls(frozenset(domains), frozenset(addresses))

    def allows(self, host: str) -> bool:
        """Whether ``host`` (any spelling) may be reached. Invalid hosts are not allowed."""
        try:
            h = normalize_host(host)
        except InvalidHost:
            return False
        if is_ip_literal(h):
            return h in self.addresses
        return any(h == d or h.endswith("." + d) for d in self.domains)


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
        resolver: Resolver | None = None,
        allow_private_addresses: bool = False,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.allowlist = allowlist
        self._resolve = resolver or system_resolver
        self._allow_private = allow_private_addresses
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
        if not self.allowlist.allows(host):
            self.log.append(("denied", host, port))
            raise _Refused(
                403,
                "Forbidden",
                f"{host} is not in this container's network_policy allowlist "
                f"(allowed: {', '.join(sorted(self.allowlist.domains | self.allowlist.addresses))})",
            )
        if is_ip_literal(host):
            addresses: Sequence[str] = [normalize_host(host)]
        else:
            try:
                addresses = await self._resolve(normalize_host(host), port)
            except OSError:
                self.log.append(("unresolved", host, port))
                raise _Refused(502, "Bad Gateway", f"{host} does not resolve") from None
            if not self._allow_private:
                public = [a for a in addresses if _is_public(a)]
                if not public:
                    self.log.append(("private", host, port))
                    raise _Refused(403, "Forbidden", f"{host} resolves only to private or local addresses")
                addresses = public
        last: Exception | None = None
        for address in addresses:
            try:
                with anyio.fail_after(self._connect_timeout_s):
                    stream = await anyio.connect_tcp(address, port)
            except (OSError, TimeoutError) as exc:
                last = exc
                continue
            self.log.append(("allowed", host, port))
            return stream
        self.log.append(("unreachable", host, port))
        raise _Refused(502, "Bad Gateway", f"cannot connect to {host}:{port}: {last}")


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
