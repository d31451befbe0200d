"""MCP resources: file contents, capabilities and usage.

* ``container://{container_id}/files/{file_id}``: the file's bytes with its own MIME type (text
  for text types, base64 blob otherwise). Registered as a template so clients discover it;
  reads are answered by ``read_middleware`` because the SDK's templates carry one static MIME
  type, and each file has its own.
* ``container://capabilities``: what the provider supports and its limits (JSON).
* ``container://usage``: this session's quota usage (JSON).

``resources/list`` (``list_middleware``) pages through the session's files across its live
containers, after the two static resources, with an opaque cursor.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from mcp import MCPError
from mcp.server import MCPServer
from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context
from mcp.types import (
    INVALID_PARAMS,
    BlobResourceContents,
    ListResourcesResult,
    ReadResourceResult,
    Resource,
    TextResourceContents,
)

from .errors import resource_boundary
from .session import session_key
from .surface import wire
from .tools import ToolDeps, _is_text

__all__ = ["register_resources"]

FILE_TEMPLATE = "container://{container_id}/files/{file_id}"
_FILE_URI = re.compile(r"container://([^/]+)/files/([^/]+)")
CAPABILITIES_URI = "container://capabilities"
USAGE_URI = "container://usage"

Middleware = Any

_MAX_SAFE_INT = 2**53 - 1


def _encode_cursor(cursor: tuple[int, str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(cursor)).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[int, str, str]:
    try:
        created_at, container_id, file_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        # Bounded as the ledgers' orders are exact: SQLite integers are 64-bit, Redis scores doubles.
        if not isinstance(created_at, int) or isinstance(created_at, bool) or abs(created_at) > _MAX_SAFE_INT:
            raise TypeError(created_at)
        return created_at, str(container_id), str(file_id)
    except (ValueError, TypeError, binascii.Error, RecursionError):  # RecursionError: "[[[[..." nested deep
        raise MCPError(
            INVALID_PARAMS, "Invalid cursor: pass the nextCursor of the previous resources/list page."
        ) from None


def register_resources(mcp: MCPServer, deps: ToolDeps) -> None:
    service = deps.service
    page_size = deps.settings.resource_page_size
    max_bytes = deps.settings.max_file_bytes

    async def read_file(owner: str, container_id: str, file_id: str) -> tuple[str, str | bytes]:
        meta, data = await service.read_bytes(owner, container_id, file_id, length=max_bytes)
        mime = meta.mime_type or "application/octet-stream"
        if _is_text(mime):
            try:
                return mime, data.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return mime, data

    @mcp.resource(
        FILE_TEMPLATE,
        title="Container file",
        description="A file's content: text for text types, base64 blob otherwise, with the file's MIME type.",
        mime_type="application/octet-stream",
    )
    async def container_file(container_id: str, file_id: str, ctx: Context) -> bytes:
        # Registered so clients discover the template; reads are answered by read_middleware.
        owner = session_key(ctx.request_context, deps.settings.stdio_session_key)
        with resource_boundary(f"container://{container_id}/files/{file_id}"):
            _, content = await read_file(owner, container_id, file_id)
        return content.encode("utf-8") if isinstance(content, str) else content

    async def read(ctx: ServerRequestContext[Any, Any], uri: str, owner: str) -> ReadResourceResult | None:
        if uri == CAPABILITIES_URI:
            text = service.capabilities.model_dump_json(indent=2)
            return ReadResourceResult(contents=[TextResourceContents(uri=uri, text=text, mime_type="application/json")])
        if uri == USAGE_URI:
            usage = await service.usage(owner)
            return ReadResourceResult(
                contents=[
                    TextResourceContents(uri=uri, text=usage.model_dump_json(indent=2), mime_type="application/json")
                ]
            )
        match = _FILE_URI.fullmatch(uri)
        if match is None:
            return None
        mime, content = await read_file(owner, match[1], match[2])
        if isinstance(content, str):
            return ReadResourceResult(contents=[TextResourceContents(uri=uri, text=content, mime_type=mime)])
        blob = base64.b64encode(content).decode("ascii")
        return ReadResourceResult(contents=[BlobResourceContents(uri=uri, blob=blob, mime_type=mime)])

    async def read_middleware(ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        if ctx.method != "resources/read":
            return await call_next(ctx)
        uri = str((ctx.params or {}).get("uri", ""))
        owner = session_key(ctx, deps.settings.stdio_session_key)
        with resource_boundary(uri):
            result = await read(ctx, uri, owner)
        return wire(ctx, result) if result is not None else await call_next(ctx)

    async def list_middleware(ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        if ctx.method != "resources/list":
            return await call_next(ctx)
        owner = session_key(ctx, deps.settings.stdio_session_key)
        raw_cursor = (ctx.params or {}).get("cursor")
        after = _decode_cursor(str(raw_cursor)) if raw_cursor else None
        resources: list[Resource] = []
        if after is None:
            resources += [
                Resource(
                    uri=CAPABILITIES_URI,
                    name="capabilities",
                    title="Provider capabilities",
                    description="What the provider supports and its limits.",
                    mime_type="application/json",
                ),
                Resource(
                    uri=USAGE_URI,
                    name="usage",
                    title="Session usage",
                    description="This session's usage against every quota.",
                    mime_type="application/json",
                ),
            ]
        with resource_boundary(None):
            files, cursor = await service.file_index(owner, after=after, limit=page_size)
        for f in files:
            resources.append(
                Resource(
                    uri=f"container://{f.container_id}/files/{f.id}",
                    name=f.path,
                    title=f.path.rsplit("/", 1)[-1],
                    description=f"{f.path} in container {f.container_id}",
                    mime_type=f.mime_type or "application/octet-stream",
                    size=f.bytes,
                )
            )
        listed = ListResourcesResult(
            resources=resources, next_cursor=_encode_cursor(cursor) if cursor is not None else None
        )
        return wire(ctx, listed)

    mcp.middleware.append(read_middleware)
    mcp.middleware.append(list_middleware)
    del container_file
