"""The host-side egress proxy of ``network_policy: allowlist``.

A sandbox with an allowlist still has its own, empty network namespace: no route, no DNS. Its
only way out is a Unix socket bind-mounted into it, behind which this proxy listens (one proxy
per run, holding that run's allowlist). Inside, a small forwarder (``_forwarder.py``) listens on
127.0.0.1:3128 and ``HTTP_PROXY``/``HTTPS_PROXY`` point there. Clients that ignore the proxy
variables (``curl --noproxy '*'``, raw sockets) simply have no network.

The proxy speaks the two forms clients use:

* ``CONNECT host:port`` (HTTPS and any TLS): a blind tunnel once the target is approved;
* absolute-form plain HTTP (``GET http://host/path``): exactly one request per connection. Its
  header lines must be well-formed (no folding, no bare CR or LF, no control characters) and its
  body framing unambiguous (one ``Content-Length``, or ``Transfer-Encoding: chunked`` alone); the
  proxy forwards the head with ``Connection: close``, then exactly the body it framed itself
  (chunks re-encoded), and relays the response with ``Connection: close``. Any byte the client
  sends after that request ends the connection: a pipelined or keep-alive second request — to
  another host, say — never reaches the upstream unjudged.

A proxy serves at most ``max_connections`` client connections at once; one more is answered
``503`` and closed straight away, so a command cannot make the server hold an unbounded number
of file descriptors.

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
import re
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
MAX_LOG_ENTRIES = 1000
MAX_LOOKUPS = 4
MAX_CHUNK_LINE_BYTES = 4096

# RFC 9110 token characters: a header name is exactly this, nothing else (no space before ':').
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# A request target: visible ASCII only (no space, no control character).
_TARGET = re.compile(r"^[\x21-\x7e]+$")
# Field values: visible characters, spaces and tabs (no CR, LF, NUL or other controls).
_FIELD_VALUE = re.compile(r"^[\t\x20-\x7e\x80-\xff]*$")
# Hop-by-hop and framing fields: the proxy writes its own (Host, Connection, the body framing).
_DROPPED = frozenset(
    {
        "host",
        "connection",
        "proxy-connection",
        "proxy-authorization",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "transfer-encoding",
    }
)
_RESPONSE_DROPPED = frozenset({"connection", "proxy-connection", "keep-alive"})

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
    connection (useful in tests). ``log`` keeps ``(decision, host, port)`` tuples of the last
    ``max_log_entries`` requests, for diagnostics and tests. At most ``max_lookups`` name lookups
    run at once.
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
        max_log_entries: int = MAX_LOG_ENTRIES,
        max_lookups: int = MAX_LOOKUPS,
    ) -> None:
        self.allowlist = allowlist
        self.rules = rules or EgressRules()
        self._resolve = resolver or system_resolver
        self._connect = connector or connect_address
        self._connect_timeout_s = connect_timeout_s
        self._max_connections = max_connections
        self._active = 0
        self._max_log_entries = max_log_entries
        # Lookups run on the event loop's shared executor: one run must not take all of it.
        self._lookups = anyio.Semaphore(max_lookups)
        self.log: list[tuple[str, str, int]] = []

    def _note(self, decision: str, host: str, port: int) -> None:
        # Bounded: a command can make millions of requests in one run, and this lives in the server.
        if len(self.log) >= self._max_log_entries:
            del self.log[: len(self.log) - self._max_log_entries + 1]
        self.log.append((decision, host, port))

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
            except asyncio.CancelledError:
                pass  # the run ended; asyncio's server callback would log a cancelled handler as an error
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
        async with client:
            if self._active >= self._max_connections:
                # Refused, not queued: a queued connection would still hold a descriptor here.
                self._note("busy", "", 0)
                await _respond(
                    client,
                    503,
                    "Service Unavailable",
                    f"at most {self._max_connections} connections at once go through this container's proxy; "
                    "close some and retry",
                )
                return
            self._active += 1
            try:
                await self._handle(client)
            except _Refused as refused:
                await _respond(client, refused.status, refused.reason, refused.detail)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
                pass
            finally:
                self._active -= 1

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
        # The version and the target are copied into what the upstream reads: a bare LF or another
        # control character in either would be a header line nobody judged.
        if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1") or not _TARGET.match(parts[1]):
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
        if not _TOKEN.match(method):
            raise _Refused(400, "Bad Request", "malformed request method")
        path = url.path or "/"
        if url.query:
            path += "?" + url.query
        fields = _fields(lines[1:])
        body = _body_framing(fields)
        framing = [] if body is None else ["Transfer-Encoding: chunked" if body < 0 else f"Content-Length: {body}"]
        request = "\r\n".join(
            [
                f"{method} {path} {version}",
                f"Host: {url.netloc}",
                *(f"{name}: {value}" for name, value in fields if name.lower() not in _DROPPED),
                *framing,
                "Connection: close",
            ]
        )
        upstream = await self._open(host, port)
        async with upstream:
            await upstream.send(request.encode("latin-1") + b"\r\n\r\n")
            await _one_exchange(reader, client, upstream, body)

    async def _open(self, host: str, port: int) -> anyio.abc.ByteStream:
        name, literal = parse_host(host)  # already validated by _split_authority
        if not self.rules.port_allowed(port):
            self._note("port", name, port)
            raise _Refused(
                403,
                "Forbidden",
                f"port {port} is not open for egress (open: {self.rules.describe_ports()}; the operator sets "
                "CONTAINER_MCP_EGRESS_PORTS)",
            )
        if not self.allowlist.allows(name):
            self._note("denied", name, port)
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
                async with self._lookups:
                    resolved = await self._resolve(name, port)
            except OSError:
                self._note("unresolved", name, port)
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
            self._note("forbidden", name, port)
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
            self._note("allowed", name, port)
            return stream
        self._note("unreachable", name, port)
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
    elif port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536:  # not '²'
        port = int(port_text)
    else:
        raise _Refused(400, "Bad Request", f"malformed port in {authority[:200]!r}")
    try:
        normalize_host(host)
    except InvalidHost:
        raise _Refused(400, "Bad Request", f"malformed host in {authority[:200]!r}") from None
    return host, port


def _fields(lines: Sequence[str]) -> list[tuple[str, str]]:
    """The request's header fields; raises ``_Refused`` (400) for any line an upstream might read otherwise.

    A folded line, a space before the colon, a bare CR or LF or another control character is
    where two HTTP parsers disagree (request smuggling), so none is forwarded, or guessed at.
    """
    fields: list[tuple[str, str]] = []
    for line in lines:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not _TOKEN.match(name) or not _FIELD_VALUE.match(value):
            raise _Refused(400, "Bad Request", f"malformed header line {line[:100]!r}")
        fields.append((name, value.strip(" \t")))
    return fields


def _body_framing(fields: Sequence[tuple[str, str]]) -> int | None:
    """The request body's length, -1 for chunked, None for no body; raises ``_Refused`` when ambiguous."""
    lengths = [value for name, value in fields if name.lower() == "content-length"]
    codings = [value for name, value in fields if name.lower() == "transfer-encoding"]
    if codings:
        if lengths or len(codings) > 1 or codings[0].lower() != "chunked":
            raise _Refused(
                400, "Bad Request", "a request body is framed by one Content-Length or 'Transfer-Encoding: chunked'"
            )
        return -1
    if not lengths:
        return None
    if len(lengths) > 1 or not lengths[0].isdigit() or not lengths[0].isascii() or len(lengths[0]) > 18:
        raise _Refused(400, "Bad Request", "malformed Content-Length")
    return int(lengths[0])


