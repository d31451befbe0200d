"""The OpenAPI 3.1 document served at ``/openapi.json``: the nine operations with OpenAI's
operationIds (``openai-containers-api.md`` §8) and the shapes this server sends.

Hand-written rather than generated, so it states the wire contract (OpenAI's key set, nullable
list ids, the error envelope) instead of our internal models. ``tests/api/test_openapi.py`` checks
it against the app's route table.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..models import UNSUPPORTED_CREATE_FIELDS

__all__ = ["openapi_document"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": _ref(name)}}}


_ERRORS = {
    str(status): {"description": text, **_json("ErrorResponse")}
    for status, text in [
        (
            400,
            "Invalid request (an unknown or unsupported field or query parameter, named in param), or the "
            "container is expired.",
        ),
        (401, "Missing or wrong API key."),
        (403, "A per-key quota (live containers, files per container) is used up."),
        (404, "No such container or file for this key."),
        (413, "The file is over the per-file or per-key byte limit; nothing was stored."),
        (429, "Too many requests per minute; see Retry-After."),
        (502, "The backend failed."),
    ]
}

_CONTAINER_ID = {"name": "container_id", "in": "path", "required": True, "schema": {"type": "string"}}
_FILE_ID = {"name": "file_id", "in": "path", "required": True, "schema": {"type": "string"}}
_PAGING = [
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
    {"name": "order", "in": "query", "schema": {"type": "string", "enum": ["asc", "desc"], "default": "desc"}},
    {
        "name": "after",
        "in": "query",
        "description": "An object id (exclusive): pass the last id of the previous page.",
        "schema": {"type": "string"},
    },
]


def _op(operation_id: str, summary: str, ok: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "tags": ["Containers"],
        **extra,
        "responses": {"200": {"description": "OK", **ok}, **_ERRORS},
    }


_SCHEMAS: dict[str, Any] = {
    "ExpiresAfter": {
        "type": "object",
        "additionalProperties": False,
        "required": ["anchor", "minutes"],
        "properties": {
            "anchor": {"type": "string", "enum": ["last_active_at"]},
            "minutes": {"type": "integer", "minimum": 1, "maximum": 1440},
        },
    },
    "NetworkPolicy": {
        "type": "object",
        "additionalProperties": False,
        "description": "OpenAI's domain_secrets is not supported: a request carrying it is refused (400).",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "enum": ["disabled", "allowlist"]},
            "allowed_domains": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": 253},
                "minItems": 1,
                "maxItems": 256,
                "description": "Host names (a name includes its subdomains; '*.' only as the leading label) or "
                "public IP addresses. No URL, path or port; loopback, private, link-local and other non-public "
                "addresses are refused unless the operator opened them.",
            },
        },
    },
    "ContainerResource": {
        "type": "object",
        "required": ["id", "object", "name", "created_at", "status"],
        "properties": {
            "id": {"type": "string", "description": "'cntr_' + 48 hex."},
            "object": {"type": "string", "enum": ["container"]},
            "created_at": {"type": "integer", "description": "Unix seconds."},
            "status": {"type": "string", "enum": ["running", "expired"]},
            "expires_after": _ref("ExpiresAfter"),
            "last_active_at": {"type": ["integer", "null"]},
            "memory_limit": {"type": "string", "enum": ["1g", "4g", "16g", "64g"]},
            "name": {"type": "string"},
            "network_policy": _ref("NetworkPolicy"),
        },
    },
    "ContainerFileResource": {
        "type": "object",
        "required": ["id", "object", "created_at", "bytes", "container_id", "path", "source"],
        "properties": {
            "id": {"type": "string", "description": "'cfile_' + 32 hex."},
            "object": {"type": "string", "enum": ["container.file"]},
            "created_at": {"type": "integer"},
            "bytes": {"type": ["integer", "null"]},
            "container_id": {"type": "string"},
            "path": {"type": "string", "description": "Absolute path under /mnt/data."},
            "source": {"type": "string", "description": "'user' for uploads, 'assistant' for files commands wrote."},
        },
    },
    "CreateContainerBody": {
        "type": "object",
        "additionalProperties": False,
        "description": "Fails closed: any other field is refused with 400 naming it, including OpenAI's "
        + " and ".join(UNSUPPORTED_CREATE_FIELDS)
        + ", which this server cannot honour. Nothing is created then.",
        "x-unsupported-fields": list(UNSUPPORTED_CREATE_FIELDS),
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 256},
            "expires_after": _ref("ExpiresAfter"),
            "file_ids": {
                "type": "array",
                "items": {"type": "string"},
                "description": "'cfile_' ids of files in your other running containers, copied with their paths.",
            },
            "memory_limit": {"type": "string", "enum": ["1g", "4g", "16g", "64g"], "default": "1g"},
            "network_policy": _ref("NetworkPolicy"),
        },
    },
    "CreateContainerFileBody": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "file": {
                "type": "string",
                "format": "binary",
                "description": "The upload; stored at /mnt/data/<basename of its filename>, replacing a file there.",
            },
            "file_id": {"type": "string", "description": "A 'cfile_' id of one of your files, copied (path kept)."},
        },
    },
    "DeletedObject": {
        "type": "object",
        "required": ["id", "object", "deleted"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "enum": ["container.deleted", "container.file.deleted"]},
            "deleted": {"type": "boolean"},
        },
    },
    "ErrorResponse": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
}


def _list_schema(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["object", "data", "first_id", "has_more", "last_id"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _ref(item)},
            "first_id": {"type": ["string", "null"], "description": "Null when data is empty."},
            "has_more": {"type": "boolean"},
            "last_id": {"type": ["string", "null"], "description": "The last item's id; null when data is empty."},
        },
    }


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the document."""
    body = {"required": True, "content": {"application/json": {"schema": _ref("CreateContainerBody")}}}
    file_body = {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": _ref("CreateContainerFileBody")},
            "application/json": {"schema": _ref("CreateContainerFileBody")},
        },
    }
    name_filter = {"name": "name", "in": "query", "description": "Exact container name.", "schema": {"type": "string"}}
    content = {
        "description": "The raw bytes, with a type-specific Content-Type and Content-Disposition: attachment.",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "container-mcp Containers API",
            "version": __version__,
            "description": "OpenAI-compatible /v1/containers, served by `container-mcp api`.",
        },
        "servers": [{"url": "/v1"}],
        "security": [{"ApiKeyAuth": []}],
        "tags": [{"name": "Containers"}],
        "paths": {
            "/containers": {
                "post": _op("CreateContainer", "Create Container", _json("ContainerResource"), requestBody=body),
                "get": _op(
                    "ListContainers",
                    "List Containers",
                    _json("ContainerListResource"),
                    parameters=[*_PAGING, name_filter],
                ),
            },
            "/containers/{container_id}": {
                "get": _op(
                    "RetrieveContainer", "Retrieve Container", _json("ContainerResource"), parameters=[_CONTAINER_ID]
                ),
                "delete": _op(
                    "DeleteContainer", "Delete a container", _json("DeletedObject"), parameters=[_CONTAINER_ID]
                ),
            },
            "/containers/{container_id}/files": {
                "post": _op(
                    "CreateContainerFile",
                    "Create a Container File",
                    _json("ContainerFileResource"),
                    parameters=[_CONTAINER_ID],
                    requestBody=file_body,
                ),
                "get": _op(
                    "ListContainerFiles",
                    "List Container files",
                    _json("ContainerFileListResource"),
                    parameters=[_CONTAINER_ID, *_PAGING],
                ),
            },
            "/containers/{container_id}/files/{file_id}": {
                "get": _op(
                    "RetrieveContainerFile",
                    "Retrieve Container File",
                    _json("ContainerFileResource"),
                    parameters=[_CONTAINER_ID, _FILE_ID],
                ),
                "delete": _op(
                    "DeleteContainerFile",
                    "Delete Container File",
                    _json("DeletedObject"),
                    parameters=[_CONTAINER_ID, _FILE_ID],
                ),
            },
            "/containers/{container_id}/files/{file_id}/content": {
                "get": _op(
                    "RetrieveContainerFileContent",
                    "Retrieve Container File Content",
                    content,
                    parameters=[_CONTAINER_ID, _FILE_ID],
                ),
            },
        },
        "components": {
            "securitySchemes": {"ApiKeyAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                **_SCHEMAS,
                "ContainerListResource": _list_schema("ContainerResource"),
                "ContainerFileListResource": _list_schema("ContainerFileResource"),
            },
        },
    }
