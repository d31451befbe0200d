"""Request bodies and query strings -> the models the ContainerService takes.

Validation failures become ``InvalidRequest`` with ``param`` naming the field in OpenAI's style
(``expires_after.minutes``, ``file_ids[0]``). Unknown fields are ignored, as OpenAI's SDKs may send
newer ones; ``null`` for an optional field means "not given".
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from pydantic import ValidationError

from ..errors import InvalidRequest
from ..models import ContainerSpec, ListParams

__all__ = ["MAX_JSON_BYTES", "UNSUPPORTED_MEDIA_TYPE", "container_spec", "list_params", "read_json", "require_json"]

MAX_JSON_BYTES = 16 << 20
"""Largest JSON request body read (OpenAI's create body may carry sizeable network secrets)."""

_NOT_JSON = (
    "We could not parse the JSON body of your request. The API expects a JSON object (Content-Type: application/json)."
)
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
"""``InvalidRequest.code`` of a body that is not declared JSON (answered 415)."""

_OPTIONAL = ("expires_after", "memory_limit", "network_policy", "file_ids")


def require_json(content_type: str | None) -> None:
    """Refuse a body not declared as JSON (``application/json`` or ``application/*+json``).

    A browser sends ``text/plain`` (and form) bodies cross-site without asking the server first;
    a JSON content type it does not. So a JSON endpoint that accepts only JSON content types
    cannot be driven by a plain cross-site form or fetch.
    """
    media = (content_type or "").partition(";")[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    shown = f"'{media[:100]}'" if media else "missing"
    raise InvalidRequest(
        f"Unsupported Content-Type ({shown}): this endpoint takes a JSON body. Send it with "
        "Content-Type: application/json.",
        code=UNSUPPORTED_MEDIA_TYPE,
    )


async def read_json(stream: AsyncIterator[bytes]) -> dict[str, Any]:
    """The request body as a JSON object, read up to ``MAX_JSON_BYTES``; ``InvalidRequest`` for anything
    else (not JSON, too large, nested too deeply)."""
    body = bytearray()
    async for chunk in stream:
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise InvalidRequest(f"The JSON body is over {MAX_JSON_BYTES} bytes.")
    try:
        value = json.loads(body) if body.strip() else None
    except ValueError:
        raise InvalidRequest(_NOT_JSON) from None
    except RecursionError:  # arrays/objects nested past the interpreter's recursion limit
        raise InvalidRequest("The JSON body is nested too deeply to parse; send a flatter JSON object.") from None
    if not isinstance(value, dict):
        raise InvalidRequest(_NOT_JSON)
    return value


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _invalid(exc: ValidationError, prefix: tuple[str, ...] = ()) -> InvalidRequest:
    err = exc.errors(include_url=False)[0]
    # Literal/union errors carry the branch name in loc; keep the field path only.
    loc = tuple(p for p in err["loc"] if isinstance(p, int) or not p.startswith(("function-", "literal[")))
    param = _param(prefix + loc) or None
    if err["type"] == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    value = err.get("input")
    shown = json.dumps(value)[:80] if isinstance(value, str | int | float | bool) or value is None else None
    detail = err["msg"].removeprefix("Value error, ")
    got = f" (got {shown})" if shown is not None else ""
    return InvalidRequest(f"Invalid '{param}'{got}: {detail}.", param=param)


def container_spec(body: Mapping[str, Any]) -> ContainerSpec:
    """The create-container body (name required; expires_after, memory_limit, network_policy,
    file_ids optional)."""
    fields = {k: v for k, v in body.items() if k in ("name", *_OPTIONAL) and not (k in _OPTIONAL and v is None)}
    try:
        return ContainerSpec.model_validate(fields)
    except ValidationError as exc:
        raise _invalid(exc) from None


def list_params(query: Mapping[str, str], *, with_name: bool) -> ListParams:
    """``limit`` (1-100), ``order`` (asc|desc), ``after``, and ``name`` on container lists."""
    keys = ("limit", "order", "after", "name") if with_name else ("limit", "order", "after")
    fields = {k: query[k] for k in keys if query.get(k)}
    try:
        return ListParams.model_validate(fields)
    except ValidationError as exc:
        raise _invalid(exc) from None
