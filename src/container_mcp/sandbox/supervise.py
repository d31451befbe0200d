"""Watching one run: output, bubblewrap's status, timeout, watchdog, progress, and the outcome."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc

from ..errors import ExecError
from . import cgroups
from .changes import ChangeSet, Stage
from .config import SandboxProbe
from .host import tail
from .job import Attachment, KillReason, ProgressCallback, SandboxJob, SandboxProgress, SandboxRun
from .launchers import Launcher
from .output import OutputCapture, shared
from .tree import tree_usage

__all__ = ["supervise"]

WATCHDOG_INTERVAL_S = 0.25
HOME_WALK_SPACING = 10.0
"""A home walk starts at most every this many times the last one's length (and every tick at most)."""


@dataclass
class _Watch:
    """Mutable state shared by the tasks supervising one run."""

    child_pid: int | None = None
    pidfd: int | None = None
    exit_code: int | None = None
    killed_reason: KillReason | None = None
    started: float = field(default_factory=time.monotonic)


async def supervise(
    job: SandboxJob,
    probe: SandboxProbe,
    stage: Stage,
    launcher: Launcher,
    script: bytes,
    args: bytes,
    progress: ProgressCallback | None,
    *,
    cleanup_timeout_s: float,
) -> SandboxRun:
    """Start ``launcher`` with ``script`` and bubblewrap's ``args``; watch it until it ends, times out
    or is cancelled.

    Returns the outcome with an empty change set (the caller scans the stage). On cancellation
    or an error (a failing progress callback), the process tree is killed before re-raising.
    """
    out = OutputCapture(job.max_output_bytes)
    err = OutputCapture(job.max_output_bytes)
    watch = _Watch()
    process = launcher.process

    def kill() -> None:
        launcher.kill()
        if watch.pidfd is not None:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(watch.pidfd, signal.SIGKILL)

    ended = 0.0
    try:
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        try:
            await launcher.start(script, args)
        except OSError as exc:
            raise ExecError(f"Could not start the sandbox: {exc}") from exc
        watch.started = launcher.started or time.monotonic()
        async with anyio.create_task_group() as io:
            attach = job.attach
            io.start_soon(_pump, process.stdout, out, attach, 1)
            io.start_soon(_pump, process.stderr, err, attach, 2)
            io.start_soon(_read_status, launcher.status_r, watch, attach)
            async with anyio.create_task_group() as aux:
                if attach is not None and attach.stdin is not None:
                    aux.start_soon(_relay, process.stdin, attach.stdin)
                else:
                    aux.start_soon(_feed, process.stdin, job.stdin)
                aux.start_soon(_tick, job, stage, watch, out, err, progress, kill)
                with anyio.move_on_after(job.timeout_s):
                    await process.wait()
                if process.returncode is None:
                    watch.killed_reason = "timeout"
                    kill()
                    with anyio.move_on_after(cleanup_timeout_s):
                        await process.wait()
                ended = time.monotonic()
                aux.cancel_scope.cancel()
            # The pipes close once every process of the sandbox is gone; do not wait forever.
            io.cancel_scope.deadline = anyio.current_time() + cleanup_timeout_s
    finally:
        with anyio.CancelScope(shield=True):
            if process.returncode is None:
                kill()
                with anyio.move_on_after(cleanup_timeout_s):
                    await process.wait()
            if watch.pidfd is not None:
                os.close(watch.pidfd)
                watch.pidfd = None
    duration = (ended or time.monotonic()) - watch.started
    return _outcome(probe, watch, out, err, launcher.cgroup, duration)


async def _tick(
    job: SandboxJob,
    stage: Stage,
    watch: _Watch,
    out: OutputCapture,
    err: OutputCapture,
    progress: ProgressCallback | None,
    kill: Callable[[], None],
) -> None:
    home = job.home_dir if job.max_home_bytes is not None or job.max_home_files is not None else None
    watchdog = job.max_stage_bytes is not None or job.max_stage_files is not None or home is not None
    if progress is None and not watchdog:
        return
    max_files = job.max_stage_files if job.max_stage_files is not None else 1 << 62
    max_bytes = job.max_stage_bytes if job.max_stage_bytes is not None else 1 << 62
    max_home_files = job.max_home_files if job.max_home_files is not None else 1 << 62
    max_home_bytes = job.max_home_bytes if job.max_home_bytes is not None else 1 << 62
    next_report = job.progress_interval_s
    home_due = 0.0
    while True:
        await anyio.sleep(min(WATCHDOG_INTERVAL_S, job.progress_interval_s) if watchdog else next_report)
        elapsed = time.monotonic() - watch.started
        if watchdog:
            used, entries, too_deep = await anyio.to_thread.run_sync(lambda: stage.usage(max_entries=max_files + 1))
            if used > max_bytes or entries > max_files or too_deep:
                watch.killed_reason = "disk_limit"
                kill()
                return
            if home is not None and time.monotonic() >= home_due:
                began = time.monotonic()
                used, entries, _ = await anyio.to_thread.run_sync(
                    lambda: tree_usage(home, max_entries=max_home_files + 1)
                )
                # The home is walked whole, and a walk costs with its size (~0.25 s at 90,000
                # entries): spaced to HOME_WALK_SPACING times its own length, a run's watchdog never
                # spends more than a fraction of a core on it, however long the run.
                home_due = began + HOME_WALK_SPACING * (time.monotonic() - began)
                if used > max_home_bytes or entries > max_home_files:
                    watch.killed_reason = "disk_limit"
                    kill()
                    return
        if progress is not None and elapsed >= next_report:
            await progress(SandboxProgress(elapsed, out.total, err.total))
            next_report += job.progress_interval_s


