"""The JSON the REST API sends: OpenAI's objects, key for key and byte for byte.

OpenAI answers with JSON indented by two spaces, keys in a fixed order (see the recordings in
``shared/fixtures/openai-recordings``); we do the same. The models' additions that OpenAI does
not have (``expires_at``, ``mime_type``, ``sha256``) are left out, so a strict client sees exactly
OpenAI's shapes.
"""

from __future__ import annotations

import json
import mimetypes
import posixpath
import unicodedata
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

from starlette.responses import Response

from ..models import Container, ContainerDeleted, ContainerFile, FileDeleted, Page

__all__ = [
    "container_json",
    "content_disposition",
    "content_type",
    "deleted_json",
    "file_json",
    "json_response",
    "page_json",
]

T = TypeVar("T", Container, ContainerFile)


def container_json(c: Container) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": c.id,
        "object": "container",
        "created_at": c.created_at,
        "status": c.status,
        "expires_after": {"anchor": c.expires_after.anchor, "minutes": c.expires_after.minutes},
        "last_active_at": c.last_active_at,
    }
    if c.memory_limit is not None:
        out["memory_limit"] = c.memory_limit
    out["name"] = c.name
    if c.network_policy is not None:
        policy: dict[str, Any] = {"type": c.network_policy.type}
        if c.network_policy.allowed_domains is not None:
            policy["allowed_domains"] = list(c.network_policy.allowed_domains)
        out["network_policy"] = policy
    return out


def file_json(f: ContainerFile) -> dict[str, Any]:
    return {
        "id": f.id,
        "object": "container.file",
        "created_at": f.created_at,
        "bytes": f.bytes,
        "container_id": f.container_id,
        "path": f.path,
        "source": f.source,
    }


def page_json(page: Page[T], item: Callable[[T], dict[str, Any]]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [item(x) for x in page.data],
        "first_id": page.first_id,
        "has_more": page.has_more,
        "last_id": page.last_id,
    }


def deleted_json(d: ContainerDeleted | FileDeleted) -> dict[str, Any]:
    return {"id": d.id, "object": d.object, "deleted": d.deleted}


def json_response(body: dict[str, Any], status: int = 200) -> Response:
    return Response(json.dumps(body, indent=2, ensure_ascii=False), status_code=status, media_type="application/json")


def content_type(path: str, mime_type: str | None = None) -> str:
    """The Content-Type of a file's content: type-specific, text in UTF-8, else octet-stream."""
    mime = mime_type or mimetypes.guess_type(path, strict=False)[0] or "application/octet-stream"
    if mime.startswith("text/") and "charset" not in mime:
        mime += "; charset=utf-8"
    return mime


def _ascii_fallback(name: str) -> str:
    out: list[str] = []
    for ch in name:
        folded = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode("ascii") or "_"
        out.append("".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\%;' else "_" for c in folded))
    return "".join(out).strip() or "file"


def content_disposition(path: str) -> str:
    """``attachment`` with an ASCII ``filename`` and the exact basename as RFC 5987 ``filename*``."""
    name = posixpath.basename(path) or "file"
    return f"attachment; filename=\"{_ascii_fallback(name)}\"; filename*=UTF-8''{quote(name, safe='')}"
