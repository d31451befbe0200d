"""The Provider protocol: what a backend must offer, and its capabilities as data.

A provider knows one backend (the local sandbox, OpenAI's hosted API, ...). It knows nothing of
sessions, owners or quotas: the ``ContainerService`` enforces those before calling it. Every
method raises only ``ContainerMCPError`` subclasses; translating backend failures is the
provider's job, in one table.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Collection
from types import TracebackType
from typing import Literal, Protocol, Self, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from ..models import (
    UNSUPPORTED_CREATE_FIELDS,
    Container,
    ContainerDeleted,
    ContainerFile,
    ContainerSpec,
    FileDeleted,
    ListParams,
    Page,
)
from ..uploads import Upload

__all__ = [
    "Capabilities",
    "ExecRequest",
    "ExecResult",
    "ApproveChanges",
    "FileChanges",
    "OnExit",
    "ProcessInfo",
    "ProcessOutput",
    "ProcessProvider",
    "ProcessState",
    "ProgressCallback",
    "Provider",
    "Refund",
]


class Capabilities(BaseModel):
    """What a provider supports and its limits; published at ``container://capabilities``."""

    model_config = ConfigDict(frozen=True)

    provider: str = Field(description="The provider's name, e.g. 'local' or 'openai'.")
    exec: bool = Field(description="Whether commands can run in containers (container_exec).")
    exec_unavailable_reason: str | None = Field(None, description="Why exec is not offered, when it is not.")
    memory_limits: list[str] = Field(description="memory_limit values accepted on create.")
    memory_enforcement: str | None = Field(
        None, description="How memory_limit is enforced for commands: cgroup-v2, cgroup-v1, rlimit-as."
    )
    network_policies: list[str] = Field(
        description="network_policy types accepted on create: only those really enforced on this host."
    )
    network_unavailable_reason: str | None = Field(
        None, description="Why a network_policy type ('allowlist') is not offered, when it is not."
    )
    network_enforcement: str | None = Field(None, description="How network_policy is enforced.")
    max_file_bytes: int | None = Field(None, description="Largest single file the backend accepts.")
    expiry_minutes_range: tuple[int, int] = Field(description="Accepted expires_after.minutes range.")
    file_paths: Literal["exact", "basename"] = Field(
        description="'exact': files land at the requested path; 'basename': the backend picks the "
        "directory and keeps only the file name."
    )
    file_path_prefix: bool = Field(
        False, description="Whether file_list takes path_prefix (only files whose path starts with it)."
    )
    processes: bool = Field(False, description="Whether commands can run in the background (container_process).")
    processes_per_session: int | None = Field(None, description="Background processes one session may run at once.")
    persistence: str | None = Field(
        None, description="What a command's writes outside /mnt/data leave for the next command, by path."
    )
    upstream_file_ids: bool = Field(
        False, description="Whether file_ids may name backend-level files (OpenAI 'file-...' ids)."
    )
    state: Literal["sqlite", "redis"] = Field(
        "sqlite",
        description="Where ownership, quota counters and the rate limit live: 'sqlite' (one host: every "
        "server process on the data dir shares them) or 'redis' (CONTAINER_MCP_STATE_URL: every server "
        "process on every host sharing the Redis; valid with the openai provider only, as local "
        "containers live on one host).",
    )
    state_shared_by: str = Field(
        "every server process on this host using the same data dir",
        description="Which server processes share ownership and quotas with this one.",
    )
    images: list[str] = Field(
        default_factory=list,
        description="Images a caller may name on create (the first is the default); empty: no image choice.",
    )
    unsupported_create_fields: list[str] = Field(
        default_factory=lambda: list(UNSUPPORTED_CREATE_FIELDS),
        description="OpenAI create-container fields not honoured here; a request carrying one is refused "
        "(never served without it). Any field not in OpenAI's create body is refused too.",
    )


class ExecRequest(BaseModel):
    """A command to run in a container. ``argv`` is run as is (a shell string arrives as sh -c)."""

    model_config = ConfigDict(frozen=True)

    argv: list[str] = Field(min_length=1)
    timeout_s: float = Field(60, gt=0)
    stdin: bytes | None = None
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str = "/mnt/data"
    max_output_bytes: int = Field(
        32 * 1024, ge=0, description="Bytes kept of stdout and stderr together (they share the budget)."
    )
    max_listed_files: int = Field(
        20, ge=0, description="Files listed per kind (created, changed, deleted) in the result; totals count all."
    )
    max_home_growth_bytes: int | None = Field(
        None,
        ge=0,
        description="Bytes the command may add to the container's home, which is written in place and counted "
        "after the fact (the service passes its session's stored-bytes room); None: only the home's own bound.",
    )


