"""The embedded local provider: containers as directories on this machine, no account needed.

* Registry: SQLite (WAL, synchronous=FULL) at ``<data_dir>/registry.sqlite3``.
* Files: ``<data_dir>/containers/<id>/files/`` stands for ``/mnt/data``; uploads are written to
  ``.../tmp/``, fsynced and renamed into place, and only then recorded, so a crash never leaves
  a half-written file visible or a registry row without its bytes.
* Every write to a container (upload, delete, a command's whole staged run and commit) holds
  its lock (``local_lock``): exclusive across every server process on this data dir.
* Repair: a container whose previous lock holder died (the lock file's crash marker), every
  container at start, and (by the reaper) any container a dead process left marked, is brought
  back to one consistent state under its lock: a commit a crash cut short is rolled forward
  from its journal or back (``sandbox.recover_stage``); temp files go; a file on disk without a
  row is adopted (a complete upload or command output whose row a crash lost: it was charged
  before it was installed); a row without a file goes; a row whose file changed is refreshed.
  The container's real file count and bytes then go to the usage sink (the session store's
  counters), so counters equal what is stored. With a sink attached, the reaper also recounts
  every running container no one holds, each pass, from the registry (cheap: one aggregate query).
* Expiry: a container expires ``expires_after.minutes`` after ``last_active_at``. It is checked
  on every access (exact, whatever the reaper's pace) and by a background reaper every
  ``reaper_interval_s``; an expired container keeps its metadata, loses its files, and file
  operations on it raise ``ContainerExpired``. Expiry uses the injected clock.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mimetypes
import os
import shlex
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
import anyio.to_thread

from ..clock import Clock, system_clock
from ..errors import (
    ContainerNotFound,
    FileNotFound,
    FileTooLarge,
    InvalidRequest,
    Unsupported,
)
from ..ids import check_container_id, new_container_id, new_file_id
from ..models import (
    MEMORY_LIMITS,
    Container,
    ContainerDeleted,
    ContainerFile,
    ContainerSpec,
    FileDeleted,
)
from ..paths import MOUNT, relative_path
from ..private import private_dir
from ..sandbox import STAGE_PREFIX, Attachment, Sandbox, SandboxProbe, recover_stage
from ..sandbox.cgroups import pid_alive
from ..sandbox.changes import JOURNAL
from ..uploads import CHUNK_SIZE, Upload
from .base import (
    ApproveChanges,
    Capabilities,
    ExecRequest,
    ExecResult,
    FileChanges,
    OnExit,
    ProcessInfo,
    ProgressCallback,
    Refund,
)
from .local_exec import ExecLimits, finish_run, prepare_job, run_exec
from .local_fs import ContainerDir
from .local_lock import ContainerLocks, LockBusy
from .local_processes import ProcessBacked, ProcessTable, runs_anywhere, sweep_outputs
from .local_registry import ContainerRow, FileRow, Registry, policy_json

__all__ = ["LocalProvider"]

log = logging.getLogger(__name__)

UsageSink = Callable[[str, int, int], Awaitable[None]]
"""Told a container's real (files, bytes) after a repair or recount: ``Ledger.set_usage``."""

FilesSink = Callable[[str, list[ContainerFile]], Awaitable[None]]
"""Told a container's files after a repair changed them: ``Ledger.set_files``."""


def guess_mime(rel: str) -> str:
    return mimetypes.guess_type(rel, strict=False)[0] or "application/octet-stream"


class _FdUpload:
    """Content of an already-open file (a copy source). ``close()`` releases the fd, read or not."""

    host_fd: int | None = None

    def __init__(self, fd: int, size: int) -> None:
        self._fd: int | None = fd
        self.size: int | None = size

    async def chunks(self) -> AsyncIterator[bytes]:
        assert self._fd is not None
        while data := await anyio.to_thread.run_sync(os.read, self._fd, CHUNK_SIZE):
            yield data

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


