"""ContainerService: the one shared, async entry point of every tool and API route.

It is the only place that knows who is calling (an opaque *session key*: an MCP session, the
stdio user, an API key). Every public method takes the key first. Each operation on a container
passes the ``Gate`` (one ``async with``: the rate limit, ownership, quotas charged before a change
becomes visible and released if it fails); the cross-container views (the list, usage, the file
index, file-id resolution) are the ``Catalog``'s, which reads the ``Ledger`` and not the provider.

It also notes, for the audit record of the call in progress (``audit.py``), the container and file
ids it checked, the file bytes stored and read, and a command's exit code.

One instance per process, shared by every transport and by the REST API.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

import anyio
from pydantic import BaseModel, ConfigDict, Field

from . import audit
from .catalog import Catalog, FileCursor
from .changes import ChangeFeed, ExpiryReporting, FilesChanged
from .clock import Clock, system_clock
from .errors import (
    FileTooLarge,
    Hint,
    InvalidRequest,
    NotFound,
    Unsupported,
)
from .gate import Gate, check_id
from .ledger.base import Ledger, Limits
from .models import (
    Container,
    ContainerDeleted,
    ContainerFile,
    ContainerSpec,
    FileDeleted,
    ListParams,
    Page,
)
from .netpolicy import EgressRules, check_network_policy
from .paths import check_path_prefix, normalize_path
from .processes import Processes
from .providers.base import Capabilities, ExecRequest, ExecResult, ProgressCallback, Provider
from .uploads import Upload

__all__ = ["ContainerService", "QuotaUsage", "SessionUsage"]


class QuotaUsage(BaseModel):
    model_config = ConfigDict(frozen=True)

    used: int
    limit: int
    setting: str = Field(description="The setting that holds the limit.")


class SessionUsage(BaseModel):
    """This session's usage against every quota."""

    model_config = ConfigDict(frozen=True)

    containers: QuotaUsage = Field(description="Live (not expired) containers.")
    stored_bytes: QuotaUsage = Field(description="Bytes stored across live containers.")
    calls_per_minute: QuotaUsage = Field(description="Calls in the last minute.")
    files: int = Field(description="Files across live containers.")
    max_files_per_container: int
    max_file_bytes: int


