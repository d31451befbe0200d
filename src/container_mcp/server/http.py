"""The MCP HTTP transports (streamable HTTP, SSE) as ASGI apps, with their edge protection.

Every app built here serves the server's metrics at ``/metrics`` (``observe.metrics_route``), and
keeps the SDK's DNS-rebinding protection on, whatever the interface: the SDK turns it off by itself
for any host but the loopback ones (``mcp-sdk-2.md`` §3.3), so it is always passed explicitly,
with the server's ``hosts.OriginPolicy`` in the SDK's list form. Authentication is the ``MCPServer``'s
(``create_server(..., verifier=...)``). Building an app also installs the session-id log redaction
(``redact.py``): these transports are where session ids exist.
"""

from __future__ import annotations

from typing import Literal

from mcp.server.streamable_http_manager import DEFAULT_SESSION_IDLE_TIMEOUT
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette
from starlette.routing import Route

from .. import redact
from ..clock import Clock, system_clock
from ..hosts import OriginPolicy
from ..inline import mcp_body_limit
from ..settings import Settings
from .observe import ObservedServer, metrics_route
from .session_cap import SessionCap, SseSessionCap

__all__ = ["HttpTransport", "http_app", "transport_security"]

HttpTransport = Literal["sse", "streamable-http"]

_STREAMABLE_PATH = "/mcp"
_SSE_PATH = "/sse"


def _route(app: Starlette, path: str) -> Route:
    """The SDK's route for ``path``; its ``app`` runs behind the SDK's authentication middleware."""
    (route,) = [r for r in app.routes if isinstance(r, Route) and r.path == path]
    return route


def transport_security(settings: Settings, host: str) -> TransportSecuritySettings:
    """DNS-rebinding protection for a server bound to ``host``: on, with the policy of ``hosts.py``."""
    policy = OriginPolicy.from_settings(settings, host)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=policy.sdk_hosts(), allowed_origins=policy.sdk_origins()
    )


def http_app(
    mcp: ObservedServer,
    settings: Settings,
    transport: HttpTransport,
    host: str,
    body_limit: int | None = None,
    *,
    clock: Clock = system_clock,
) -> Starlette:
    """The ASGI app of ``transport`` for a server bound to ``host``, refusing bodies over ``body_limit``
    (default ``mcp_body_limit(settings)``: a whole file inline as base64, within the inline budget).

    The streamable HTTP app runs its session manager in its lifespan: serve it with lifespan on.
    It holds at most ``settings.max_sessions_per_owner`` handshake-era (or SSE) sessions per token
    owner (``session_cap.py``; ``clock`` times the idle expiry of streamable HTTP sessions).
    """
    redact.install()
    security = transport_security(settings, host)
    if body_limit is None:
        body_limit = mcp_body_limit(settings)
    if transport == "sse":
        app = mcp.sse_app(host=host, max_request_body_size=body_limit, transport_security=security)
        stream = _route(app, _SSE_PATH)
        stream.app = SseSessionCap(stream.app, limit=settings.max_sessions_per_owner)
    else:
        app = mcp.streamable_http_app(
            host=host,
            max_request_body_size=body_limit,
            transport_security=security,
            session_idle_timeout=DEFAULT_SESSION_IDLE_TIMEOUT,
            max_sessions=settings.http_max_sessions,
        )
        # Behind the SDK's authentication (it reads the caller's AccessToken), in front of its session manager.
        endpoint = _route(app, _STREAMABLE_PATH)
        endpoint.app = SessionCap(
            endpoint.app,
            limit=settings.max_sessions_per_owner,
            idle_timeout_s=DEFAULT_SESSION_IDLE_TIMEOUT,
            clock=clock,
        )
    # Added to the built app, not as an SDK custom route: those are never authenticated.
    app.router.routes.append(metrics_route(mcp, security))
    return app
