"""Inline file content (``file_create`` text/base64) with bounded memory across the process.

An MCP client sends a whole file inside one JSON-RPC message, so every concurrent upload holds
its request body, the parsed string and (before this module) the decoded bytes at once: four
99 MiB base64 uploads peaked at 2.2 GiB. Here:

* ``InlineBudget`` is the one process-wide count of inline bytes in flight, capped by
  ``CONTAINER_MCP_MAX_INLINE_BYTES_IN_FLIGHT``.
* ``InlineBodyGate`` (ASGI, on the MCP HTTP transports) reserves a POST body's declared length
  before the SDK reads a byte of it, when the body is over ``GATED_BODY_BYTES``. While the budget
  is full the request waits (its bytes stay in the socket, not in memory) for up to ``wait_s``,
  then gets a 503 that says to retry or to upload another way. A chunked body is counted as it
  arrives and cut off (the app sees a disconnect) when it would overrun the budget. With a
  ``verifier``, a request without an accepted bearer token never reserves nor waits: it goes
  straight to the app, which refuses it unread (else keyless requests could queue at the gate,
  each holding a connection, and lock callers out).
* ``spool_inline`` decodes base64 (or encodes text) in chunks straight to a private temporary
  file, so no second full copy of the content is made; the tool reserves the content's length
  first, unless ``InlineBodyGate`` already holds a reservation for the request that carries it
  (stdio, SSE after its 202, in-memory clients). Over budget it raises ``RateLimited`` naming
  the setting and the ways around it.

``mcp_body_limit`` is the largest MCP request body, and stdio line, accepted: room for a whole
file as base64 plus the JSON-RPC envelope, and never more than the budget itself.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import InvalidRequest, RateLimited
from .settings import MiB, Settings
from .uploads import CHUNK_SIZE, HostFileUpload

if TYPE_CHECKING:
    from .auth import BearerVerifier

__all__ = [
    "GATED_BODY_BYTES",
    "InlineBodyGate",
    "InlineBudget",
    "mcp_body_limit",
    "reserved_by_gate",
    "spool_inline",
]

log = logging.getLogger("container_mcp.inline")

GATED_BODY_BYTES = MiB
"""MCP request bodies up to this size pass ``InlineBodyGate`` without a reservation: ordinary calls
never wait on uploads."""

SCOPE_KEY = "container_mcp.inline_reservation"

_B64_CHUNK = 4 * MiB  # a multiple of 4: every chunk but the last decodes on its own
_LIMIT = "CONTAINER_MCP_MAX_INLINE_BYTES_IN_FLIGHT"


def mcp_body_limit(settings: Settings) -> int:
    """Largest MCP HTTP request body and stdio message: one max-size file as base64 plus 1 MiB of
    envelope, capped at the inline budget (a body the budget cannot hold could never be served)."""
    whole_file = math.ceil(settings.max_file_bytes * 4 / 3) + MiB
    return min(whole_file, settings.max_inline_bytes_in_flight)


def _mib(n: int) -> str:
    return f"{n / MiB:.0f} MiB" if n >= MiB else f"{n} bytes"


class InlineBudget:
    """A count of bytes in flight with a ceiling; one per process, shared by every transport."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_flight = 0
        self._released = anyio.Event()

    @property
    def waiting(self) -> int:
        """Callers of ``acquire`` waiting for room now."""
        return self._released.statistics().tasks_waiting

    def try_acquire(self, n: int) -> bool:
        if self.in_flight + n > self.capacity:
            return False
        self.in_flight += n
        return True

    async def acquire(self, n: int, wait_s: float) -> bool:
        """Take ``n`` bytes, waiting up to ``wait_s`` for room; False when there was none."""
        if n > self.capacity:
            return False
        with anyio.move_on_after(wait_s):
            while not self.try_acquire(n):
                await self._released.wait()
            return True
        return False

    def release(self, n: int) -> None:
        self.in_flight -= n
        released, self._released = self._released, anyio.Event()
        released.set()

    def refusal(self, n: int, what: str) -> RateLimited:
        """The error for ``n`` bytes that do not fit now."""
        return RateLimited(
            f"The server is busy receiving other inline uploads: {what} ({_mib(n)}) does not fit in the "
            f"{_mib(self.capacity)} of inline content it holds at once ({_mib(self.in_flight)} in flight). "
            "Retry in a few seconds; for large files pass source_path (a host file under an allowed directory) "
            f"or upload through the REST API (multipart, streamed), or ask the operator to raise {_LIMIT}.",
            limit_name=_LIMIT,
            limit=self.capacity,
            used=self.in_flight,
            retry_after=2.0,
        )

    @contextlib.contextmanager
    def reserve(self, n: int, what: str) -> Iterator[None]:
        """Hold ``n`` bytes for the block, or raise ``RateLimited`` at once when they do not fit."""
        if not self.try_acquire(n):
            raise self.refusal(n, what)
        try:
            yield
        finally:
            self.release(n)


