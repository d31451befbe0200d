"""The MCP tools: thin functions that validate, call the ContainerService, and shape output.

Names are a contract (DESIGN.md). Each tool has a title, ToolAnnotations, described parameters
and a pydantic return type (structured output); every error is a ``ToolError`` whose text says
what happened and what to do next (see ``server/errors.py``).
"""

from __future__ import annotations

import base64 as b64
import codecs
import contextlib
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.types import ToolAnnotations
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import FileTooLarge, InvalidRequest
from ..inline import InlineBudget, reserved_by_gate, spool_inline
from ..models import (
    Container,
    ContainerDeleted,
    ContainerFile,
    ContainerSpec,
    ExpiresAfter,
    FileDeleted,
    ListParams,
    MemoryLimit,
    NetworkPolicy,
    Order,
    Page,
)
from ..paths import MOUNT
from ..providers.base import ExecRequest, ExecResult, ProcessInfo, ProcessOutput
from ..service import ContainerService, SessionUsage
from ..settings import Settings
from ..uploads import HostFileUpload
from .errors import tool_boundary
from .host_files import host_upload
from .results import MAX_RESULT_BYTES, fit_result
from .session import session_key

__all__ = ["FileChunk", "register_tools"]

# Every parameter is described (tests/server/test_tools.py), briefly: tools/list is sent in every
# conversation (tests/server/test_surface.py holds it under 12 KiB).
ContainerId = Annotated[str, Field(description="cntr_...")]
FileId = Annotated[str, Field(description="cfile_...")]
Limit = Annotated[int, Field(ge=1, le=100, description="Page size.")]
OrderArg = Annotated[Order, Field(description="By created_at; desc: newest first.")]
After = Annotated[str | None, Field(description="Previous page's last_id.")]
# The server's maximum is its operator's (exec_max_timeout_s): over it, the call is refused naming it.
TimeoutArg = Annotated[float, Field(gt=0, description="Seconds until it and all its processes are killed.")]

ToolFn = TypeVar("ToolFn", bound=Callable[..., Awaitable[Any]])


class NetworkPolicyArg(BaseModel):
    """``NetworkPolicy`` as an argument: the same fields, closed, with its cross-field rule checked
    in the tool (``_network_policy``) so a violation is one sentence, not a validation dump."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["disabled", "allowlist"] = "disabled"
    allowed_domains: list[str] | None = None


def _network_policy(arg: NetworkPolicyArg | None) -> NetworkPolicy:
    if arg is None:
        return NetworkPolicy()
    try:
        return NetworkPolicy(type=arg.type, allowed_domains=arg.allowed_domains)
    except ValidationError as exc:
        reason = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        raise InvalidRequest(f"{reason}. Nothing was created.", param="network_policy") from None


class EnvVar(BaseModel):
    """One environment variable of a command."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256, description="The variable's name.")
    value: str = Field(max_length=1 << 16, description="Its value.")


_TEXT_TYPES = ("application/json", "application/xml", "application/javascript", "application/x-sh")


class ContainerList(Page[Container]):
    """One page of containers."""


class FileList(Page[ContainerFile]):
    """One page of a container's files."""


class FileChunk(BaseModel):
    """A bounded piece of a file's content."""

    file_id: str
    container_id: str
    path: str
    mime_type: str
    encoding: Literal["text", "base64"] = Field(description="'text' (UTF-8) or 'base64' for binary content.")
    content: str
    offset: int = Field(description="Byte offset of this chunk.")
    bytes_read: int = Field(description="Bytes in this chunk.")
    total_bytes: int | None = Field(description="The file's size in bytes.")
    eof: bool = Field(description="True when this chunk reaches the end of the file.")
    next_offset: int | None = Field(description="Pass as offset to read the next chunk; null at the end.")
    hint: str | None = Field(None, description="How to read the rest, when there is more.")
    resource_uri: str = Field(description="The MCP resource with the whole file.")


@dataclass
class ToolDeps:
    service: ContainerService
    settings: Settings
    inline: InlineBudget
    """The process's budget of inline content in flight (shared with ``InlineBodyGate``)."""

    def owner(self, ctx: Context) -> str:
        return session_key(ctx.request_context, self.settings.stdio_session_key)


def _is_text(mime: str) -> bool:
    return mime.startswith("text/") or mime in _TEXT_TYPES or mime.endswith(("+json", "+xml"))


