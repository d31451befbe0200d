"""The OpenAI Containers API's wire format, and its failures mapped into the error tree.

Private to ``openai.py``: JSON bodies are parsed into the models and built from them here (see
``openai-containers-api.md``), so OpenAI's quirks stop at this module. Nothing here sends a request.

Upstream failures map into the error tree in one table, ``STATUS_ERRORS`` plus ``error_class``,
refined by the call in ``ErrorMap.for_status``:

==========================================  ==========================================
upstream                                    raised
==========================================  ==========================================
any 4xx on a container-scoped call whose    ``ContainerExpired``
message says the container is expired
(OpenAI: 400 "Container is expired.")
400, 413, 422 and other 4xx                 ``InvalidRequest`` (upstream ``param`` kept)
401, 403                                    ``ProviderAuthError`` (names the key settings)
404 on ``/containers/{id}...``              ``ContainerNotFound``, or ``FileNotFound`` on a
                                            file call whose message does not name the
                                            container
404 on ``/containers`` itself               ``ProviderError`` (hints at the base URL)
408                                         ``ProviderUnavailable``
409                                         ``ProviderError``
429                                         ``ProviderRateLimited`` (``retry_after`` set from
                                            ``retry-after-ms`` / ``retry-after``)
>= 500                                      ``ProviderUnavailable``
connection errors, timeouts                 ``ProviderUnavailable`` (``status`` None)
1xx/3xx, or a 2xx body that does not parse  ``ProviderError``
==========================================  ==========================================

Every error mapped from an HTTP answer, whatever its class, carries ``status`` and ``request_id``
(``x-request-id``), and its message keeps the upstream message and ends with both, e.g.
``(HTTP 404, request id req_1)``, so a model can quote them. The domain errors with fixed messages
(``ContainerNotFound``, ``FileNotFound``, ``ContainerExpired``) add the upstream message only when
their own text does not already say it. The API key never appears in a message or a repr:
``ErrorMap.scrub`` removes it from upstream text before use.
"""

from __future__ import annotations

import email.utils
import math
import mimetypes
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import httpx2
from pydantic import SecretStr, ValidationError

from ..clock import Clock
from ..errors import (
    ContainerExpired,
    ContainerMCPError,
    ContainerNotFound,
    FileNotFound,
    Hint,
    InvalidRequest,
    NotFound,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
)
from ..models import (
    MAX_EXPIRY_MINUTES,
    MEMORY_LIMITS,
    MIN_EXPIRY_MINUTES,
    Container,
    ContainerDeleted,
    ContainerFile,
    ContainerSpec,
    FileDeleted,
    ListParams,
    NetworkPolicy,
    Page,
)

__all__ = [
    "CREATE_CONTAINER",
    "LIST_CONTAINERS",
    "STATUS_ERRORS",
    "BadWire",
    "Call",
    "ErrorMap",
    "as_dict",
    "container_call",
    "container_from_wire",
    "containers_from_wire",
    "deleted_from_wire",
    "error_class",
    "file_call",
    "file_from_wire",
    "files_from_wire",
    "list_query",
    "retry_after",
    "spec_to_wire",
    "upload_call",
    "upload_content_type",
    "upload_name",
]

_D = TypeVar("_D", ContainerDeleted, FileDeleted)
_E = TypeVar("_E", bound=ContainerMCPError)
_Item = TypeVar("_Item", Container, ContainerFile)

_MAX_MESSAGE_CHARS = 1000
_KEY_HINT = "Check OPENAI_API_KEY / CONTAINER_MCP_OPENAI_API_KEY"
_UPSTREAM_PREFIX = re.compile(r"^[0-9a-f]{32}-(?=.)")


@dataclass(frozen=True)
class Call:
    """One upstream operation: what it is, for retries and for error messages."""

    method: str
    path: str
    idempotent: bool = True
    container_id: str | None = None
    file_id: str | None = None
    action: str = ""
    check: Hint | None = None
    """For a call that may have taken effect: how the caller finds out, per surface."""


CREATE_CONTAINER = Call(
    "POST",
    "/containers",
    idempotent=False,
    action="create the container",
    check=Hint(
        mcp="List your containers with container_list before trying again.",
        rest="List your containers with GET /v1/containers before trying again.",
    ),
)
LIST_CONTAINERS = Call("GET", "/containers")


def container_call(method: str, container_id: str, suffix: str = "") -> Call:
    return Call(method, f"/containers/{quote(container_id, safe='')}{suffix}", container_id=container_id)


