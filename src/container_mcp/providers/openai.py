"""OpenAI's hosted Containers API, or any server that speaks it, as a ``Provider``.

One pooled ``httpx2.AsyncClient`` per process carries every call. It is injected (tests pass an
``httpx2.MockTransport`` or ``httpx2.ASGITransport``); when none is given the provider builds one
and closes it in ``aclose()``. Every request names its absolute URL and sends its own headers and
timeout, so a client shared with other code is never reconfigured. The wire format (see
``openai-containers-api.md``) is parsed and built in ``_openai_wire`` and nowhere else.

What the hosted API cannot do, and what this provider does instead:

* There is no exec endpoint (code runs only through the Responses API's code_interpreter tool),
  so ``capabilities.exec`` is False and ``exec`` raises ``Unsupported``.
* Uploads keep only the file name: the API stores ``/mnt/data/<32 hex>-<name>`` whatever the
  requested directory (``capabilities.file_paths == "basename"``).
* There is no server-side copy: ``copy_file`` streams the content down to a temporary file and
  uploads it again.
* There is no read that leaves ``last_active_at`` alone: ``get_container`` refreshes it. The
  service's views (listing, usage) therefore never call it per row; they read the ledger
  (``catalog``). ``list_containers`` (not part of the ``Provider`` protocol) lists the whole
  account, for operators.
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

Once retries are spent, upstream failures map into the error tree in one table, drawn in
``_openai_wire``'s docstring: every error mapped from an HTTP answer carries ``status`` and
``request_id``, and ``ProviderRateLimited`` the server's ``retry_after``. The API key never appears
in a message or a repr.
"""

from __future__ import annotations

import logging
import os
import posixpath
import random as _random
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing, asynccontextmanager
from types import TracebackType
from typing import IO, Any, Self, TypeVar

import anyio
import httpx2
from pydantic import SecretStr

from .. import __version__
from ..clock import Clock, system_clock
from ..errors import FileTooLarge, ProviderUnavailable, Unsupported
from ..models import (
    MEMORY_LIMITS,
    Container,
    ContainerDeleted,
    ContainerFile,
    ContainerSpec,
    FileDeleted,
    ListParams,
    Page,
)
from ..settings import Settings
from ..uploads import BytesUpload, SizedFile, Upload
from ._openai_wire import (
    CREATE_CONTAINER,
    LIST_CONTAINERS,
    BadWire,
    Call,
    ErrorMap,
    container_call,
    container_from_wire,
    containers_from_wire,
    deleted_from_wire,
    file_call,
    file_from_wire,
    files_from_wire,
    list_query,
    retry_after,
    spec_to_wire,
    upload_call,
    upload_content_type,
    upload_name,
)
from .base import ApproveChanges, Capabilities, ExecRequest, ExecResult, FileChanges, ProgressCallback

