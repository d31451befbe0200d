"""OpenAI's hosted Containers API, or any server that speaks it, as a ``Provider``.

One pooled ``httpx2.AsyncClient`` per process carries every call. It is injected (tests pass an
``httpx2.MockTransport`` or ``httpx2.ASGITransport``); when none is given the provider builds one
and closes it in ``aclose()``. Every request names its absolute URL and sends its own headers and
timeout, so a client shared with other code is never reconfigured. The wire format (see
``openai-containers-api.md``) is parsed here and nowhere else.

What the hosted API cannot do, and what this provider does instead:

* There is no exec endpoint (code runs only through the Responses API's code_interpreter tool),
  so ``capabilities.exec`` is False and ``exec`` raises ``Unsupported``.
* Uploads keep only the file name: the API stores ``/mnt/data/<32 hex>-<name>`` whatever the
  requested directory (``capabilities.file_paths == "basename"``).
* There is no server-side copy: ``copy_file`` streams the content down to a temporary file and
  uploads it again.
* There is no read that leaves ``last_active_at`` alone: ``get_container(touch=False)`` makes the
  same call as ``touch=True``.
* There are no ranged reads: ``read_file`` skips ``offset`` bytes of the stream and stops after
  ``length``.

Retries follow the official SDK: up to ``max_retries`` more attempts after 408, 409, 429, >= 500,
``x-should-retry: true``, connection errors and timeouts; none after ``x-should-retry: false``.
The delay is ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date) when the server sends
one of at most 60 s, else ``min(0.5 * 2**n, 8)`` seconds less up to 25 % jitter. The two POSTs
(container create, file upload) are not idempotent: one retried after it may have reached the
server could make a second container or file. They are retried only when nothing was sent (a
connect error or connect/pool timeout) or when the server said it did nothing (408, 429, or 503
with ``x-should-retry: true``). After a 5xx, a dropped connection or a read timeout they raise
``ProviderUnavailable`` saying the operation may or may not have happened and how to check.

Upstream failures map into the error tree in one table, ``_STATUS_ERRORS`` plus ``_error_class``:

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
429                                         ``ProviderRateLimited``
>= 500                                      ``ProviderUnavailable``
connection errors, timeouts                 ``ProviderUnavailable`` (``status`` None)
1xx/3xx, or a 2xx body that does not parse  ``ProviderError``
==========================================  ==========================================

``ProviderError`` and its subclasses carry ``status`` and ``request_id`` (``x-request-id``). The
domain errors (``InvalidRequest``, ``NotFound``, ``ContainerExpired``) have no such fields, so their
message ends with the status and request id and their ``__cause__`` is a ``ProviderError`` holding
the upstream message, status and request id; ``upstream_error()`` finds it. The API key never
appears in a message or a repr: upstream text is scrubbed of it before use.
"""

from __future__ import annotations

import email.utils
import logging
import mimetypes
import os
import posixpath
import random as _random
import re
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self, TypeVar
from urllib.parse import quote

import anyio
import httpx2
from pydantic import SecretStr, ValidationError

