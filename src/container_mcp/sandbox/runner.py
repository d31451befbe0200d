"""``Sandbox``: probe the host once, then run commands (see the package docstring for the design)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import signal
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
import anyio.abc

from ..errors import ExecError, InvalidRequest, SandboxUnavailable
from . import cgroups
from .bwrap import (
    DEFAULT_ENV,
    FORWARDER_PATH,
    PROXY_PORT,
    PROXY_SOCKET_PATH,
    SYSTEM_PATH,
    BwrapOptions,
    bwrap_args,
    etc_files,
    launcher_argv,
    setup_script,
)
from .changes import ChangeSet, Stage
from .config import MemoryEnforcement, PidsEnforcement, SandboxConfig, SandboxProbe
from .egress import Allowlist, EgressProxy, InvalidHost
from .job import KillReason, ProgressCallback, SandboxJob, SandboxProgress, SandboxRun
from .launchers import Launcher, LauncherPool, LauncherSpec, spawn_launcher
from .output import OutputCapture
from .seccomp import program_for_machine

__all__ = ["Sandbox", "probe_sandbox", "run_sandboxed"]

log = logging.getLogger(__name__)

_WATCHDOG_INTERVAL_S = 0.25
_NOFILE_CAP = 16384
_NETWORK_ENFORCEMENT = (
    "disabled: own network namespace with loopback only; allowlist: the same, plus a host-side "
    "filtering HTTP/CONNECT proxy reached through a bind-mounted Unix socket (in-sandbox forwarder on "
    f"127.0.0.1:{PROXY_PORT}, HTTP(S)_PROXY set)"
)


@cache
def _forwarder_source() -> bytes:
    return Path(__file__).with_name("_forwarder.py").read_bytes()


def _which(name: str) -> str | None:
    if "/" in name:
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name, path=SYSTEM_PATH)


def _tail(data: bytes, limit: int = 600) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text[-limit:] if text else "(no output)"


def _setrlimit(pid: int, which: int, value: int) -> None:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.prlimit(pid, which, (value, value))


@dataclass
class _Watch:
    """Mutable state shared by the tasks supervising one run."""

    child_pid: int | None = None
    pidfd: int | None = None
    exit_code: int | None = None
    killed_reason: KillReason | None = None
    started: float = field(default_factory=time.monotonic)


class Sandbox:
    """Runs commands in bubblewrap sandboxes; one instance per server is enough.

    ``probe()`` is cached (call it at startup to report capabilities); ``run()`` probes on first
    use. Use it as an async context manager (``async with Sandbox(config) as sandbox``) to keep
    ``config.warm_launchers`` launchers ready, which takes the cgroup setup (~10 ms) off each
    run's critical path; without it every run starts cold, which works the same, only slower.

    Runs are independent and may be concurrent, on different containers. Runs on the *same*
    container directory must be serialised by the caller from ``run()`` until ``commit()`` or
    ``discard()``: overlayfs requires its lower layer (the container directory) not to change
    while mounted, and two commits would race.
    """

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self._probe: SandboxProbe | None = None
        self._probe_lock = anyio.Lock()
        self._cgroups = cgroups.CgroupHost(None, None, None, None)
        self._tools: dict[str, str] = {}
        self._seccomp: bytes | None = None
        self._pool: LauncherPool | None = None
        self._pool_tasks: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Self:
        probe = await self.probe()
        if probe.available and self.config.warm_launchers > 0:
            spec = self._spec(probe)
            self._pool = LauncherPool(lambda: spawn_launcher(spec), size=self.config.warm_launchers)
            self._pool_tasks = anyio.create_task_group()
            await self._pool_tasks.__aenter__()
            self._pool_tasks.start_soon(self._pool.maintain)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop keeping launchers warm and discard the ready ones (runs in progress are unaffected)."""
        tasks, self._pool_tasks = self._pool_tasks, None
        pool, self._pool = self._pool, None
        try:
            if tasks is not None:
                tasks.cancel_scope.cancel()
                await tasks.__aexit__(None, None, None)
        finally:
            if pool is not None:
                with anyio.CancelScope(shield=True):
                    await pool.aclose()

    # --- probe ---------------------------------------------------------------------------

    async def probe(self, *, refresh: bool = False) -> SandboxProbe:
        """Find out whether and how commands can be sandboxed here (never raises)."""
        async with self._probe_lock:
            if self._probe is None or refresh:
                self._probe = await self._do_probe()
            return self._probe

    async def _do_probe(self) -> SandboxProbe:
        cfg = self.config
        root = os.geteuid() == 0
        base = SandboxProbe(
            available=False,
            reason=None,
            mode="root" if root else "user",
            memory_enforcement="rlimit-as",
            pids_enforcement="rlimit-nproc",
            network_enforcement=_NETWORK_ENFORCEMENT,
            seccomp=False,
            bwrap_version=None,
            python=None,
            host_uid=cfg.sandbox_uid if root else os.geteuid(),
        )

        def unavailable(reason: str) -> SandboxProbe:
            return replace(base, reason=reason, notes=tuple(notes))

        notes: list[str] = []
        found, problem = _find_tools(cfg, root)
        if problem is not None:
            return unavailable(problem)
        try:
            version = await anyio.run_process([found["bwrap"], "--version"], check=False)
        except OSError as exc:
            return unavailable(f"bubblewrap cannot be executed: {exc}")
        bwrap_version = version.stdout.decode(errors="replace").strip().removeprefix("bubblewrap ") or None
        base = replace(base, bwrap_version=bwrap_version)
        self._tools = found
        if cfg.use_cgroups:
            self._cgroups = await anyio.to_thread.run_sync(cgroups.discover, cfg.cgroup_name)
            notes += self._cgroups.problems
            await anyio.to_thread.run_sync(self._cgroups.sweep)
        else:
            notes.append("cgroups disabled by configuration")
        self._seccomp = program_for_machine() if cfg.seccomp else None
        if cfg.seccomp and self._seccomp is None:
            notes.append("no seccomp filter for this machine architecture")
        memory: MemoryEnforcement = self._cgroups.memory or "rlimit-as"
        pids: PidsEnforcement = self._cgroups.pids or "rlimit-nproc"
        base = replace(base, memory_enforcement=memory, pids_enforcement=pids, seccomp=self._seccomp is not None)
        if memory == "rlimit-as":
            notes.append("memory_limit falls back to RLIMIT_AS (virtual memory per process)")
        if pids == "rlimit-nproc":
            notes.append(
                "the process limit falls back to RLIMIT_NPROC (counted per host uid, shared by concurrent runs)"
            )
        trial = replace(base, available=True, notes=tuple(notes))
        with tempfile.TemporaryDirectory(prefix="container-mcp-probe-") as tmp:
            data = Path(tmp) / "data"
            data.mkdir()
            job = SandboxJob(
                data_dir=data,
                argv=["/bin/sh", "-c", "echo ok > /mnt/data/probe && echo ok"],
                timeout_s=20,
                memory_bytes=256 << 20,
                stage_root=Path(tmp),
            )
            try:
                async with await self._run(job, trial, None) as run:
                    if run.exit_code != 0 or run.stdout != b"ok\n":
                        return unavailable(
                            f"a trial sandbox did not run as expected (exit {run.exit_code}): {_tail(run.stderr)}"
                        )
                    if [f.path for f in run.changes.created] != ["probe"]:
                        return unavailable("the staging overlay did not capture a trial write to /mnt/data")
            except ExecError as exc:
                return unavailable(_explain(str(exc), root))
            python: str | None = None
            if _python_candidate(cfg.python):
                job = replace(job, argv=[cfg.python, "-I", "-S", "-c", "print('ok')"])
                with contextlib.suppress(ExecError):
                    async with await self._run(job, trial, None) as run:
                        if run.exit_code == 0 and run.stdout == b"ok\n":
                            python = cfg.python
        if python is None:
            notes.append(f"{cfg.python} does not run in the sandbox: allowlist network policies are unavailable")
        return replace(trial, python=python, notes=tuple(notes))

    # --- run -----------------------------------------------------------------------------

    async def run(self, job: SandboxJob, *, progress: ProgressCallback | None = None) -> SandboxRun:
        """Run ``job`` and return its outcome with the file changes staged (not applied).

        Raises ``SandboxUnavailable`` when the host cannot sandbox (see ``probe``),
        ``InvalidRequest`` for a job that cannot run (missing workdir, bad allowlist entry), and
        ``ExecError`` when the sandbox could not be set up or supervised. A command that fails,
        times out or hits a limit is a result, not an error. If the caller is cancelled, the
        command's whole process tree is killed and its changes are discarded before the
        cancellation propagates.
        """
        probe = await self.probe()
        if not probe.available:
            raise SandboxUnavailable(f"Commands cannot run on this server: {probe.reason}")
        if job.network.type == "allowlist" and probe.python is None:
            raise SandboxUnavailable(
                "network_policy 'allowlist' needs python3 inside the sandbox, which is not available here."
            )
        return await self._run(job, probe, progress)

    async def _run(self, job: SandboxJob, probe: SandboxProbe, progress: ProgressCallback | None) -> SandboxRun:
        _check_workdir(job)
        allowlist: Allowlist | None = None
        if job.network.type == "allowlist":
            try:
                allowlist = Allowlist.from_domains(job.network.allowed_domains or [])
            except InvalidHost as exc:
                raise InvalidRequest(f"Invalid allowed_domains entry: {exc}", param="network_policy") from exc
        owner = (self.config.sandbox_uid, self.config.sandbox_gid) if probe.mode == "root" else None
        stage_root = job.stage_root or job.data_dir.parent
        try:
            stage = await anyio.to_thread.run_sync(lambda: Stage.create(job.data_dir, stage_root, owner=owner))
        except OSError as exc:
            raise ExecError(f"Could not prepare the sandbox for {job.data_dir}: {exc}") from exc
        try:
            try:
                outcome = await self._execute(job, probe, stage, allowlist, progress)
            except BaseExceptionGroup as group:
                raise _single(group) from None
            try:
                changes, plan = await anyio.to_thread.run_sync(stage.scan)
            except OSError as exc:
                raise ExecError(f"Could not read the command's file changes: {exc}") from exc
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(stage.destroy)
            raise
        return replace(outcome, changes=changes, _stage=stage, _plan=plan)

    async def _launcher(self, probe: SandboxProbe) -> Launcher:
        launcher = self._pool.take() if self._pool is not None else None
        if launcher is not None:
            return launcher
        try:
            return await spawn_launcher(self._spec(probe))
        except OSError as exc:
            raise ExecError(f"Could not start the sandbox: {exc}") from exc

    def _spec(self, probe: SandboxProbe) -> LauncherSpec:
        cfg = self.config
        return LauncherSpec(
            argv=lambda fd: launcher_argv(
                unshare=self._tools["unshare"], shell=self._tools["shell"], script_fd=fd, root=probe.mode == "root"
            ),
            files=lambda: etc_files(cfg.inner_uid),
            seccomp=self._seccomp,
            cgroups=self._cgroups,
        )

    async def _execute(
        self,
        job: SandboxJob,
        probe: SandboxProbe,
        stage: Stage,
        allowlist: Allowlist | None,
        progress: ProgressCallback | None,
    ) -> SandboxRun:
        cfg = self.config
        root_ids = (cfg.sandbox_uid, cfg.sandbox_gid) if probe.mode == "root" else None
        launcher = await self._launcher(probe)
        sock_dir: Path | None = None
        listener: socket.socket | None = None
        try:
            argv = list(job.argv)
            env = dict(DEFAULT_ENV)
            proxy: EgressProxy | None = None
            if allowlist is not None:
                url = f"http://127.0.0.1:{PROXY_PORT}"
                for key in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
                    env[key] = env[key.lower()] = url
                env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1,::1"
                argv = [cfg.python, "-I", "-S", FORWARDER_PATH, PROXY_SOCKET_PATH, str(PROXY_PORT), "--", *argv]
                sock_dir, listener = _egress_dir(root_ids)
                proxy = EgressProxy(
                    allowlist, resolver=cfg.resolver, allow_private_addresses=cfg.allow_private_addresses
                )
            env.update(job.env)
            bwrap = bwrap_args(
                BwrapOptions(
                    bwrap=self._tools["bwrap"],
                    argv=argv,
                    env=env,
                    workdir=job.workdir,
                    inner_uid=cfg.inner_uid,
                    overlay_mountpoint=cfg.overlay_mountpoint,
                    tmp_bytes=job.tmp_bytes or job.memory_bytes,
                    data_fds=launcher.file_fds,
                    forwarder=str(sock_dir / "forward.py") if sock_dir else None,
                    status_fd=launcher.status_fd,
                    seccomp_fd=launcher.seccomp_fd,
                    # The seccomp filter already refuses every way to a new namespace.
                    disable_userns=launcher.seccomp_fd is None and _version_at_least(probe.bwrap_version, (0, 8)),
                    proxy_socket=str(sock_dir / "proxy.sock") if sock_dir else None,
                )
            )
            script = setup_script(
                mount=self._tools["mount"],
                unshare=self._tools["unshare"],
                stage_root=stage.root,
                overlay_mountpoint=cfg.overlay_mountpoint,
                host_ids=root_ids,
                bwrap=bwrap,
            )
            try:
                if launcher.cgroup is not None:
                    launcher.cgroup.set_limits(memory_bytes=job.memory_bytes, pids_limit=job.pids_limit)
                self._set_rlimits(launcher.pid, job, probe)
            except OSError as exc:
                raise ExecError(f"Could not apply the run's limits: {exc}") from exc
            result: SandboxRun | None = None
            async with anyio.create_task_group() as services:
                if proxy is not None and listener is not None:
                    services.start_soon(proxy.serve, listener)
                try:
                    result = await self._supervise(job, probe, stage, launcher, script, progress)
                finally:
                    services.cancel_scope.cancel()
            assert result is not None
            return result
        finally:
            with anyio.CancelScope(shield=True):
                await launcher.discard(cfg.cleanup_timeout_s)
                if listener is not None:
                    listener.close()
                if sock_dir is not None:
                    shutil.rmtree(sock_dir, ignore_errors=True)

    async def _supervise(
        self,
        job: SandboxJob,
        probe: SandboxProbe,
        stage: Stage,
        launcher: Launcher,
        script: bytes,
        progress: ProgressCallback | None,
    ) -> SandboxRun:
        """Start the launcher, then watch it until it ends, times out or is cancelled."""
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
                await launcher.start(script)
            except OSError as exc:
                raise ExecError(f"Could not start the sandbox: {exc}") from exc
            watch.started = launcher.started or time.monotonic()
            async with anyio.create_task_group() as io:
                io.start_soon(_pump, process.stdout, out)
                io.start_soon(_pump, process.stderr, err)
                io.start_soon(_read_status, launcher.status_r, watch)
                async with anyio.create_task_group() as aux:
                    aux.start_soon(_feed, process.stdin, job.stdin)
                    aux.start_soon(self._tick, job, stage, watch, out, err, progress, kill)
                    with anyio.move_on_after(job.timeout_s):
                        await process.wait()
                    if process.returncode is None:
                        watch.killed_reason = "timeout"
                        kill()
                        await process.wait()
                    ended = time.monotonic()
                    aux.cancel_scope.cancel()
                # The pipes close once every process of the sandbox is gone; do not wait forever.
                io.cancel_scope.deadline = anyio.current_time() + self.config.cleanup_timeout_s
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    kill()
                    with anyio.move_on_after(self.config.cleanup_timeout_s):
                        await process.wait()
                if watch.pidfd is not None:
                    os.close(watch.pidfd)
                    watch.pidfd = None
        duration = (ended or time.monotonic()) - watch.started
        return self._outcome(probe, watch, out, err, launcher.cgroup, duration)

    def _set_rlimits(self, pid: int, job: SandboxJob, probe: SandboxProbe) -> None:
        _setrlimit(pid, resource.RLIMIT_CORE, 0)
        _setrlimit(pid, resource.RLIMIT_FSIZE, job.max_file_bytes)
        _setrlimit(pid, resource.RLIMIT_NOFILE, _NOFILE_CAP)
        soft, hard = job.cpu_seconds, job.cpu_seconds + 1
        _, cur_hard = resource.getrlimit(resource.RLIMIT_CPU)
        if cur_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        resource.prlimit(pid, resource.RLIMIT_CPU, (soft, hard))
        if probe.memory_enforcement == "rlimit-as":
            _setrlimit(pid, resource.RLIMIT_AS, job.memory_bytes)
        if probe.pids_enforcement == "rlimit-nproc":
            _setrlimit(pid, resource.RLIMIT_NPROC, job.pids_limit)

    async def _tick(
        self,
        job: SandboxJob,
        stage: Stage,
        watch: _Watch,
        out: OutputCapture,
        err: OutputCapture,
        progress: ProgressCallback | None,
        kill: Callable[[], None],
    ) -> None:
        watchdog = job.max_stage_bytes is not None or job.max_stage_files is not None
        if progress is None and not watchdog:
            return
        max_files = job.max_stage_files if job.max_stage_files is not None else 1 << 62
        max_bytes = job.max_stage_bytes if job.max_stage_bytes is not None else 1 << 62
        next_report = job.progress_interval_s
        while True:
            await anyio.sleep(min(_WATCHDOG_INTERVAL_S, job.progress_interval_s) if watchdog else next_report)
            elapsed = time.monotonic() - watch.started
            if watchdog:
                used, entries, too_deep = await anyio.to_thread.run_sync(lambda: stage.usage(max_entries=max_files + 1))
                if used > max_bytes or entries > max_files or too_deep:
                    watch.killed_reason = "disk_limit"
                    kill()
                    return
            if progress is not None and elapsed >= next_report:
                await progress(SandboxProgress(elapsed, out.total, err.total))
                next_report += job.progress_interval_s

    def _outcome(
        self,
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
        if reason is not None:
            exit_code, sig = None, int(signal.SIGKILL)
        elif exit_code is None:
            # No exit status from bubblewrap: the command never started.
            message = _tail(stderr)
            if "bwrap: execvp" in message:
                exit_code = 127 if "No such file" in message else 126
            else:
                raise ExecError(f"The sandbox could not start the command: {message}")
        elif 128 < exit_code <= 128 + 64:
            sig = exit_code - 128
        if oom and reason is None:
            reason = "memory_limit"
        return SandboxRun(
            exit_code=exit_code,
            signal=sig,
            stdout=out.getvalue(),
            stderr=stderr,
            stdout_total=out.total,
            stderr_total=err.total,
            stdout_truncated=out.truncated,
            stderr_truncated=err.truncated,
            duration_s=duration,
            timed_out=watch.killed_reason == "timeout",
            killed_reason=reason,
            oom_killed=oom,
            memory_enforcement=probe.memory_enforcement,
            pids_enforcement=probe.pids_enforcement,
            changes=ChangeSet(),
        )


def _find_tools(cfg: SandboxConfig, root: bool) -> tuple[dict[str, str], str | None]:
    """Absolute paths of the tools the chain needs, or the reason the sandbox cannot work."""
    tools = {"bwrap": cfg.bwrap, "unshare": cfg.unshare, "mount": cfg.mount, "shell": cfg.shell}
    found: dict[str, str] = {}
    for key, name in tools.items():
        path = _which(name)
        if path is None:
            hint = {
                "bwrap": "install the Debian/Ubuntu package 'bubblewrap'",
                "shell": "a POSIX shell is required",
            }.get(key, "install util-linux")
            return found, f"{name} was not found ({hint}); commands cannot be sandboxed"
        found[key] = path
    if root and cfg.sandbox_uid == 0:
        return found, "sandbox_uid must not be 0: commands never run as root"
    if not os.path.isdir(cfg.overlay_mountpoint):
        return found, f"overlay_mountpoint {cfg.overlay_mountpoint} is not an existing directory"
    return found, None


def _python_candidate(path: str) -> bool:
    """Whether ``path`` is an interpreter the sandbox can see (it mounts /usr and the /bin link)."""
    return path.startswith(("/usr/", "/bin/")) and os.path.isfile(path)


def _egress_dir(owner: tuple[int, int] | None) -> tuple[Path, socket.socket]:
    """A private directory holding the proxy's listening socket and the forwarder script.

    It lives in the system temp dir (short socket path) and belongs to the sandbox's host uid,
    which bubblewrap runs as and which must reach both to bind them into the sandbox. Nobody
    else can enter it.
    """
    path = Path(tempfile.mkdtemp(prefix="container-mcp-egress-"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        (path / "forward.py").write_bytes(_forwarder_source())
        sock.bind(str(path / "proxy.sock"))
        os.chmod(path / "proxy.sock", 0o600)
        if owner is not None:
            for p in (path, path / "proxy.sock", path / "forward.py"):
                os.chown(p, *owner)
        sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path, sock


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one real error inside nested task-group exception groups (or the group itself)."""
    leaves: list[BaseException] = []

    def collect(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                collect(inner)
        else:
            leaves.append(exc)

    collect(group)
    return leaves[0] if len(leaves) == 1 else group


def _version_at_least(version: str | None, wanted: tuple[int, ...]) -> bool:
    try:
        parts = tuple(int(p) for p in (version or "").split(".")[: len(wanted)])
    except ValueError:
        return False
    return parts >= wanted


def _check_workdir(job: SandboxJob) -> None:
    if job.workdir != "/mnt/data" and not job.workdir.startswith("/mnt/data/"):
        return
    current = job.data_dir
    for part in [p for p in job.workdir[len("/mnt/data") :].split("/") if p not in ("", ".")]:
        current = current / part
        try:
            st = os.lstat(current)
        except OSError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise InvalidRequest(
                f"workdir {job.workdir} is not a directory in the container; create it first or use /mnt/data.",
                param="workdir",
            )


def _explain(message: str, root: bool) -> str:
    if "unshare failed" in message or "No permissions to create new namespace" in message:
        hint = (
            "the kernel refuses new namespaces here"
            if root
            else "unprivileged user namespaces are disabled (sysctl kernel.unprivileged_userns_clone=0, "
            "user.max_user_namespaces=0, or AppArmor's restrict_unprivileged_userns)"
        )
        return f"{message} ({hint})"
    if "overlay" in message or "mount" in message:
        return (
            f"{message} (overlayfs must be mountable in a private mount namespace; kernel >= 5.11 needed without root)"
        )
    return message


async def _pump(stream: anyio.abc.ByteReceiveStream, capture: OutputCapture) -> None:
    with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
        async for chunk in stream:
            capture.feed(chunk)


async def _feed(stream: anyio.abc.ByteSendStream, data: bytes | None) -> None:
    try:
        if data:
            await stream.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await stream.aclose()


async def _read_status(fd: int, watch: _Watch) -> None:
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
            if "exit-code" in doc:
                watch.exit_code = int(doc["exit-code"])


_default_sandboxes: dict[SandboxConfig, Sandbox] = {}


def _default(config: SandboxConfig | None) -> Sandbox:
    key = config or SandboxConfig()
    sandbox = _default_sandboxes.get(key)
    if sandbox is None:
        sandbox = _default_sandboxes[key] = Sandbox(key)
    return sandbox


async def probe_sandbox(config: SandboxConfig | None = None, *, refresh: bool = False) -> SandboxProbe:
    """Probe (once per ``config``, cached) whether and how commands can be sandboxed here."""
    return await _default(config).probe(refresh=refresh)


async def run_sandboxed(
    job: SandboxJob, *, config: SandboxConfig | None = None, progress: ProgressCallback | None = None
) -> SandboxRun:
    """Run ``job`` with the shared ``Sandbox`` for ``config`` (see ``Sandbox.run``)."""
    return await _default(config).run(job, progress=progress)
