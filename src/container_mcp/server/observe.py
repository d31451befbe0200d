"""Audit and metrics at the MCP boundary: one record per tool call and per resource read.

``AuditMiddleware`` is the SDK's server middleware (``MCPServer.middleware``): it wraps every
``tools/call`` and ``resources/read`` of every transport, opens the record, and finishes it with
the outcome. The SDK turns a failing tool into an ``isError`` result before middleware sees it, so
``ObservedServer.call_tool`` notes the exception on the way (its chain leads to the
``ContainerMCPError``); a failing resource read reaches the middleware as the raised ``MCPError``.

``metrics_route`` serves the app's metrics at ``/metrics`` on the HTTP transports, behind the same
bearer check as the MCP endpoint (the SDK's own ``RequireAuthMiddleware``, fed by the app-wide
authentication the verifier drives; SDK custom routes are never authenticated) and the same Host
and Origin checks (the transport's ``TransportSecuritySettings``).
"""

from __future__ import annotations

from typing import Any

from mcp.server import MCPServer
from mcp.server.auth.middleware.bearer_auth import RequireAuthMiddleware
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.server.transport_security import TransportSecurityMiddleware, TransportSecuritySettings
from mcp.shared.exceptions import MCPError
from mcp.types import INTERNAL_ERROR, CallToolResult, InputRequiredResult
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..audit import cause, error_type, note_error, recording
from ..observer import Observer
from .session import session_key

__all__ = ["AuditMiddleware", "ObservedServer", "mcp_error_type", "metrics_route"]

_RESOURCE_KINDS = {"container://capabilities": "capabilities", "container://usage": "usage"}


def mcp_error_type(exc: BaseException) -> str:
    """The audit error type of a failed MCP call: the ``ContainerMCPError`` behind it; ``InvalidRequest``
    for the caller's mistakes the SDK refuses itself (bad arguments, unknown tool, a protocol error
    other than an internal one); ``InternalError`` for crashes."""
    if cause(exc) is not None:
        return error_type(exc)
    if isinstance(exc, UnexpectedToolError):
        return "InternalError"
    if isinstance(exc, ToolError):
        return "InvalidRequest"
    if isinstance(exc, MCPError):
        return "InternalError" if exc.error.code == INTERNAL_ERROR else "InvalidRequest"
    return error_type(exc)


class ObservedServer(MCPServer):
    """``MCPServer`` with an ``Observer`` (its audit log and metrics) and tool failures noted for it."""

    observer: Observer

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except Exception as exc:
            note_error(exc, mcp_error_type(exc))
            raise


def _transport(ctx: ServerRequestContext[Any, Any]) -> str:
    request = ctx.request
    if request is None:
        return "stdio"
    path = str(getattr(getattr(request, "url", None), "path", ""))
    return "sse" if path.rstrip("/").endswith("/messages") else "streamable-http"


def _is_error(result: HandlerResult) -> bool:
    if isinstance(result, CallToolResult):
        return result.is_error is True
    return isinstance(result, dict) and result.get("isError") is True


class AuditMiddleware:
    """Server middleware: an audit record per ``tools/call`` and ``resources/read`` (module docstring).

    ``stdio_key`` is ``Settings.stdio_session_key`` (the session key of the stdio user).
    """

    def __init__(self, server: ObservedServer, stdio_key: str) -> None:
        self._server = server
        self._stdio_key = stdio_key
        self._tools: frozenset[str] | None = None

    async def _operation(self, ctx: ServerRequestContext[Any, Any]) -> str | None:
        params = ctx.params or {}
        if ctx.method == "tools/call":
            if self._tools is None:
                self._tools = frozenset(t.name for t in await self._server.list_tools())
            name = params.get("name")
            # Only registered names become labels: a made-up name must not add a metrics series.
            return name if isinstance(name, str) and name in self._tools else "unknown"
        if ctx.method == "resources/read":
            uri = params.get("uri")
            uri = uri if isinstance(uri, str) else ""
            kind = _RESOURCE_KINDS.get(uri) or ("file" if uri.startswith("container://") else "unknown")
            return f"resources/read:{kind}"
        return None

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        operation = await self._operation(ctx)
        if operation is None or ctx.request_id is None:
            return await call_next(ctx)
        observer = self._server.observer
        record = observer.start("mcp", operation, transport=_transport(ctx))
        observer.identify(record, session_key(ctx, self._stdio_key))
        with recording(record):
            try:
                result = await call_next(ctx)
            except Exception as exc:
                note_error(exc, mcp_error_type(exc))
                raise
            except BaseException:
                record.fail("Cancelled")
                raise
            else:
                if _is_error(result) and record.error_type is None:
                    # An error result a tool returned without raising: deliberate, like a ToolError.
                    record.fail("InvalidRequest")
                return result
            finally:
                observer.finish(record)


class _Guarded:
    """ASGI app: the transport's Host/Origin check, then ``app``."""

    def __init__(self, app: Any, security: TransportSecuritySettings) -> None:
        self._app = app
        self._security = TransportSecurityMiddleware(security)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refused = await self._security.validate_request(Request(scope, receive), is_post=False)
        if refused is not None:
            await refused(scope, receive, send)
            return
        await self._app(scope, receive, send)


def metrics_route(server: ObservedServer, security: TransportSecuritySettings) -> Route:
    """``GET /metrics`` of ``server``'s HTTP app (module docstring): checked like the MCP endpoint."""
    endpoint = server.observer.metrics.endpoint

    async def metrics_app(scope: Scope, receive: Receive, send: Send) -> None:
        response: Response = await endpoint(Request(scope, receive))
        await response(scope, receive, send)

    app: Any = metrics_app
    auth = server.settings.auth
    if auth is not None:
        resource_metadata_url = None
        if auth.resource_server_url is not None:
            from mcp.server.auth.routes import build_resource_metadata_url

            resource_metadata_url = build_resource_metadata_url(auth.resource_server_url)
        app = RequireAuthMiddleware(app, auth.required_scopes or [], resource_metadata_url)
    return Route("/metrics", endpoint=_Guarded(app, security), methods=["GET"])
