"""Connection limits of every HTTP server here: a slow or greedy client cannot lock others out.

uvicorn bounds the idle time between two requests (keep-alive) but not the time a client takes to
send a request's headers, nor a body that stalls, and it accepts connections until the process
runs out of file descriptors: a thousand half-sent requests then lock every other client out.
``guarded_protocol`` is uvicorn's h11 protocol plus:

* **a header deadline**: a request's headers must be complete within ``header_timeout_s`` of its
  first byte (of the accept, for a new connection); otherwise the client gets a 408 and the
  connection is closed;
* **a body idle timeout**: while a request body is incomplete and the server is reading it (not
  paused by uvicorn's own flow control, nor holding back ``100 Continue``: that is the server
  being slow, not the client),
  ``body_idle_timeout_s`` without a byte closes the connection; the app sees a disconnect;
* **a connection cap**: at ``max_connections`` open connections, a new one displaces the oldest
  connection that is waiting for request headers (a slow client, or an idle keep-alive one), else
  the one sending its request body slowest, if that is below ``min_body_rate`` bytes/s (so a body
  trickled a byte at a time, never quite stalling, cannot hold a slot), so a client that sends its
  request promptly is served while such an attack runs; when every open connection is busy with a
  request, the new one displaces the oldest connection of a caller (an ``Authorization`` value)
  holding more than half of them, so one key's never-ending streams (SSE) cannot take every slot;
  otherwise it gets a fast 503 and is closed.

``raise_open_files_limit`` lifts RLIMIT_NOFILE's soft limit to the hard limit, and
``connection_limits`` keeps the cap below what the process may open. ``quiet_client_noise`` stops
uvicorn's warning per bad request (not HTTP, an ``Upgrade`` header) from flooding stderr.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import Settings

__all__ = [
    "ConnectionLimits",
    "connection_limits",
    "guarded_protocol",
    "quiet_client_noise",
    "raise_open_files_limit",
]

log = logging.getLogger("container_mcp.http")

REPORT_INTERVAL_S = 10.0
"""Least seconds between two log lines about dropped connections."""

RATE_GRACE_S = 1.0
"""Least seconds of waiting for a request body before its rate is judged (a body just begun has sent nothing yet)."""

MAX_SHARE = 0.5
"""Fraction of the connection cap one caller may hold before its oldest connections are displaced at the cap."""

FD_RESERVE = 128
"""Descriptors kept free of client connections: the data dir's databases, sandboxes, logs."""


def _plain_response(status: str, text: str, *extra: str) -> bytes:
    body = text.encode()
    head = [f"HTTP/1.1 {status}", "content-type: text/plain; charset=utf-8", "connection: close", *extra]
    return ("\r\n".join([*head, f"content-length: {len(body)}", "", ""])).encode() + body


_REQUEST_TIMEOUT = _plain_response(
    "408 Request Timeout", "The request headers did not arrive in time; send them again."
)
_BUSY = _plain_response(
    "503 Service Unavailable", "The server is at its connection limit; retry in a moment.", "retry-after: 1"
)


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-server connection limits (see the module docstring)."""

    header_timeout_s: float = 10.0
    body_idle_timeout_s: float = 30.0
    max_connections: int = 1000
    min_body_rate: float = 16384.0

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            header_timeout_s=settings.http_header_timeout_s,
            body_idle_timeout_s=settings.http_body_idle_timeout_s,
            max_connections=settings.http_max_connections,
            min_body_rate=settings.http_min_body_rate,
        )


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (best effort); returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
    return soft


def connection_limits(limits: ConnectionLimits, open_files: int) -> ConnectionLimits:
    """``limits`` with the cap lowered, when needed, to leave ``FD_RESERVE`` of ``open_files`` free."""
    room = max(16, open_files - FD_RESERVE)
    if limits.max_connections <= room:
        return limits
    log.warning(
        "open-files limit %d leaves room for %d connections, not the %d of CONTAINER_MCP_HTTP_MAX_CONNECTIONS; "
        "capping at %d (raise the hard limit: ulimit -Hn, or LimitNOFILE= under systemd)",
        open_files,
        room,
        limits.max_connections,
        room,
    )
    return replace(limits, max_connections=room)


class _ClientNoise(logging.Filter):
    """uvicorn's warnings about a client's request, each kind at most once per ``REPORT_INTERVAL_S``.

    uvicorn warns once per malformed request and twice per request with an ``Upgrade`` header, so a
    client could write to stderr at will: a flood, or a stall of the whole server on a full pipe.
    """

    def __init__(self) -> None:
        super().__init__()
        self._next: dict[object, float] = {}
        self._suppressed: dict[object, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or "protocols" not in record.pathname:
            return True
        now = time.monotonic()
        if now < self._next.get(record.msg, 0.0):
            self._suppressed[record.msg] = self._suppressed.get(record.msg, 0) + 1
            return False
        self._next[record.msg] = now + REPORT_INTERVAL_S
        if n := self._suppressed.pop(record.msg, 0):
            record.msg = f"{record.msg} (and {n} more like it in the last {REPORT_INTERVAL_S:g} s)"
        return True


_CLIENT_NOISE = _ClientNoise()


def quiet_client_noise() -> None:
    """Throttle uvicorn's per-request warnings about clients (see ``_ClientNoise``); idempotent."""
    logging.getLogger("uvicorn.error").addFilter(_CLIENT_NOISE)


