"""``Sandbox``: probe the host once, then run commands (see the package docstring for the design)."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Self

import anyio
import anyio.abc

from ..errors import ExecError, InvalidRequest, SandboxUnavailable
from ..groups import leaves
from ..models import NetworkPolicy
from . import cgroups
from .bwrap import (
    DEFAULT_ENV,
    FORWARDER_PATH,
    HOME,
    HOME_FSTAB,
    PROXY_PORT,
    PROXY_SOCKET_PATH,
    BwrapOptions,
    args_data,
    bwrap_args,
    etc_files,
    home_fstab,
    launcher_argv,
    setup_script,
)
from .changes import Stage
from .config import MemoryEnforcement, PidsEnforcement, SandboxConfig, SandboxProbe
from .egress import Allowlist, EgressProxy, EgressRules, InvalidHost
from .host import (
    check_workdir,
    egress_dir,
    explain,
    find_tools,
    python_candidate,
    set_rlimits,
    tail,
    version_at_least,
)
from .job import ProgressCallback, SandboxJob, SandboxRun
from .launchers import Launcher, LauncherPool, LauncherSpec, spawn_launcher
from .seccomp import program_for_machine
from .supervise import supervise

__all__ = ["Sandbox", "probe_sandbox", "run_sandboxed"]

log = logging.getLogger(__name__)

_ALLOWLIST_TRIAL = f"""
import socket, sys
s = socket.create_connection(("127.0.0.1", {PROXY_PORT}), timeout=10)
s.sendall(b"CONNECT unlisted.invalid:443 HTTP/1.1\\r\\n\\r\\n")
sys.stdout.write(s.recv(200).decode("latin-1"))
"""


def _network_enforcement(rules: EgressRules) -> str:
    return (
        "disabled: own network namespace with loopback only; allowlist: the same, plus a host-side "
        "filtering HTTP/CONNECT proxy reached through a bind-mounted Unix socket (in-sandbox forwarder on "
        f"127.0.0.1:{PROXY_PORT}, HTTP(S)_PROXY set) that connects only to listed names and public "
        "addresses (never loopback, private, link-local or metadata addresses unless the operator opened them), "
        f"on ports {rules.describe_ports()}"
    )


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
        self._active = 0

    async def __aenter__(self) -> Self:
        probe = await self.probe()
        if probe.available and self.config.warm_launchers > 0:
            spec = self._spec(probe)
            self._pool = LauncherPool(
                lambda: spawn_launcher(spec), size=self.config.warm_launchers, busy=lambda: self._active > 0
            )
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
            network_enforcement=_network_enforcement(cfg.egress),
            seccomp=False,
            bwrap_version=None,
            python=None,
            host_uid=cfg.sandbox_uid if root else os.geteuid(),
        )

        def unavailable(reason: str) -> SandboxProbe:
            return replace(base, reason=reason, notes=tuple(notes))

        notes: list[str] = []
        found, problem = find_tools(cfg, root)
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
                            f"a trial sandbox did not run as expected (exit {run.exit_code}): {tail(run.stderr)}"
                        )
                    if [f.path for f in run.changes.created] != ["probe"]:
                        return unavailable("the staging overlay did not capture a trial write to /mnt/data")
            except ExecError as exc:
                return unavailable(explain(str(exc), root))
            python, why = await self._probe_allowlist(job, trial)
        if python is None:
            notes.append(f"allowlist network policies are unavailable: {why}")
        return replace(trial, python=python, allowlist_unavailable=why, notes=tuple(notes))

    async def _probe_allowlist(self, job: SandboxJob, trial: SandboxProbe) -> tuple[str | None, str | None]:
        """Whether an allowlist run really works here: ``(interpreter, None)`` or ``(None, reason)``.

        The trial goes the whole way a command's request goes: the forwarder starts under the
        interpreter, the host proxy listens, and a CONNECT to an unlisted name comes back as the
        proxy's 403 (no name is resolved, no connection is opened).
        """
        cfg = self.config
        if not python_candidate(cfg.python):
            return None, f"{cfg.python} is not an interpreter the sandbox can see (it must live under /usr or /bin)"
        job = replace(
            job,
            argv=[cfg.python, "-I", "-S", "-c", _ALLOWLIST_TRIAL],
            network=NetworkPolicy(type="allowlist", allowed_domains=["probe.invalid"]),
        )
        try:
            async with await self._run(job, replace(trial, python=cfg.python), None) as run:
                if run.exit_code == 0 and run.stdout.startswith(b"HTTP/1.1 403"):
                    return cfg.python, None
                return None, (
                    f"a trial request through the in-sandbox forwarder ({cfg.python}) and the egress proxy failed "
                    f"(exit {run.exit_code}): {tail(run.stderr or run.stdout, 300)}"
                )
        except ExecError as exc:
            return None, str(exc)

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
                f"network_policy 'allowlist' cannot be enforced on this server ({probe.allowlist_unavailable}); "
                "the command was not run. Use a container with network_policy {'type': 'disabled'}."
            )
        self._active += 1
        try:
            return await self._run(job, probe, progress)
        finally:
            self._active -= 1
            if self._pool is not None and self._active == 0:
                self._pool.poke()

    async def _run(self, job: SandboxJob, probe: SandboxProbe, progress: ProgressCallback | None) -> SandboxRun:
        check_workdir(job)
        allowlist: Allowlist | None = None
        if job.network.type == "allowlist":
            try:
                allowlist = Allowlist.from_domains(job.network.allowed_domains or [])
            except InvalidHost as exc:
                raise InvalidRequest(f"Invalid allowed_domains entry: {exc}", param="network_policy") from exc
        owner = (self.config.sandbox_uid, self.config.sandbox_gid) if probe.mode == "root" else None
        stage_root = job.stage_root or job.data_dir.parent
        try:
            stage = await anyio.to_thread.run_sync(lambda: self._stage(job, stage_root, owner))
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

    def _stage(self, job: SandboxJob, stage_root: Path, owner: tuple[int, int] | None) -> Stage:
        stage = Stage.create(job.data_dir, stage_root, owner=owner, adopt=job.adopt, home_dir=job.home_dir)
        if job.home_dir is not None:
            try:
                (stage.root / HOME_FSTAB).write_bytes(home_fstab(self.config.overlay_mountpoint))
            except BaseException:
                stage.destroy()
                raise
        return stage

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
                try:
                    sock_dir, listener = egress_dir(root_ids)
                except OSError as exc:
                    raise ExecError(f"Could not start the egress proxy: {exc}") from exc
                proxy = EgressProxy(allowlist, rules=cfg.egress, resolver=cfg.resolver)
            if job.home_dir is not None:
                env["HOME"] = HOME
            env.update(job.env)
            bwrap = bwrap_args(
                BwrapOptions(
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
                    disable_userns=launcher.seccomp_fd is None and version_at_least(probe.bwrap_version, (0, 8)),
                    proxy_socket=str(sock_dir / "proxy.sock") if sock_dir else None,
                    home=job.home_dir is not None,
                )
            )
            script = setup_script(
                mount=self._tools["mount"],
                unshare=self._tools["unshare"],
                stage_root=stage.root,
                overlay_mountpoint=cfg.overlay_mountpoint,
                host_ids=root_ids,
                bwrap=self._tools["bwrap"],
                args_fd=launcher.args_fd,
                argv=argv,
                home=job.home_dir is not None,
            )
            try:
                if launcher.cgroup is not None:
                    launcher.cgroup.set_limits(memory_bytes=job.memory_bytes, pids_limit=job.pids_limit)
                set_rlimits(launcher.pid, job, probe.memory_enforcement, probe.pids_enforcement)
            except OSError as exc:
                raise ExecError(f"Could not apply the run's limits: {exc}") from exc
            result: SandboxRun | None = None
            async with anyio.create_task_group() as services:
                if proxy is not None and listener is not None:
                    services.start_soon(proxy.serve, listener)
                try:
                    result = await supervise(
                        job,
                        probe,
                        stage,
                        launcher,
                        script,
                        args_data(bwrap),
                        progress,
                        cleanup_timeout_s=cfg.cleanup_timeout_s,
                    )
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


def _single(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one real error inside nested task-group exception groups (or the group itself)."""
    found = leaves(group)
    return found[0] if len(found) == 1 else group


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