def file_call(method: str, container_id: str, file_id: str, suffix: str = "") -> Call:
    path = f"/containers/{quote(container_id, safe='')}/files/{quote(file_id, safe='')}{suffix}"
    return Call(method, path, container_id=container_id, file_id=file_id)


def upload_call(container_id: str, filename: str) -> Call:
    return Call(
        "POST",
        f"/containers/{quote(container_id, safe='')}/files",
        idempotent=False,
        container_id=container_id,
        action=f"upload {filename}",
        check=Hint(
            mcp="List the container's files with file_list before trying again.",
            rest=f"List the container's files with GET /v1/containers/{container_id}/files before trying again.",
        ),
    )


# --- parsing -----------------------------------------------------------------------------


class BadWire(Exception):
    """A 2xx body that is not the expected object."""


def as_dict(data: object, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise BadWire(f"expected a {what} object, got {type(data).__name__}")
    return dict(data)


def container_from_wire(data: object) -> Container:
    d = as_dict(data, "container")
    status = d.get("status")
    # Only 'running' and 'expired' have been observed; the docs mention 'active' and 'deleted'.
    d["status"] = "expired" if status in ("expired", "deleted") else "running"
    if "memory_limit" in d and d["memory_limit"] not in MEMORY_LIMITS:
        d["memory_limit"] = None  # unknown tier: keep the container, drop the field
    expires = d.get("expires_after")
    if isinstance(expires, dict) and isinstance(expires.get("minutes"), int):
        minutes = min(max(expires["minutes"], MIN_EXPIRY_MINUTES), MAX_EXPIRY_MINUTES)
        d["expires_after"] = {"anchor": "last_active_at", "minutes": minutes}
    else:
        d.pop("expires_after", None)
    policy = d.get("network_policy")
    try:
        d["network_policy"] = NetworkPolicy.model_validate(policy) if policy is not None else None
    except ValidationError:
        d["network_policy"] = None
    d.pop("expires_at", None)
    container = Container.model_validate(d)
    if container.status == "running" and container.last_active_at is not None:
        expires_at = container.last_active_at + container.expires_after.minutes * 60
        container = container.model_copy(update={"expires_at": expires_at})
    return container


def file_from_wire(data: object) -> ContainerFile:
    d = as_dict(data, "container.file")
    d.setdefault("bytes", None)  # null for files the model wrote
    d.setdefault("source", "user")
    if isinstance(d.get("path"), str):
        d["mime_type"] = mimetypes.guess_type(d["path"])[0]
    d.pop("sha256", None)
    return ContainerFile.model_validate(d)


def _page(page: type[Page[_Item]], data: object, item: Callable[[object], _Item]) -> Page[_Item]:
    d = as_dict(data, "list")
    items = [item(entry) for entry in d.get("data") or []]
    return page(
        data=items,
        first_id=d.get("first_id") or (items[0].id if items else None),
        last_id=d.get("last_id") or (items[-1].id if items else None),
        has_more=bool(d.get("has_more")),
    )


def containers_from_wire(data: object) -> Page[Container]:
    return _page(Page[Container], data, container_from_wire)


def files_from_wire(data: object) -> Page[ContainerFile]:
    return _page(Page[ContainerFile], data, file_from_wire)


def deleted_from_wire(data: object, model: type[_D], object_id: str) -> _D:
    return model.model_validate({"id": object_id, **as_dict(data, "deleted")})


# --- request bodies ----------------------------------------------------------------------


def spec_to_wire(spec: ContainerSpec) -> dict[str, Any]:
    policy: dict[str, Any] = {"type": spec.network_policy.type}
    if spec.network_policy.type == "allowlist":
        policy["allowed_domains"] = list(spec.network_policy.allowed_domains or [])
    body: dict[str, Any] = {
        "name": spec.name,
        "expires_after": {"anchor": spec.expires_after.anchor, "minutes": spec.expires_after.minutes},
        "memory_limit": spec.memory_limit,
        "network_policy": policy,
    }
    if spec.file_ids:
        body["file_ids"] = list(spec.file_ids)
    return body


def list_query(params: ListParams) -> dict[str, str | int]:
    query: dict[str, str | int] = {"limit": params.limit, "order": params.order}
    if params.after is not None:
        query["after"] = params.after
    return query


def upload_name(path: str) -> str:
    """The multipart filename for ``path``: its basename, less an upstream ``<32 hex>-`` prefix."""
    return _UPSTREAM_PREFIX.sub("", posixpath.basename(path)) or "file"


def upload_content_type(filename: str) -> str:
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


# --- headers -----------------------------------------------------------------------------


def retry_after(headers: httpx2.Headers, clock: Clock) -> float | None:
    """The server's advice in seconds: ``retry-after-ms``, else ``retry-after`` (seconds or an
    HTTP date, read against ``clock``); None when absent, unreadable, not positive or not finite."""
    seconds: float | None = None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            seconds = float(ms) / 1000
        except ValueError:
            seconds = None
    if seconds is None and (value := headers.get("retry-after")) is not None:
        try:
            seconds = float(value)
        except ValueError:
            try:
                seconds = email.utils.parsedate_to_datetime(value).timestamp() - clock()
            except (TypeError, ValueError):
                seconds = None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds > 0 else None


# --- the one status -> error table -------------------------------------------------------

STATUS_ERRORS: dict[int, type[ContainerMCPError]] = {
    400: InvalidRequest,
    401: ProviderAuthError,
    403: ProviderAuthError,
    404: NotFound,  # refined by the call: ContainerNotFound / FileNotFound / ProviderError
    408: ProviderUnavailable,
    409: ProviderError,
    413: InvalidRequest,
    422: InvalidRequest,
    429: ProviderRateLimited,
}


def error_class(status: int) -> type[ContainerMCPError]:
    if status in STATUS_ERRORS:
        return STATUS_ERRORS[status]
    if status >= 500:
        return ProviderUnavailable
    if 400 <= status < 500:
        return InvalidRequest
    return ProviderError


@dataclass(frozen=True)
class _Upstream:
    message: str
    param: str | None
    code: str | None


def _upstream_of(response: httpx2.Response) -> _Upstream:
    """The error envelope's message/param/code, tolerant of non-OpenAI bodies."""
    try:
        body: Any = response.json()
    except ValueError:
        text = response.text.strip()
        return _Upstream(text or response.reason_phrase or "no message", None, None)
    inner = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(inner, dict):
        message = inner.get("message") or inner.get("detail") or body.get("detail")
        param, code = inner.get("param"), inner.get("code")
        return _Upstream(
            str(message) if message else str(body),
            param if isinstance(param, str) else None,
            code if isinstance(code, str) else None,
        )
    return _Upstream(str(inner), None, None)


def _plural(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


def _answered(error: _E, message: str, where: str, status: int, request_id: str | None) -> _E:
    """``error`` (a domain error with a fixed message) with the upstream answer added.

    The upstream message is appended unless the fixed text already says it, then ``where``.
    """
    said = message.strip().rstrip(".").lower()
    text = error.message if said and said in error.message.lower() else f"{error.message} The backend said: {message}"
    error.message = f"{text} ({where})"
    error.args = (error.message,)
    error.status, error.request_id = status, request_id
    return error


@dataclass(frozen=True)
class ErrorMap:
    """Builds one provider's mapped errors: every message names ``base_display`` (the base URL
    without credentials) where it helps, and never the API key."""

    base_display: str
    api_key: SecretStr | None
    read_timeout_s: float
    clock: Clock

    def scrub(self, text: str) -> str:
        """``text`` with the API key replaced by ``***``."""
        secret = self.api_key.get_secret_value() if self.api_key is not None else ""
        return text.replace(secret, "***") if secret else text

    def for_status(self, response: httpx2.Response, call: Call, attempts: int) -> ContainerMCPError:
        """The error for a non-2xx ``response`` to ``call`` after ``attempts`` tries."""
        status = response.status_code
        # Everything the upstream sent back is scrubbed: a proxy may echo the key in any field.
        raw_request_id = response.headers.get("x-request-id")
        request_id = self.scrub(raw_request_id) if raw_request_id is not None else None
        upstream = _upstream_of(response)
        message = self.scrub(upstream.message)[:_MAX_MESSAGE_CHARS]
        param = self.scrub(upstream.param) if upstream.param is not None else None
        where = f"HTTP {status}" + (f", request id {request_id}" if request_id else "")
        fields: dict[str, Any] = {"status": status, "request_id": request_id, "param": param}
        cls = error_class(status)
        hint: Hint | None = None
        if call.container_id is not None and 400 <= status < 500 and status not in (401, 403, 408, 429):
            lowered = message.lower()
            if "expired" in lowered or upstream.code == "container_expired":
                return _answered(ContainerExpired(call.container_id), message, where, status, request_id)
            if cls is NotFound:
                if call.file_id is not None and not lowered.startswith("container"):
                    missing: NotFound = FileNotFound(call.container_id, call.file_id)
                else:
                    missing = ContainerNotFound(call.container_id)
                return _answered(missing, message, where, status, request_id)
        if cls is InvalidRequest:
            return InvalidRequest(f"The backend rejected the request: {message} ({where})", **fields)
        if cls is ProviderRateLimited:
            wait = retry_after(response.headers, self.clock)
            after = f"{wait:g} s" if wait is not None else "a minute"
            text = (
                f"The backend is rate limiting requests: {message} ({where}); gave up after "
                f"{_plural(attempts)}. Wait {after} and try again."
            )
            return ProviderRateLimited(text, retry_after=wait, **fields)
        if cls is ProviderAuthError:
            scope = " and OPENAI_ORG_ID / OPENAI_PROJECT_ID" if status == 403 else ""
            text = (
                f"The backend refused the credentials: {message} ({where}). {_KEY_HINT}{scope}; this is "
                "an operator setting, and retrying will not help."
            )
        elif cls is ProviderUnavailable and not call.idempotent and status != 408:
            text = (
                f"The backend failed while trying to {call.action}: {message} ({where}). The request may "
                "or may not have taken effect."
            )
            hint = call.check
        elif cls is ProviderUnavailable:
            text = f"The backend failed: {message} ({where}) after {_plural(attempts)}. Try again later."
        elif cls is NotFound:  # 404 on /containers itself
            cls = ProviderError
            text = (
                f"The backend answered {call.method} {call.path}: {message} ({where}). Unless the message "
                f"names a missing file, check CONTAINER_MCP_OPENAI_BASE_URL ({self.base_display}); it "
                "should point at an OpenAI-compatible /v1."
            )
        elif status == 409:
            text = f"The backend reported a conflict: {message} ({where}) after {_plural(attempts)}. Try again."
        else:
            text = f"The backend answered unexpectedly: {message} ({where})."
        error_cls = cls if issubclass(cls, ProviderError) else ProviderError
        return error_cls(text, hint=hint, **fields)

    def for_body(self, response: httpx2.Response, call: Call, exc: Exception) -> ProviderError:
        """The error for a 2xx ``response`` whose body did not parse (``exc``)."""
        return ProviderError(
            self.scrub(
                f"The backend answered {call.method} {call.path} with HTTP {response.status_code} but a "
                f"body that is not the expected object ({type(exc).__name__}). Check "
                f"CONTAINER_MCP_OPENAI_BASE_URL ({self.base_display}) points at an OpenAI-compatible /v1."
            ),
            status=response.status_code,
            request_id=self.scrub(response.headers.get("x-request-id") or "") or None,
        )

    def for_scheme(self, exc: httpx2.UnsupportedProtocol) -> ProviderError:
        """The error for a base URL that is not http(s)."""
        return ProviderError(
            self.scrub(
                f"CONTAINER_MCP_OPENAI_BASE_URL ({self.base_display}) is not an http(s) URL ({exc}). "
                "Ask the operator to fix it, e.g. https://api.openai.com/v1."
            )
        )

    def for_transport(
        self, exc: httpx2.RequestError, call: Call, attempts: int, *, nothing_sent: bool
    ) -> ProviderUnavailable:
        """The error for a request that got no HTTP answer (``status`` None)."""
        kind = type(exc).__name__
        detail = f"{kind}: {exc}" if str(exc) else kind
        hint: Hint | None = None
        if nothing_sent:
            text = (
                f"Could not connect to the backend at {self.base_display} ({detail}) after "
                f"{_plural(attempts)}; nothing was sent. Check the network and CONTAINER_MCP_OPENAI_BASE_URL, "
                "then try again."
            )
        elif not call.idempotent:
            text = (
                f"The connection to the backend failed while trying to {call.action} ({detail}). The "
                "request may or may not have taken effect."
            )
            hint = call.check
        elif isinstance(exc, httpx2.ReadTimeout):
            text = (
                f"The backend at {self.base_display} did not answer within {self.read_timeout_s:g} s "
                f"({_plural(attempts)}). Try again later."
            )
        else:
            text = f"The connection to the backend failed ({detail}) after {_plural(attempts)}. Try again later."
        return ProviderUnavailable(self.scrub(text), hint=hint)
