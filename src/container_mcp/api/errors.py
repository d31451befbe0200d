"""The single outbound mapping of the REST API: ContainerMCPError -> OpenAI's error envelope.

Every error answers ``{"error": {"message", "type", "param", "code"}}`` with the status below; the
message is the error's REST rendering (``render(exc, "rest")``: its facts, then its hint in routes
and fields), except where OpenAI's own wording is kept (not found, expired).
The status is chosen for what the official SDK does with it: it retries 408, 409, 429 and >= 500
(``x-should-retry: false`` stops that), so only a limit that clears by waiting is a 429.

=========================  ======  =====================  ======================================
error                      status  type                   notes
=========================  ======  =====================  ======================================
InvalidRequest (+ path,    400     invalid_request_error  ``param`` names the field; 415 for a
id)                                                       body that is not declared JSON
NotFound (+ container,     404     invalid_request_error  OpenAI's own messages:
file)                                                     "Container with id '…' not found."
ContainerExpired           400     invalid_request_error  "Container is expired." first
QuotaExceeded              403     invalid_request_error  a per-key limit waiting won't clear;
                                                          413 for a byte limit (below)
FileTooLarge               413     invalid_request_error  also QuotaExceeded on session bytes
RateLimited                429     requests               ``Retry-After``: whole seconds
Unsupported                400     invalid_request_error  the backend cannot do it
ExecError                  500     server_error           ``x-should-retry: false``
SandboxUnavailable         503     server_error           ``x-should-retry: false``
StateUnavailable           503     server_error           retryable (the Redis ledger is down)
ProviderError              502     server_error           an upstream 4xx keeps its status
ProviderAuthError          502     server_error           the server's upstream key; no retry
ProviderRateLimited        429     requests               upstream's ``Retry-After`` passed on
ProviderUnavailable        502     server_error           retryable (upstream 5xx, timeouts)
=========================  ======  =====================  ======================================

Every class of the tree has its own row; ``tests/api/test_errors.py`` fails on a subclass
without one, so a new error class cannot slip through unmapped. An error raised by code outside
the tree's module falls back to its nearest mapped ancestor.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from starlette.responses import Response

from ..errors import (
    ContainerExpired,
    ContainerMCPError,
    ContainerNotFound,
    ExecError,
    FileNotFound,
    FileTooLarge,
    InvalidId,
    InvalidPath,
    InvalidRequest,
    NotFound,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    SandboxUnavailable,
    StateUnavailable,
    UnsafeConfiguration,
    Unsupported,
    render,
)

__all__ = [
    "ERROR_TABLE",
    "ErrorSpec",
    "api_error_response",
    "error_response",
    "spec_for",
]

INVALID = "invalid_request_error"
SERVER = "server_error"
RATE = "requests"

BYTE_LIMITS = frozenset({"CONTAINER_MCP_MAX_FILE_BYTES", "CONTAINER_MCP_MAX_SESSION_BYTES"})
"""Quota settings whose breach answers 413: the request carried more bytes than may be stored."""


@dataclass(frozen=True)
class ErrorSpec:
    status: int
    type: str
    retry: bool | None = None
    """``x-should-retry``: None sends nothing (the SDK decides by status)."""


ERROR_TABLE: dict[type[ContainerMCPError], ErrorSpec] = {
    ContainerMCPError: ErrorSpec(500, SERVER, retry=False),
    InvalidRequest: ErrorSpec(400, INVALID),
    InvalidPath: ErrorSpec(400, INVALID),
    InvalidId: ErrorSpec(400, INVALID),
    NotFound: ErrorSpec(404, INVALID),
    ContainerNotFound: ErrorSpec(404, INVALID),
    FileNotFound: ErrorSpec(404, INVALID),
    ContainerExpired: ErrorSpec(400, INVALID),
    QuotaExceeded: ErrorSpec(403, INVALID),
    FileTooLarge: ErrorSpec(413, INVALID),
    RateLimited: ErrorSpec(429, RATE),
    Unsupported: ErrorSpec(400, INVALID),
    UnsafeConfiguration: ErrorSpec(500, SERVER, retry=False),  # raised at start, before any request
    ExecError: ErrorSpec(500, SERVER, retry=False),
    SandboxUnavailable: ErrorSpec(503, SERVER, retry=False),
    StateUnavailable: ErrorSpec(503, SERVER),
    ProviderError: ErrorSpec(502, SERVER),
    ProviderAuthError: ErrorSpec(502, SERVER, retry=False),
    ProviderRateLimited: ErrorSpec(429, RATE),
    ProviderUnavailable: ErrorSpec(502, SERVER),
}


def _row(exc: ContainerMCPError) -> ErrorSpec:
    # Every class has its own row (the test enforces it); the MRO walk covers subclasses that
    # other code defines outside the tree's module.
    for cls in type(exc).__mro__:
        spec = ERROR_TABLE.get(cls)
        if spec is not None:
            return spec
    return ERROR_TABLE[ContainerMCPError]  # pragma: no cover


def spec_for(exc: ContainerMCPError) -> ErrorSpec:
    """The table row for ``exc``, refined where the instance says more than its class."""
    spec = _row(exc)
    if isinstance(exc, InvalidRequest) and exc.code == "unsupported_media_type":
        return ErrorSpec(415, INVALID)
    if isinstance(exc, QuotaExceeded) and not isinstance(exc, RateLimited) and exc.limit_name in BYTE_LIMITS:
        return ErrorSpec(413, INVALID)
    if type(exc) is ProviderError and exc.status is not None and 400 <= exc.status < 500:
        # An upstream 4xx describes the caller's request: keep it (409 stays retryable, as upstream).
        return ErrorSpec(exc.status, INVALID)
    return spec


def _message(exc: ContainerMCPError) -> str:
    if isinstance(exc, ContainerNotFound):
        return f"Container with id '{exc.container_id}' not found."
    if isinstance(exc, FileNotFound):
        return f"File {exc.file_id} not found on container {exc.container_id}."
    if isinstance(exc, ContainerExpired):
        return (
            f"Container is expired. {exc.container_id} was inactive past its expires_after window and its files "
            "were discarded; an expired container cannot be reactivated. Create a new container "
            "(POST /v1/containers) and upload the files again."
        )
    return render(exc, "rest")


def api_error_response(
    status: int,
    message: str,
    *,
    type: str = INVALID,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An error in OpenAI's envelope (indented like OpenAI's own error bodies)."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    content = json.dumps(body, indent=4, ensure_ascii=False) + "\n"
    return Response(content, status_code=status, media_type="application/json", headers=headers)


def error_response(exc: ContainerMCPError) -> Response:
    """The response for any error of the tree."""
    spec = spec_for(exc)
    headers: dict[str, str] = {}
    if spec.retry is not None:
        headers["x-should-retry"] = "true" if spec.retry else "false"
    retry_after = exc.retry_after if isinstance(exc, RateLimited | ProviderRateLimited) else None
    if retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(retry_after)))
    code = "rate_limit_exceeded" if spec.status == 429 else exc.code
    return api_error_response(spec.status, _message(exc), type=spec.type, param=exc.param, code=code, headers=headers)