class FileChanges(BaseModel):
    """The net effect a finished command would have on a container's files, before it is applied."""

    model_config = ConfigDict(frozen=True)

    created: list[str] = Field(default_factory=list, description="Paths of new files.")
    changed: list[str] = Field(default_factory=list, description="Paths of modified files.")
    deleted: list[str] = Field(default_factory=list, description="Paths of removed files.")
    largest_file_bytes: int = 0
    files_delta: int = 0
    bytes_delta: int = 0
    files_after: int = 0
    bytes_after: int = 0


class ExecResult(BaseModel):
    """What a command did. A non-zero exit code is a result, not an error."""

    model_config = ConfigDict(frozen=True)

    exit_code: int | None = Field(description="Exit status; None when killed by a signal or timeout.")
    signal: int | None = Field(None, description="The signal that ended the command, if any.")
    stdout: str = Field(description="Captured standard output (UTF-8, undecodable bytes replaced).")
    stderr: str = Field(description="Captured standard error (UTF-8, undecodable bytes replaced).")
    stdout_bytes: int = Field(description="Total bytes the command wrote to stdout.")
    stderr_bytes: int = Field(description="Total bytes the command wrote to stderr.")
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration_ms: int
    timed_out: bool = False
    killed_reason: str | None = Field(
        None, description="Why the sandbox killed the command: 'timeout', 'memory_limit' or 'disk_limit'."
    )
    files_created: list[ContainerFile] = Field(
        default_factory=list, description="New files, shallowest paths first, at most a bounded number."
    )
    files_changed: list[ContainerFile] = Field(
        default_factory=list, description="Modified files, shallowest paths first, at most a bounded number."
    )
    files_deleted: list[str] = Field(
        default_factory=list, description="Paths of files the command removed, at most a bounded number."
    )
    files_created_total: int = Field(0, description="How many files the command created (listed or not).")
    files_changed_total: int = Field(0, description="How many files the command changed.")
    files_deleted_total: int = Field(0, description="How many files the command deleted.")
    files_not_kept: int = Field(
        0, description="Symlinks, FIFOs, sockets, devices or invalid paths it made under /mnt/data: not kept."
    )
    files_truncated: bool = Field(
        False, description="Whether some changed files are not listed here (file_list with path_prefix shows them)."
    )
    hint: str | None = Field(None, description="What to do next, when the result calls for it (timeout, truncation).")
    _all_files: tuple[list[ContainerFile], list[str]] | None = PrivateAttr(None)

    def with_all_files(self, kept: list[ContainerFile], deleted: list[str]) -> ExecResult:
        """This result, carrying every file the command created or changed (``kept``) and every path
        it deleted, of which the listed fields show a bounded part. Never serialized: the service
        keeps the ledger's file index whole with it."""
        self._all_files = (kept, deleted)
        return self

    @property
    def all_files(self) -> tuple[list[ContainerFile], list[str]]:
        """Every file created or changed, and every path deleted (the listed ones when the provider
        attached nothing: then nothing was left out)."""
        if self._all_files is not None:
            return self._all_files
        return [*self.files_created, *self.files_changed], list(self.files_deleted)


ProcessState = Literal["running", "exited", "killed", "failed"]


class ProcessInfo(BaseModel):
    """A background process: what it runs, its state and, once it ended, what it left."""

    model_config = ConfigDict(frozen=True)

    id: str = Field(description="proc_...")
    container_id: str
    command: str = Field(description="The command, shell-quoted (at most 200 characters).")
    state: ProcessState = Field(
        description="running; exited (by itself); killed (signal, max lifetime, limit, container gone); "
        "failed (its file changes were refused: see error)."
    )
    exit_code: int | None = None
    signal: int | None = None
    started_at: int
    runtime_s: float
    stdout_bytes: int = Field(description="Bytes it wrote to stdout so far (kept up to a bound).")
    stderr_bytes: int
    output_capped: bool = Field(False, description="Whether output past the kept bound was dropped.")
    files_created_total: int = 0
    files_changed_total: int = 0
    files_deleted_total: int = 0
    error: str | None = Field(None, description="Why its file changes were not kept, when they were not.")


class ProcessOutput(BaseModel):
    """A chunk of a background process's stdout or stderr, read by offset."""

    model_config = ConfigDict(frozen=True)

    text: str = Field(description="UTF-8, undecodable bytes replaced.")
    offset: int
    next_offset: int = Field(description="Pass as offset to read on.")
    eof: bool = Field(description="True once the process ended and everything kept was read.")


ProgressCallback = Callable[[float, str], Awaitable[None]]
"""Called while a command runs with (elapsed seconds, message)."""

Refund = Callable[[], Awaitable[None]]
"""Takes back what one approval charged."""

