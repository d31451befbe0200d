"""The MCP HTTP transports (streamable HTTP, SSE) as ASGI apps, with their edge protection.

Every app built here keeps the SDK's DNS-rebinding protection on, whatever the interface: the SDK
turns it off by itself for any host but the loopback ones (``mcp-sdk-2.md`` §3.3), so it is always
passed explicitly, with the lists of ``hosts.py``. Authentication is the ``MCPServer``'s
(``create_server(..., verifier=...)``). Building an app also installs the session-id log redaction
(``redact.py``): these transports are where session ids exist.
"""

from __future__ import annotations

import math
from typing import Literal

from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette

from .. import redact
from ..hosts import allowed_hosts, allowed_origins
from ..settings import Settings

__all__ = ["HttpTransport", "http_app", "transport_security"]

HttpTransport = Literal["sse", "streamable-http"]


def transport_security(settings: Settings, host: str) -> TransportSecuritySettings:
    """DNS-rebinding protection for a server bound to ``host``: on, with the allowlists of ``hosts.py``."""
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=allowed_hosts(settings, host),
        allowed_origins=allowed_origins(settings, host),
    )


def http_app(mcp: MCPServer, settings: Settings, transport: HttpTransport, host: str) -> Starlette:
    """The ASGI app of ``transport`` for a server bound to ``host``.

    The streamable HTTP app runs its session manager in its lifespan: serve it with lifespan on.
    """
    redact.install()
    security = transport_security(settings, host)
    # Room for a whole file sent inline as base64, plus the JSON-RPC envelope.
    body_limit = math.ceil(settings.max_file_bytes * 4 / 3) + (1 << 20)
    if transport == "sse":
        return mcp.sse_app(host=host, max_request_body_size=body_limit, transport_security=security)
    return mcp.streamable_http_app(host=host, max_request_body_size=body_limit, transport_security=security)
