"""The MCP HTTP transports (streamable HTTP, SSE) as ASGI apps, with their edge protection.

Every app built here serves the server's metrics at ``/metrics`` (``observe.metrics_route``), and
keeps the SDK's DNS-rebinding protection on, whatever the interface: the SDK turns it off by itself
for any host but the loopback ones (``mcp-sdk-2.md`` §3.3), so it is always passed explicitly,
with the lists of ``hosts.py``. Authentication is the ``MCPServer``'s
(``create_server(..., verifier=...)``).
"""

from __future__ import annotations

from typing import Literal

from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette

from ..hosts import allowed_hosts, allowed_origins
from ..inline import mcp_body_limit
from ..settings import Settings
from .observe import ObservedServer, metrics_route

__all__ = ["HttpTransport", "http_app", "transport_security"]

HttpTransport = Literal["sse", "streamable-http"]


def transport_security(settings: Settings, host: str) -> TransportSecuritySettings:
    """DNS-rebinding protection for a server bound to ``host``: on, with the allowlists of ``hosts.py``."""
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=allowed_hosts(settings, host),
        allowed_origins=allowed_origins(settings, host),
    )


def http_app(
    mcp: ObservedServer, settings: Settings, transport: HttpTransport, host: str, body_limit: int | None = None
) -> Starlette:
    """The ASGI app of ``transport`` for a server bound to ``host``, refusing bodies over ``body_limit``
    (default ``mcp_body_limit(settings)``: a whole file inline as base64, within the inline budget).

    The streamable HTTP app runs its session manager in its lifespan: serve it with lifespan on.
    """
    security = transport_security(settings, host)
    if body_limit is None:
        body_limit = mcp_body_limit(settings)
    if transport == "sse":
        app = mcp.sse_app(host=host, max_request_body_size=body_limit, transport_security=security)
    else:
        app = mcp.streamable_http_app(host=host, max_request_body_size=body_limit, transport_security=security)
    # Added to the built app, not as an SDK custom route: those are never authenticated.
    app.router.routes.append(metrics_route(mcp, security))
    return app