ApproveChanges = Callable[[FileChanges], Awaitable[Refund | None]]
"""Called once a command has finished and before its file changes are applied; raising (e.g.
``QuotaExceeded``) discards every change the command made under /mnt/data. It may return a
``Refund``: a provider whose approved change then does not happen calls it while it still holds
the container, so no one who takes the container next sees the charge without the change."""


OnExit = Callable[[ExecResult | None, BaseException | None], Awaitable[None]]
"""Told how a background process ended: its result (files committed), or the error that kept its
changes out (``QuotaExceeded``; cancellation: the container went or the server stopped)."""


@runtime_checkable
class ProcessProvider(Protocol):
    """An optional capability (``Capabilities.processes``): commands that run in the background.

    ``start_process`` returns once the command started; its file changes become container files
    when it exits (``approve`` is called then, under the same quotas as ``exec``), and
    ``on_exit`` is told the outcome. Ids a container does not know answer ``InvalidRequest``.
    """

    async def start_process(
        self, container_id: str, request: ExecRequest, *, approve: ApproveChanges, on_exit: OnExit
    ) -> ProcessInfo: ...

    async def list_processes(self, container_id: str) -> list[ProcessInfo]: ...

    def running_processes(self, container_ids: Collection[str]) -> int:
        """How many processes run in these containers (no backend request)."""
        ...

    async def read_process(
        self, container_id: str, process_id: str, *, stream: Literal["stdout", "stderr"], offset: int, max_bytes: int
    ) -> ProcessOutput: ...

    async def write_process(self, container_id: str, process_id: str, data: bytes, *, close: bool) -> ProcessInfo: ...

    async def signal_process(self, container_id: str, process_id: str, signal: int) -> ProcessInfo: ...

    async def wait_process(self, container_id: str, process_id: str, timeout_s: float) -> ProcessInfo: ...


class Provider(Protocol):
    """A backend that owns containers and their files.

    Ids a provider does not know answer ``ContainerNotFound``/``FileNotFound``. Operations on an
    expired container's files raise ``ContainerExpired``. Every operation on a container, its files
    and ``get_container`` included, may refresh its ``last_active_at`` (a backend need not offer a
    read that does not). The protocol therefore has no listing of containers: the cross-container
    views read the ledger (``catalog``), which operations and expiry errors keep fresh; a
    provider that expires containers itself reports it (``changes.ExpiryReporting``).
    Providers are async context managers; ``aclose()`` releases what they hold.
    """

    name: str

    @property
    def capabilities(self) -> Capabilities: ...

    async def create_container(self, spec: ContainerSpec) -> Container:
        """Create a running container. ``spec.file_ids`` are backend-level ids (may be empty)."""
        ...

    async def get_container(self, container_id: str) -> Container:
        """Return the container (expired ones too). Raises ``ContainerNotFound``."""
        ...

    async def delete_container(self, container_id: str) -> ContainerDeleted:
        """Delete the container and its files. Raises ``ContainerNotFound``."""
        ...

    async def create_file(
        self,
        container_id: str,
        path: str,
        upload: Upload,
        *,
        max_bytes: int | None = None,
        approve: ApproveChanges | None = None,
    ) -> ContainerFile:
        """Store ``upload`` at ``path`` (already normalized, under /mnt/data), replacing a file there.

        Raises ``FileTooLarge`` (and stores nothing) when the content exceeds ``max_bytes``.
        ``approve`` is called with the net change once the size is known and before the file
        becomes visible; if it raises, nothing is stored.
        """
        ...

    async def copy_file(
        self,
        src_container_id: str,
        src_file_id: str,
        dst_container_id: str,
        *,
        approve: ApproveChanges | None = None,
    ) -> ContainerFile:
        """Copy a file between two containers of this backend, keeping its path (``approve`` as above)."""
        ...

    async def list_files(self, container_id: str, params: ListParams) -> Page[ContainerFile]: ...

    async def get_file(self, container_id: str, file_id: str) -> ContainerFile: ...

    async def delete_file(
        self, container_id: str, file_id: str, *, approve: ApproveChanges | None = None
    ) -> FileDeleted:
        """Delete the file; ``approve`` first sees the change (``bytes_delta`` = minus the size the
        deletion actually frees, read under the same lock as the deletion)."""
        ...

    def read_file(
        self, container_id: str, file_id: str, *, offset: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """Yield the file's bytes from ``offset``, at most ``length`` of them, in chunks.

        Errors (not found, expired) are raised on first iteration. Close the iterator (``aclose``)
        when stopping early.
        """
        ...

    async def exec(
        self,
        container_id: str,
        request: ExecRequest,
        *,
        approve: ApproveChanges,
        progress: ProgressCallback | None = None,
    ) -> ExecResult:
        """Run a command (only with ``capabilities.exec``; otherwise raises ``Unsupported``)."""
        ...

    async def aclose(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
