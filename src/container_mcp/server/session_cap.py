"""At most ``max_sessions_per_owner`` open handshake-era MCP sessions per token owner.

The SDK caps streamable HTTP sessions for the whole server (10,000) and keeps each one for 30 idle
minutes. Without a cap per owner, one key (or one OAuth subject) could open them all and every
other caller's handshake-era client would get 503 until they idled out. ``SessionCap`` wraps the
``/mcp`` endpoint behind the SDK's authentication (it reads the ``AccessToken`` the verifier
returned) and refuses an owner's next session opening with 429 and a JSON-RPC error saying what to
do; other owners are not affected. 2026-07-28 requests open no session and are never refused here.

It counts the sessions itself, from what passes through it: an opening request answered 2xx with
an ``Mcp-Session-Id`` adds one; a ``DELETE`` of it that succeeds, or a 404 for it (the SDK ended it:
idle timeout, crash), removes it; so does ``idle_timeout_s`` (the SDK's idle timeout) without a
request naming it in flight (a GET stream held open keeps it, as it keeps the SDK's session).
Openings still in flight count too, so concurrent ones cannot overshoot. Without authentication (a
loopback-only server) nothing is capped: there is one local user.

``SseSessionCap`` does the same for the SSE transport, where the SDK has no cap at all: an SSE
session lives exactly as long as its ``GET /sse`` stream, so it counts the streams open per owner.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..clock import Clock

__all__ = ["SessionCap", "SseSessionCap"]

_SESSION_HEADER = b"mcp-session-id"
_VERSION_HEADER = b"mcp-protocol-version"


@dataclass
class _Open:
    owner: str
    last_used: float
    in_flight: int = 0
    """Requests naming the session now: like the SDK, idle time counts only while there are none."""


class SessionCap:
    """ASGI wrapper of the streamable HTTP endpoint (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, limit: int, idle_timeout_s: float, clock: Clock) -> None:
        self.app = app
        self.limit = limit
        self._idle_timeout_s = idle_timeout_s
        self._clock = clock
        self._open: dict[str, _Open] = {}
        self._opening: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        owner = _owner(scope)
        if owner is None:
            await self.app(scope, receive, send)
            return
        version = _first(scope, _VERSION_HEADER)
        if version is not None and version.decode("latin-1") not in HANDSHAKE_PROTOCOL_VERSIONS:
            await self.app(scope, receive, send)  # 2026-07-28: no session
            return
        sid = _first(scope, _SESSION_HEADER)
        if sid is None:
            await self._open_session(owner, scope, receive, send)
        else:
            await self._use_session(owner, sid.decode("latin-1"), scope, receive, send)

    def held(self, owner: str) -> int:
        """Sessions ``owner`` holds or is opening now."""
        now = self._clock()
        idle = [s for s, o in self._open.items() if not o.in_flight and now - o.last_used >= self._idle_timeout_s]
        for sid in idle:
            del self._open[sid]
        return sum(o.owner == owner for o in self._open.values()) + self._opening.get(owner, 0)

    async def _open_session(self, owner: str, scope: Scope, receive: Receive, send: Send) -> None:
        if self.held(owner) >= self.limit:
            await _refuse(self.limit, self._idle_timeout_s, send)
            return
        self._opening[owner] = self._opening.get(owner, 0) + 1
        pending = True

        def settle() -> None:
            nonlocal pending
            if pending:
                pending = False
                self._opening[owner] -= 1
                if not self._opening[owner]:
                    del self._opening[owner]

        async def record(message: Message) -> None:
            # The status line settles it (the SSE response body may outlive it): a session, or none.
            if message["type"] == "http.response.start":
                sid = dict(message.get("headers", [])).get(_SESSION_HEADER)
                if message["status"] < 400 and sid is not None:
                    self._open[sid.decode("latin-1")] = _Open(owner, self._clock())
                settle()
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            settle()

    async def _use_session(self, owner: str, sid: str, scope: Scope, receive: Receive, send: Send) -> None:
        known = self._open.get(sid)
        if known is None or known.owner != owner:
            await self.app(scope, receive, send)  # unknown here, or another's: the SDK answers 404
            return
        known.in_flight += 1
        known.last_used = self._clock()

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status = message["status"]
                if status == 404 or (scope["method"] == "DELETE" and status < 400):
                    self._open.pop(sid, None)
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            known.in_flight -= 1
            known.last_used = self._clock()


class SseSessionCap:
    """ASGI wrapper of the SSE endpoint: at most ``limit`` open streams per owner (see the module docstring)."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit
        self._streams: dict[str, int] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        owner = _owner(scope)
        if owner is None:
            await self.app(scope, receive, send)
            return
        if self._streams.get(owner, 0) >= self.limit:
            await _refuse(self.limit, None, send)
            return
        self._streams[owner] = self._streams.get(owner, 0) + 1
        try:
            await self.app(scope, receive, send)
        finally:
            self._streams[owner] -= 1
            if not self._streams[owner]:
                del self._streams[owner]


def _owner(scope: Scope) -> str | None:
    """The token owner of an authenticated HTTP request; None for anything the cap does not count."""
    user = scope.get("user")
    if scope["type"] != "http" or not isinstance(user, AuthenticatedUser):
        return None
    return user.access_token.client_id


def _first(scope: Scope, name: bytes) -> bytes | None:
    """The first ``name`` header, as the SDK reads it (a repeated header must not mean one thing here and
    another there)."""
    return next((v for k, v in scope["headers"] if k == name), None)


async def _refuse(limit: int, idle_timeout_s: float | None, send: Send) -> None:
    """429 with a JSON-RPC error; ``idle_timeout_s`` None for SSE, whose sessions end with their stream."""
    message = f"This token already holds {limit} open MCP sessions, the most one caller may hold. Reuse one or "
    if idle_timeout_s is None:
        message += "close one (end its GET /sse stream)."
    else:
        message += (
            f"close one (HTTP DELETE with its Mcp-Session-Id), or wait: a session unused for "
            f"{idle_timeout_s / 60:g} minutes is closed by the server."
        )
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 429,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