class LocalProvider(ProcessBacked):
    """Containers in ``data_dir``. Use as an async context manager (starts recovery and the reaper)."""

    name = "local"

    def __init__(
        self,
        data_dir: Path,
        *,
        clock: Clock = system_clock,
        reaper_interval_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        exec_limits: ExecLimits | None = None,
        sandbox: Sandbox | None = None,
    ) -> None:
        self.data_dir = data_dir
        self._clock = clock
        # The promise: an expired container is reaped within 60 s, whatever the setting.
        self._reaper_interval_s = min(reaper_interval_s, 60.0)
        self._sleep = sleep
        private_dir(data_dir)
        self._containers_root = data_dir / "containers"
        # Sandboxed commands run as an unprivileged host uid that owns a container's files while it
        # runs: no other process of that uid may walk in from outside.
        private_dir(self._containers_root)
        self.registry = Registry(data_dir / "registry.sqlite3")
        self._locks = ContainerLocks(data_dir / "locks", sleep=sleep)
        self._usage_sink: UsageSink | None = None
        self._files_sink: FilesSink | None = None
        self._stack: AsyncExitStack | None = None
        self.on_expired: Callable[[str], Awaitable[None]] | None = None
        """Told the id of each container this provider expires (``changes.ExpiryReporting``)."""
        self._exec_limits = exec_limits
        limits = exec_limits or ExecLimits()
        self._home_bytes: dict[str, int] = {}
        """Each container's home as last measured (``_report_usage``, after every command): the base
        of a run's home growth bound, so a run does not walk the home first (another server process
        may have changed it since: the bound is then off by that much, one run)."""
        self._processes = ProcessTable(
            max_per_container=limits.max_processes_per_container, max_output_bytes=limits.process_max_output_bytes
        )
        self._sandbox = sandbox or Sandbox()
        self._probe: SandboxProbe | None = None
        self._capabilities = Capabilities(
            provider="local",
            exec=False,
            exec_unavailable_reason="command execution is not enabled on this server",
            memory_limits=list(MEMORY_LIMITS),
            # 'allowlist' only once the sandbox proved it can enforce it (see _start).
            network_policies=["disabled"],
            network_unavailable_reason="command execution is not enabled on this server",
            max_file_bytes=None,
            expiry_minutes_range=(1, 1440),
            file_paths="exact",
            file_path_prefix=True,
            persistence=PERSISTENCE,
            upstream_file_ids=False,
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            return await self._start()
        except BaseException:
            await self.aclose()  # a failed start releases what it took: registry, sandbox launchers
            raise

    async def _start(self) -> Self:
        await self.recover()
        self._stack = AsyncExitStack()
        if self._exec_limits is not None:
            # Entered, the sandbox keeps a launcher warm: ~12 ms less per command than a cold start.
            await self._stack.enter_async_context(self._sandbox)
            self._probe = probe = await self._sandbox.probe()
            allowlist = probe.available and probe.python is not None
            self._capabilities = self._capabilities.model_copy(
                update={
                    "exec": probe.available,
                    "exec_unavailable_reason": None if probe.available else probe.reason,
                    "memory_enforcement": probe.memory_enforcement if probe.available else None,
                    "network_policies": ["disabled", "allowlist"] if allowlist else ["disabled"],
                    "network_unavailable_reason": None
                    if allowlist
                    else f"'allowlist' cannot be enforced here: {probe.allowlist_unavailable or probe.reason}",
                    "network_enforcement": probe.network_enforcement if probe.available else None,
                    "processes": probe.available,
                    "processes_per_session": self._exec_limits.max_processes_per_session if probe.available else None,
                }
            )
            # Entered after the sandbox, so closed before it: every background process is killed first.
            await self._stack.enter_async_context(self._processes)
            if probe.available and not allowlist:
                log.warning("network_policy 'allowlist' is not offered: %s", probe.allowlist_unavailable)
            if not probe.available:
                log.warning("container_exec is not offered: %s", probe.reason)
        tg = await self._stack.enter_async_context(anyio.create_task_group())
        tg.start_soon(self._reap_forever)
        self._stack.callback(tg.cancel_scope.cancel)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()
        self.registry.close()

    async def sweep(self) -> list[str]:
        """Expire every running container past its time; returns their ids.

        A container whose lock is held is in use (an upload, a running command): not idle, so it
        is left for the next sweep.
        """
        # A process of ours whose container another server process deleted or expired ends now,
        # not at its lifetime.
        for container_id in self._processes.containers():
            row = self.registry.container(container_id)
            if row is None or row.status != "running":
                self._processes.cancel(container_id)
        expired: list[str] = []
        for container_id in self.registry.due(self._clock(), limit=100_000):
            if self._keep_for_processes(container_id):
                continue
            try:
                async with self._hold(container_id, wait=False):
                    row = self.registry.container(container_id)
                    if row is None or row.status != "running" or row.expires_at >= self._clock():
                        continue  # deleted, or used by another process since we looked
                    await self._expire(container_id)
            except (LockBusy, ContainerNotFound):  # in use, or deleted since we looked
                continue
            expired.append(container_id)
        return expired

    async def repair_abandoned(self) -> list[str]:
        """Repair every container a dead process left marked and no one holds; returns their ids."""
        repaired: list[str] = []
        for container_id in await anyio.to_thread.run_sync(self._locks.abandoned):
            try:
                async with self._locks.hold(container_id, wait=False) as crashed:
                    if crashed:
                        await self._repair(container_id)
                        repaired.append(container_id)
            except LockBusy:
                continue
        return repaired

    def attach_usage_sink(self, sink: UsageSink, files: FilesSink | None = None) -> None:
        """From now on, tell ``sink`` each repaired container's real usage (see the module docstring),
        and ``files`` the whole list of files of each container a repair changed (``Ledger.set_files``)."""
        self._usage_sink = sink
        self._files_sink = files

    async def recount(self) -> None:
        """Tell the usage sink every running container's real usage, each read under its lock.

        A container another process holds is skipped: its holder keeps the counters exact, and
        repairs it first if a crash came before (a start never waits out another's long command).
        """
        for container_id in self.registry.all_ids():
            with contextlib.suppress(ContainerNotFound, LockBusy):
                async with self._hold(container_id, wait=False):
                    row = self.registry.container(container_id)
                    if row is not None and row.status == "running":
                        await self._report_usage(container_id)

    async def recover(self) -> None:
        """Make disk and registry agree after a crash (see the module docstring)."""
        await self.sweep()
        known = self.registry.all_ids()
        for entry in await anyio.to_thread.run_sync(lambda: list(self._containers_root.iterdir())):
            if entry.name not in known:
                # Another server process on this data dir may have made it a moment ago.
                if await anyio.to_thread.run_sync(_older_than_grace, entry):
                    await anyio.to_thread.run_sync(ContainerDir(entry).destroy)
                continue
            # Deleted meanwhile, or held by a live process (which repaired it on taking it, if need be).
            with contextlib.suppress(ContainerNotFound, LockBusy):
                async with self._hold(entry.name, wait=False):
                    await self._repair(entry.name)

    async def _reap(self) -> None:
        await self.sweep()
        await self.repair_abandoned()
        if self._usage_sink is not None:
            await self.recount()  # converges whatever drift an interleaving left

    async def _repair(self, container_id: str) -> None:
        """Make one container's disk and registry agree (see the module docstring). Hold its lock."""
        d = self._dir(container_id)
        container = self.registry.container(container_id)
        if container is None or not await anyio.to_thread.run_sync(d.root.is_dir):
            return
        if container.status == "expired":  # an expiry a crash cut short: its files go
            await anyio.to_thread.run_sync(d.clear_files)
            return
        # Under the lock no stage or temp file is in use: whatever is there, a crash left.
        rolled = await anyio.to_thread.run_sync(_recover_stages, d)
        await anyio.to_thread.run_sync(sweep_outputs, d.root)
        await anyio.to_thread.run_sync(d.clear_temps, 0.0)
        on_disk = await anyio.to_thread.run_sync(d.scan)
        rows = self.registry.files_of(container_id)
        stale = [rel for rel in rows if rel not in on_disk]
        now = self._clock()
        put: list[FileRow] = []
        for rel, st in on_disk.items():
            row = rows.get(rel)
            if row is None:
                sha = await anyio.to_thread.run_sync(d.sha256, rel)
                put.append(
                    FileRow(
                        id=new_file_id(now),
                        container_id=container_id,
                        path=rel,
                        created_at=int(now),
                        bytes=st.size,
                        source="assistant" if rolled else "user",
                        mime_type=guess_mime(rel),
                        sha256=sha,
                        mtime_ns=st.mtime_ns,
                    )
                )
            elif row.bytes != st.size or row.mtime_ns != st.mtime_ns:
                sha = await anyio.to_thread.run_sync(d.sha256, rel)
                put.append(FileRow(**{**row.__dict__, "bytes": st.size, "mtime_ns": st.mtime_ns, "sha256": sha}))
        if stale or put:
            self.registry.apply(container_id, put, stale)
            if self._files_sink is not None:
                files = [row.model() for row in self.registry.files_of(container_id).values()]
                await self._files_sink(container_id, files)
            log.info(
                "container %s repaired: %d rows added or refreshed, %d dropped%s",
                container_id,
                len(put),
                len(stale),
                ", a cut-short commit rolled forward" if rolled else "",
            )
        await self._report_usage(container_id)

    async def _report_usage(self, container_id: str) -> None:
        """Tell the usage sink the container's files and bytes: its files' and its home's."""
        if self._usage_sink is not None:
            files, bytes_ = self.registry.usage_of(container_id)
            home = await anyio.to_thread.run_sync(self._dir(container_id).home_usage)
            self._home_bytes[container_id] = home
            await self._usage_sink(container_id, files, bytes_ + home)

    # --- helpers ---------------------------------------------------------------------------

    def _dir(self, container_id: str) -> ContainerDir:
        return ContainerDir(self._containers_root / container_id)

    def _keep_for_processes(self, container_id: str) -> bool:
        """Whether the container runs background processes, here or in another server process on
        this data dir: activity, so it does not expire (each process ends by its lifetime at the
        latest); its expiry is pushed on meanwhile (another process's touch may have cut it short)."""
        if not self._processes.running([container_id]) and not runs_anywhere(self._dir(container_id).root):
            return False
        row = self.registry.container(container_id)
        if row is not None:
            self.registry.hold(container_id, self._clock() + row.expiry_minutes * 60)
        return True

    async def _expire(self, container_id: str) -> None:
        self._processes.cancel(container_id)  # killed; each discards its own stage
        self.registry.expire(container_id)
        await anyio.to_thread.run_sync(self._dir(container_id).clear_files)
        self._home_bytes.pop(container_id, None)
        log.info("container %s expired", container_id)
        if self.on_expired is not None:
            await self.on_expired(container_id)

    # --- containers ------------------------------------------------------------------------

    async def create_container(self, spec: ContainerSpec) -> Container:
        if spec.file_ids:
            raise InvalidRequest(
                "The local provider copies only 'cfile_' files of your own containers; other file ids are "
                "not known here.",
                param="file_ids",
            )
        now = self._clock()
        row = ContainerRow(
            id=new_container_id(now),
            name=spec.name,
            created_at=int(now),
            last_active_at=now,
            expiry_minutes=spec.expires_after.minutes,
            expires_at=now + spec.expires_after.minutes * 60,
            memory_limit=spec.memory_limit,
            network_policy=policy_json(spec.network_policy),
            status="running",
        )
        await anyio.to_thread.run_sync(self._dir(row.id).create)
        self.registry.insert_container(row)
        return row.model()

    async def delete_container(self, container_id: str) -> ContainerDeleted:
        check_container_id(container_id)
        # Its background processes end first (one finishing its commit needs the lock), and again
        # after: one started meanwhile is gone with the directory.
        await self._processes.stop(container_id)
        async with self._hold(container_id):
            if not self.registry.delete_container(container_id):
                raise ContainerNotFound(container_id)
            await anyio.to_thread.run_sync(self._dir(container_id).destroy)
            self._locks.remove(container_id)
            self._home_bytes.pop(container_id, None)
        await self._processes.stop(container_id)
        return ContainerDeleted(id=container_id)

    # --- files -----------------------------------------------------------------------------

    async def create_file(
        self,
        container_id: str,
        path: str,
        upload: Upload,
        *,
        max_bytes: int | None = None,
        approve: ApproveChanges | None = None,
        source: str = "user",
    ) -> ContainerFile:
        rel = relative_path(path)
        async with self._hold(container_id):
            await self._running(container_id, locked=True)
            d = self._dir(container_id)
            await anyio.to_thread.run_sync(d.existing_size, rel)  # rejects symlinked parents early
            fd, temp = await anyio.to_thread.run_sync(d.new_temp)
            refund: Refund | None = None
            try:
                digest = hashlib.sha256()
                size = 0
                try:
                    async for chunk in upload.chunks():
                        size += len(chunk)
                        if max_bytes is not None and size > max_bytes:
                            raise FileTooLarge.over(max_bytes)
                        digest.update(chunk)
                        await anyio.to_thread.run_sync(_write_all, fd, chunk)
                    await anyio.to_thread.run_sync(os.fsync, fd)
                finally:
                    os.close(fd)
                old = self.registry.file_at(container_id, rel)
                if approve is not None:
                    refund = await approve(
                        FileChanges(
                            created=[] if old else [f"{MOUNT}/{rel}"],
                            changed=[f"{MOUNT}/{rel}"] if old else [],
                            largest_file_bytes=size,
                            files_delta=0 if old else 1,
                            bytes_delta=size - (old.bytes if old else 0),
                        )
                    )
                st = await anyio.to_thread.run_sync(d.install, temp, rel)
            except BaseException:
                with anyio.CancelScope(shield=True):  # a cancelled upload leaves no temp file behind
                    await anyio.to_thread.run_sync(d.discard_temp, temp)
                    if refund is not None:  # before the lock goes: a recount now sees the truth
                        await refund()
                raise
            now = self._clock()
            row = FileRow(
                id=new_file_id(now),
                container_id=container_id,
                path=rel,
                created_at=int(now),
                bytes=st.size,
                source=source,
                mime_type=guess_mime(rel),
                sha256=digest.hexdigest(),
                mtime_ns=st.mtime_ns,
            )
            self.registry.put_file(row)
            return row.model()

    async def copy_file(
        self,
        src_container_id: str,
        src_file_id: str,
        dst_container_id: str,
        *,
        approve: ApproveChanges | None = None,
    ) -> ContainerFile:
        src = await self._file_row(src_container_id, src_file_id)
        fd = await self._open(src_container_id, src)
        upload = _FdUpload(fd, src.bytes)
        try:
            return await self.create_file(dst_container_id, f"{MOUNT}/{src.path}", upload, approve=approve)
        finally:
            upload.close()

    async def _open(self, container_id: str, row: FileRow) -> int:
        try:
            return await anyio.to_thread.run_sync(self._dir(container_id).open_read, row.path)
        except (FileNotFoundError, NotADirectoryError):
            # The row outlived its bytes (changed behind our back): it is gone for the caller too.
            raise FileNotFound(container_id, row.id) from None

    async def delete_file(
        self, container_id: str, file_id: str, *, approve: ApproveChanges | None = None
    ) -> FileDeleted:
        async with self._hold(container_id):
            row = await self._file_row(container_id, file_id, locked=True)
            if approve is not None:
                await approve(FileChanges(deleted=[f"{MOUNT}/{row.path}"], files_delta=-1, bytes_delta=-row.bytes))
            self.registry.delete_file(container_id, file_id)
            await anyio.to_thread.run_sync(self._dir(container_id).remove, row.path)
        return FileDeleted(id=file_id)

    async def read_file(
        self, container_id: str, file_id: str, *, offset: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        row = await self._file_row(container_id, file_id)
        chunks = self._dir(container_id).read_range(row.path, offset, length, CHUNK_SIZE)
        try:
            while True:
                try:
                    data = await anyio.to_thread.run_sync(next, chunks, None)
                except (FileNotFoundError, NotADirectoryError):
                    raise FileNotFound(container_id, file_id) from None  # the row outlived its bytes
                if data is None:
                    break
                yield data
        finally:
            chunks.close()

    # --- exec ------------------------------------------------------------------------------

    async def exec(
        self,
        container_id: str,
        request: ExecRequest,
        *,
        approve: ApproveChanges,
        progress: ProgressCallback | None = None,
    ) -> ExecResult:
        """Run ``request`` in the container's sandbox (see ``local_exec``); holds the container's lock,
        so uploads and other commands on the same container wait for it."""
        if self._probe is None or self._exec_limits is None or not self._capabilities.exec:
            raise Unsupported(f"The local provider cannot run commands: {self._capabilities.exec_unavailable_reason}.")
        async with self._hold(container_id):
            row = await self._running(container_id, locked=True)
            # A command is activity for as long as it runs: no expiry may strike mid-run.
            self.registry.hold(container_id, self._clock() + row.expiry_minutes * 60 + request.timeout_s + 60)
            try:
                return await run_exec(
                    sandbox=self._sandbox,
                    probe=self._probe,
                    registry=self.registry,
                    container=self._dir(container_id),
                    row=row,
                    request=request,
                    limits=self._exec_limits,
                    approve=approve,
                    progress=progress,
                    clock=self._clock,
                    guess_mime=guess_mime,
                    home_bytes=self._home_bytes.get(container_id),
                )
            finally:
                with anyio.CancelScope(shield=True):
                    self.registry.touch(container_id, self._clock())  # the run itself was activity
                    # What it left in its home counts too, however it ended: the home is written in
                    # place, so even a refused or failed command's home writes stay.
                    await self._report_usage(container_id)

    # --- background processes (``ProcessProvider``; see local_processes) ---------------------

    async def start_process(
        self, container_id: str, request: ExecRequest, *, approve: ApproveChanges, on_exit: OnExit
    ) -> ProcessInfo:
        """Start ``request`` in the container's sandbox without waiting; it commits when it exits."""
        if self._probe is None or self._exec_limits is None or not self._capabilities.processes:
            raise Unsupported(f"The local provider cannot run commands: {self._capabilities.exec_unavailable_reason}.")
        probe, limits = self._probe, self._exec_limits
        lifetime = min(request.timeout_s, limits.process_max_lifetime_s)
        d = self._dir(container_id)
        cfg = self._sandbox.config
        async with self._hold(container_id):
            row = await self._running(container_id, locked=True)
            # Event-loop objects (its cancel scope, events) are made here; the disk work is two files.
            proc = self._processes.new(container_id, d.root, shlex.join(request.argv), int(self._clock()))
            try:
                job = await prepare_job(
                    probe=probe,
                    container=d,
                    row=row,
                    request=request.model_copy(update={"timeout_s": lifetime, "stdin": None}),
                    limits=limits,
                    attach=Attachment(output=proc.output, stdin=proc.stdin_source, started=proc.started),
                    adopt_now=(cfg.sandbox_uid, cfg.sandbox_gid) if probe.mode == "root" else None,
                    home_bytes=self._home_bytes.get(container_id),
                )
            except BaseException:
                self._processes.forget(proc)
                raise
            # Running is activity: the container stays until the process ends (at most its lifetime).
            self.registry.hold(container_id, self._clock() + row.expiry_minutes * 60 + lifetime + 60)
        if request.stdin and proc.stdin is not None:
            proc.stdin.send_nowait(request.stdin)

        async def body() -> ExecResult:
            try:
                run = await self._sandbox.run(job)
                proc.ended_mono = time.monotonic()
                async with run:
                    async with self._hold(container_id):
                        await self._running(container_id, locked=True)
                        try:
                            return await finish_run(
                                run,
                                registry=self.registry,
                                container=d,
                                container_id=container_id,
                                listed=request.max_listed_files,
                                approve=approve,
                                clock=self._clock,
                                guess_mime=guess_mime,
                            )
                        finally:
                            with anyio.CancelScope(shield=True):  # its home writes stay however it ended
                                await self._report_usage(container_id)
            finally:
                # However it ended, its hold ends with it: the container idles from now on.
                self.registry.touch(container_id, self._clock())

        self._processes.launch(proc, body, on_exit)
        return proc.info()


PERSISTENCE = (
    "/mnt/data: the container's files (a command's changes are staged and become files when it exits). "
    "$HOME=/home/sandbox: kept between commands of the container (pip install --user, venvs, caches, rc "
    "files), written in place, not listed as files, counted in stored bytes, bounded per container; gone "
    "with the container. /tmp and /dev/shm: private to each command."
)


RECOVERY_GRACE_S = 600.0
"""Recovery leaves alone leftovers younger than this: they may be another live process's work."""


def _recover_stages(d: ContainerDir) -> bool:
    """Roll forward or back every stage in ``d`` a crash left (the caller holds the lock).

    Returns whether a commit was rolled forward.
    """
    rolled = False
    for entry in list(d.root.iterdir()):
        if entry.name.startswith(STAGE_PREFIX):
            # A background run's stage is in use without the lock: one without a journal (no commit
            # began, which needs the lock) of a live server process is left alone.
            pid = entry.name.removeprefix(STAGE_PREFIX).split("-", 1)[0]
            if not (entry / JOURNAL).exists() and pid.isdigit() and pid_alive(int(pid)):
                continue
            rolled = recover_stage(entry, d.files) or rolled
    return rolled


def _older_than_grace(path: Path) -> bool:
    try:
        return time.time() - path.lstat().st_mtime > RECOVERY_GRACE_S
    except FileNotFoundError:
        return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
