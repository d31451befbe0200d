"""The Docker provider: each container is a real container of a Docker-compatible engine.

* Engine: the Engine API at ``DOCKER_HOST`` (``docker_api.Engine``): Docker Engine, Docker
  Desktop, Podman's service, or a remote engine (tcp:// with TLS, ssh://; ``docker_transport``).
  Nothing assumes the engine shares this machine's filesystem: uploads are streamed up a helper
  command's stdin and stored by it as the container's user (``DockerExec.write``), and files are
  read back by a helper as that user (``DockerExec.read``), never as the engine's root (the archive
  API, which resolves paths as root, only makes /mnt/data at create, before any process runs, and
  stats files).
* Registry: the local provider's SQLite tables (``local_registry``) at
  ``<data_dir>/registry.sqlite3``: containers with their expiry, files with size, mtime, sha256.
  Per-container locks (``local_lock``) serialise uploads, deletions and commands across every
  server process on this data dir; a lock left by a dead holder marks the container for a rescan.
* Engine objects: one engine container per container, named ``cmcp-<id>`` and labelled with this
  data dir (``io.container-mcp.instance`` = hash of its real path, ``io.container-mcp.data-dir``)
  and the container id. ``/mnt/data`` lives in the container's own writable layer, so removing
  the engine container removes every byte; no volume, bind mount or network is created.
* Limits, by the engine: memory = ``memory_limit`` with swap equal (no swap beyond it), a pids
  limit, a CPU quota, every capability dropped, ``no-new-privileges``, the engine's default seccomp
  profile with the stop signals refused (``docker_seccomp``: a stopped ``runc init`` would wedge the
  engine on the container; not on Podman, whose API takes no inline profile), never privileged,
  ``docker_user`` inside (uid 1000 by default), an init process as PID 1 that reaps orphans; a
  container whose main process a command killed is started again by the next command.
  ``network_policy`` ``disabled`` is ``NetworkMode: none`` (loopback only);
  ``allowlist`` is not offered (no filtering proxy is reachable from an engine that may be remote)
  and is refused by the service with this reason.
* Commands: ``exec`` (``docker_exec``) through the engine's exec and its hijacked stream.
* Background processes (``container_process``): each an engine exec whose stream the provider
  holds in its ``ProcessTable`` (``local_processes``: output in capped files under
  ``<data_dir>/processes/<id>/``), without the container's lock until it exits and its changes
  are committed as a command's. It is signalled and killed by the session its wrapper announced
  first (``DockerExec.run_background``); delete, expiry and the provider's close kill it, and the
  next start kills what a dead server's processes left (``_kill_orphans``).
* Lifecycle: create takes the id's lock, creates and starts the engine container, then writes the
  row; delete removes the engine container, then the row. Expiry (on access and by the reaper,
  with the injected clock) removes the engine container and keeps the row as ``expired``. At start
  ``reconcile`` removes every engine container of this data dir without a row (a crash between
  engine create and row), and marks expired every running row whose engine container is gone;
  both under the id's lock taken without waiting, so another live process's work in progress is
  left alone. So ``kill -9`` at any point and a restart leave no engine container behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mimetypes
import os
import secrets
import shlex
import shutil
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.to_thread

from ..clock import Clock, system_clock
from ..errors import (
    ContainerExpired,
    ContainerNotFound,
    FileNotFound,
    FileTooLarge,
    InvalidPath,
    InvalidRequest,
    ProviderError,
    ProviderUnavailable,
)
from ..groups import first_error
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
from ..private import FILE_MODE, private_dir
from ..sandbox.cgroups import pid_alive
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
)
from .docker_api import Engine
from .docker_exec import BACKGROUND_PIDFILE, DockerExec, ExecLimits, ExecOutcome, FileScan, scan_files
from .docker_seccomp import profile_json, security_opt
from .docker_tar import tar_dir
from .exec_files import ending
from .local import FilesSink, UsageSink
from .local_lock import ContainerLocks, LockBusy
from .local_processes import OUTPUTS, RUNNING, ProcessBacked, ProcessTable, runs_anywhere
from .local_registry import ContainerRow, FileRow, Registry, policy_json

__all__ = ["LABEL_CONTAINER", "LABEL_DATA_DIR", "LABEL_INSTANCE", "DockerProvider", "instance_label"]

log = logging.getLogger(__name__)

LABEL_INSTANCE = "io.container-mcp.instance"
LABEL_DATA_DIR = "io.container-mcp.data-dir"
LABEL_CONTAINER = "io.container-mcp.container"

MAX_DEPTH = 200
"""Names a stored file's path may have below /mnt/data. Docker's archive API (the engine's stat) fails on
paths of more than 256 names (Docker 20.10: its scoped symlink walk stops there), so a file stored deeper
could never be scanned: it would stay stored and uncounted."""


def instance_label(data_dir: Path) -> str:
    """The label value naming one data dir (the same on every restart)."""
    return hashlib.sha256(os.path.realpath(data_dir).encode()).hexdigest()[:24]


def guess_mime(rel: str) -> str:
    return mimetypes.guess_type(rel, strict=False)[0] or "application/octet-stream"


def _engine_name(container_id: str) -> str:
    return f"cmcp-{container_id}"


def is_podman(ping: Mapping[str, str]) -> bool:
    """Whether the engine that answered ``/_ping`` with these headers is Podman (it adds its own)."""
    return any(key.lower().startswith("libpod-") for key in ping)


def _ids(user: str) -> tuple[int, int] | None:
    """uid and gid of a numeric ``uid[:gid]``; None for a name or '' (the image's user, not known here)."""
    uid, _, gid = user.partition(":")
    if uid.isdigit() and (not gid or gid.isdigit()):
        return int(uid), int(gid or uid)
    return None


class DockerProvider(ProcessBacked):
    """Containers on a Docker-compatible engine. Use as an async context manager (reconciles, reaps)."""

    name = "docker"

    def __init__(
        self,
        data_dir: Path,
        *,
        engine: Engine,
        image: str,
        images: list[str] | None = None,
        user: str = "1000:1000",
        limits: ExecLimits | None = None,
        clock: Clock = system_clock,
        reaper_interval_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.data_dir = data_dir
        self.engine = engine
        self.images = list(dict.fromkeys([image, *(images or [])]))
        self.user = user
        ids = _ids(user)
        # A user named by the image (or by name) has a uid we do not know: /mnt/data and what we
        # write there are then writable by every user of the container (it has no other).
        self._shared = ids is None
        self._uid, self._gid = ids or (0, 0)
        self.limits = limits or ExecLimits()
        self._clock = clock
        self._reaper_interval_s = min(reaper_interval_s, 60.0)
        self._sleep = sleep
        private_dir(data_dir)
        private_dir(data_dir / "tmp")
        self.instance = instance_label(data_dir)
        self.registry = Registry(data_dir / "registry.sqlite3")
        self._locks = ContainerLocks(data_dir / "locks", sleep=sleep)
        self._exec = DockerExec(engine, user=user, limits=self.limits)
        self._processes = ProcessTable(
            max_per_container=self.limits.max_processes_per_container,
            max_output_bytes=self.limits.process_max_output_bytes,
        )
        self._usage_sink: UsageSink | None = None
        self._files_sink: FilesSink | None = None
        self._stack: AsyncExitStack | None = None
        self._ready_images: set[str] = set()
        self._seccomp: str | None = security_opt()
        self.on_expired: Callable[[str], Awaitable[None]] | None = None
        """Told the id of each container this provider expires (``changes.ExpiryReporting``)."""
        self._capabilities = Capabilities(
            provider="docker",
            exec=True,
            memory_limits=list(MEMORY_LIMITS),
            memory_enforcement="docker",
            network_policies=["disabled"],
            network_unavailable_reason="the docker provider cannot route a container's traffic through the "
            "filtering egress proxy, so 'allowlist' is not offered; containers have no network",
            network_enforcement="docker network mode 'none' (loopback only)",
            max_file_bytes=None,
            expiry_minutes_range=(1, 1440),
            file_paths="exact",
            upstream_file_ids=False,
            images=self.images,
            processes=True,
            processes_per_session=self.limits.max_processes_per_session,
        )

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @property
    def labels(self) -> dict[str, str]:
        """The labels every engine object of this data dir carries (a filter for ``list_labelled``)."""
        return {LABEL_INSTANCE: self.instance}

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            if is_podman(await self.engine.ping()):
                self._seccomp = await self._podman_seccomp()
            await self.reconcile()
            self._stack = AsyncExitStack()
            # Closed before the engine: every background process is killed by its helper first.
            await self._stack.enter_async_context(self._processes)
            tg = await self._stack.enter_async_context(anyio.create_task_group())
            tg.start_soon(self._reap_forever)
            self._stack.callback(tg.cancel_scope.cancel)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()
        await self.engine.aclose()
        self.registry.close()

    def attach_usage_sink(self, sink: UsageSink, files: FilesSink | None = None) -> None:
        """From now on, tell ``sink`` each rescanned container's real usage, and ``files`` its files."""
        self._usage_sink = sink
        self._files_sink = files

    async def recount(self) -> None:
        """Tell the usage sink every running container's usage as its rows record it (after a restart,
        the rows a rescan fixed are the truth the counters must equal)."""
        for container_id in self.registry.all_ids():
            row = self.registry.container(container_id)
            if row is not None and row.status == "running":
                await self._report_usage(container_id)

    async def sweep(self) -> list[str]:
        """Expire every running container past its time (those in use are left for the next sweep)."""
        # A process of ours whose container another server process deleted or expired ends now.
        for container_id in self._processes.containers():
            row = self.registry.container(container_id)
            if row is None or row.status != "running":
                self._processes.cancel(container_id)
        expired: list[str] = []
        for container_id in self.registry.due(self._clock(), limit=100_000):
            if self._keep_for_processes(container_id):
                continue
            with contextlib.suppress(LockBusy, ContainerNotFound):
                async with self._hold(container_id, wait=False):
                    row = self.registry.container(container_id)
                    if row is None or row.status != "running" or row.expires_at >= self._clock():
                        continue
                    await self._expire(container_id)
                    expired.append(container_id)
        return expired

    async def reconcile(self) -> None:
        """Make engine and registry agree (see the module docstring)."""
        await self._kill_orphans()
        await self.sweep()
        engine_ids: set[str] = set()
        for found in await self.engine.list_labelled(self.labels):
            container_id = found.get("Labels", {}).get(LABEL_CONTAINER, "")
            engine_ids.add(container_id)
            if self.registry.container(container_id) is not None:
                continue
            with contextlib.suppress(LockBusy):
                async with self._locks.hold(container_id, wait=False):
                    if self.registry.container(container_id) is None:
                        await self.engine.remove(str(found["Id"]))
                        log.info("removed engine container %s: no row for %s", found["Id"][:12], container_id)
                    self._locks.remove(container_id)
        for container_id in await anyio.to_thread.run_sync(self._locks.abandoned):
            # A holder died mid-operation: its command may still run, its files are unrecorded.
            with contextlib.suppress(LockBusy, ContainerNotFound):
                async with self._hold(container_id, wait=False):
                    pass
        for container_id in self.registry.all_ids():
            row = self.registry.container(container_id)
            if row is None or row.status != "running" or container_id in engine_ids:
                continue
            with contextlib.suppress(LockBusy, ContainerNotFound):
                async with self._hold(container_id, wait=False):
                    if await self.engine.inspect(_engine_name(container_id)) is None:
                        log.info("container %s: its engine container is gone; marked expired", container_id)
                        await self._expire(container_id)

    # --- helpers ---------------------------------------------------------------------------

    async def _podman_seccomp(self) -> str | None:
        """The SecurityOpt entry of the profile on Podman, or None (its own default profile applies).

        Podman's Docker API reads a ``seccomp=`` value as a path on its host, not inline JSON. A local
        Podman (a unix socket here) is given the profile as a file in the data dir, once a probe
        container shows that Podman reads it (a Podman machine's VM does not see this host's files);
        otherwise stop signals are not refused there (README: the hazard) and a warning says so."""
        if (
            self.engine.docker_host.startswith("unix://")
            and await self.engine.image_inspect(self.images[0]) is not None
        ):
            text = profile_json()
            path = self.data_dir / "seccomp" / f"stop-signals-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                scratch = path.with_suffix(f".{os.getpid()}.tmp")
                scratch.write_text(text)
                scratch.chmod(0o644)  # not secret; rootful Podman reads it as root, rootless as this user
                scratch.replace(path)
            option = f"seccomp={path}"
            probe = f"cmcp-probe-{secrets.token_hex(6)}"
            config = self._config("probe", ContainerSpec(name="probe"), self.images[0])  # reconcile removes it
            config["HostConfig"] = {**config["HostConfig"], "SecurityOpt": ["no-new-privileges", option]}
            try:
                await self.engine.create_container(probe, config)
            except ProviderError as exc:
                log.warning("Podman could not read the seccomp profile at %s (%s)", path, exc.message[:200])
            else:
                await self.engine.remove(probe)
                return option
        log.warning(
            "the engine is Podman, remote or without the image: its default seccomp profile applies, stop "
            "signals are not refused"
        )
        return None

    async def _reap(self) -> None:
        await self.sweep()

    async def _repair(self, container_id: str) -> None:
        """After a crash mid-operation: kill what is left of its command, and bring the rows in line with
        the engine container's /mnt/data."""
        row = self.registry.container(container_id)
        if row is None or row.status != "running":
            return
        try:
            name = _engine_name(container_id)
            await self._exec.kill(name)
            listed = await self._exec.listing(name)
            scan = await scan_files(self.engine, name, self.registry.files_of(container_id), listed)
            put = await self._rows_for(container_id, scan, source="assistant")
        except ProviderError as exc:
            log.warning("container %s could not be rescanned: %s", container_id, exc)
            return
        self.registry.apply(container_id, [*put[0], *put[1]], scan.deleted)
        await self._report_usage(container_id, files=True)

    async def _report_usage(self, container_id: str, *, files: bool = False) -> None:
        """Tell the sinks the container's files and bytes (and, with ``files``, its files: after a
        rescan or a removal the ledger's file index must follow the rows)."""
        if self._usage_sink is not None:
            await self._usage_sink(container_id, *self.registry.usage_of(container_id))
        if files and self._files_sink is not None:
            await self._files_sink(container_id, [row.model() for row in self.registry.files_of(container_id).values()])

    async def _expire(self, container_id: str) -> None:
        self._processes.cancel(container_id)  # killed, changes discarded; the engine container goes anyway
        with anyio.CancelScope(shield=True):
            await self.engine.remove(_engine_name(container_id))
            self.registry.expire(container_id)
        log.info("container %s expired", container_id)
        if self.on_expired is not None:
            await self.on_expired(container_id)

    async def _engine_call(self, container_id: str, call: Awaitable[Any]) -> Any:
        """Await an engine call on the container; its engine container gone means it expired. An error of
        a task group inside the call is raised as itself (``first_error``), as callers map it."""
        try:
            try:
                return await call
            except BaseExceptionGroup as group:
                raise first_error(group) from None
        except ProviderError as exc:
            if exc.status in (404, 409) and await self.engine.inspect(_engine_name(container_id)) is None:
                await self._expire(container_id)
                raise ContainerExpired(container_id) from exc
            raise

    async def _ensure_image(self, ref: str) -> None:
        if ref in self._ready_images:
            return
        if await self.engine.image_inspect(ref) is None:
            try:
                await self.engine.image_pull(ref)
            except ProviderError as exc:
                raise ProviderUnavailable(
                    f"The Docker engine has no image {ref!r} and could not pull it ({exc.message}). Provide it on "
                    f"the engine: `docker pull {ref}` where a registry is reachable, or `docker load`/`docker "
                    "import` it, or set CONTAINER_MCP_DOCKER_IMAGE to an image the engine has."
                ) from exc
        self._ready_images.add(ref)

    def _config(self, container_id: str, spec: ContainerSpec, image: str) -> dict[str, Any]:
        memory = MEMORY_LIMITS[spec.memory_limit]
        return {
            "Image": image,
            "Entrypoint": ["sleep"],
            "Cmd": ["2147483647"],
            "User": self.user,
            "Labels": {
                LABEL_INSTANCE: self.instance,
                LABEL_DATA_DIR: str(self.data_dir),
                LABEL_CONTAINER: container_id,
            },
            "NetworkDisabled": True,
            "HostConfig": {
                "NetworkMode": "none",
                "Memory": memory,
                "MemorySwap": memory,
                "PidsLimit": self.limits.pids_limit,
                "NanoCpus": int(self.limits.cpus * 1e9),
                "CapDrop": ["ALL"],
                "SecurityOpt": ["no-new-privileges", *([self._seccomp] if self._seccomp else [])],
                "Privileged": False,
                "Init": True,
                "IpcMode": "private",
                "RestartPolicy": {"Name": "no"},
                "Binds": [],
                "Mounts": [],
                "LogConfig": {"Type": "none"},
            },
        }

    # --- containers ------------------------------------------------------------------------

    async def create_container(self, spec: ContainerSpec) -> Container:
        if spec.file_ids:
            raise InvalidRequest(
                "The docker provider copies only 'cfile_' files of your own containers; other file ids are not "
                "known here.",
                param="file_ids",
            )
        if spec.network_policy.type != "disabled":
            raise InvalidRequest(
                f"network_policy type {spec.network_policy.type!r} is not available: "
                f"{self._capabilities.network_unavailable_reason}.",
                param="network_policy",
            )
        image = spec.image or self.images[0]
        if image not in self.images:
            raise InvalidRequest(f"image {image[:200]!r} is not offered; choose one of {', '.join(self.images)}.")
        await self._ensure_image(image)
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
        name = _engine_name(row.id)
        async with self._locks.hold(row.id):
            try:
                await self.engine.create_container(name, self._config(row.id, spec, image))
                await self.engine.put_archive(
                    name, "/mnt", _once(tar_dir("data", uid=self._uid, gid=self._gid, mtime=now, shared=self._shared))
                )
                await self.engine.start(name)
                self.registry.insert_container(row)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self.engine.remove(name)
                    self._locks.remove(row.id)
                raise
        return row.model()

    async def delete_container(self, container_id: str) -> ContainerDeleted:
        check_container_id(container_id)
        # Its background processes end first (one finishing its commit needs the lock), and again
        # after: one started meanwhile is gone with the engine container.
        await self._processes.stop(container_id)
        async with self._hold(container_id):
            with anyio.CancelScope(shield=True):
                await self.engine.remove(_engine_name(container_id))
                if not self.registry.delete_container(container_id):
                    raise ContainerNotFound(container_id)
                self._locks.remove(container_id)
        await self._processes.stop(container_id)
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(self._proc_root(container_id), ignore_errors=True))
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
        if rel.count("/") >= MAX_DEPTH:
            raise InvalidPath(
                f"{MOUNT}/{rel[:80]}... is {rel.count('/') + 1} names deep; the docker provider stores files at most "
                f"{MAX_DEPTH} names below {MOUNT} (the engine cannot look deeper). Use a shallower path.",
                param="path",
            )
        async with self._hold(container_id):
            await self._running(container_id, locked=True)
            async with self._spool(upload, max_bytes) as (spool, size, sha):
                old = self.registry.file_at(container_id, rel)
                if approve is not None:
                    await approve(
                        FileChanges(
                            created=[] if old else [f"{MOUNT}/{rel}"],
                            changed=[f"{MOUNT}/{rel}"] if old else [],
                            largest_file_bytes=size,
                            files_delta=0 if old else 1,
                            bytes_delta=size - (old.bytes if old else 0),
                        )
                    )
                name = _engine_name(container_id)
                with anyio.CancelScope(shield=True):  # once bytes go in, the row must follow
                    await self._engine_call(
                        container_id, self._exec.write(name, rel, size, _read_chunks(spool), shared=self._shared)
                    )
                    try:
                        stat = await self.engine.stat_path(name, f"{MOUNT}/{rel}")
                    except ProviderError as exc:
                        if exc.status is None:
                            raise
                        stat = None  # stored all the same: recorded without an mtime, the next scan rereads it
                    if stat is not None and int(stat.get("size", -1)) != size:
                        stat = None  # a command changed it since: no mtime, so the next scan rereads it
                    now = self._clock()
                    row = FileRow(
                        id=new_file_id(now),
                        container_id=container_id,
                        path=rel,
                        created_at=int(now),
                        bytes=size,
                        source=source,
                        mime_type=guess_mime(rel),
                        sha256=sha,
                        mtime_ns=FileScan.mtime_ns(stat) if stat else 0,
                    )
                    self.registry.put_file(row)
            return row.model()

    @asynccontextmanager
    async def _spool(self, upload: Upload, max_bytes: int | None) -> AsyncIterator[tuple[int, int, str]]:
        """The upload in a private temp file (fd, size, sha256): its size and hash are known before the quota
        check, which comes before any byte goes into the container."""
        fd, name = await anyio.to_thread.run_sync(lambda: tempfile.mkstemp(dir=self.data_dir / "tmp", prefix="upload-"))
        try:
            os.unlink(name)  # nothing to clean after a crash: the bytes live only while the fd is open
            os.fchmod(fd, FILE_MODE)
            digest = hashlib.sha256()
            size = 0
            async for chunk in upload.chunks():
                size += len(chunk)
                if max_bytes is not None and size > max_bytes:
                    raise FileTooLarge.over(max_bytes)
                digest.update(chunk)
                await anyio.to_thread.run_sync(_write_all, fd, chunk)
            os.lseek(fd, 0, os.SEEK_SET)
            yield fd, size, digest.hexdigest()
        finally:
            os.close(fd)

    async def copy_file(
        self,
        src_container_id: str,
        src_file_id: str,
        dst_container_id: str,
        *,
        approve: ApproveChanges | None = None,
    ) -> ContainerFile:
        src = await self._file_row(src_container_id, src_file_id)
        return await self.create_file(
            dst_container_id,
            f"{MOUNT}/{src.path}",
            _StreamUpload(self.read_file(src_container_id, src_file_id), src.bytes),
            approve=approve,
        )

    async def delete_file(
        self, container_id: str, file_id: str, *, approve: ApproveChanges | None = None
    ) -> FileDeleted:
        async with self._hold(container_id):
            row = await self._file_row(container_id, file_id, locked=True)
            if approve is not None:
                await approve(FileChanges(deleted=[f"{MOUNT}/{row.path}"], files_delta=-1, bytes_delta=-row.bytes))
            with anyio.CancelScope(shield=True):
                await self._engine_call(container_id, self._exec.remove(_engine_name(container_id), [row.path]))
                self.registry.delete_file(container_id, file_id)
        return FileDeleted(id=file_id)

    async def read_file(
        self, container_id: str, file_id: str, *, offset: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        row = await self._file_row(container_id, file_id)
        # The row's size bounds the read: a background process can grow the file (sparse, without end)
        # after the last scan, and the caller was told (and a copy's quota checked) that size.
        end = row.bytes if length is None else min(row.bytes, offset + length)
        try:
            async for chunk in self._exec.read(
                _engine_name(container_id), f"{MOUNT}/{row.path}", offset=offset, length=max(0, end - offset)
            ):
                yield chunk
        except ProviderError as exc:
            if exc.status == 404:
                raise FileNotFound(container_id, file_id) from None  # the row outlived its bytes
            raise

    # --- exec ------------------------------------------------------------------------------

    async def exec(
        self,
        container_id: str,
        request: ExecRequest,
        *,
        approve: ApproveChanges,
        progress: ProgressCallback | None = None,
    ) -> ExecResult:
        """Run ``request`` by the engine's exec (see ``docker_exec``); holds the container's lock."""
        async with self._hold(container_id):
            row = await self._row(container_id, touch=False, locked=True)
            if row.status != "running":
                raise ContainerExpired(container_id)
            # A command is activity for as long as it runs: no expiry may strike mid-run.
            self.registry.hold(container_id, self._clock() + row.expiry_minutes * 60 + request.timeout_s + 60)
            name = _engine_name(container_id)
            before = self.registry.files_of(container_id)
            ended: ExecOutcome = await self._engine_call(container_id, self._exec.run(name, request, progress=progress))
            return await self._commit(container_id, ended, before, approve, listed=request.max_listed_files)

    async def _commit(
        self,
        container_id: str,
        ended: ExecOutcome,
        before: dict[str, FileRow],
        approve: ApproveChanges,
        *,
        listed: int,
    ) -> ExecResult:
        """Settle a command that ended and commit what it did to /mnt/data (the caller holds the lock):
        ``approve`` the changes against ``before`` (the rows when it began), or, refused, remove what
        it wrote and raise."""
        name = _engine_name(container_id)
        with anyio.CancelScope(shield=True):
            # The exit status and the file scan are independent questions to the engine: ask both at once.
            outcome, scan = ended, FileScan()

            async def settle() -> None:
                nonlocal outcome
                outcome = await self._exec.settle(name, ended)

            async def rescan() -> None:
                nonlocal scan
                found = ended.listed if ended.listed is not None else await self._exec.listing(name)
                scan = await scan_files(self.engine, name, before, found)

            async def both() -> None:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(settle)
                    tg.start_soon(rescan)

            await self._engine_call(container_id, both())
        changes = scan.changes(before)
        try:
            await approve(changes)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                # A real container cannot be rolled back: what the command wrote goes, so that nothing
                # unaccounted for stays stored.
                removed = [*scan.created, *scan.changed]
                if removed:
                    await self._exec.remove(name, removed)
                self.registry.apply(container_id, [], [*scan.changed, *scan.deleted])
                await self._report_usage(container_id, files=True)
            if hasattr(exc, "message"):
                how = ending(outcome.exit_code, outcome.signal, outcome.killed_reason)
                exc.message = (
                    f"The command {how}, but the files it created or changed "
                    f"were removed from /mnt/data (a container cannot be rolled back). {exc.message}"
                )
                exc.args = (exc.message,)
            raise
        with anyio.CancelScope(shield=True):
            created, changed = await self._rows_for(container_id, scan, source="assistant")
            if created or changed or scan.deleted:
                self.registry.apply(container_id, [*created, *changed], scan.deleted)
            if len(created) + len(changed) < len(scan.created) + len(scan.changed):
                await self._report_usage(container_id, files=True)  # approved files went unrecorded
            self.registry.touch(container_id, self._clock())  # the run itself was activity
        return outcome.result(created, changed, scan.deleted, listed=listed)

    async def _rows_for(self, container_id: str, scan: FileScan, *, source: str) -> tuple[list[FileRow], list[FileRow]]:
        """Rows for the scan's created (new ids) and changed (same ids) files, hashing each one's bytes."""
        existing = self.registry.files_of(container_id)
        now = self._clock()
        name = _engine_name(container_id)
        out: tuple[list[FileRow], list[FileRow]] = ([], [])
        digests = await self._exec.digests(
            name, [(f"{MOUNT}/{rel}", scan.seen[rel][0]) for rel in (*scan.created, *scan.changed)]
        )
        for bucket, paths in ((out[0], scan.created), (out[1], scan.changed)):
            for rel in paths:
                size, mtime_ns = scan.seen[rel]
                digest = digests.get(f"{MOUNT}/{rel}")
                if digest is None:
                    continue  # vanished or shrunk since the scan, or not readable by the user: nothing to record
                old = existing.get(rel)
                bucket.append(
                    FileRow(
                        id=old.id if old is not None else new_file_id(now),
                        container_id=container_id,
                        path=rel,
                        created_at=old.created_at if old is not None else int(now),
                        bytes=size,
                        source=old.source if old is not None else source,
                        mime_type=guess_mime(rel),
                        sha256=digest,
                        mtime_ns=mtime_ns,
                    )
                )
        return out

    # --- background processes (``ProcessProvider``; the table is local_processes') ------------

    def _proc_root(self, container_id: str) -> Path:
        """Where the container's background processes' output lives on this host (``<root>/procs/``)."""
        return self.data_dir / "processes" / container_id

    def _keep_for_processes(self, container_id: str) -> bool:
        """Whether the container runs background processes, here or in another server process on
        this data dir: activity, so it does not expire (each ends by its lifetime at the latest);
        its expiry is pushed on meanwhile."""
        if not self._processes.running([container_id]) and not runs_anywhere(self._proc_root(container_id)):
            return False
        row = self.registry.container(container_id)
        if row is not None:
            self.registry.hold(container_id, self._clock() + row.expiry_minutes * 60)
        return True

    async def _kill_orphans(self) -> None:
        """Kill the background processes a dead server process left running (found by their output
        directories, named after that server's pid), and remove those directories."""
        root = self.data_dir / "processes"
        entries = await anyio.to_thread.run_sync(lambda: sorted(root.glob(f"*/{OUTPUTS}/*")))
        for entry in entries:
            server, _, proc_id = entry.name.partition("-")
            if server.isdigit() and pid_alive(int(server)):
                continue
            container_id = entry.parent.parent.name
            row = self.registry.container(container_id)
            if (entry / RUNNING).exists() and row is not None and row.status == "running":
                # The session the server learned from the wrapper (trusted); else the pid file's.
                said = (entry / "session").read_text() if (entry / "session").exists() else ""
                session = int(said) if said.isdigit() else None
                try:
                    await self._exec.signal(_engine_name(container_id), session, 9, BACKGROUND_PIDFILE.format(proc_id))
                    log.info("container %s: killed background process %s a dead server left", container_id, proc_id)
                except ProviderError as exc:
                    log.warning("container %s: background process %s not killed: %s", container_id, proc_id, exc)
                    if exc.status is None:
                        continue  # the engine did not answer: the next start tries again
            await anyio.to_thread.run_sync(_remove_tree, entry)

    async def start_process(
        self, container_id: str, request: ExecRequest, *, approve: ApproveChanges, on_exit: OnExit
    ) -> ProcessInfo:
        """Start ``request`` by an engine exec without waiting (``DockerExec.run_background``); it runs
        without the container's lock and takes it when it exits, to commit its file changes."""
        lifetime = min(request.timeout_s, self.limits.process_max_lifetime_s)
        name = _engine_name(container_id)
        async with self._hold(container_id):
            row = await self._running(container_id, locked=True)
            # Event-loop objects (its cancel scope, events) are made here; the disk work is two files.
            proc = self._processes.new(
                container_id, self._proc_root(container_id), shlex.join(request.argv), int(self._clock())
            )
            # Running is activity: the container stays until the process ends (at most its lifetime).
            self.registry.hold(container_id, self._clock() + row.expiry_minutes * 60 + lifetime + 60)
        if request.stdin and proc.stdin is not None:
            proc.stdin.send_nowait(request.stdin)
        run = request.model_copy(update={"timeout_s": lifetime, "stdin": None})

        def started(session: int, send: Callable[[int], None]) -> None:
            (proc.directory / "session").write_text(str(session))  # for the next start after a crash
            proc.started(send)

        async def body() -> ExecResult:
            try:
                ended: ExecOutcome = await self._engine_call(
                    container_id,
                    self._exec.run_background(
                        name,
                        run,
                        pidfile=BACKGROUND_PIDFILE.format(proc.id),
                        output=proc.output,
                        stdin=proc.stdin_source,
                        started=started,
                    ),
                )
                proc.ended_mono = time.monotonic()
                async with self._hold(container_id):
                    await self._running(container_id, locked=True)
                    before = self.registry.files_of(container_id)
                    return await self._commit(container_id, ended, before, approve, listed=request.max_listed_files)
            finally:
                # However it ended, its hold ends with it: the container idles from now on.
                self.registry.touch(container_id, self._clock())

        self._processes.launch(proc, body, on_exit)
        return proc.info()


class _StreamUpload:
    """A file of another container as an upload (size known from its row)."""

    host_fd: int | None = None

    def __init__(self, chunks: AsyncGenerator[bytes, None], size: int) -> None:
        self._chunks = chunks
        self.size: int | None = size

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._chunks:
                yield chunk
        finally:
            await self._chunks.aclose()


def _remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _read_chunks(fd: int) -> AsyncIterator[bytes]:
    while data := await anyio.to_thread.run_sync(os.read, fd, CHUNK_SIZE):
        yield data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
