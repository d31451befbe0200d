"""Request bodies and query strings -> the models the ContainerService takes.

Validation failures become ``InvalidRequest`` with ``param`` naming the field in OpenAI's style
(``expires_after.minutes``, ``file_ids[0]``); ``null`` for an optional field means "not given".

The API fails closed: a field it cannot honour is refused, never dropped. OpenAI fields no provider
here supports (``UNSUPPORTED_CREATE_FIELDS``: ``skills``, ``network_policy.domain_secrets``) and
any unknown body field or query parameter are a 400 naming the field, before anything is created
(OpenAI itself answers "Unrecognized request argument supplied" to an unknown body field).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from pydantic import ValidationError
from starlette.datastructures import QueryParams

from ..errors import InvalidRequest
from ..models import UNSUPPORTED_CREATE_FIELDS, ContainerSpec, ListParams

__all__ = [
    "CONTAINER_LIST_QUERY",
    "FILE_LIST_QUERY",
    "MAX_JSON_BYTES",
    "UNSUPPORTED_MEDIA_TYPE",
    "check_fields",
    "check_query",
    "container_spec",
    "list_params",
    "read_json",
    "require_json",
]

MAX_JSON_BYTES = 16 << 20
"""Largest JSON request body read (OpenAI's create body may carry sizeable network secrets)."""

_NOT_JSON = (
    "We could not parse the JSON body of your request. The API expects a JSON object (Content-Type: application/json)."
)
UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
"""``InvalidRequest.code`` of a body that is not declared JSON (answered 415)."""

CONTAINER_LIST_QUERY = ("limit", "order", "after", "name")
FILE_LIST_QUERY = ("limit", "order", "after")

_OPTIONAL = ("expires_after", "memory_limit", "network_policy", "file_ids")
_CREATE_FIELDS: dict[str, tuple[str, ...]] = {
    "": ("name", *_OPTIONAL),
    "expires_after": ("anchor", "minutes"),
    "network_policy": ("type", "allowed_domains"),
}
"""The create body's accepted keys, at the top level and inside its objects."""


def _listed(names: tuple[str, ...]) -> str:
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def check_fields(body: Mapping[str, Any], accepted: Mapping[str, tuple[str, ...]]) -> None:
    """Refuse a key of ``body`` (or of one of its objects named in ``accepted``) not accepted there.

    ``accepted`` maps an object's dotted path ("" for the body itself) to its keys. An OpenAI field
    this server does not honour names why; any other key is unrecognized. Raises ``InvalidRequest``
    with ``param`` the dotted path of the first such key; nothing has been done yet.
    """
    for path, keys in accepted.items():
        obj = body.get(path) if path else body
        if not isinstance(obj, Mapping):
            continue  # absent or mistyped: validation names it
        for key in obj:
            if key in keys:
                continue
            param = f"{path}.{key}" if path else str(key)
            why = UNSUPPORTED_CREATE_FIELDS.get(param)
            if why is not None:
                raise InvalidRequest(
                    f"'{param}' is not supported: {why}, so the request was refused and nothing was created. "
                    f"Send it without '{param}' (GET /openapi.json lists the fields this server accepts).",
                    param=param,
                    code="unsupported_parameter",
                )
            shown = str(key)[:80]
            where = f" in '{path}'" if path else ""
            raise InvalidRequest(
                f"Unrecognized request argument supplied: '{shown}'{where}. Nothing was created; the accepted "
                f"fields{where} are {_listed(keys)}.",
                param=param[:120],
                code="unknown_parameter",
            )


def check_query(query: QueryParams, accepted: tuple[str, ...]) -> None:
    """Refuse a query parameter not in ``accepted`` (none, for routes that take none), or one given
    twice: only one value would be used (``?limit=1000&limit=1`` answered with the last), so which
    one the caller meant is a guess."""
    for key in query:
        if key in accepted and (count := len(query.getlist(key))) > 1:
            raise InvalidRequest(
                f"Query parameter '{key[:80]}' is given {count} times; give it once. Nothing was done.",
                param=key[:120],
            )
        if key not in accepted:
            takes = f"takes only {_listed(accepted)}" if accepted else "takes no query parameters"
            raise InvalidRequest(
                f"Unrecognized query parameter: '{key[:80]}'. This endpoint {takes}.",
                param=key[:120],
                code="unknown_parameter",
            )


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
    file_ids optional; any other field refused, see ``check_fields``)."""
    check_fields(body, _CREATE_FIELDS)
    fields = {k: v for k, v in body.items() if k in ("name", *_OPTIONAL) and not (k in _OPTIONAL and v is None)}
    try:
        return ContainerSpec.model_validate(fields)
    except ValidationError as exc:
        raise _invalid(exc) from None


def list_params(query: Mapping[str, str], *, with_name: bool) -> ListParams:
    """``limit`` (1-100), ``order`` (asc|desc), ``after``, and ``name`` on container lists."""
    keys = CONTAINER_LIST_QUERY if with_name else FILE_LIST_QUERY
    fields = {k: query[k] for k in keys if query.get(k)}
    try:
        return ListParams.model_validate(fields)
    except ValidationError as exc:
        raise _invalid(exc) from None
