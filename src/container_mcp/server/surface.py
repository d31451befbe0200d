"""The MCP wire at the boundary: what ``tools/list`` publishes, what ``tools/call`` admits, and
results shaped for the caller's protocol era.

Installed as one middleware (``install_surface``), the SDK's public seam around every message:

* ``tools/list`` answers the compact, closed schemas of ``schema.py``;
* ``tools/call`` with an unknown argument or one outside the published schema is a tool error
  naming the argument and what it admits, before the tool runs (nothing changes);
* ``wire`` shapes a result a middleware answers itself for the negotiated protocol version,
  exactly as the SDK shapes its own handlers' results: a client that negotiated 2025-03-26 never
  sees 2026-era fields (``ttlMs``, ``cacheScope``, ``resultType``).
"""

from __future__ import annotations

from typing import Any

from mcp.server import MCPServer
from mcp.server.context import ServerRequestContext
from mcp.types import CallToolResult, TextContent
from mcp.types.version import MODERN_PROTOCOL_VERSIONS
from mcp_types.methods import serialize_server_result
from pydantic import BaseModel

from .schema import ToolSchemas, argument_error

__all__ = ["install_surface", "wire"]


def wire(ctx: ServerRequestContext[Any, Any], result: BaseModel) -> dict[str, Any]:
    """``result`` of ``ctx.method`` as the wire dict of the negotiated protocol version."""
    version = ctx.protocol_version
    dumped = result.model_dump(by_alias=True, mode="json", exclude_none=True)
    if version is None:
        return dumped
    shaped = serialize_server_result(ctx.method, version, dumped)
    if version in MODERN_PROTOCOL_VERSIONS:
        shaped.setdefault("resultType", "complete")
    return shaped


def install_surface(mcp: MCPServer) -> None:
    """Publish compact schemas and check every call's arguments against them (see the module docstring)."""
    schemas: ToolSchemas | None = None

    async def published() -> ToolSchemas:
        nonlocal schemas
        if schemas is None:
            listed = await mcp.list_tools()
            schemas = ToolSchemas([t.model_dump(by_alias=True, mode="json", exclude_none=True) for t in listed])
        return schemas

    async def surface(ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        if ctx.method == "tools/list":
            result = await call_next(ctx)
            compact = {t["name"]: t for t in (await published()).tools}
            result["tools"] = [{**t, **compact.get(t["name"], {})} for t in result.get("tools", [])]
            return result
        if ctx.method == "tools/call":
            params = ctx.params or {}
            name, arguments = params.get("name"), params.get("arguments") or {}
            tools = await published()
            schema = tools.inputs.get(name) if isinstance(name, str) else None
            if isinstance(name, str) and schema is not None and isinstance(arguments, dict):
                problem = argument_error(name, schema, arguments, tools.validators[name])
                if problem is not None:
                    # Worded like every other tool error the SDK reports, so clients see one shape.
                    text = f"Error executing tool {name}: {problem}"
                    refused = CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)
                    return wire(ctx, refused)
        return await call_next(ctx)

    mcp.middleware.append(surface)