def _outcome(
    probe: SandboxProbe,
    watch: _Watch,
    out: OutputCapture,
    err: OutputCapture,
    cg: cgroups.RunCgroup | None,
    duration: float,
) -> SandboxRun:
    oom = cg.oom_killed() if cg is not None else False
    exit_code: int | None = watch.exit_code
    sig: int | None = None
    reason = watch.killed_reason
    stderr = err.getvalue()
    # The OOM killer ended the run if it fired and the command died of SIGKILL, or if nothing
    # reported an exit status at all (cgroup v2's memory.oom.group kills bubblewrap too). A
    # command that survived the loss of some child keeps its own exit status.
    if reason is None and oom and exit_code in (None, 128 + signal.SIGKILL):
        reason = "memory_limit"
    if reason is not None:
        exit_code, sig = None, int(signal.SIGKILL)
    elif exit_code is None:
        # No exit status from bubblewrap: the command never started.
        message = tail(stderr)
        if "bwrap: execvp" in message:
            exit_code = 127 if "No such file" in message else 126
        else:
            raise ExecError(f"The sandbox could not start the command: {message}")
    elif 128 < exit_code <= 128 + 64:
        sig = exit_code - 128
    (stdout, stdout_truncated), (stderr, stderr_truncated) = shared(out, err, out.limit)
    return SandboxRun(
        exit_code=exit_code,
        signal=sig,
        stdout=stdout,
        stderr=stderr,
        stdout_total=out.total,
        stderr_total=err.total,
        stdout_truncated=stdout_truncated,
        stderr_truncated=stderr_truncated,
        duration_s=duration,
        timed_out=watch.killed_reason == "timeout",
        killed_reason=reason,
        oom_killed=oom,
        memory_enforcement=probe.memory_enforcement,
        pids_enforcement=probe.pids_enforcement,
        changes=ChangeSet(),
    )


async def _pump(
    stream: anyio.abc.ByteReceiveStream, capture: OutputCapture, attach: Attachment | None, fd: int
) -> None:
    with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
        async for chunk in stream:
            capture.feed(chunk)
            if attach is not None:
                attach.output(fd, chunk)


async def _relay(stream: anyio.abc.ByteSendStream, source: anyio.abc.ObjectReceiveStream[bytes]) -> None:
    """Write what ``source`` brings to the command's stdin until it closes (then close stdin)."""
    try:
        async for data in source:
            await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await stream.aclose()


def _signaller(child_pid: int, pidfd: int | None) -> Callable[[int], None]:
    """Send a signal to the command's process group (bubblewrap's ``--new-session`` made it one).

    The sandbox's init is in that group too; from outside its namespace only SIGKILL reaches it,
    which ends the whole sandbox, as a kill should.
    """

    def send(sig: int) -> None:
        if pidfd is not None:
            try:
                signal.pidfd_send_signal(pidfd, 0)  # still the same process, not a reused pid?
            except OSError:
                return
        with contextlib.suppress(OSError):
            os.killpg(os.getpgid(child_pid), sig)

    return send


async def _feed(stream: anyio.abc.ByteSendStream, data: bytes | None) -> None:
    try:
        if data:
            await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await stream.aclose()


async def _read_status(fd: int, watch: _Watch, attach: Attachment | None = None) -> None:
    """Parse bubblewrap's ``--json-status-fd`` documents (one per line) until end of file."""
    buffer = b""
    while True:
        await anyio.wait_readable(fd)
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            continue
        if not data:
            return
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if "child-pid" in doc and watch.child_pid is None:
                watch.child_pid = int(doc["child-pid"])
                with contextlib.suppress(OSError):
                    watch.pidfd = os.pidfd_open(watch.child_pid)
                if attach is not None and attach.started is not None:
                    attach.started(_signaller(watch.child_pid, watch.pidfd))
            if "exit-code" in doc:
                watch.exit_code = int(doc["exit-code"])