__all__ = ["OpenAIProvider"]

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
        self._errors = ErrorMap(self._base_display, api_key, read_timeout_s, clock)
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
        response = await self._send(CREATE_CONTAINER, json=spec_to_wire(spec))
        return self._parse(response, CREATE_CONTAINER, container_from_wire)

    async def get_container(self, container_id: str) -> Container:
        """GET /containers/{id} (upstream, this counts as activity)."""
        call = container_call("GET", container_id)
        return self._parse(await self._send(call), call, container_from_wire)

    async def list_containers(self, params: ListParams) -> Page[Container]:
        """GET /containers with ``limit``, ``order`` and, when set, ``after`` and ``name``."""
        query = list_query(params)
        if params.name is not None:
            query["name"] = params.name
        return self._parse(await self._send(LIST_CONTAINERS, params=query), LIST_CONTAINERS, containers_from_wire)

    async def delete_container(self, container_id: str) -> ContainerDeleted:
        call = container_call("DELETE", container_id)
        return self._deleted(await self._send(call), call, ContainerDeleted, container_id)

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

        A host file (``upload.host_fd``) is streamed from disk, in-memory bytes are sent as
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
            return await self._upload(dst_container_id, upload_name(meta.path), spool.wrapped)

    async def list_files(self, container_id: str, params: ListParams) -> Page[ContainerFile]:
        """GET /containers/{id}/files with ``limit``, ``order`` and, when set, ``after``."""
        call = container_call("GET", container_id, suffix="/files")
        return self._parse(await self._send(call, params=list_query(params)), call, files_from_wire)

    async def get_file(self, container_id: str, file_id: str) -> ContainerFile:
        call = file_call("GET", container_id, file_id)
        return self._parse(await self._send(call), call, file_from_wire)

    async def delete_file(
        self, container_id: str, file_id: str, *, approve: ApproveChanges | None = None
    ) -> FileDeleted:
        """DELETE the file; with ``approve``, its size is read first (a GET) to report the change."""
        if approve is not None:
            meta = await self.get_file(container_id, file_id)
            await approve(FileChanges(deleted=[meta.path], files_delta=-1, bytes_delta=-(meta.bytes or 0)))
        call = file_call("DELETE", container_id, file_id)
        return self._deleted(await self._send(call), call, FileDeleted, file_id)

    async def read_file(
        self, container_id: str, file_id: str, *, offset: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Stream GET .../content from ``offset``, at most ``length`` bytes.

        The API serves whole files only, so ``offset`` bytes are read and dropped, and the
        download stops once ``length`` bytes are out. Errors come on first iteration.
        """
        call = file_call("GET", container_id, file_id, suffix="/content")
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
                self._errors.scrub(
                    f"The download of {file_id} broke off ({type(exc).__name__}: {exc or 'no detail'}). "
                    "Read the file again."
                ),
                request_id=response.headers.get("x-request-id"),
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

    async def _upload(self, container_id: str, filename: str, content: bytes | IO[bytes]) -> ContainerFile:
        call = upload_call(container_id, filename)
        response = await self._send(call, files={"file": (filename, content, upload_content_type(filename))})
        return self._parse(response, call, file_from_wire)

    def _request(
        self,
        call: Call,
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
        call: Call,
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
                raise self._errors.for_scheme(exc) from exc
            except httpx2.TransportError as exc:
                nothing_sent = isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout))
                if retries < self._max_retries and (call.idempotent or nothing_sent):
                    await self._backoff(call, retries, type(exc).__name__, None)
                    retries += 1
                    continue
                raise self._errors.for_transport(exc, call, retries + 1, nothing_sent=nothing_sent) from exc
            except httpx2.RequestError as exc:  # e.g. an undecodable body: the server did answer
                raise self._errors.for_transport(exc, call, retries + 1, nothing_sent=False) from exc
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
            raise self._errors.for_status(response, call, retries + 1)

    @staticmethod
    def _should_retry(response: httpx2.Response, call: Call) -> bool:
        should = response.headers.get("x-should-retry", "").lower()
        status = response.status_code
        if should == "false":
            return False
        if call.idempotent:
            return should == "true" or status in (408, 409, 429) or status >= 500
        # A POST is retried only when the server said it did nothing.
        return status in (408, 429) or (status == 503 and should == "true")

    async def _backoff(self, call: Call, retries: int, reason: str, headers: httpx2.Headers | None) -> None:
        delay = retry_after(headers, self._clock) if headers is not None else None
        if delay is None or delay > MAX_RETRY_AFTER:
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

    def _parse(self, response: httpx2.Response, call: Call, parse: Callable[[object], _T]) -> _T:
        try:
            return parse(response.json())
        except (ValueError, BadWire) as exc:  # JSON and pydantic errors are ValueErrors
            raise self._errors.for_body(response, call, exc) from exc

    def _deleted(self, response: httpx2.Response, call: Call, model: type[_D], object_id: str) -> _D:
        if not response.content.strip():
            return model(id=object_id)  # a bare 200/204 is a successful delete too
        return self._parse(response, call, lambda data: deleted_from_wire(data, model, object_id))


def _too_large(size: int, max_bytes: int, *, exact: bool = True) -> FileTooLarge:
    return FileTooLarge.over(max_bytes, size if exact else None)


@asynccontextmanager
async def _opened(upload: Upload, max_bytes: int | None) -> AsyncIterator[tuple[bytes | IO[bytes], int]]:
    """The upload as something httpx2 multipart streams (bytes or an open binary file) and its size.

    Raises ``FileTooLarge`` before anything is sent when the size exceeds ``max_bytes``.
    """
    if upload.size is not None and max_bytes is not None and upload.size > max_bytes:
        raise _too_large(upload.size, max_bytes)
    if upload.host_fd is not None:
        # The very file that was checked, and only as many bytes as it had then: it may grow
        # after the size check and the quota's approval, and the excess must not be sent.
        size = upload.size if upload.size is not None else os.fstat(upload.host_fd).st_size
        if max_bytes is not None and size > max_bytes:
            raise _too_large(size, max_bytes)
        with SizedFile(upload.host_fd, size).reader() as f:
            yield f, size
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
