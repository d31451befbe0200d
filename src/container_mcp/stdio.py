"""The stdio transport with a bound on the size of one message.

The SDK's stdio transport reads stdin a line (one JSON-RPC message) at a time with no limit, so
a 150 MB line is buffered whole, then parsed, before anything can refuse it (949 MiB RSS). Here
stdin is read in chunks by ``BoundedLines``: a line over ``limit`` bytes is dropped as it
streams, holding at most ``limit`` bytes of it; the server logs it on stderr and, when the line
starts like a request (``{"jsonrpc": "2.0", "id": ...``) or ends like one (``..., "id": 7}``, as
the TypeScript SDK writes them), answers that id with a JSON-RPC error that says how to send
large content instead. The server keeps serving the next line.

``run_stdio`` runs an ``MCPServer`` over it the way ``MCPServer.run_stdio_async`` does (that
method takes no stdin argument). Like the SDK, it points fd 0 at the null device and fd 1 at stderr
while serving, so child processes never read the protocol stream and stray output never lands in
it. A message costs one worker-thread call, not three: stdin is read when the event loop sees it
readable (a regular file, which cannot be polled, in a worker thread), and each answer is written
whole in one call (``_Stdout``; the SDK's file writes, then flushes). When stdin ends, requests
already read are answered before the server stops (``_Inflight``, bounded by ``drain_s``): the
SDK's serving loop cancels handlers still running at the end of its read stream, so a client that
writes its requests and closes stdin (``printf ... | container-mcp``) would otherwise get no
answer to the last ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, cast

import anyio
import anyio.to_thread
import mcp_types as types
from mcp.server import MCPServer
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage

__all__ = ["BoundedLines", "request_id", "run_stdio"]

log = logging.getLogger("container_mcp.stdio")

READ_BYTES = 1 << 20
HEAD_BYTES = 4096
"""Bytes kept of each end of a dropped line, to find the id of the request it carried."""

INVALID_REQUEST = -32600

# The id only where it is the message's first member (after "jsonrpc"), so an "id" nested in the
# params is never mistaken for it.
_ID = re.compile(rb'\A\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*(-?\d{1,18}|"(?:[^"\\]|\\.){0,200}")')
_ID_VALUE = rb'(-?\d{1,18}|"(?:[^"\\]|\\.){0,200}")'
# Or where it is the last member: in valid JSON only the top-level object ends with a single "}".
_LAST_ID = re.compile(rb'[{,]\s*"id"\s*:\s*' + _ID_VALUE + rb"\s*\}\s*\Z")

Reply = Callable[[SessionMessage], Awaitable[None]]


def request_id(head: bytes, tail: bytes = b"") -> int | str | None:
    """The JSON-RPC id at the start of a (possibly truncated) message, or as the last member at its
    ``tail`` (its last bytes), if it is plainly there."""
    match = _ID.match(head) or _LAST_ID.search(tail)
    if match is None:
        return None
    raw = match[1]
    if raw.startswith(b'"'):
        text = raw[1:-1].decode("utf-8", "replace")
        return text if "\\" not in text else None
    return int(raw)


class BoundedLines:
    """stdin's lines as ``str``, each at most ``limit`` bytes (see the module docstring).

    ``reply`` (set once the transport's write stream exists) sends the error for a dropped request.
    """

    def __init__(self, fd: int, limit: int) -> None:
        self.fd = fd
        self.limit = limit
        self.reply: Reply | None = None
        self._pollable = True
        self.ids: deque[int | str | None] = deque()
        """The plainly visible request id of each line yielded and not yet taken by ``_Reads``: the
        SDK turns every line into exactly one message or parse error, in order."""

    async def _read(self) -> bytes:
        # A pipe, socket or terminal is waited on by the event loop, then read at once (what is
        # there, never more): no worker thread per message. A regular file or the null device
        # cannot be polled (PermissionError), and is read in a worker thread instead.
        while self._pollable:
            try:
                await anyio.wait_readable(self.fd)
            except PermissionError:
                self._pollable = False
                break
            with contextlib.suppress(BlockingIOError):  # a non-blocking stdin, already drained: wait again
                return os.read(self.fd, READ_BYTES)
        return await anyio.to_thread.run_sync(os.read, self.fd, READ_BYTES, abandon_on_cancel=True)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        buf = bytearray()
        dropping = False
        dropped = 0
        head = tail = b""
        while chunk := await self._read():
            start = 0
            while True:
                newline = chunk.find(b"\n", start)
                end = newline if newline >= 0 else len(chunk)
                piece = memoryview(chunk)[start:end]
                if dropping:
                    dropped += len(piece)
                    tail = (tail + bytes(piece[-HEAD_BYTES:]))[-HEAD_BYTES:]
                elif len(buf) + len(piece) > self.limit:
                    head = (bytes(buf[:HEAD_BYTES]) + bytes(piece[:HEAD_BYTES]))[:HEAD_BYTES]
                    tail = (bytes(buf[-HEAD_BYTES:]) + bytes(piece[-HEAD_BYTES:]))[-HEAD_BYTES:]
                    dropped = len(buf) + len(piece)
                    buf = bytearray()
                    dropping = True
                else:
                    buf += piece
                if newline < 0:
                    break
                start = newline + 1
                if dropping:
                    dropping = False
                    await self._refuse(head, tail, dropped)
                elif buf.strip():
                    line = buf.decode("utf-8", "replace")
                    self.ids.append(request_id(bytes(buf[:HEAD_BYTES]), bytes(buf[-HEAD_BYTES:])))
                    buf = bytearray()
                    yield line
        if dropping:
            await self._refuse(head, tail, dropped)
        elif buf.strip():
            self.ids.append(request_id(bytes(buf[:HEAD_BYTES]), bytes(buf[-HEAD_BYTES:])))
            yield buf.decode("utf-8", "replace")

    async def _refuse(self, head: bytes, tail: bytes, size: int) -> None:
        rid = request_id(head, tail)
        log.warning(
            "dropped a stdio message of %d bytes: over the %d-byte limit (request id %s)",
            size,
            self.limit,
            "unknown" if rid is None else rid,
        )
        if rid is None or self.reply is None:
            return
        error = types.ErrorData(
            code=INVALID_REQUEST,
            message=f"Message too large: {size} bytes, over this server's {self.limit}-byte limit for one "
            "message, so it was not read. Send large files with file_create's source_path (a host file under "
            "an allowed directory) or split them; the operator can raise CONTAINER_MCP_MAX_FILE_BYTES.",
        )
        await self.reply(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=rid, error=error)))


@contextmanager
def _claim_stdin() -> Iterator[int]:
    """A private duplicate of fd 0 to read the protocol from; fd 0 reads the null device meanwhile."""
    private = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null, 0)
    finally:
        os.close(null)
    try:
        yield private
    finally:
        # The duplicate stays open: a reader thread may still be blocked on it.
        os.dup2(private, 0)


@contextmanager
def _claim_stdout() -> Iterator[int]:
    """A private duplicate of fd 1 to write the protocol to; fd 1 writes to stderr meanwhile, so
    stray output (a library's print, a child process) never corrupts the protocol stream."""
    private = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    os.dup2(2, 1)
    try:
        yield private
    finally:
        # Left open like stdin's: a writer thread may still be in the middle of a message.
        os.dup2(private, 1)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Stdout:
    """The protocol's output as the SDK's ``stdio_server`` writes it (``write``, then ``flush``):
    each message goes whole to ``fd`` in one worker-thread call, so a slow reader never blocks the
    event loop; the SDK's own file takes two (the write, then the flush)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    async def write(self, text: str) -> None:
        await anyio.to_thread.run_sync(_write_all, self.fd, text.encode("utf-8"))

    async def flush(self) -> None:
        """Nothing is buffered: ``write`` returns once the message is written."""


class _Inflight:
    """Ids of the requests read and not yet answered (or cancelled by the client)."""

    def __init__(self) -> None:
        self.ids: set[types.RequestId] = set()
        self._idle = anyio.Event()
        self._idle.set()

    def read(self, item: SessionMessage | Exception) -> None:
        if not isinstance(item, SessionMessage):
            return
        message = item.message
        if isinstance(message, types.JSONRPCRequest):
            self.ids.add(message.id)
            if self._idle.is_set():
                self._idle = anyio.Event()
        elif isinstance(message, types.JSONRPCNotification) and message.method == "notifications/cancelled":
            # A cancelled request gets no answer: nothing to wait for.
            self._done((message.params or {}).get("requestId"))

    def written(self, item: SessionMessage) -> None:
        if isinstance(item.message, types.JSONRPCResponse | types.JSONRPCError):
            self._done(item.message.id)

    def _done(self, request_id: object) -> None:
        self.ids.discard(request_id)
        if not self.ids:
            self._idle.set()

    async def drained(self, timeout_s: float) -> None:
        with anyio.move_on_after(timeout_s):
            await self._idle.wait()
        if self.ids:
            log.warning(
                "stdin closed; %d request(s) still unanswered after %.0f s are dropped", len(self.ids), timeout_s
            )


class _Reads:
    """The server's read stream: notes each request, answers a line the SDK could not parse (it
    drops those silently, and the client would wait for ever), and at its end waits for answers."""

    def __init__(self, stream: Any, inflight: _Inflight, drain_s: float, lines: BoundedLines) -> None:
        self._stream = stream
        self._inflight = inflight
        self._drain_s = drain_s
        self._lines = lines

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)  # last_context, aclose, ...

    def __aiter__(self) -> _Reads:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def receive(self) -> SessionMessage | Exception:
        try:
            item: SessionMessage | Exception = await self._stream.receive()
        except anyio.EndOfStream:
            await self._inflight.drained(self._drain_s)
            raise
        rid = self._lines.ids.popleft() if self._lines.ids else None
        if isinstance(item, Exception) and self._lines.reply is not None:
            error = types.ErrorData(
                code=INVALID_REQUEST,
                message=f"Could not read this message as JSON-RPC ({type(item).__name__}): send one JSON object per "
                "line, with integers of at most 4300 digits.",
            )
            await self._lines.reply(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=rid, error=error)))
        self._inflight.read(item)
        return item


class _Writes:
    """The server's write stream: notes each answer."""

    def __init__(self, stream: Any, inflight: _Inflight) -> None:
        self._stream = stream
        self._inflight = inflight

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def __aenter__(self) -> _Writes:
        await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stream.__aexit__(*exc)

    async def send(self, item: SessionMessage) -> None:
        await self._stream.send(item)
        self._inflight.written(item)


async def run_stdio(mcp: MCPServer, limit: int, drain_s: float = 600.0) -> None:
    """Serve ``mcp`` over stdin/stdout until stdin closes and the requests read are answered (at
    most ``drain_s`` more); messages over ``limit`` bytes are refused."""
    with _claim_stdin() as fd, _claim_stdout() as out:
        lines = BoundedLines(fd, limit)
        async with stdio_server(stdin=cast(Any, lines), stdout=cast(Any, _Stdout(out))) as (read_stream, write_stream):
            lines.reply = write_stream.send
            inflight = _Inflight()
            reads, writes = _Reads(read_stream, inflight, drain_s, lines), _Writes(write_stream, inflight)
            # MCPServer.run_stdio_async builds its own stdin; its low-level server is the public run loop.
            server = mcp._lowlevel_server
            await server.run(cast(Any, reads), cast(Any, writes), server.create_initialization_options())
