"""``exec`` for the local provider: run in the bubblewrap sandbox, then apply or discard the changes.

The sandbox runs the command over a staging overlay of the container's directory, so nothing
the command writes is visible until we decide. After the run, the net change (files created,
changed, deleted; bytes) goes to ``approve`` — the service's quota check — and is then either
committed (atomically per file) and recorded in the registry, or discarded, leaving the
container exactly as it was before the command.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import anyio.to_thread

from ..errors import InvalidRequest, QuotaExceeded, SandboxUnavailable
from ..ids import new_file_id
from ..models import MEMORY_LIMITS, NetworkPolicy
from ..paths import MOUNT, normalize_path, relative_path
from ..sandbox import Attachment, ChangeSet, Sandbox, SandboxJob, SandboxProbe, SandboxProgress, SandboxRun
from ..sandbox.tree import adopt_tree
from .base import ApproveChanges, ExecRequest, ExecResult, FileChanges, ProgressCallback
from .exec_files import ending, exec_result
from .local_fs import ContainerDir, FileStat
from .local_registry import ContainerRow, FileRow, Registry

__all__ = ["ExecLimits", "finish_run", "prepare_job", "run_exec"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecLimits:
    """Server-wide limits on every command (see Settings for their meaning)."""

    pids_limit: int = 256
    cpu_seconds: int = 600
    max_file_bytes: int = 100 << 20
    max_output_bytes: int = 32 << 10
    max_stage_files: int | None = 200_000
    """Kill a command once its stage holds more entries (files and directories) than this: its
    output could never be accepted, and the stage must not fill the host's disk first. Twice the
    files-per-container quota, so a command at the quota keeps room for its directories (the
    quota itself is checked exactly, on the files, before anything is applied)."""
    max_stage_bytes: int | None = 1 << 30
    """Likewise for bytes written (the per-session stored-bytes quota)."""
    max_home_bytes: int = 1 << 30
    max_home_files: int = 100_000
    """Bound on a container's persistent home: a command that grows it past either is killed."""
    max_processes_per_container: int = 4
    max_processes_per_session: int = 8
    process_max_lifetime_s: float = 3600.0
    """A background process is killed (and its changes committed) after this long at most."""
    process_max_output_bytes: int = 8 << 20
    """Bytes kept of each of a background process's stdout and stderr (files, not memory)."""


def _workdir(container: ContainerDir, workdir: str) -> str:
    """Normalise ``workdir`` (under /mnt/data) and make sure it exists as a directory."""
    if workdir.rstrip("/") == MOUNT:
        return MOUNT
    if not workdir.startswith(MOUNT + "/"):
        raise InvalidRequest(
            f"workdir must be /mnt/data or a directory under it; got {workdir[:200]!r}.", param="workdir"
        )
    container.ensure_dir(relative_path(workdir))
    container.home.mkdir(mode=0o700, exist_ok=True)  # containers made before homes existed
    return normalize_path(workdir)


def _file_changes(changes: ChangeSet) -> FileChanges:
    return FileChanges(
        created=[f"{MOUNT}/{f.path}" for f in changes.created],
        changed=[f"{MOUNT}/{f.path}" for f in changes.changed],
        deleted=[f"{MOUNT}/{f.path}" for f in changes.deleted],
        largest_file_bytes=changes.largest_file_bytes,
        files_delta=changes.files_delta,
        bytes_delta=changes.bytes_delta,
    )


async def prepare_job(
    *,
    probe: SandboxProbe,
    container: ContainerDir,
    row: ContainerRow,
    request: ExecRequest,
    limits: ExecLimits,
    attach: Attachment | None = None,
    adopt_now: tuple[int, int] | None = None,
    home_bytes: int | None = None,
) -> SandboxJob:
    """The sandbox job for ``request`` in ``row``'s container; the caller holds its lock.

    ``home_bytes``: what the home holds now, as last measured (None: measured here, a walk), the
    base of ``request.max_home_growth_bytes``.

    ``adopt_now`` (root mode, a background run that will not hold the lock while its stage is
    made): hand the container's tree to that uid/gid here, under the lock, and not in the run.
    """
    if not probe.available:
        raise SandboxUnavailable(f"Commands cannot run here: {probe.reason}.")
    workdir = await anyio.to_thread.run_sync(_workdir, container, request.workdir)
    if request.max_home_growth_bytes is not None and home_bytes is None:
        home_bytes = await anyio.to_thread.run_sync(container.home_usage)
    adopted = await anyio.to_thread.run_sync(container.adopted)
    if adopt_now is not None and not adopted:
        await anyio.to_thread.run_sync(adopt_tree, container.files, *adopt_now)
        await anyio.to_thread.run_sync(container.mark_adopted)
        adopted = True
    return SandboxJob(
        data_dir=container.files,
        argv=request.argv,
        stdin=request.stdin,
        env=request.env,
        workdir=workdir,
        timeout_s=request.timeout_s,
        memory_bytes=MEMORY_LIMITS[row.memory_limit],
        network=NetworkPolicy.model_validate_json(row.network_policy),
        max_output_bytes=min(request.max_output_bytes, limits.max_output_bytes),
        pids_limit=limits.pids_limit,
        cpu_seconds=limits.cpu_seconds,
        max_file_bytes=limits.max_file_bytes,
        max_stage_files=limits.max_stage_files,
        max_stage_bytes=limits.max_stage_bytes,
        stage_root=container.root,
        home_dir=container.home,
        max_home_bytes=_home_bound(limits.max_home_bytes, request.max_home_growth_bytes, home_bytes),
        max_home_files=limits.max_home_files,
        adopt=not adopted,
        attach=attach,
    )