def _decode_text(data: bytes, at_eof: bool) -> tuple[str, int] | None:
    """Decode ``data`` as UTF-8, dropping a multi-byte character cut at the chunk's end.

    Returns (text, bytes consumed), or None when the bytes are not UTF-8 text.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    try:
        text = decoder.decode(data, final=at_eof)
    except UnicodeDecodeError:
        return None
    pending = len(decoder.getstate()[0])
    return text, len(data) - pending


def _utf8(value: str, param: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            f"{param} is not valid Unicode text (it holds a lone surrogate). Send binary content as base64.",
            param=param,
        ) from None


@asynccontextmanager
async def _inline_upload(ctx: Context, deps: ToolDeps, value: str, encoding: str) -> AsyncIterator[HostFileUpload]:
    """Inline content as a spooled file, its length held in the inline budget meanwhile.

    The budget is taken before decoding, unless the HTTP request carrying the call already holds
    it (``InlineBodyGate``). Content that cannot fit the per-file limit is refused before a byte is
    written.
    """
    limit = deps.service.limits.max_file_bytes
    least = len(value) // 4 * 3 - 2 if encoding == "base64" else len(value)
    if least > limit:
        raise FileTooLarge.over(limit, what=f"the {encoding} content")
    held = reserved_by_gate(getattr(ctx.request_context.request, "scope", None))
    reserve = contextlib.nullcontext() if held else deps.inline.reserve(len(value), f"this {encoding} content")
    with reserve:
        spooled = await spool_inline(value, encoding, deps.settings.data_dir / "inline")
        try:
            yield spooled
        finally:
            spooled.close()


CreateName = Annotated[str, Field(min_length=1, max_length=256, description="Container name.")]
CreateExpiry = Annotated[int, Field(ge=1, le=1440, description="Idle minutes before it expires.")]
CreateMemory = Annotated[MemoryLimit, Field(description="Memory for commands.")]
CreatePolicy = Annotated[
    NetworkPolicyArg | None,
    Field(
        description="Commands' outbound network (default: none), e.g. {'type': 'allowlist', "
        "'allowed_domains': ['pypi.org', '*.pythonhosted.org']}: host names or public IPs, no URL or port."
    ),
]
CreateImage = Annotated[
    str | None,
    Field(max_length=512, description="Image to run: one of container://capabilities' images (default: the first)."),
]
CreateFileIds = Annotated[list[str] | None, Field(description="cfile_... ids from your other containers, copied in.")]


def _registrar(mcp: MCPServer) -> Callable[..., Callable[[ToolFn], ToolFn]]:
    """``mcp.tool`` with the boundary's error mapping applied: the one way a tool is registered here."""

    def tool(**kwargs: Any) -> Callable[[ToolFn], ToolFn]:
        def register(fn: ToolFn) -> ToolFn:
            mcp.tool(**kwargs)(tool_boundary(fn.__name__)(fn))
            return fn

        return register

    return tool