class _Reservation:
    def __init__(self) -> None:
        self.active = True


def reserved_by_gate(scope: Any) -> bool:
    """Whether ``InlineBodyGate`` still holds a reservation for the HTTP request of ``scope``."""
    reservation = scope.get(SCOPE_KEY) if isinstance(scope, dict) else None
    return isinstance(reservation, _Reservation) and reservation.active


class InlineBodyGate:
    """ASGI middleware: reserve a large POST body in the budget before the app reads it (see the
    module docstring)."""

    def __init__(
        self, app: ASGIApp, budget: InlineBudget, wait_s: float = 30.0, verifier: BearerVerifier | None = None
    ) -> None:
        self.app = app
        self.budget = budget
        self.wait_s = wait_s
        self.verifier = verifier

    async def _unauthenticated(self, scope: Scope) -> bool:
        if self.verifier is None:
            return False
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and await self.verifier.verify_token(token) is not None:
                    return False
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = int(value) if value.isdigit() else None
        if declared is None:
            await self._counted(scope, receive, send)
        elif declared <= GATED_BODY_BYTES:
            await self.app(scope, receive, send)
        elif declared > self.budget.capacity:
            await self.app(scope, receive, send)  # the SDK's body limit (never above the budget) answers 413
        elif await self._unauthenticated(scope):
            await self.app(scope, receive, send)  # answered 401 before a byte of the body is read
        elif not await self.budget.acquire(declared, self.wait_s):
            log.warning("refused a %d-byte request body: inline budget full for %g s", declared, self.wait_s)
            await _busy(send, self.budget.refusal(declared, "this request").message)
        else:
            reservation = _Reservation()
            scope[SCOPE_KEY] = reservation
            try:
                await self.app(scope, receive, send)
            finally:
                reservation.active = False
                self.budget.release(declared)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        held = 0
        seen = 0

        async def counting_receive() -> Message:
            nonlocal held, seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                extra = seen - GATED_BODY_BYTES - held
                if extra > 0:
                    if not self.budget.try_acquire(extra):
                        log.warning("cut off a chunked request body at %d bytes: inline budget full", seen)
                        return {"type": "http.disconnect"}
                    held += extra
            return message

        try:
            await self.app(scope, counting_receive, send)
        finally:
            if held:
                self.budget.release(held)


async def _busy(send: Send, message: str) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"2"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


_BAD_BASE64 = (
    "base64 is not valid base64 (standard alphabet, with padding). Encode the bytes again, or send text instead."
)


def _write_base64(fd: int, value: str) -> int:
    size = 0
    for start in range(0, len(value), _B64_CHUNK):
        piece = value[start : start + _B64_CHUNK]
        last = start + _B64_CHUNK >= len(value)
        if not last and "=" in piece:
            raise InvalidRequest(_BAD_BASE64, param="base64")  # padding only at the very end
        try:
            data = base64.b64decode(piece, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(_BAD_BASE64, param="base64") from None
        _write_all(fd, data)
        size += len(data)
    return size


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_text(fd: int, value: str) -> int:
    size = 0
    for start in range(0, len(value), CHUNK_SIZE):
        try:
            data = value[start : start + CHUNK_SIZE].encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(
                "text is not valid Unicode text (it holds a lone surrogate). Send binary content as base64.",
                param="text",
            ) from None
        _write_all(fd, data)
        size += len(data)
    return size


def _spool(value: str, encoding: str, directory: Path) -> HostFileUpload:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="inline-", dir=directory)  # 0600
    # Unlinked at once: the content lives only as long as the fd, so neither a failure nor a
    # kill -9 (of this process or of another sharing the data dir) can leave a spool file behind.
    os.unlink(name)
    try:
        size = _write_base64(fd, value) if encoding == "base64" else _write_text(fd, value)
    except BaseException:
        os.close(fd)
        raise
    return HostFileUpload(fd, size)


async def spool_inline(value: str, encoding: str, directory: Path) -> HostFileUpload:
    """``value`` (``encoding`` "base64" or "text") decoded into an unlinked private file in ``directory``,
    as an upload that owns its fd (``close()`` frees the space).

    Raises ``InvalidRequest`` (nothing left behind) for invalid base64 or unencodable text.
    """
    return await anyio.to_thread.run_sync(_spool, value, encoding, directory)