def _home_bound(limit: int, growth: int | None, home_bytes: int | None) -> int:
    """The home's bound for one run: its own, or what it holds plus the growth allowed, if less."""
    if growth is None or home_bytes is None:
        return limit
    return min(limit, home_bytes + growth)


async def run_exec(
    *,
    sandbox: Sandbox,
    probe: SandboxProbe,
    registry: Registry,
    container: ContainerDir,
    row: ContainerRow,
    request: ExecRequest,
    limits: ExecLimits,
    approve: ApproveChanges,
    progress: ProgressCallback | None,
    clock: Callable[[], float],
    guess_mime: Callable[[str], str],
    home_bytes: int | None = None,
) -> ExecResult:
    """Run ``request`` in ``row``'s container; see the module docstring. The caller holds its lock."""
    job = await prepare_job(
        probe=probe, container=container, row=row, request=request, limits=limits, home_bytes=home_bytes
    )

    async def report(p: SandboxProgress) -> None:
        if progress is not None:
            await progress(p.elapsed_s, p.message())

    run: SandboxRun = await sandbox.run(job, progress=report)
    if job.adopt:
        await anyio.to_thread.run_sync(container.mark_adopted)
    return await finish_run(
        run,
        registry=registry,
        container=container,
        container_id=row.id,
        listed=request.max_listed_files,
        approve=approve,
        clock=clock,
        guess_mime=guess_mime,
    )


async def finish_run(
    run: SandboxRun,
    *,
    registry: Registry,
    container: ContainerDir,
    container_id: str,
    listed: int,
    approve: ApproveChanges,
    clock: Callable[[], float],
    guess_mime: Callable[[str], str],
) -> ExecResult:
    """Approve, commit and record a finished run's changes; its result. The caller holds the lock.

    A refusal (``QuotaExceeded``) discards every change and says how the command ended.
    """
    async with run:
        try:
            await approve(_file_changes(run.changes))
        except QuotaExceeded as exc:
            exc.message = (
                f"The command {ending(run.exit_code, run.signal, run.killed_reason)}, but its file changes were "
                f"discarded and the container is as it was before the command. {exc.message}"
            )
            exc.args = (exc.message,)
            raise
        # Once files start moving into the container, the registry must follow even if the call is
        # cancelled: otherwise they would be files nobody accounts for.
        with anyio.CancelScope(shield=True):
            applied = await run.commit()
            created, changed = await _record(registry, container, container_id, applied, clock, guess_mime)
    return exec_result(
        created,
        changed,
        [f.path for f in applied.deleted],
        listed=listed,
        exit_code=run.exit_code,
        signal=run.signal,
        stdout=run.stdout_text,
        stderr=run.stderr_text,
        stdout_bytes=run.stdout_total,
        stderr_bytes=run.stderr_total,
        stdout_truncated=run.stdout_truncated,
        stderr_truncated=run.stderr_truncated,
        duration_ms=round(run.duration_s * 1000),
        timed_out=run.timed_out,
        killed_reason=run.killed_reason,
        files_not_kept=len(applied.skipped),
    )


async def _record(
    registry: Registry,
    container: ContainerDir,
    container_id: str,
    applied: ChangeSet,
    clock: Callable[[], float],
    guess_mime: Callable[[str], str],
) -> tuple[list[FileRow], list[FileRow]]:
    """Bring the registry in line with what was applied: new rows for created files (source
    'assistant'), refreshed rows (same id) for changed ones, none for deleted ones.

    Costs follow the change, not the container: only the touched paths are read (stat and hash,
    in one worker-thread hop) and looked up, and the registry takes them in one transaction.
    """
    if applied.empty:
        return [], []
    existing = registry.files_at(container_id, [f.path for f in (*applied.created, *applied.changed)])
    now = clock()

    def measure() -> list[tuple[bool, str, FileStat, str]]:
        found: list[tuple[bool, str, FileStat, str]] = []
        for is_new, change in [(True, f) for f in applied.created] + [(False, f) for f in applied.changed]:
            measured = container.measure(change.path)
            if measured is None:  # a file the command left unreadable or that vanished: nothing to record
                log.warning("file %s of %s vanished after commit", change.path, container_id)
                continue
            found.append((is_new, change.path, *measured))
        return found

    created: list[FileRow] = []
    changed: list[FileRow] = []
    for is_new, rel, st, sha in await anyio.to_thread.run_sync(measure):
        old = existing.get(rel)
        (created if is_new else changed).append(
            FileRow(
                id=old.id if old is not None else new_file_id(now),
                container_id=container_id,
                path=rel,
                created_at=old.created_at if old is not None else int(now),
                bytes=st.size,
                source=old.source if old is not None else "assistant",
                mime_type=guess_mime(rel),
                sha256=sha,
                mtime_ns=st.mtime_ns,
            )
        )
    registry.apply(container_id, [*created, *changed], [f.path for f in applied.deleted])
    return created, changed
