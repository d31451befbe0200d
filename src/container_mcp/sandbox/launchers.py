"""Launchers: setup chains spawned ahead of a run, already in their cgroups, waiting for a script.

Moving a process into a cgroup costs about one RCU grace period (~10 ms on a small VM), and it
must happen before the process forks. A launcher pays that price before it is needed: it is
``unshare --mount [--user ...] -- sh /dev/fd/N``, spawned with every pipe and fd a run needs,
moved into a fresh, still unlimited cgroup, and left blocked reading fd N. A run then only sets
its cgroup limits and rlimits (cheap writes), fills the launcher's (shared, still empty) memfd
with bubblewrap's arguments, and writes the setup script into fd N: that write is the start
signal (see ``bwrap.py`` for what the script does). The launcher runs with an empty environment.

A ``LauncherPool`` keeps a few launchers warm while ``Sandbox`` is used as an async context
manager; without it (or when the pool is empty) a run spawns its launcher on the spot, which
is the same code path, only slower. A launcher is used once. Unused launchers exit when their
script pipe is closed; ones older than ``max_age_s`` are replaced, so a launcher's snapshot of
the host's mounts (taken by ``unshare --mount``) never gets stale.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import anyio.abc

from . import cgroups

__all__ = ["Launcher", "LauncherPool", "LauncherSpec", "spawn_launcher"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LauncherSpec:
    """What every launcher of a ``Sandbox`` gets."""

    argv: Callable[[int], list[str]]
    """argv for a given script fd number."""
    files: Callable[[], dict[str, bytes]]
    """Destination path -> content, handed over as memfds (fresh per launcher: bwrap reads them)."""
    seccomp: bytes | None
    cgroups: cgroups.CgroupHost


@dataclass
class Launcher:
    """A spawned setup chain waiting for its script. Fd numbers are the child's."""

    process: anyio.abc.Process
    cgroup: cgroups.RunCgroup | None
    script_w: int
    status_r: int
    status_fd: int
    seccomp_fd: int | None
    file_fds: dict[str, int]
    args_fd: int
    """A memfd for bubblewrap's ``--args``; the same number in the child, sharing its offset."""
    created: float = field(default_factory=time.monotonic)
    started: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    async def start(self, script: bytes, args: bytes) -> None:
        """Hand the launcher bubblewrap's ``args`` and its script (the run begins); close both."""
        self.started = time.monotonic()
        args_fd, self.args_fd = self.args_fd, -1
        try:
            # pwrite leaves the shared offset at 0, where bubblewrap starts reading.
            view = memoryview(args)
            offset = 0
            while offset < len(view):
                offset += os.pwrite(args_fd, view[offset:], offset)
        finally:
            os.close(args_fd)
        fd, self.script_w = self.script_w, -1
        try:
            if len(script) < 32768:
                os.write(fd, script)
            else:  # more than a pipe buffer: the shell must read while we write
                await anyio.to_thread.run_sync(_write_all, fd, script)
        finally:
            os.close(fd)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        if self.cgroup is not None:
            self.cgroup.kill_all()

    async def discard(self, cleanup_timeout_s: float = 5.0) -> None:
        """Stop an unused (or finished) launcher and release what it holds."""
        with anyio.CancelScope(shield=True):
            if self.script_w >= 0:
                os.close(self.script_w)
                self.script_w = -1
            if self.args_fd >= 0:
                os.close(self.args_fd)
                self.args_fd = -1
            if self.process.returncode is None:
                self.kill()
            with anyio.move_on_after(cleanup_timeout_s):
                await self.process.wait()
            with contextlib.suppress(Exception):
                await self.process.aclose()
            if self.status_r >= 0:
                os.close(self.status_r)
                self.status_r = -1
            if self.cgroup is not None:
                await release_cgroup(self.cgroup, cleanup_timeout_s)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


async def spawn_launcher(spec: LauncherSpec) -> Launcher:
    """Spawn a launcher and move it into fresh cgroups; raises ``OSError`` on failure.

    Shielded from cancellation (it takes milliseconds): a cancellation landing while asyncio
    reaps a half-spawned child would otherwise leave a running process nobody waits for. A
    pending cancellation is delivered at the caller's next checkpoint, by which time the
    launcher is in the caller's hands to discard.
    """
    with anyio.CancelScope(shield=True):
        launcher = await _spawn(spec)
    return launcher