from .. import __version__
from ..clock import Clock, system_clock
from ..errors import (
    ContainerExpired,
    ContainerMCPError,
    ContainerNotFound,
    FileNotFound,
    FileTooLarge,
    InvalidRequest,
    NotFound,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
    Unsupported,
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
from ..settings import Settings
from ..uploads import BytesUpload, Upload
from .base import ApproveChanges, Capabilities, ExecRequest, ExecResult, FileChanges, ProgressCallback

__all__ = ["OpenAIProvider", "upstream_error"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")
_D = TypeVar("_D", ContainerDeleted, FileDeleted)

Sleep = Callable[[float], Awaitable[None]]
"""Waits the given seconds (``anyio.sleep``; tests inject a recorder)."""

Random = Callable[[], float]
"""Returns a float in [0, 1) (``random.random``), the jitter source."""

INITIAL_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 8.0
MAX_RETRY_AFTER = 60.0
_MAX_MESSAGE_CHARS = 1000
_KEY_HINT = "Check OPENAI_API_KEY / CONTAINER_MCP_OPENAI_API_KEY"
_UPSTREAM_PREFIX = re.compile(r"^[0-9a-f]{32}-(?=.)")

_CAPABILITIES = Capabilities(
    provider="openai",
    exec=False,
    exec_unavailable_reason=(
        "OpenAI's hosted Containers API has no exec endpoint; code runs in its containers only "
        "through the Responses API's code_interpreter tool"
    ),
    memory_limits=list(MEMORY_LIMITS),
    network_policies=["disabled", "allowlist"],
    # Undocumented upstream. The only evidence (a third-party report in openai-containers-api.md
    # §10) is a 400 "Expected a value <= 20", and 20 is also the default and the documented idle
    # expiry, so offer 1-20 rather than let longer values fail upstream.
    expiry_minutes_range=(1, 20),
    file_paths="basename",
    upstream_file_ids=True,
    max_file_bytes=None,
)


# --- the one status -> error table ---------------------------------------------------------

_STATUS_ERRORS: dict[int, type[ContainerMCPError]] = {
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


def _error_class(status: int) -> type[ContainerMCPError]:
    if status in _STATUS_ERRORS:
        return _STATUS_ERRORS[status]
    if status >= 500:
        return ProviderUnavailable
    if 400 <= status < 500:
        return InvalidRequest
    return ProviderError


def upstream_error(exc: BaseException) -> ProviderError | None:
    """The upstream details behind ``exc``: itself if a ``ProviderError``, else its cause's."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ProviderError):
            return seen
        seen = seen.__cause__
    return None


@dataclass(frozen=True)
class _Call:
    """One upstream operation: what it is, for retries and for error messages."""

    method: str
    path: str
    idempotent: bool = True
    container_id: str | None = None
    file_id: str | None = None
    action: str = ""
    check: str = ""


@dataclass(frozen=True)
class _Upstream:
    message: str
    param: str | None
    code: str | None


# --- wire parsing (private: OpenAI's quirks stop here) -------------------------------------


class _BadWire(Exception):
    pass


def _as_dict(data: object, what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise _BadWire(f"expected a {what} object, got {type(data).__name__}")
    return dict(data)


def _container_from_wire(data: object) -> Container:
    d = _as_dict(data, "container")
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


def _file_from_wire(data: object) -> ContainerFile:
    d = _as_dict(data, "container.file")
    d.setdefault("bytes", None)  # null for files the model wrote
    d.setdefault("source", "user")
    if isinstance(d.get("path"), str):
        d["mime_type"] = mimetypes.guess_type(d["path"])[0]
    d.pop("sha256", None)
    return ContainerFile.model_validate(d)


def _containers_from_wire(data: object) -> Page[Container]:
    d = _as_dict(data, "list")
    items = [_container_from_wire(item) for item in d.get("data") or []]
    return Page[Container](
        data=items,
        first_id=d.get("first_id") or (items[0].id if items else None),
        last_id=d.get("last_id") or (items[-1].id if items else None),
        has_more=bool(d.get("has_more")),
    )


def _files_from_wire(data: object) -> Page[ContainerFile]:
    d = _as_dict(data, "list")
    items = [_file_from_wire(item) for item in d.get("data") or []]
    return Page[ContainerFile](
        data=items,
        first_id=d.get("first_id") or (items[0].id if items else None),
        last_id=d.get("last_id") or (items[-1].id if items else None),
        has_more=bool(d.get("has_more")),
    )


def _spec_to_wire(spec: ContainerSpec) -> dict[str, Any]:
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


def _upload_name(path: str) -> str:
    """The multipart filename for ``path``: its basename, less an upstream ``<32 hex>-`` prefix."""
    return _UPSTREAM_PREFIX.sub("", posixpath.basename(path)) or "file"


def _too_large(size: int, max_bytes: int, *, exact: bool = True) -> FileTooLarge:
    amount = f"{size} bytes" if exact else f"more than {max_bytes} bytes"
    return FileTooLarge(
        f"File too large: {amount}; the limit is {max_bytes} bytes per file. Split the file, or ask "
        "the operator to raise CONTAINER_MCP_MAX_FILE_BYTES.",
        limit_name="CONTAINER_MCP_MAX_FILE_BYTES",
        limit=max_bytes,
        used=size,
    )


def _plural(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


# --- the provider ------------------------------------------------------------------------


class OpenAIProvider:
    """Containers on OpenAI's hosted API (or LiteLLM, or ``container-mcp api``).

    ``client`` is the process's pooled ``httpx2.AsyncClient``; when None, one is built with the
    given timeouts and closed by ``aclose()``. ``clock`` (Unix seconds) reads HTTP-date
    ``retry-after`` headers; ``sleep`` and ``random`` drive the retry delays so tests never wait.
    """

    name = "openai"

    def __init__(
        self,
        client: httpx2.AsyncClient | None = None,
        *,
        base_url: str = "https://api.openai.com/v1",
        api_key: SecretStr | None = None,
        organization: str | None = None,
        project: str | None = None,
        extra_headers: dict[str, str] | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 600.0,
        max_retries: int = 2,
        clock: Clock = system_clock,
        sleep: Sleep = anyio.sleep,
        random: Random = _random.random,
    ) -> None:
        self._timeout = httpx2.Timeout(read_timeout_s, connect=connect_timeout_s)
        self._owns_client = client is None
        self._client = client if client is not None else httpx2.AsyncClient(timeout=self._timeout)
        url = httpx2.URL(base_url.rstrip("/"))
        self._base_url = str(url)
        self._base_display = str(url.copy_with(username=None, password=None, query=None))
        self._api_key = api_key
        self._read_timeout_s = read_timeout_s
        self._max_retries = max_retries
        self._clock = clock
        self._sleep = sleep
        self._random = random
        headers = {"Accept": "application/json", "User-Agent": f"container-mcp/{__version__}"}
        if organization:
            headers["OpenAI-Organization"] = organization
        if project:
            headers["OpenAI-Project"] = project
        headers.update(extra_headers or {})
        self._headers = headers

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        client: httpx2.AsyncClient | None = None,
        clock: Clock = system_clock,
        sleep: Sleep = anyio.sleep,
        random: Random = _random.random,
    ) -> OpenAIProvider:
        """Build the provider from the ``openai_*`` settings."""
        return cls(
            client,
            base_url=settings.openai_base_url,
            api_key=settings.openai_api_key,
            organization=settings.openai_organization,
            project=settings.openai_project,
            extra_headers=dict(settings.openai_extra_headers),
            connect_timeout_s=settings.openai_connect_timeout_s,
            read_timeout_s=settings.openai_read_timeout_s,
            max_retries=settings.openai_max_retries,
            clock=clock,
            sleep=sleep,
            random=random,
        )

    def __repr__(self) -> str:
        return f"OpenAIProvider(base_url={self._base_display!r})"

    @property
    def capabilities(self) -> Capabilities:
        return _CAPABILITIES

    # --- lifecycle -------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Close the HTTP client if this provider built it; an injected one stays open."""
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- containers ------------------------------------------------------------------------

    async def create_container(self, spec: ContainerSpec) -> Container:
        """POST /containers with every field of ``spec``; never retried once it may have arrived."""
        call = _Call(
            "POST",
            "/containers",
            idempotent=False,
            action="create the container",
            check="list your containers with container_list",
        )
        response = await self._send(call, json=_spec_to_wire(spec))
        return self._parse(response, call, _container_from_wire)

    async def get_container(self, container_id: str, *, touch: bool = True) -> Container:
        """GET /containers/{id}. The API has no read that leaves ``last_active_at`` alone, so
        ``touch=False`` makes the same call (and may refresh the container's activity)."""
        call = _Call("GET", f"/containers/{quote(container_id, safe='')}", container_id=container_id)
        return self._parse(await self._send(call), call, _container_from_wire)

    async def list_containers(self, params: ListParams) -> Page[Container]:
        """GET /containers with ``limit``, ``order`` and, when set, ``after`` and ``name``."""
        call = _Call("GET", "/containers")
        query = self._query(params)
        if params.name is not None:
            query["name"] = params.name
        return self._parse(await self._send(call, params=query), call, _containers_from_wire)

    async def delete_container(self, container_id: str) -> ContainerDeleted:
        call = _Call("DELETE", f"/containers/{quote(container_id, safe='')}", container_id=container_id)
        response = await self._send(call)
        return self._deleted(response, call, ContainerDeleted, container_id)

    # --- files -----------------------------------------------------------------------------

    async def create_file(
        self,
        container_id: str,
        path: str,
        upload: Upload,
        *,
        max_bytes: int | None = None,
        approve: ApproveChanges | None = None,
    ) -> ContainerFile:
        """Upload ``upload`` as multipart part ``file`` named after ``path``'s basename.

        A host file (``upload.host_path``) is streamed from disk, in-memory bytes are sent as
        they are, and any other stream is spooled to a temporary file first, so memory stays
        flat. ``FileTooLarge`` is raised, and nothing sent, when the size exceeds ``max_bytes``;
        ``approve`` sees the size before the first byte goes out. The stored path is
        ``/mnt/data/<32 hex>-<basename>``: the API picks the directory.
        """
        async with _opened(upload, max_bytes) as (content, size):
            if approve is not None:
                await approve(FileChanges(created=[path], files_delta=1, bytes_delta=size, largest_file_bytes=size))
            return await self._upload(container_id, posixpath.basename(path) or "file", content)

    async def copy_file(
        self,
        src_container_id: str,
        src_file_id: str,
        dst_container_id: str,
        *,
        approve: ApproveChanges | None = None,
    ) -> ContainerFile:
        """Download the file (streamed to a temporary file) and upload it to the destination.

        The API cannot copy between containers. The copy keeps the file name (less the upstream
        ``<32 hex>-`` prefix, which the upload adds anew); ``approve`` runs before the upload.
        """
        meta = await self.get_file(src_container_id, src_file_id)
        async with anyio.TemporaryFile("w+b") as spool:
            size = 0
            async with aclosing(self.read_file(src_container_id, src_file_id)) as chunks:
                async for chunk in chunks:
                    await spool.write(chunk)
                    size += len(chunk)
            await spool.seek(0)
            if approve is not None:
                await approve(
                    FileChanges(created=[meta.path], files_delta=1, bytes_delta=size, largest_file_bytes=size)
                )
            return await self._upload(dst_container_id, _upload_name(meta.path), spool.wrapped)

    async def list_files(self, container_id: str, params: ListParams) -> Page[ContainerFile]:
        """GET /containers/{id}/files with ``limit``, ``order`` and, when set, ``after``."""
        call = _Call("GET", f"/containers/{quote(container_id, safe='')}/files", container_id=container_id)
        return self._parse(await self._send(call, params=self._query(params)), call, _files_from_wire)

    async def get_file(self, container_id: str, file_id: str) -> ContainerFile:
        call = self._file_call("GET", container_id, file_id)
        return self._parse(await self._send(call), call, _file_from_wire)

    async def delete_file(self, container_id: str, file_id: str) -> FileDeleted:
        call = self._file_call("DELETE", container_id, file_id)
        return self._deleted(await self._send(call), call, FileDeleted, file_id)

    async def read_file(
        self, container_id: str, file_id: str, *, offset: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Stream GET .../content from ``offset``, at most ``length`` bytes.

        The API serves whole files only, so ``offset`` bytes are read and dropped, and the
        download stops once ``length`` bytes are out. Errors come on first iteration.
        """
        call = self._file_call("GET", container_id, file_id, suffix="/content")
        response = await self._send(call, stream=True, accept="application/octet-stream")
        try:
            skip, remaining = offset, length
            if remaining == 0:
                return
            async for chunk in response.aiter_bytes():
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk, skip = chunk[skip:], 0
                if remaining is not None:
                    if len(chunk) >= remaining:
                        yield chunk[:remaining]
                        return
                    remaining -= len(chunk)
                yield chunk
        except httpx2.RequestError as exc:
            raise ProviderUnavailable(
                self._scrub(
                    f"The download of {file_id} broke off ({type(exc).__name__}: {exc or 'no detail'}). "
                    "Read the file again."
                )
            ) from exc
        finally:
            await response.aclose()

    async def exec(
        self,
        container_id: str,
        request: ExecRequest,
        *,
        approve: ApproveChanges,
        progress: ProgressCallback | None = None,
    ) -> ExecResult:
        """Always raises ``Unsupported``: see ``capabilities.exec_unavailable_reason``."""
        raise Unsupported(
            f"The openai provider cannot run commands: {_CAPABILITIES.exec_unavailable_reason}. Use a "
            "provider with exec (e.g. 'local'), or run code through the Responses API."
        )

    # --- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _query(params: ListParams) -> dict[str, str | int]:
        query: dict[str, str | int] = {"limit": params.limit, "order": params.order}
        if params.after is not None:
            query["after"] = params.after
        return query

    @staticmethod
    def _file_call(method: str, container_id: str, file_id: str, suffix: str = "") -> _Call:
        path = f"/containers/{quote(container_id, safe='')}/files/{quote(file_id, safe='')}{suffix}"
        return _Call(method, path, container_id=container_id, file_id=file_id)

    async def _upload(self, container_id: str, filename: str, content: bytes | IO[bytes]) -> ContainerFile:
        call = _Call(
            "POST",
            f"/containers/{quote(container_id, safe='')}/files",
            idempotent=False,
            container_id=container_id,
            action=f"upload {filename}",
            check="list the container's files with file_list",
        )
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        response = await self._send(call, files={"file": (filename, content, content_type)})
        return self._parse(response, call, _file_from_wire)

    def _scrub(self, text: str) -> str:
        if self._api_key is not None:
            secret = self._api_key.get_secret_value()
            if secret:
                text = text.replace(secret, "***")
        return text

    def _request(
        self,
        call: _Call,
        *,
        params: dict[str, str | int] | None,
        json: dict[str, Any] | None,
        files: dict[str, tuple[str, bytes | IO[bytes], str]] | None,
        accept: str,
    ) -> httpx2.Request:
        headers = {**self._headers, "Accept": accept}
        if self._api_key is not None:
            headers["Authorization"] = f"Bearer {self._api_key.get_secret_value()}"
        return self._client.build_request(
            call.method,
            self._base_url + call.path,
            params=params,
            json=json,
            files=files,
            headers=headers,
            timeout=self._timeout,
        )

    async def _send(
        self,
        call: _Call,
        *,
        params: dict[str, str | int] | None = None,
        json: dict[str, Any] | None = None,
        files: dict[str, tuple[str, bytes | IO[bytes], str]] | None = None,
        stream: bool = False,
        accept: str = "application/json",
    ) -> httpx2.Response:
        """Send with retries; return a 2xx response (open when ``stream``) or raise the mapped error."""
        retries = 0
        while True:
            # Rebuilt each attempt: a multipart body rewinds its file when rendered again.
            request = self._request(call, params=params, json=json, files=files, accept=accept)
            try:
                response = await self._client.send(request, stream=stream)
            except httpx2.UnsupportedProtocol as exc:
                raise ProviderError(
                    self._scrub(
                        f"CONTAINER_MCP_OPENAI_BASE_URL ({self._base_display}) is not an http(s) URL ({exc}). "
                        "Ask the operator to fix it, e.g. https://api.openai.com/v1."
                    )
                ) from exc
            except httpx2.TransportError as exc:
                nothing_sent = isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout))
                if retries < self._max_retries and (call.idempotent or nothing_sent):
                    await self._backoff(call, retries, type(exc).__name__, None)
                    retries += 1
                    continue
                raise self._transport_error(exc, call, retries + 1, nothing_sent) from exc
            except httpx2.RequestError as exc:  # e.g. an undecodable body: the server did answer
                raise self._transport_error(exc, call, retries + 1, False) from exc
            if response.is_success:
                return response
            if stream:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
            if retries < self._max_retries and self._should_retry(response, call):
                await self._backoff(call, retries, f"HTTP {response.status_code}", response.headers)
                retries += 1
                continue
            raise self._status_error(response, call, retries + 1)

    @staticmethod
    def _should_retry(response: httpx2.Response, call: _Call) -> bool:
        should = response.headers.get("x-should-retry", "").lower()
        status = response.status_code
        if should == "false":
            return False
        if call.idempotent:
            return should == "true" or status in (408, 409, 429) or status >= 500
        # A POST is retried only when the server said it did nothing.
        return status in (408, 429) or (status == 503 and should == "true")

    def _retry_after(self, headers: httpx2.Headers | None) -> float | None:
        if headers is None:
            return None
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
                    seconds = email.utils.parsedate_to_datetime(value).timestamp() - self._clock()
                except (TypeError, ValueError):
                    seconds = None
        return seconds if seconds is not None and 0 < seconds <= MAX_RETRY_AFTER else None

    async def _backoff(self, call: _Call, retries: int, reason: str, headers: httpx2.Headers | None) -> None:
        delay = self._retry_after(headers)
        if delay is None:
            delay = min(INITIAL_RETRY_DELAY * 2.0**retries, MAX_RETRY_DELAY) * (1 - 0.25 * self._random())
        logger.info(
            "retrying %s %s after %s (retry %d of %d) in %.2f s",
            call.method,
            call.path,
            reason,
            retries + 1,
            self._max_retries,
            delay,
        )
        await self._sleep(delay)

    def _transport_error(
        self, exc: httpx2.RequestError, call: _Call, attempts: int, nothing_sent: bool
    ) -> ProviderUnavailable:
        kind = type(exc).__name__
        detail = f"{kind}: {exc}" if str(exc) else kind
        if nothing_sent:
            text = (
                f"Could not connect to the backend at {self._base_display} ({detail}) after "
                f"{_plural(attempts)}; nothing was sent. Check the network and CONTAINER_MCP_OPENAI_BASE_URL, "
                "then try again."
            )
        elif not call.idempotent:
            text = (
                f"The connection to the backend failed while trying to {call.action} ({detail}). The "
                f"request may or may not have taken effect: {call.check} before trying again."
            )
        elif isinstance(exc, httpx2.ReadTimeout):
            text = (
                f"The backend at {self._base_display} did not answer within {self._read_timeout_s:g} s "
                f"({_plural(attempts)}). Try again later."
            )
        else:
            text = f"The connection to the backend failed ({detail}) after {_plural(attempts)}. Try again later."
        return ProviderUnavailable(self._scrub(text))

    def _status_error(self, response: httpx2.Response, call: _Call, attempts: int) -> ContainerMCPError:
        status = response.status_code
        request_id = response.headers.get("x-request-id")
        upstream = _upstream_of(response)
        message = self._scrub(upstream.message)[:_MAX_MESSAGE_CHARS]
        where = f"HTTP {status}" + (f", request id {request_id}" if request_id else "")
        cause = ProviderError(f"{message} ({where})", status=status, request_id=request_id, param=upstream.param)
        cls = _error_class(status)
        domain: ContainerMCPError
        if call.container_id is not None and 400 <= status < 500 and status not in (401, 403, 408, 429):
            lowered = message.lower()
            if "expired" in lowered or upstream.code == "container_expired":
                domain = ContainerExpired(call.container_id)
                domain.message += f" ({where})"
                return _with_cause(domain, cause)
            if cls is NotFound:
                if call.file_id is not None and not lowered.startswith("container"):
                    domain = FileNotFound(call.container_id, call.file_id)
                else:
                    domain = ContainerNotFound(call.container_id)
                domain.message += f" ({where})"
                return _with_cause(domain, cause)
        if cls is InvalidRequest:
            domain = InvalidRequest(f"The backend rejected the request: {message} ({where})", param=upstream.param)
            return _with_cause(domain, cause)
        if cls is ProviderAuthError:
            scope = " and OPENAI_ORG_ID / OPENAI_PROJECT_ID" if status == 403 else ""
            text = (
                f"The backend refused the credentials: {message} ({where}). {_KEY_HINT}{scope}; this is "
                "an operator setting, and retrying will not help."
            )
        elif cls is ProviderRateLimited:
            wait = self._retry_after(response.headers)
            after = f"{wait:g} s" if wait is not None else "a minute"
            text = (
                f"The backend is rate limiting requests: {message} ({where}); gave up after "
                f"{_plural(attempts)}. Wait {after} and try again."
            )
        elif cls is ProviderUnavailable and not call.idempotent and status != 408:
            text = (
                f"The backend failed while trying to {call.action}: {message} ({where}). The request may "
                f"or may not have taken effect: {call.check} before trying again."
            )
        elif cls is ProviderUnavailable:
            text = f"The backend failed: {message} ({where}) after {_plural(attempts)}. Try again later."
        elif cls is NotFound:  # 404 on /containers itself
            cls = ProviderError
            text = (
                f"The backend answered {call.method} {call.path}: {message} ({where}). Unless the message "
                f"names a missing file, check CONTAINER_MCP_OPENAI_BASE_URL ({self._base_display}); it "
                "should point at an OpenAI-compatible /v1."
            )
        elif status == 409:
            text = f"The backend reported a conflict: {message} ({where}) after {_plural(attempts)}. Try again."
        else:
            text = f"The backend answered unexpectedly: {message} ({where})."
        error_cls = cls if issubclass(cls, ProviderError) else ProviderError
        return error_cls(text, status=status, request_id=request_id, param=upstream.param)

    def _parse(self, response: httpx2.Response, call: _Call, parse: Callable[[object], _T]) -> _T:
        try:
            return parse(response.json())
        except (ValueError, _BadWire) as exc:  # JSON and pydantic errors are ValueErrors
            request_id = response.headers.get("x-request-id")
            raise ProviderError(
                self._scrub(
                    f"The backend answered {call.method} {call.path} with HTTP {response.status_code} but a "
                    f"body that is not the expected object ({type(exc).__name__}). Check "
                    f"CONTAINER_MCP_OPENAI_BASE_URL ({self._base_display}) points at an OpenAI-compatible /v1."
                ),
                status=response.status_code,
                request_id=request_id,
            ) from exc

    def _deleted(self, response: httpx2.Response, call: _Call, model: type[_D], object_id: str) -> _D:
        if not response.content.strip():
            return model(id=object_id)  # a bare 200/204 is a successful delete too
        return self._parse(
            response, call, lambda data: model.model_validate({"id": object_id, **_as_dict(data, "deleted")})
        )


def _with_cause(error: ContainerMCPError, cause: ProviderError) -> ContainerMCPError:
    error.__cause__ = cause
    return error


@asynccontextmanager
async def _opened(upload: Upload, max_bytes: int | None) -> AsyncIterator[tuple[bytes | IO[bytes], int]]:
    """The upload as something httpx2 multipart streams (bytes or an open binary file) and its size.

    Raises ``FileTooLarge`` before anything is sent when the size exceeds ``max_bytes``.
    """
    if upload.size is not None and max_bytes is not None and upload.size > max_bytes:
        raise _too_large(upload.size, max_bytes)
    if upload.host_path is not None:
        host_path: Path = upload.host_path
        try:
            f = await anyio.to_thread.run_sync(host_path.open, "rb")
        except OSError as exc:
            raise InvalidRequest(
                f"Could not read the source file {host_path}: {exc.strerror or exc}.", param="source_path"
            ) from exc
        try:
            size = os.fstat(f.fileno()).st_size
            if max_bytes is not None and size > max_bytes:
                raise _too_large(size, max_bytes)
            yield f, size
        finally:
            await anyio.to_thread.run_sync(f.close)
    elif isinstance(upload, BytesUpload):
        yield upload.data, len(upload.data)
    else:
        async with anyio.TemporaryFile("w+b") as spool:
            size = 0
            async for chunk in upload.chunks():
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise _too_large(size, max_bytes, exact=False)
                await spool.write(chunk)
            await spool.seek(0)
            yield spool.wrapped, size
