"""``container-mcp api``: the REST API on uvicorn, over the process's one ContainerService."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
from collections.abc import Iterator

import anyio
import uvicorn

from ..runtime import open_service
from ..settings import Settings
from .app import create_app
from .auth import is_loopback

__all__ = ["listen", "serve_api"]

log = logging.getLogger("container_mcp.api")


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket, bound before uvicorn starts so the bound port is known at once.

    Made with ``proto=IPPROTO_TCP`` (from getaddrinfo): asyncio sets TCP_NODELAY only on accepted
    sockets whose protocol says TCP, and without it every response written in two parts (headers,
    then body) waits ~40 ms for a delayed ACK. uvicorn's own ``Config.bind_socket`` leaves the
    protocol 0 and has that delay.
    """
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


async def serve_api(settings: Settings, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM. Logs go through ``logging`` (the CLI sends them to stderr).

    Refuses to start (``SystemExit``) without API keys unless ``host`` is a loopback address. With
    ``port`` 0 the OS picks one; the ``listening on`` log line (INFO) names it.
    """
    if not settings.all_api_keys() and not is_loopback(host):
        raise SystemExit(
            f"container-mcp api: refusing to serve on {host} without API keys: anyone who can reach it could use "
            "it. Give --api-key KEY (repeatable), --api-keys-file FILE or CONTAINER_MCP_API_KEYS, or bind to "
            "127.0.0.1."
        )
    async with open_service(settings) as service:
        config = uvicorn.Config(
            create_app(service, settings),
            host=host,
            port=port,
            log_config=None,
            lifespan="off",
            access_log=logging.getLogger("uvicorn.access").isEnabledFor(logging.INFO),
            server_header=False,
            timeout_graceful_shutdown=10,
        )
        server = _Server(config)
        with listen(host, port, config.backlog) as sock:
            bound_host, bound_port = sock.getsockname()[:2]
            log.info("container-mcp api listening on http://%s:%d/v1", bound_host, bound_port)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_stop_on_signal, server)
                await server.serve(sockets=[sock])
                tg.cancel_scope.cancel()
    log.info("container-mcp api stopped")


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: uvicorn re-raises SIGTERM after shutting down,
    which would kill the process before ``open_service`` closes the provider and the store."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _stop_on_signal(server: uvicorn.Server) -> None:
    """SIGINT or SIGTERM: graceful shutdown; a second one: stop waiting for open connections."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            server.force_exit = server.should_exit
            server.should_exit = True