async def _spawn(spec: LauncherSpec) -> Launcher:
    child_fds: list[int] = []
    parent_fds: list[int] = []
    cg = spec.cgroups.create(f"run-{os.getpid()}-{secrets.token_hex(6)}")
    try:
        file_fds = {dest: _memfd(os.path.basename(dest), data) for dest, data in spec.files().items()}
        child_fds += file_fds.values()
        # Kept open on our side too (filled at start); the child gets the same open file.
        args_fd = _memfd("bwrap-args", b"")
        parent_fds.append(args_fd)
        seccomp_fd = _memfd("seccomp", spec.seccomp) if spec.seccomp else None
        if seccomp_fd is not None:
            child_fds.append(seccomp_fd)
        status_r, status_w = os.pipe()
        parent_fds.append(status_r)
        child_fds.append(status_w)
        os.set_blocking(status_r, False)
        script_r, script_w = os.pipe()
        parent_fds.append(script_w)
        child_fds.append(script_r)
        process = await anyio.open_process(
            spec.argv(script_r),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=[*child_fds, args_fd],
            env={},
            start_new_session=True,
        )
    except BaseException:
        for fd in child_fds + parent_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        if cg is not None:
            cg.remove()
        raise
    # Only the child may hold its ends, or end-of-file never comes.
    for fd in child_fds:
        os.close(fd)
    launcher = Launcher(process, cg, script_w, status_r, status_w, seccomp_fd, file_fds, args_fd)
    if cg is not None:
        try:
            # The shell is blocked reading its script: it cannot fork before it is inside.
            await anyio.to_thread.run_sync(cg.add, process.pid)
        except BaseException:
            await launcher.discard()
            raise
    return launcher


async def release_cgroup(cg: cgroups.RunCgroup, timeout_s: float) -> None:
    """Kill what is left in ``cg`` and remove it, retrying while the last processes exit."""
    with anyio.move_on_after(timeout_s):
        while True:
            if cg.pids():
                cg.kill_all()
            if cg.remove():
                return
            await anyio.sleep(0.002)
    log.warning("sandbox cgroup(s) %s could not be removed: processes remain", cg.dirs)


class LauncherPool:
    """Keeps ``size`` launchers ready while ``maintain()`` runs (in the ``Sandbox``'s task group).

    Refills happen only while no run is in flight (``busy()`` is False): moving the new launcher
    into its cgroup holds the kernel's global threadgroup lock for a grace period, which would
    stall every fork and exit of a running command.
    """

    def __init__(
        self,
        spawn: Callable[[], Awaitable[Launcher]],
        *,
        size: int,
        busy: Callable[[], bool],
        max_age_s: float = 60.0,
    ) -> None:
        self._spawn = spawn
        self._busy = busy
        self.size = size
        self.max_age_s = max_age_s
        self._ready: list[Launcher] = []
        self._retired: list[Launcher] = []
        self._wake = anyio.Event()

    def poke(self) -> None:
        """Tell the pool something changed (a launcher was taken, a run ended)."""
        self._wake.set()

    def take(self) -> Launcher | None:
        """A ready launcher, or None (the caller spawns one itself)."""
        now = time.monotonic()
        while self._ready:
            launcher = self._ready.pop(0)
            if launcher.process.returncode is None and now - launcher.created < self.max_age_s:
                return launcher
            self._retire(launcher)
        return None

    def _retire(self, launcher: Launcher) -> None:
        # Closing the script pipe makes the shell read an empty script and exit.
        if launcher.script_w >= 0:
            os.close(launcher.script_w)
            launcher.script_w = -1
        if launcher.args_fd >= 0:
            os.close(launcher.args_fd)
            launcher.args_fd = -1
        with contextlib.suppress(ProcessLookupError):
            launcher.process.send_signal(signal.SIGKILL)
        self._retired.append(launcher)
        self.poke()

    async def maintain(self) -> None:
        """Refill forever (cancel to stop); failures are logged and retried after a pause."""
        while True:
            while self._retired:
                await self._retired.pop().discard()
            if len(self._ready) < self.size and not self._busy():
                try:
                    self._ready.append(await self._spawn())
                except Exception as exc:  # e.g. EMFILE: keep serving cold runs
                    log.warning("could not prepare a sandbox launcher: %s", exc)
                    await anyio.sleep(1.0)
                continue
            self._wake = anyio.Event()
            oldest = min((launcher.created for launcher in self._ready), default=time.monotonic())
            with anyio.move_on_after(max(0.01, oldest + self.max_age_s - time.monotonic())):
                await self._wake.wait()
            now = time.monotonic()
            for launcher in [x for x in self._ready if now - x.created >= self.max_age_s]:
                self._ready.remove(launcher)
                self._retire(launcher)

    async def aclose(self) -> None:
        """Discard every ready and retired launcher."""
        while self._ready:
            await self._ready.pop().discard()
        while self._retired:
            await self._retired.pop().discard()