class _Connections:
    """The open connections of one server, oldest first, and a throttled log of the ones dropped."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open: dict[_GuardedH11Protocol, None] = {}
        self._dropped: dict[str, int] = {}
        self._next_report = 0.0

    def admit(self, conn: _GuardedH11Protocol) -> bool:
        if len(self.open) >= self.cap:
            victim = (
                next((c for c in self.open if c.waiting_for_headers()), None)
                or self._slowest_body()
                or self._oldest_of_greediest()
            )
            if victim is None:
                self.dropped("refused with 503: every connection busy")
                return False
            victim.drop("displaced at the connection limit")
        self.open[conn] = None
        return True

    def _slowest_body(self) -> _GuardedH11Protocol | None:
        rates = [(rate, c) for c in self.open if (rate := c.body_rate()) is not None and rate < c.limits.min_body_rate]
        return min(rates, key=lambda pair: pair[0])[1] if rates else None

    def _oldest_of_greediest(self) -> _GuardedH11Protocol | None:
        # Only requests with credentials count: without auth every caller looks alike, and with auth a
        # request without them is answered 401 at once.
        held: dict[bytes, list[_GuardedH11Protocol]] = {}
        for c in self.open:
            if (caller := c.caller) is not None and not c.transport.is_closing():
                held.setdefault(caller, []).append(c)
        greediest = max(held.values(), key=len, default=[])
        return greediest[0] if len(greediest) > self.cap * MAX_SHARE else None

    def discard(self, conn: _GuardedH11Protocol) -> None:
        self.open.pop(conn, None)

    def dropped(self, why: str) -> None:
        # An attack drops thousands of connections: one summary line per interval, not one per connection.
        self._dropped[why] = self._dropped.get(why, 0) + 1
        now = asyncio.get_running_loop().time()
        if now >= self._next_report:
            summary = ", ".join(f"{n} {reason}" for reason, n in self._dropped.items())
            log.warning("dropped connections (limit %d open): %s", self.cap, summary)
            self._dropped.clear()
            self._next_report = now + REPORT_INTERVAL_S


class _GuardedH11Protocol(H11Protocol):
    limits: ClassVar[ConnectionLimits]
    connections_of_server: ClassVar[_Connections]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        # The request body being received: its bytes, and the seconds the server has waited on the
        # client for them (not while it paused reading or held back 100 Continue), as of _mark.
        self._body_bytes = 0
        self._body_wait_s = 0.0
        self._mark: float | None = None
        self._client_turn = False

    def waiting_for_headers(self) -> bool:
        """True between requests or while a request's headers are incomplete."""
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    @property
    def caller(self) -> bytes | None:
        """The ``Authorization`` value of the connection's latest request (None without one): who holds it."""
        return next((v for k, v in self.headers or () if k == b"authorization"), None)

    def _ours(self) -> bool:
        """Whether an incomplete request body waits on the server (paused reading, 100 Continue held back)."""
        return self.flow.read_paused or (self.cycle is not None and self.cycle.waiting_for_100_continue)

    def _account(self) -> None:
        # Errs for the client: a wait that became the client's between two marks counts as the server's.
        now = self.loop.time()
        if self._mark is not None and self._client_turn:
            self._body_wait_s += now - self._mark
        self._mark = now
        self._client_turn = self.conn.their_state is h11.SEND_BODY and not self._ours()

    def body_rate(self) -> float | None:
        """Bytes/s of the request body the server is waiting for; None when it is not waiting on one,
        or has waited less than ``RATE_GRACE_S``."""
        if self._mark is None or self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            return None
        self._account()
        if not self._client_turn or self._body_wait_s < RATE_GRACE_S:
            return None
        return self._body_bytes / self._body_wait_s

    def drop(self, why: str, reply: bytes = b"") -> None:
        self.connections_of_server.discard(self)
        self._cancel_timers()
        if self.transport.is_closing():
            return
        log.debug("closing connection from %s: %s", _peer(self.client), why)
        self.connections_of_server.dropped(why)
        if reply:
            self.transport.write(reply)
            self.transport.close()
        else:
            self.transport.abort()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.connections_of_server.admit(self):
            transport.write(_BUSY)
            transport.close()
            return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections_of_server.discard(self)
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()  # the first bytes of the next request on a kept-alive connection
        receiving = self.conn.their_state is h11.SEND_BODY
        if receiving:
            self._account()
            self._body_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if not receiving:  # a new request body begins
                self._body_bytes, self._body_wait_s, self._mark = 0, 0.0, None
            self._account()
        else:
            self._mark = None
        if state is not h11.IDLE and self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        if state is h11.SEND_BODY:
            self._arm_body_timer()
        elif self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE:
            self.drop("request headers incomplete in time (408)", _REQUEST_TIMEOUT)

    def _arm_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
        self._body_timer = self.loop.call_later(self.limits.body_idle_timeout_s, self._body_timeout)

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            return
        if self._ours() or not self._client_turn:
            # The app has not asked for (more of) the body yet, or did only since the last check (e.g. it
            # just sent 100 Continue): the wait so far is ours, and the client gets a whole period from now.
            self._account()
            self._arm_body_timer()
            return
        self.drop("request body stalled")

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


def guarded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)``: one per server (it holds that server's connections)."""

    class GuardedH11Protocol(_GuardedH11Protocol):
        pass

    GuardedH11Protocol.limits = limits
    GuardedH11Protocol.connections_of_server = _Connections(limits.max_connections)
    return GuardedH11Protocol
