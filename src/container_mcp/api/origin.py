"""ASGI middleware for the REST API: ``Host`` and ``Origin`` checked against the server's ``OriginPolicy``.

The policy, and why it stops DNS rebinding and cross-site requests, is ``hosts.py``. This module
answers a refusal in OpenAI's error envelope: 421 for a foreign ``Host``, 403 for a foreign ``Origin``.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from ..hosts import OriginPolicy
from .errors import api_error_response

__all__ = ["HostOriginCheck"]

log = logging.getLogger("container_mcp.api")


class HostOriginCheck:
    """ASGI middleware: 421 for a ``Host`` not served here, 403 for a foreign ``Origin``."""

    def __init__(self, app: ASGIApp, policy: OriginPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = origin = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
        if host is None or not self.policy.host_allowed(host):
            log.warning("refused a request for Host %r (not an allowed host)", (host or "")[:200])
            shown = f"'{host[:200]}'" if host else "(none)"
            response = api_error_response(
                421,
                f"Host {shown} is not served here. This server answers to {', '.join(self.policy.host_names)}; "
                "to reach it under another name, the operator adds that name to CONTAINER_MCP_ALLOWED_HOSTS.",
                code="invalid_host",
            )
        elif origin is not None and not self.policy.origin_allowed(origin):
            log.warning("refused a request from Origin %r (not an allowed origin)", origin[:200])
            response = api_error_response(
                403,
                f"Origin '{origin[:200]}' is not allowed: web pages of other sites may not call this API. If this "
                "page should, the operator adds its origin to CONTAINER_MCP_ALLOWED_ORIGINS.",
                code="invalid_origin",
            )
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)
