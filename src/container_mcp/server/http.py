"""The MCP HTTP transports (streamable HTTP, SSE) as ASGI apps, with their edge protection.

Every app built here keeps the SDK's DNS-rebinding protection on, whatever the interface: the SDK
turns it off by itself for any host but the loopback ones (``mcp-sdk-2.md`` §3.3), so it is always
passed explicitly, with the lists of ``hosts.py``. Authentication is the ``MCPServer``'s
(``create_server(..., verifier=...)``).

Streamable HTTP sessions outlive their connections (until DELETE or 30 min idle) and the SDK caps
them for everyone at once (``Settings.http_max_sessions``): one key could open them all in seconds
and lock every other caller out for half an hour. So one caller (the SDK's ``AuthorizationContext``
of its token) may hold at most half of them; beyond that it gets the SDK's 503.
"""

from __future__ import annotations

import logging
from typing import Literal

from mcp.server import MCPServer
from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette

from ..hosts import allowed_hosts, allowed_origins
from ..inline import mcp_body_limit
from ..settings import Settings

__all__ = ["HttpTransport", "http_app", "transport_security"]

HttpTransport = Literal["sse", "streamable-http"]

log = logging.getLogger("container_mcp.http")


def transport_security(settings: Settings, host: str) -> TransportSecuritySettings:
    """DNS-rebinding protection for a server bound to ``host``: on, with the allowlists of ``hosts.py``."""
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=allowed_hosts(settings, host),
        allowed_origins=allowed_origins(settings, host),
    )


def http_app(
    mcp: MCPServer, settings: Settings, transport: HttpTransport, host: str, body_limit: int | None = None
) -> Starlette:
    """The ASGI app of ``transport`` for a server bound to ``host``, refusing bodies over ``body_limit``
    (default ``mcp_body_limit(settings)``: a whole file inline as base64, within the inline budget).

    The streamable HTTP app runs its session manager in its lifespan: serve it with lifespan on.
    """
    security = transport_security(settings, host)
    if body_limit is None:
        body_limit = mcp_body_limit(settings)
    if transport == "sse":
        return mcp.sse_app(host=host, max_request_body_size=body_limit, transport_security=security)
    app = mcp.streamable_http_app(
        host=host,
        max_request_body_size=body_limit,
        transport_security=security,
        max_sessions=settings.http_max_sessions,
    )
    _cap_sessions_per_caller(mcp.session_manager, settings.http_max_sessions // 2)
    return app


def _cap_sessions_per_caller(manager: StreamableHTTPSessionManager, share: int) -> None:
    # The SDK admits a session in one private method, given its caller, and has no seam for a
    # per-caller limit; it answers None (503 "Too many open sessions") the same way at its own cap.
    admit = manager._admit_session
    owners = manager._session_owners

    def admit_within_share(requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        if requestor is not None and sum(1 for owner in owners.values() if owner == requestor) >= share:
            log.warning("refused a new streamable HTTP session: this caller holds %d, its share", share)
            return None
        return admit(requestor)

    manager._admit_session = admit_within_share  # type: ignore[method-assign]
