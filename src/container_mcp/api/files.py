"""File create (multipart upload, JSON or multipart ``file_id`` copy) and streamed content.

* **Upload**: the ``file`` part lands at ``/mnt/data/<basename of its filename>``; a file already
  at that path is replaced (our documented behaviour; OpenAI adds a random prefix instead). The
  part's bytes stream from the socket into the container (see ``multipart.py``); a body that
  cannot fit the per-file byte limit is refused from its Content-Length before any byte is read,
  and a refused upload stores nothing. When a body holds both ``file`` and ``file_id``, the
  uploaded file wins. Any other part before ``file`` is refused (400 naming it); parts after the
  file are not read.
* **Copy** (``file_id``, JSON or a multipart field as old SDKs send it): a ``cfile_`` id of a file
  in one of the caller's running containers is copied, keeping its path, by
  ``ContainerService.copy_file``, so ownership, quotas and the rate limit apply as to any upload.
* **Content**: streamed in the provider's chunks with ``Content-Length``, a type-specific
  ``Content-Type`` and OpenAI's ``Content-Disposition``; errors (not found, expired) are raised
  before the status line is sent.
"""

from __future__ import annotations

import posixpath
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from ..errors import ContainerNotFound, FileTooLarge, InvalidRequest, NotFound
from ..models import ContainerFile
from ..paths import MOUNT
from ..service import ContainerService
from ..uploads import StreamUpload
from .bodies import check_fields, read_json, require_json
from .multipart import MultipartReader, drain
from .wire import content_disposition, content_type

__all__ = ["copy_file", "create_file", "file_content"]

MULTIPART_OVERHEAD = 1 << 20
"""Bytes a multipart body may carry beside the file itself (boundaries, headers, small fields)."""

DRAIN_LIMIT = 1 << 30
"""After refusing an upload mid-body, read at most this much more of it so the client sees the
answer; beyond that the connection is closed instead."""


def upload_path(filename: str | None) -> str:
    name = posixpath.basename((filename or "").replace("\\", "/")).strip()
    if not name or name in (".", ".."):
        raise InvalidRequest("The 'file' part needs a filename (it names the file in /mnt/data).", param="file")
    return f"{MOUNT}/{name}"


async def create_file(service: ContainerService, owner: str, container_id: str, request: Request) -> ContainerFile:
    """POST /containers/{id}/files with either body encoding."""
    ctype = request.headers.get("content-type", "")
    if ctype.lower().startswith("multipart/"):
        return await _create_multipart(service, owner, container_id, request, ctype)
    require_json(ctype)
    body = await read_json(request.stream())
    check_fields(body, {"": ("file_id",)})
    file_id = body.get("file_id")
    if file_id is None:
        raise InvalidRequest(
            "Provide either 'file' (a multipart/form-data upload) or 'file_id' (a JSON body).", param="file"
        )
    if not isinstance(file_id, str):
        raise InvalidRequest("Invalid type for 'file_id': expected a string.", param="file_id")
    return await copy_file(service, owner, file_id, container_id)


async def _create_multipart(
    service: ContainerService, owner: str, container_id: str, request: Request, ctype: str
) -> ContainerFile:
    limit = service.limits.max_file_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit + MULTIPART_OVERHEAD:
        raise FileTooLarge.over(limit, int(declared), what="the request body")
    stream = request.stream()
    try:
        reader = MultipartReader(ctype, stream)
        file_id: str | None = None
        while (part := await reader.next_part()) is not None:
            if part.name == "file":
                path = upload_path(part.filename)
                created = await service.create_file(owner, container_id, path, StreamUpload(reader.chunks()))
                await drain(stream, DRAIN_LIMIT)  # later parts (a file_id) are ignored
                return created
            if part.name == "file_id":
                file_id = (await reader.read()).decode("utf-8", "replace").strip()
            else:
                # Fail closed, as for JSON bodies. Clients (the SDK too) send fields before the file.
                check_fields({part.name: None}, {"": ("file", "file_id")})
        if not file_id:
            raise InvalidRequest("Missing required parameter: 'file' (or 'file_id').", param="file")
        return await copy_file(service, owner, file_id, container_id)
    except Exception:
        await drain(stream, DRAIN_LIMIT)
        raise
    finally:
        await stream.aclose()


async def copy_file(service: ContainerService, owner: str, file_id: str, container_id: str) -> ContainerFile:
    """Copy the caller's file ``file_id`` into ``container_id`` at the same path (the service finds it)."""
    if not file_id.startswith("cfile_"):
        raise InvalidRequest(
            f"file_id {file_id[:80]!r} is not a container file id. This server copies 'cfile_...' files of your "
            "own containers; OpenAI Files API ids ('file-...') are not available here.",
            param="file_id",
        )
    try:
        return await service.copy_file(owner, file_id, container_id)
    except NotFound as exc:
        if isinstance(exc, ContainerNotFound):
            raise
        raise NotFound(
            f"File {file_id} not found in any of your running containers. Pass the id of a file listed by "
            "GET /v1/containers/{container_id}/files.",
            param="file_id",
        ) from exc


async def _body(first: bytes, rest: AsyncGenerator[bytes, None], size: int | None) -> AsyncIterator[bytes]:
    # Never send more than Content-Length promised, should the file grow meanwhile.
    sent = 0
    async with aclosing(rest):
        if first:
            chunk = first if size is None else first[:size]
            sent += len(chunk)
            yield chunk
        async for data in rest:
            if size is not None:
                data = data[: max(0, size - sent)]
                if not data:
                    break
            sent += len(data)
            yield data


async def file_content(service: ContainerService, owner: str, container_id: str, file_id: str) -> Response:
    """GET /containers/{id}/files/{file_id}/content."""
    meta, chunks = await service.open_file(owner, container_id, file_id)
    try:
        first = await anext(chunks)  # not found / expired surface here, before the status line
    except StopAsyncIteration:
        first = b""
    except BaseException:
        await chunks.aclose()
        raise
    headers = {"content-disposition": content_disposition(meta.path)}
    if meta.bytes is not None:
        headers["content-length"] = str(meta.bytes)
    return StreamingResponse(
        _body(first, chunks, meta.bytes), media_type=content_type(meta.path, meta.mime_type), headers=headers
    )