def register_tools(mcp: MCPServer, deps: ToolDeps) -> None:
    """Register every tool the provider can serve on ``mcp``."""
    service = deps.service
    tool = _registrar(mcp)

    async def create(
        ctx: Context,
        name: str,
        expires_after_minutes: int,
        memory_limit: MemoryLimit,
        network_policy: NetworkPolicyArg | None,
        file_ids: list[str] | None,
        image: str | None,
    ) -> Container:
        spec = ContainerSpec(
            name=name,
            expires_after=ExpiresAfter(minutes=expires_after_minutes),
            memory_limit=memory_limit,
            network_policy=_network_policy(network_policy),
            file_ids=file_ids or [],
            image=image,
        )
        return await service.create_container(deps.owner(ctx), spec)

    create_tool = tool(
        title="Create container",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False
        ),
    )

    # `image` is offered only by providers that have a choice of images (docker): elsewhere the tool
    # keeps OpenAI's arguments, and the schema names exactly what may be chosen.
    def with_image() -> None:

        @create_tool
        async def container_create(
            ctx: Context,
            name: CreateName,
            expires_after_minutes: CreateExpiry = 20,
            memory_limit: CreateMemory = "1g",
            network_policy: CreatePolicy = None,
            file_ids: CreateFileIds = None,
            image: CreateImage = None,
        ) -> Container:
            """Create an empty container with its own /mnt/data. It expires after expires_after_minutes
            without use (any operation on it is use). Keep the returned id."""
            return await create(ctx, name, expires_after_minutes, memory_limit, network_policy, file_ids, image)

    def without_image() -> None:

        @create_tool
        async def container_create(
            ctx: Context,
            name: CreateName,
            expires_after_minutes: CreateExpiry = 20,
            memory_limit: CreateMemory = "1g",
            network_policy: CreatePolicy = None,
            file_ids: CreateFileIds = None,
        ) -> Container:
            """Create an empty container with its own /mnt/data. It expires after expires_after_minutes
            without use (any operation on it is use). Keep the returned id."""
            return await create(ctx, name, expires_after_minutes, memory_limit, network_policy, file_ids, None)

    if service.capabilities.images:
        with_image()
    else:
        without_image()

    @tool(title="List containers", annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def container_list(
        ctx: Context,
        limit: Limit = 20,
        order: OrderArg = "desc",
        after: After = None,
        name: Annotated[str | None, Field(description="Exact name to match.")] = None,
    ) -> ContainerList:
        """List this session's containers, expired ones too. Paged: while has_more, pass last_id as after."""
        page = await service.list_containers(
            deps.owner(ctx), ListParams(limit=limit, order=order, after=after, name=name)
        )
        return ContainerList(**page.model_dump())

    @tool(title="Retrieve container", annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def container_retrieve(ctx: Context, container_id: ContainerId) -> Container:
        """Get one container: status ('running' or 'expired'), expires_at (Unix seconds)."""
        return await service.get_container(deps.owner(ctx), container_id)

    @tool(
        title="Delete container",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
        ),
    )
    async def container_delete(ctx: Context, container_id: ContainerId) -> ContainerDeleted:
        """Delete a container and all its files, permanently."""
        return await service.delete_container(deps.owner(ctx), container_id)

    @tool(
        title="Create file",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        ),
    )
    async def file_create(
        ctx: Context,
        container_id: ContainerId,
        path: Annotated[str, Field(description="Under /mnt/data: 'data/in.csv' or '/mnt/data/data/in.csv'.")],
        text: Annotated[str | None, Field(description="UTF-8 content.")] = None,
        base64: Annotated[str | None, Field(description="Base64 content (binary files).")] = None,
        source_path: Annotated[
            str | None,
            Field(
                description="Absolute host path to copy from: under the server's --allow-path dirs (and "
                "the client's roots, if any)."
            ),
        ] = None,
    ) -> ContainerFile:
        """Put a file under /mnt/data from exactly one of text, base64 or source_path. A file at the same
        path is replaced where container://capabilities says file_paths 'exact'."""
        given = [v is not None for v in (text, base64, source_path)]
        if sum(given) != 1:
            raise InvalidRequest("Give exactly one of text, base64 or source_path as the file's content.", param="text")
        if source_path is not None:
            host_file = await host_upload(ctx, deps.settings, source_path)
            try:
                return await service.create_file(deps.owner(ctx), container_id, path, host_file)
            finally:
                host_file.close()
        value, encoding = (text, "text") if text is not None else (base64, "base64")
        assert value is not None
        async with _inline_upload(ctx, deps, value, encoding) as spooled:
            return await service.create_file(deps.owner(ctx), container_id, path, spooled)

    @tool(title="List files", annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def file_list(
        ctx: Context,
        container_id: ContainerId,
        limit: Limit = 20,
        order: OrderArg = "desc",
        after: After = None,
        path_prefix: Annotated[str | None, Field(description="Only paths starting with it: /mnt/data/out/")] = None,
    ) -> FileList:
        """List a container's files. Paged like container_list."""
        page = await service.list_files(
            deps.owner(ctx), container_id, ListParams(limit=limit, order=order, after=after, path_prefix=path_prefix)
        )
        return FileList(**page.model_dump())

    @tool(title="Retrieve file", annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def file_retrieve(ctx: Context, container_id: ContainerId, file_id: FileId) -> ContainerFile:
        """Get one file's metadata."""
        return await service.get_file(deps.owner(ctx), container_id, file_id)

    @tool(
        title="Delete file",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False
        ),
    )
    async def file_delete(ctx: Context, container_id: ContainerId, file_id: FileId) -> FileDeleted:
        """Delete one file from a container, permanently."""
        return await service.delete_file(deps.owner(ctx), container_id, file_id)

    @tool(title="Read file", annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def file_read(
        ctx: Context,
        container_id: ContainerId,
        file_id: FileId,
        # Bounded (JSON's largest safe integer): a larger one overflowed the OS's file offset, an internal error.
        offset: Annotated[int, Field(ge=0, le=2**53 - 1, description="Byte offset to start at.")] = 0,
        max_bytes: Annotated[
            int, Field(ge=1, le=1 << 20, description="Bytes to return.")
        ] = deps.settings.read_chunk_bytes,
    ) -> FileChunk:
        """Read part of a file: text as text, binary as base64. Continue from next_offset until eof, or
        read the whole file as the resource at resource_uri."""
        meta, data = await service.read_bytes(deps.owner(ctx), container_id, file_id, offset=offset, length=max_bytes)
        total = meta.bytes
        mime = meta.mime_type or "application/octet-stream"
        at_eof = total is not None and offset + len(data) >= total or len(data) < max_bytes
        decoded = _decode_text(data, at_eof) if (_is_text(mime) or mime == "application/octet-stream") else None
        # consumed 0: max_bytes is smaller than the one character there; base64 always progresses
        if decoded is not None and decoded[1] > 0 and (_is_text(mime) or b"\x00" not in data):
            content, consumed = decoded
            encoding: Literal["text", "base64"] = "text"
        else:
            content, consumed = b64.b64encode(data).decode("ascii"), len(data)
            encoding = "base64"
        next_offset = None if at_eof and consumed == len(data) else offset + consumed
        hint = None
        if next_offset is not None:
            left = f" of {total}" if total is not None else ""
            hint = (
                f"Returned bytes {offset}-{offset + consumed}{left}. Call file_read again with "
                f"offset={next_offset} for the rest."
            )
        return FileChunk(
            file_id=meta.id,
            container_id=meta.container_id,
            path=meta.path,
            mime_type=mime,
            encoding=encoding,
            content=content,
            offset=offset,
            bytes_read=consumed,
            total_bytes=total,
            eof=next_offset is None,
            next_offset=next_offset,
            hint=hint,
            resource_uri=f"container://{meta.container_id}/files/{meta.id}",
        )

    @tool(title="Session usage", annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def session_usage(ctx: Context) -> SessionUsage:
        """This session's usage of every quota."""
        return await service.usage(deps.owner(ctx))

    if service.capabilities.exec:
        _register_exec(mcp, deps)
    if service.capabilities.processes:
        _register_processes(mcp, deps)


def _register_exec(mcp: MCPServer, deps: ToolDeps) -> None:
    service = deps.service
    settings = deps.settings
    tool = _registrar(mcp)

    @tool(
        title="Run a command",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
        ),
    )
    async def container_exec(
        ctx: Context,
        container_id: ContainerId,
        command: Annotated[
            list[str] | str,
            Field(description="An argv list or a shell string (run with sh -c)."),
        ],
        timeout_s: TimeoutArg = settings.exec_default_timeout_s,
        stdin: Annotated[str | None, Field(description="stdin text.")] = None,
        env: Annotated[
            list[EnvVar] | None,
            Field(max_length=256, description="Environment variables."),
        ] = None,
        workdir: Annotated[str, Field(description="Working directory, under /mnt/data.")] = MOUNT,
    ) -> ExecResult:
        """Run a command in the container's sandbox (files at /mnt/data, $HOME kept; no network unless
        network_policy allows). Output is capped; changed files are listed."""
        if timeout_s > settings.exec_max_timeout_s:
            raise InvalidRequest(
                f"timeout_s {timeout_s:g} is over the server's maximum of {settings.exec_max_timeout_s:g} s. "
                "Use a shorter timeout, split the work, or ask the operator to raise "
                "CONTAINER_MCP_EXEC_MAX_TIMEOUT_S.",
                param="timeout_s",
            )
        argv = _argv(command)
        request = ExecRequest(
            argv=argv,
            timeout_s=timeout_s,
            stdin=_utf8(stdin, "stdin") if stdin is not None else None,
            env=_env(env or []),
            workdir=workdir,
            max_output_bytes=settings.exec_max_output_bytes,
        )

        async def progress(elapsed: float, message: str) -> None:
            await ctx.report_progress(elapsed, timeout_s, message)

        result = await service.exec(deps.owner(ctx), container_id, request, progress=progress)
        return fit_result(
            result.model_copy(update={"hint": _hint(argv, timeout_s, settings, result)}), MAX_RESULT_BYTES
        )


class ProcessView(BaseModel):
    """What container_process returns: the processes acted on or listed, and output when reading."""

    processes: list[ProcessInfo]
    output: ProcessOutput | None = None


def _register_processes(mcp: MCPServer, deps: ToolDeps) -> None:
    service = deps.service
    settings = deps.settings
    tool = _registrar(mcp)

    @tool(
        title="Processes",
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False
        ),
    )
    async def container_process(
        ctx: Context,
        container_id: ContainerId,
        action: Literal["start", "list", "read", "write", "signal", "wait"],
        process_id: Annotated[str | None, Field(description="proc_...")] = None,
        command: Annotated[list[str] | str | None, Field(description="start: argv or shell string.")] = None,
        stdin: Annotated[str | None, Field(description="stdin text; write without it closes stdin.")] = None,
        stream: Annotated[Literal["stdout", "stderr"], Field(description="read.")] = "stdout",
        offset: Annotated[int, Field(ge=0, description="read: next_offset.")] = 0,
        signal: Annotated[str, Field(description="TERM INT HUP KILL QUIT USR1 USR2")] = "TERM",
        wait_s: Annotated[float, Field(ge=0, le=600, description="Seconds to wait for its end.")] = 0,
    ) -> ProcessView:
        """Background commands: start, list, read output by offset, write stdin, signal, wait; its
        files become container files at exit."""
        owner = deps.owner(ctx)
        procs = await service.processes(owner, container_id)
        if action == "list":
            return ProcessView(processes=await procs.list())
        if action == "start":
            if not command:
                raise InvalidRequest("start needs a command (an argv list or a shell string).", param="command")
            request = ExecRequest(
                argv=_argv(command),
                timeout_s=settings.exec_process_max_lifetime_s,
                stdin=_utf8(stdin, "stdin") if stdin is not None else None,
                max_output_bytes=settings.exec_max_output_bytes,
            )
            info = await procs.start(request)
            if wait_s:
                info = await procs.wait(info.id, wait_s)
            return ProcessView(processes=[info])
        if process_id is None:
            raise InvalidRequest(f"{action} needs the process_id (action 'list' shows them).", param="process_id")
        if action == "read":
            chunk = await procs.read(process_id, stream=stream, offset=offset, max_bytes=PROCESS_READ_BYTES)
            return ProcessView(processes=[await procs.wait(process_id, 0)], output=chunk)
        if action == "write":
            data = _utf8(stdin, "stdin") if stdin is not None else b""
            return ProcessView(processes=[await procs.write(process_id, data, close=stdin is None)])
        if action == "signal":
            return ProcessView(processes=[await procs.signal(process_id, signal)])
        return ProcessView(processes=[await procs.wait(process_id, wait_s)])


PROCESS_READ_BYTES = 16 * 1024
"""Bytes of output one read returns at most (text; the result stays far below 64 KiB)."""


def _argv(command: list[str] | str) -> list[str]:
    """The argv of a command given as an argv list or a shell string (run with ``sh -c``)."""
    argv = ["sh", "-c", command] if isinstance(command, str) else list(command)
    if not argv or not argv[0]:
        raise InvalidRequest("command is empty; give an argv list or a shell string.", param="command")
    return argv


def _env(variables: list[EnvVar]) -> dict[str, str]:
    env: dict[str, str] = {}
    for var in variables:
        if var.name in env:
            raise InvalidRequest(f"env sets {var.name!r} twice; give each name once.", param="env")
        env[var.name] = var.value
    return env


def _hint(argv: list[str], timeout_s: float, settings: Settings, result: ExecResult) -> str | None:
    """What the caller can do about a result that did not tell the whole story."""
    notes: list[str] = []
    if result.timed_out:
        notes.append(
            f"The command timed out after {timeout_s:g} s and was killed with all its processes: "
            f"{shlex.join(argv)[:200]}. Pass a larger timeout_s (up to {settings.exec_max_timeout_s:g} s; the operator "
            "can raise CONTAINER_MCP_EXEC_MAX_TIMEOUT_S), or run the work in smaller steps. Files it wrote before "
            "the kill were kept."
        )
    if result.stdout_truncated or result.stderr_truncated:
        notes.append("Output was cut to its head and tail; redirect it to a file under /mnt/data and file_read it.")
    if result.files_truncated:
        notes.append(
            "Not every changed file is listed (see the *_total counts); file_list with path_prefix and "
            "order='desc' lists them."
        )
    if result.files_not_kept:
        notes.append(
            f"{result.files_not_kept} symlinks or special files under /mnt/data were not kept (container files are "
            "regular files): make a venv there with --copies, or keep it under $HOME, which keeps everything."
        )
    return " ".join(notes) or None