async def _one_exchange(
    reader: BufferedByteReceiveStream,
    client: anyio.abc.ByteStream,
    upstream: anyio.abc.ByteStream,
    body: int | None,
) -> None:
    """Send the request body, relay the response, and end there: one request per connection.

    Whatever the client sends after its request (a pipelined or keep-alive second request) is
    never forwarded; it ends the connection.
    """
    bad_response = False
    async with anyio.create_task_group() as tg:

        async def request_side() -> None:
            with contextlib.suppress(*_STREAM_ERRORS, _Refused):
                await _send_body(reader, upstream, body)
                try:
                    await reader.receive(1)
                except anyio.EndOfStream:
                    return  # the client is done sending; its response still goes back
            tg.cancel_scope.cancel()

        tg.start_soon(request_side)
        try:
            await _relay_response(upstream, client)
        except _Refused:
            bad_response = True
        except _STREAM_ERRORS:
            pass
        tg.cancel_scope.cancel()
    if bad_response:
        raise _Refused(502, "Bad Gateway", "the upstream's response was not valid HTTP/1.x")


async def _send_body(reader: BufferedByteReceiveStream, upstream: anyio.abc.ByteStream, body: int | None) -> None:
    """Forward the request body exactly as framed (chunks re-encoded, extensions and trailers dropped)."""
    if body is None:
        return
    if body >= 0:
        await _copy_exactly(reader, upstream, body)
        return
    while True:
        line = (await reader.receive_until(b"\r\n", MAX_CHUNK_LINE_BYTES)).decode("latin-1")
        size_text = line.partition(";")[0].strip(" \t")
        if not size_text or len(size_text) > 16 or any(c not in "0123456789abcdefABCDEF" for c in size_text):
            raise _Refused(400, "Bad Request", "malformed chunk size")
        size = int(size_text, 16)
        await upstream.send(f"{size:x}\r\n".encode())
        if size == 0:
            while await reader.receive_until(b"\r\n", MAX_HEADER_BYTES):
                pass  # trailer fields are not forwarded
            await upstream.send(b"\r\n")
            return
        await _copy_exactly(reader, upstream, size)
        if await reader.receive_exactly(2) != b"\r\n":
            raise _Refused(400, "Bad Request", "malformed chunk")
        await upstream.send(b"\r\n")


async def _copy_exactly(reader: BufferedByteReceiveStream, dst: anyio.abc.ByteStream, count: int) -> None:
    while count > 0:
        chunk = await reader.receive(min(count, 65536))
        count -= len(chunk)
        await dst.send(chunk)


async def _relay_response(upstream: anyio.abc.ByteStream, client: anyio.abc.ByteStream) -> None:
    """Relay the response, its final head marked ``Connection: close``; raises ``_Refused`` for a bad head."""
    reader = BufferedByteReceiveStream(upstream)
    while True:
        try:
            head = (await reader.receive_until(b"\r\n\r\n", MAX_HEADER_BYTES)).decode("latin-1")
        except anyio.DelimiterNotFound:
            raise _Refused(502, "Bad Gateway", "response head too large") from None
        status_line, *fields = head.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
            raise _Refused(502, "Bad Gateway", "malformed response")
        if parts[1].startswith("1") and parts[1] != "101":
            await client.send(head.encode("latin-1") + b"\r\n\r\n")  # 100 Continue and friends
            continue
        kept = [f for f in fields if f.partition(":")[0].strip().lower() not in _RESPONSE_DROPPED]
        await client.send("\r\n".join([status_line, *kept, "Connection: close"]).encode("latin-1") + b"\r\n\r\n")
        break
    if reader.buffer:
        await client.send(reader.buffer)
    async for chunk in upstream:
        await client.send(chunk)


_STREAM_ERRORS = (
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.DelimiterNotFound,
    OSError,
)


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
