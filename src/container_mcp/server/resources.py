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
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.types import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    BlobResourceContents,
    ListResourcesResult,
    ReadResourceResult,
    Resource,
    TextResourceContents,
)

from ..errors import ContainerMCPError, InvalidRequest, render
from .errors import resource_errors
from .session import session_key
from .tools import ToolDeps, _is_text

__all__ = ["register_resources"]

FILE_TEMPLATE = "container://{container_id}/files/{file_id}"
_FILE_URI = re.compile(r"container://([^/]+)/files/([^/]+)")
CAPABILITIES_URI = "container://capabilities"
USAGE_URI = "container://usage"

Middleware = Any


def _encode_cursor(cursor: tuple[str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(cursor)).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        container_id, file_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return str(container_id), str(file_id)
    except (ValueError, TypeError, binascii.Error):
        raise MCPError(
            INVALID_PARAMS, "Invalid cursor: pass the nextCursor of the previous resources/list page."
        ) from None


def register_resources(mcp: MCPServer, deps: ToolDeps) -> None:
    service = deps.service
    page_size = deps.settings.resource_page_size
    max_bytes = deps.settings.max_file_bytes

    async def read_file(owner: str, uri: str, container_id: str, file_id: str) -> tuple[str, str | bytes]:
        with resource_errors(uri):
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
        owner = session_key(ctx.request_context, deps.settings.stdio_session_key)
        uri = f"container://{container_id}/files/{file_id}"
        _, content = await read_file(owner, uri, container_id, file_id)
        return content.encode("utf-8") if isinstance(content, str) else content

    async def read_middleware(ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        if ctx.method != "resources/read":
            return await call_next(ctx)
        uri = str((ctx.params or {}).get("uri", ""))
        owner = session_key(ctx, deps.settings.stdio_session_key)
        try:
            if uri == CAPABILITIES_URI:
                text = service.capabilities.model_dump_json(indent=2)
                return ReadResourceResult(
                    contents=[TextResourceContents(uri=uri, text=text, mime_type="application/json")]
                )
            if uri == USAGE_URI:
                with resource_errors(uri):
                    usage = await service.usage(owner)
                return ReadResourceResult(
                    contents=[
                        TextResourceContents(
                            uri=uri, text=usage.model_dump_json(indent=2), mime_type="application/json"
                        )
                    ]
                )
            match = _FILE_URI.fullmatch(uri)
            if match is None:
                return await call_next(ctx)
            mime, content = await read_file(owner, uri, match[1], match[2])
        except ResourceNotFoundError as exc:
            raise MCPError(INVALID_PARAMS, str(exc), {"uri": uri}) from exc
        except ResourceError as exc:
            raise MCPError(INTERNAL_ERROR, str(exc), {"uri": uri}) from exc
        if isinstance(content, str):
            return ReadResourceResult(contents=[TextResourceContents(uri=uri, text=content, mime_type=mime)])
        blob = base64.b64encode(content).decode("ascii")
        return ReadResourceResult(contents=[BlobResourceContents(uri=uri, blob=blob, mime_type=mime)])

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
        try:
            files, cursor = await service.file_index(owner, after=after, limit=page_size)
        except InvalidRequest as exc:
            raise MCPError(INVALID_PARAMS, render(exc, "mcp")) from exc
        except ContainerMCPError as exc:
            raise MCPError(INTERNAL_ERROR, render(exc, "mcp")) from exc
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
        return ListResourcesResult(
            resources=resources, next_cursor=_encode_cursor(cursor) if cursor is not None else None
        )

    mcp.middleware.append(read_middleware)
    mcp.middleware.append(list_middleware)
    del container_file
