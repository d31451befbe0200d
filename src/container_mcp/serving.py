"""Serving an ASGI app on uvicorn the way every HTTP entry point here needs it.

Shared by ``container-mcp api`` and the MCP HTTP transports (SSE, streamable HTTP):

* the listening socket is bound first (``listen``), with ``proto=IPPROTO_TCP`` so asyncio sets
  TCP_NODELAY on accepted connections (uvicorn's own binding leaves the protocol 0, and every
  response written in two parts then waits ~40 ms for a delayed ACK);
* uvicorn's signal handling is replaced: uvicorn re-raises SIGTERM after shutting down, which
  kills the process before the caller's ``async with open_service(...)`` closes the provider and
  the store. Here SIGINT/SIGTERM shut down gracefully and the call returns; a second signal stops
  waiting for open connections;
* connections are guarded (``http_guard.py``: header deadline, body idle timeout, connection cap,
  uvicorn's per-bad-request warnings throttled) and the open-files soft limit is raised to the
  hard limit first.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any, Literal

import anyio
import uvicorn

from .errors import UnsafeConfiguration
from .http_guard import (
    ConnectionLimits,
    connection_limits,
    guarded_protocol,
    quiet_client_noise,
    raise_open_files_limit,
)

__all__ = ["is_loopback", "listen", "refuse_unauthenticated_exposure", "serve_asgi", "server_config"]

log = logging.getLogger("container_mcp")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``): reachable only from this machine."""
    bare = host.strip("[]").lower()
    if bare == "localhost":
        return True
    try:
        return ipaddress.ip_address(bare).is_loopback
    except ValueError:
        return False


def refuse_unauthenticated_exposure(host: str, *, authenticated: bool, command: str) -> None:
    """The one rule for every HTTP entry point: without auth, serve on a loopback address only.

    Raises ``UnsafeConfiguration`` (naming ``command``, e.g. ``container-mcp api``) when ``host`` is
    anything else (``0.0.0.0``, ``::``, a LAN address, a host name) and ``authenticated`` is false. Call
    it before opening anything, so a refused start changes nothing.
    """
    if authenticated or is_loopback(host):
        return
    raise UnsafeConfiguration(
        f"{command}: refusing to serve on {host} without authentication: anyone who can reach it could use "
        "it. Give each caller a key: CONTAINER_MCP_API_KEYS=key1,key2 in the environment or "
        "--api-keys-file FILE (one key per line), or configure OAuth (CONTAINER_MCP_OAUTH_ISSUER_URL, "
        "CONTAINER_MCP_OAUTH_RESOURCE_URL, CONTAINER_MCP_OAUTH_JWKS_URL); or bind to 127.0.0.1."
    )


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket (see the module docstring for why not uvicorn's)."""
    family, type_, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling (see the module docstring)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _stop_on_signal(server: uvicorn.Server, signals: AsyncIterator[int]) -> None:
    async for _ in signals:
        server.force_exit = server.should_exit
        server.should_exit = True


def server_config(app: Any, host: str, port: int, limits: ConnectionLimits, **kwargs: Any) -> uvicorn.Config:
    """uvicorn's config for ``app``, connections guarded by ``limits`` (capped to the open-files limit)."""
    kwargs.setdefault("log_config", None)
    kwargs.setdefault("server_header", False)
    # Nothing here speaks WebSocket; an upgrade would hand the socket to a protocol without the guard
    # (no timeouts, and a connection slot never given back) as soon as a WebSocket library is installed.
    kwargs.setdefault("ws", "none")
    limits = connection_limits(limits, raise_open_files_limit())
    quiet_client_noise()
    return uvicorn.Config(app, host=host, port=port, http=guarded_protocol(limits), **kwargs)


async def serve_asgi(
    app: Any,
    host: str,
    port: int,
    *,
    label: str,
    path: str = "",
    lifespan: Literal["on", "off"] = "off",
    limits: ConnectionLimits | None = None,
) -> None:
    """Serve ``app`` until SIGINT/SIGTERM; logs ``<label> listening on http://host:port<path>`` once,
    at WARNING (shown at the default log level), with the bound port (an IPv6 host in brackets).

    ``limits`` guard every connection (default: ``ConnectionLimits()``; callers pass the settings').
    """
    config = server_config(
        app,
        host,
        port,
        limits or ConnectionLimits(),
        lifespan=lifespan,
        access_log=logging.getLogger("uvicorn.access").isEnabledFor(logging.INFO),
        timeout_graceful_shutdown=10,
    )
    server = _Server(config)
    # Signals are caught before the line is logged: a SIGTERM from a script that waited for it stops
    # the server cleanly instead of killing it.
    with (
        listen(host, port, config.backlog) as sock,
        anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
    ):
        bound_host, bound_port = sock.getsockname()[:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        # At WARNING, the default level: an operator (and a script waiting for the port) must see
        # where the server is without raising the log level.
        log.warning("%s listening on http://%s:%d%s", label, shown, bound_port, path)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_stop_on_signal, server, signals)
            await server.serve(sockets=[sock])
            tg.cancel_scope.cancel()
    log.info("%s stopped", label)
