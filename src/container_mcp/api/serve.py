"""``container-mcp api``: the REST API on uvicorn, over the process's one ContainerService."""

from __future__ import annotations

import logging

from ..http_guard import ConnectionLimits
from ..runtime import open_service
from ..serving import serve_asgi
from ..settings import Settings
from .app import create_app
from .auth import is_loopback
from .origin import OriginPolicy

__all__ = ["serve_api"]

log = logging.getLogger("container_mcp.api")


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
    try:
        OriginPolicy(host, settings.allowed_hosts, settings.allowed_origins)
    except ValueError as exc:
        raise SystemExit(f"container-mcp api: {exc}") from None
    async with open_service(settings) as service:
        await serve_asgi(
            create_app(service, settings, host),
            host,
            port,
            label="container-mcp api",
            path="/v1",
            limits=ConnectionLimits.from_settings(settings),
        )