async def _counted(chunks: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """``chunks``, each one's size noted as bytes read out of the call in progress."""
    async with aclosing(chunks):
        async for chunk in chunks:
            audit.note_bytes_out(len(chunk))
            yield chunk


class ContainerService:
    """Ownership, quotas and activity over one ``Provider``. See the module docstring."""

    def __init__(
        self,
        provider: Provider,
        ledger: Ledger,
        limits: Limits,
        *,
        egress: EgressRules | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.provider = provider
        self.ledger = ledger
        self.limits = limits
        self.egress = egress or EgressRules()
        """The operator's egress rules: which network_policy entries a caller may list."""
        self._clock = clock
        self.catalog = Catalog(provider, ledger, clock)
        self.gate = Gate(ledger, limits, clock, self.catalog)
        self.changes = ChangeFeed()
        """Every change of files made through this service, and every expiry the provider reports."""
        if isinstance(provider, ExpiryReporting):
            provider.on_expired = self._expired

    async def _expired(self, container_id: str) -> None:
        await self.ledger.mark_expired(container_id)  # the views read the ledger: it must know at once
        await self.changes.publish(FilesChanged(container_id, None, whole_container=True))

    @property
    def capabilities(self) -> Capabilities:
        """The provider's capabilities, with the per-file byte limit and the state ledger actually in force."""
        caps = self.provider.capabilities
        update: dict[str, object] = {"state": self.ledger.kind}
        if self.ledger.kind == "redis":
            update["state_shared_by"] = (
                "every server process on every host using the same Redis (CONTAINER_MCP_STATE_URL; valid "
                "with the openai provider only, as local containers live on one host)"
            )
        limit = self.limits.max_file_bytes
        if caps.max_file_bytes is None or caps.max_file_bytes > limit:
            update["max_file_bytes"] = limit
        return caps.model_copy(update=update)

    # --- containers ------------------------------------------------------------------------

    async def create_container(self, owner: str, spec: ContainerSpec) -> Container:
        """Create a container owned by ``owner``.

        ``spec.file_ids`` may name ``cfile_`` files in the caller's other live containers (copied,
        paths kept) and, on backends that have them, backend-level file ids. Raises
        ``QuotaExceeded`` at the live-container limit, ``InvalidRequest`` for a file id the caller
        cannot use or a ``network_policy`` this provider cannot enforce or these egress rules refuse
        (``netpolicy.check_network_policy``; checked before anything is reserved or created). On
        any failure no container is left behind.
        """
        await self.gate.call(owner)
        caps = self.provider.capabilities
        if spec.memory_limit not in caps.memory_limits:
            raise InvalidRequest(
                f"memory_limit {spec.memory_limit!r} is not available on the {caps.provider} provider; "
                f"choose one of {', '.join(caps.memory_limits)}.",
                param="memory_limit",
            )
        if spec.network_policy.type not in caps.network_policies:
            why = f" ({caps.network_unavailable_reason})" if caps.network_unavailable_reason else ""
            raise InvalidRequest(
                f"network_policy type {spec.network_policy.type!r} is not available on the {caps.provider} "
                f"provider{why}; choose one of {', '.join(caps.network_policies)}. Nothing was created.",
                param="network_policy",
            )
        check_network_policy(spec.network_policy, self.egress)
        if spec.image is not None and spec.image not in caps.images:
            offered = f"choose one of {', '.join(caps.images)}" if caps.images else "omit image"
            raise InvalidRequest(
                f"image {spec.image[:200]!r} is not offered on the {caps.provider} provider; {offered}. "
                "Nothing was created.",
                param="image",
            )
        lo, hi = caps.expiry_minutes_range
        if not lo <= spec.expires_after.minutes <= hi:
            raise InvalidRequest(
                f"expires_after minutes must be between {lo} and {hi} on the {caps.provider} provider.",
                param="expires_after",
            )
        copies, upstream = await self.catalog.resolve_file_ids(owner, spec.file_ids)
        reservation_id = await self.gate.reserve(owner, spec.name)
        try:
            container = await self.provider.create_container(spec.model_copy(update={"file_ids": upstream}))
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.ledger.cancel(reservation_id)
            raise
        try:
            await self.ledger.commit(reservation_id, container.id, container.created_at, container.model_dump_json())
            if upstream:
                await self.catalog.resync(container.id)
            for src_container, src_file in copies:
                async with self.gate.charging(owner, container.id) as charges:
                    copied = await self.provider.copy_file(
                        src_container, src_file, container.id, approve=charges.approve
                    )
                await self.ledger.put_files(container.id, [copied])
        except BaseException:
            await self._discard(container.id, reservation_id)
            raise
        audit.note_container(container.id)
        if spec.file_ids:
            await self.changes.publish(FilesChanged(container.id, owner))
        return container

    async def _discard(self, container_id: str, reservation_id: str) -> None:
        with anyio.CancelScope(shield=True):  # a half-made container must not outlive a cancelled create
            try:
                await self.provider.delete_container(container_id)
            except NotFound:
                pass
            finally:
                # A commit that failed left the reservation held; one that ran, the container owned.
                await self.ledger.cancel(reservation_id)
                await self.ledger.forget(container_id)

    async def copy_file(self, owner: str, file_id: str, container_id: str) -> ContainerFile:
        """Copy the caller's file ``file_id`` (in any of its live containers) into ``container_id``.

        The copy keeps the source's path; quotas apply as for an upload. Raises ``NotFound`` when
        no live container of the caller holds the file.
        """
        async with self.gate.container(owner, container_id) as charges:
            check_id(file_id, "file")
            audit.note_file(file_id)
            live = await self.catalog.live_ids(owner)
            # The destination first: copying within a container is the common case.
            ordered = [container_id, *(c for c in live if c != container_id)]
            source = await self.catalog.locate(owner, ordered, file_id)
            if source is None:
                raise NotFound(
                    f"File {file_id} is not in any of your live containers.",
                    hint=Hint(
                        mcp="Pass the id of a file listed by file_list.",
                        rest="Pass the id of a file listed by GET /v1/containers/{container_id}/files.",
                    ),
                    param="file_id",
                )
            copied = await self.provider.copy_file(source, file_id, container_id, approve=charges.approve)
        await self.catalog.changed(container_id, put=[copied])
        await self.changes.publish(FilesChanged(container_id, owner, (copied.id,)))
        return copied

    async def list_containers(self, owner: str, params: ListParams) -> Page[Container]:
        """The caller's containers (expired ones too), newest first by default.

        Read from the ledger (``Catalog.page``): O(page) work and no provider request, so listing
        never refreshes a container's activity (``last_active_at`` and ``expires_at`` are as of
        the last operation that saw it).
        """
        await self.gate.call(owner)
        return await self.catalog.page(owner, params)

    async def get_container(self, owner: str, container_id: str) -> Container:
        async with self.gate.container(owner, container_id) as charges:
            charges.fresh = True
            return await self.catalog.seen(await self.provider.get_container(container_id), charges.row)

    async def delete_container(self, owner: str, container_id: str) -> ContainerDeleted:
        async with self.gate.container(owner, container_id) as charges:
            charges.fresh = True  # it is gone: no activity to record
            deleted = await self.provider.delete_container(container_id)
        await self.ledger.forget(container_id)
        await self.changes.publish(FilesChanged(container_id, owner, whole_container=True))
        return deleted

    # --- files -----------------------------------------------------------------------------

    async def create_file(self, owner: str, container_id: str, path: str, upload: Upload) -> ContainerFile:
        """Store ``upload`` at ``path`` (under /mnt/data), replacing any file there.

        Quotas are checked before the file becomes visible; over a limit, nothing is stored.
        """
        async with self.gate.container(owner, container_id) as charges:
            normalized = normalize_path(path)
            if upload.size is not None and upload.size > self.limits.max_file_bytes:
                raise FileTooLarge.over(self.limits.max_file_bytes, upload.size)
            made = await self.provider.create_file(
                container_id, normalized, upload, max_bytes=self.limits.max_file_bytes, approve=charges.approve
            )
        await self.catalog.changed(container_id, put=[made])
        audit.note_file(made.id)
        audit.note_bytes_in(made.bytes or 0)
        # A replaced file gets a new id, and the old one's is not known here: every file of the
        # container may have changed for whoever watches it.
        change = FilesChanged(container_id, owner, (made.id,), whole_container=charges.replaced)
        await self.changes.publish(change)
        return made

    async def list_files(self, owner: str, container_id: str, params: ListParams) -> Page[ContainerFile]:
        async with self.gate.container(owner, container_id):
            if params.path_prefix is not None:
                check_path_prefix(params.path_prefix)
                if not self.provider.capabilities.file_path_prefix:
                    raise Unsupported(
                        f"The {self.provider.name} provider cannot filter files by path; omit path_prefix."
                    )
            page = await self.provider.list_files(container_id, params)
        await self.catalog.listed(container_id, params, page)
        return page

    async def get_file(self, owner: str, container_id: str, file_id: str) -> ContainerFile:
        async with self.gate.container(owner, container_id):
            check_id(file_id, "file")
            audit.note_file(file_id)
            return await self.provider.get_file(container_id, file_id)

    async def delete_file(self, owner: str, container_id: str, file_id: str) -> FileDeleted:
        async with self.gate.container(owner, container_id) as charges:
            check_id(file_id, "file")
            audit.note_file(file_id)
            gone = await self.provider.delete_file(container_id, file_id, approve=charges.approve)
        await self.catalog.changed(container_id, file_ids=[file_id])
        await self.changes.publish(FilesChanged(container_id, owner, (file_id,)))
        return gone

    async def open_file(
        self, owner: str, container_id: str, file_id: str, *, offset: int = 0, length: int | None = None
    ) -> tuple[ContainerFile, AsyncGenerator[bytes, None]]:
        """The file's metadata and an iterator over its bytes from ``offset`` (at most ``length``).

        Close the iterator (``aclose``) when stopping early.
        """
        if offset < 0:
            raise InvalidRequest("offset must be 0 or more.", param="offset")
        if length is not None and length < 0:
            raise InvalidRequest("length must be 0 or more.", param="length")
        meta = await self.get_file(owner, container_id, file_id)
        return meta, _counted(self.provider.read_file(container_id, file_id, offset=offset, length=length))

    async def read_bytes(
        self, owner: str, container_id: str, file_id: str, *, offset: int = 0, length: int | None = None
    ) -> tuple[ContainerFile, bytes]:
        """``open_file``, collected into memory (callers bound ``length``)."""
        meta, chunks = await self.open_file(owner, container_id, file_id, offset=offset, length=length)
        parts: list[bytes] = []
        async with aclosing(chunks):
            async for chunk in chunks:
                parts.append(chunk)
        return meta, b"".join(parts)

    async def file_index(
        self, owner: str, *, after: FileCursor | None, limit: int
    ) -> tuple[list[ContainerFile], FileCursor | None]:
        """Files across the caller's live containers, oldest container first, paged
        (``Catalog.file_index``). Counts as one call."""
        await self.gate.call(owner)
        return await self.catalog.file_index(owner, after=after, limit=limit)

    # --- exec ------------------------------------------------------------------------------

    async def exec(
        self,
        owner: str,
        container_id: str,
        request: ExecRequest,
        *,
        progress: ProgressCallback | None = None,
    ) -> ExecResult:
        """Run a command in the caller's container; its file changes count against the quotas.

        Raises ``Unsupported`` when the provider cannot run commands.
        """
        async with self.gate.container(owner, container_id) as charges:
            caps = self.provider.capabilities
            if not caps.exec:
                raise Unsupported(
                    f"The {caps.provider} provider cannot run commands: "
                    f"{caps.exec_unavailable_reason or 'it has no exec capability'}."
                )
            request = request.model_copy(update={"max_home_growth_bytes": await self.home_room(owner)})
            result = await self.provider.exec(container_id, request, approve=charges.approve, progress=progress)
        audit.note_exec(result.exit_code, result.duration_ms / 1000)
        await self.ran(owner, container_id, result)
        return result

    async def home_room(self, owner: str) -> int:
        """Bytes a command may add to its container's home: the session's stored-bytes room (the
        home is written in place and counted after the fact, so this bounds it up front)."""
        # From the ledger as it stands (no reconcile): bytes of a container that expired since the
        # ledger last heard still count, which only makes the room smaller.
        used = (await self.ledger.usage(owner, self._clock())).bytes
        return max(0, self.limits.max_session_bytes - used)

    async def ran(self, owner: str, container_id: str, result: ExecResult) -> None:
        """A command (foreground or background) committed ``result``: its files go into the
        ledger's file index (all of them, not just the listed ones) and subscribers hear of them."""
        kept, deleted = result.all_files
        await self.catalog.changed(container_id, put=kept, paths=deleted)
        if kept or deleted:
            touched = tuple(f.id for f in kept) if not result.files_truncated else ()
            # Deleted files are named by path only, and a changed one may have a new id: the whole
            # container may have changed.
            whole = bool(deleted or result.files_changed_total or result.files_truncated)
            await self.changes.publish(FilesChanged(container_id, owner, touched, whole_container=whole))

    async def processes(self, owner: str, container_id: str) -> Processes:
        """The caller's container's background processes (``processes.Processes``).

        Raises ``Unsupported`` when the provider cannot run them.
        """
        await self.gate.call(owner)
        await self.gate.own(owner, container_id)
        return Processes(self, owner, container_id)

    # --- usage -----------------------------------------------------------------------------

    async def usage(self, owner: str) -> SessionUsage:
        """This caller's usage against every quota, from the ledger (``Catalog.usage``): polling
        it keeps no container alive."""
        await self.gate.call(owner)
        u = await self.catalog.usage(owner)
        lim = self.limits
        return SessionUsage(
            containers=QuotaUsage(used=u.containers, limit=lim.max_containers, setting="CONTAINER_MCP_MAX_CONTAINERS"),
            stored_bytes=QuotaUsage(
                used=u.bytes, limit=lim.max_session_bytes, setting="CONTAINER_MCP_MAX_SESSION_BYTES"
            ),
            calls_per_minute=QuotaUsage(
                used=u.calls_last_minute,
                limit=lim.max_calls_per_minute,
                setting="CONTAINER_MCP_MAX_CALLS_PER_MINUTE",
            ),
            files=u.files,
            max_files_per_container=lim.max_files_per_container,
            max_file_bytes=lim.max_file_bytes,
        )
