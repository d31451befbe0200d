"""``container-mcp api``: the REST API on uvicorn, over the process's one ContainerService."""

from __future__ import annotations

import logging

from ..audit import open_audit_log
from ..auth import open_verifier
from ..http_guard import ConnectionLimits
from ..runtime import open_service
from ..serving import refuse_unauthenticated_exposure, serve_asgi
from ..settings import Settings
from .app import create_app

__all__ = ["serve_api"]

log = logging.getLogger("container_mcp.api")


async def serve_api(settings: Settings, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM. Logs go through ``logging`` (the CLI sends them to stderr).

    Refuses to start (``UnsafeConfiguration``, before opening anything) without API keys or OAuth
    unless ``host`` is a loopback address. With ``port`` 0 the OS picks one; the ``listening on``
    log line (WARNING, shown by default) names it. Requests are audited as ``settings.audit`` says
    (``audit.py``).
    """
    # One read of the keys decides both whether this host may be served and which tokens pass: a keys file
    # emptied while the service opens must not leave a public server without any.
    async with open_verifier(settings) as verifier:
        refuse_unauthenticated_exposure(host, authenticated=verifier.enabled, command="container-mcp api")
        async with open_audit_log(settings.audit) as audit_log, open_service(settings) as service:
            await serve_asgi(
                create_app(service, settings, verifier=verifier, host=host, audit_log=audit_log),
                host,
                port,
                label="container-mcp api",
                path="/v1",
                limits=ConnectionLimits.from_settings(settings),
            )
