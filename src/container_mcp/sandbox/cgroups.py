"""Per-run cgroups: memory and pids limits, OOM detection, kill-all and cleanup.

``discover()`` looks at what the host offers and returns a ``CgroupHost``:

* **cgroup v2** (unified hierarchy with the ``memory`` and ``pids`` controllers): one directory
  per run under ``<parent>/<name>/``, where the parent is the hierarchy's root when the server
  runs as root (the root is exempt from the no-internal-processes rule), otherwise the server's
  own (delegated) cgroup. Limits: ``memory.max``, ``memory.swap.max=0``, ``memory.oom.group=1``,
  ``pids.max``; kill with ``cgroup.kill``.
* **cgroup v1** (legacy ``memory`` and/or ``pids`` hierarchies): one directory per run and
  controller under the server's own cgroup of that hierarchy. Limits:
  ``memory.limit_in_bytes`` (+ ``memory.memsw.limit_in_bytes`` when swap accounting exists),
  ``pids.max``; kill by signalling every pid in ``cgroup.procs``.

Each controller is probed by actually creating, limiting and removing a test group, so a
read-only or undelegated hierarchy is reported as unusable rather than failing later. All calls
here are blocking but tiny (a few small file writes); ``remove`` is retried by the caller while
the last processes exit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["CgroupHost", "RunCgroup", "discover", "pid_alive"]

Kind = Literal["cgroup-v2", "cgroup-v1"]


@dataclass(frozen=True)
class _Mounts:
    v2: Path | None
    v1: dict[str, Path]  # controller -> mount point


def _read_mounts() -> _Mounts:
    v2: Path | None = None
    v1: dict[str, Path] = {}
    try:
        text = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return _Mounts(None, {})
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        rfields = right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        mount_point = Path(fields[4].replace("\\040", " "))
        fstype, super_opts = rfields[0], rfields[2].split(",")
        if fstype == "cgroup2" and v2 is None:
            v2 = mount_point
        elif fstype == "cgroup":
            for ctrl in ("memory", "pids"):
                if ctrl in super_opts:
                    v1.setdefault(ctrl, mount_point)
    return _Mounts(v2, v1)


def _own_paths() -> tuple[str | None, dict[str, str]]:
    """The server's own cgroup: (v2 path, {v1 controller: path})."""
    v2: str | None = None
    v1: dict[str, str] = {}
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None, {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            v2 = path
        for ctrl in controllers.split(","):
            if ctrl in ("memory", "pids"):
                v1[ctrl] = path
    return v2, v1


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _child(base: Path, rel: str) -> Path:
    return base / rel.lstrip("/") if rel not in ("", "/") else base


@dataclass
class RunCgroup:
    """The cgroup directories of one run (one for v2; one per controller for v1)."""

    memory_dir: Path | None
    pids_dir: Path | None
    memory_kind: Kind | None
    dirs: list[Path] = field(default_factory=list)

    def set_limits(self, *, memory_bytes: int, pids_limit: int) -> None:
        """Apply the run's limits (cheap: no process moves). Raises ``OSError``."""
        if self.memory_dir is not None and self.memory_kind is not None:
            _limit_memory(self.memory_dir, self.memory_kind, memory_bytes)
        if self.pids_dir is not None:
            _write(self.pids_dir / "pids.max", str(pids_limit))

    def add(self, pid: int) -> None:
        """Move ``pid`` (not yet forked further) into every directory of the run.

        Slow: a cgroup migration waits for an RCU grace period (the kernel's global threadgroup
        rwsem), about 10 ms on a small VM, so launchers do it before a run needs them.
        """
        for d in self.dirs:
            _write(d / "cgroup.procs", str(pid))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError):
                found.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        return found

    def kill_all(self) -> None:
        """SIGKILL everything in the run's groups (``cgroup.kill`` on v2, else one by one)."""
        for d in self.dirs:
            kill_file = d / "cgroup.kill"
            if kill_file.exists():
                with contextlib.suppress(OSError):
                    _write(kill_file, "1")
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this run (memory limit hit)."""
        if self.memory_dir is None:
            return False
        name = "memory.events" if self.memory_kind == "cgroup-v2" else "memory.oom_control"
        try:
            text = (self.memory_dir / name).read_text()
        except OSError:
            return False
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key in ("oom_kill", "oom_group_kill") and value.strip().isdigit() and int(value) > 0:
                return True
        return False

    def remove(self) -> bool:
        """Remove the directories; False while processes remain (retry after they exit)."""
        done = True
        for d in list(self.dirs):
            try:
                d.rmdir()
                self.dirs.remove(d)
            except FileNotFoundError:
                self.dirs.remove(d)
            except OSError:
                done = False
        return done


@dataclass(frozen=True)
class CgroupHost:
    """What the host offers; ``create`` makes the groups of one run."""

    memory: Kind | None
    pids: Kind | None
    memory_parent: Path | None
    pids_parent: Path | None
    problems: tuple[str, ...] = ()

    def create(self, run_id: str) -> RunCgroup | None:
        """Create the (unlimited) groups of one run; None when no controller is usable.

        Raises ``OSError`` on failure, leaving nothing behind. Set limits with ``set_limits``.
        """
        if not (self.memory and self.memory_parent) and not (self.pids and self.pids_parent):
            return None
        dirs: list[Path] = []
        memory_dir = pids_dir = None
        try:
            if self.memory and self.memory_parent:
                memory_dir = self.memory_parent / run_id
                memory_dir.mkdir(mode=0o755)
                dirs.append(memory_dir)
            if self.pids and self.pids_parent:
                if self.pids_parent == self.memory_parent and memory_dir is not None:
                    pids_dir = memory_dir
                else:
                    pids_dir = self.pids_parent / run_id
                    pids_dir.mkdir(mode=0o755)
                    dirs.append(pids_dir)
        except OSError:
            for d in dirs:
                with contextlib.suppress(OSError):
                    d.rmdir()
            raise
        return RunCgroup(memory_dir, pids_dir, self.memory if memory_dir else None, dirs)

    def sweep(self, *, settle_s: float = 1.0) -> int:
        """Remove the run groups of server processes that are gone (a crash); returns how many went.

        Run groups are named ``run-<server pid>-<random>``, so groups of other live servers
        sharing the parent are left alone. Processes still in a dead server's group are an
        orphaned command nobody will ever read or commit (bubblewrap's PID 1 can outlive a
        ``kill -9`` of the server, its overlay still mounted over the container): they are
        killed, and their group removed once they have exited (waiting up to ``settle_s``).
        """
        orphans: list[RunCgroup] = []
        for parent in {p for p in (self.memory_parent, self.pids_parent) if p is not None}:
            with contextlib.suppress(OSError):
                for child in parent.iterdir():
                    parts = child.name.split("-")
                    if len(parts) != 3 or parts[0] != "run" or not parts[1].isdigit() or pid_alive(int(parts[1])):
                        continue
                    group = RunCgroup(None, None, None, [child])
                    group.kill_all()
                    orphans.append(group)
        found = len(orphans)
        deadline = time.monotonic() + settle_s
        while True:
            orphans = [g for g in orphans if not g.remove()]
            if not orphans or time.monotonic() > deadline:
                return found - len(orphans)
            time.sleep(0.01)  # blocking by contract (run in a thread): the killed processes exit


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (run groups and stages are named after their server)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _limit_memory(d: Path, kind: Kind, memory_bytes: int) -> None:
    if kind == "cgroup-v2":
        _write(d / "memory.max", str(memory_bytes))
        for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
            if (d / name).exists():
                _write(d / name, value)
    else:
        _write(d / "memory.limit_in_bytes", str(memory_bytes))
        if (d / "memory.memsw.limit_in_bytes").exists():
            # memsw >= limit is required; equal means no swap on top of the limit.
            with contextlib.suppress(OSError):
                _write(d / "memory.memsw.limit_in_bytes", str(memory_bytes))


def _prepare_parent(parent: Path, *, v2_controllers: tuple[str, ...] = ()) -> None:
    parent.mkdir(mode=0o755, exist_ok=True)
    if v2_controllers:
        enabled = (parent / "cgroup.subtree_control").read_text().split()
        missing = [c for c in v2_controllers if c not in enabled]
        if missing:
            _write(parent / "cgroup.subtree_control", " ".join("+" + c for c in missing))


def _try_controller(parent: Path, kind: Kind, ctrl: str) -> None:
    """Create, limit and remove a test group under ``parent``; raises OSError when not usable."""
    probe = parent / f"probe-{os.getpid()}"
    probe.mkdir(mode=0o755, exist_ok=True)
    try:
        if ctrl == "memory":
            _limit_memory(probe, kind, 64 << 20)
        else:
            _write(probe / "pids.max", "64")
    finally:
        probe.rmdir()


def discover(name: str = "container-mcp") -> CgroupHost:
    """Find a usable cgroup setup for memory and pids limits (never raises)."""
    mounts = _read_mounts()
    own_v2, own_v1 = _own_paths()
    problems: list[str] = []

    if mounts.v2 is not None and own_v2 is not None:
        available = set()
        with contextlib.suppress(OSError):
            available = set((mounts.v2 / "cgroup.controllers").read_text().split())
        wanted = tuple(c for c in ("memory", "pids") if c in available)
        if wanted:
            base = mounts.v2 if os.geteuid() == 0 else _child(mounts.v2, own_v2)
            parent = base / name
            try:
                if base != mounts.v2:
                    _prepare_parent(base, v2_controllers=wanted)
                else:
                    enabled = (base / "cgroup.subtree_control").read_text().split()
                    if any(c not in enabled for c in wanted):
                        _write(base / "cgroup.subtree_control", " ".join("+" + c for c in wanted))
                _prepare_parent(parent, v2_controllers=wanted)
                for ctrl in wanted:
                    _try_controller(parent, "cgroup-v2", ctrl)
                return CgroupHost(
                    memory="cgroup-v2" if "memory" in wanted else None,
                    pids="cgroup-v2" if "pids" in wanted else None,
                    memory_parent=parent if "memory" in wanted else None,
                    pids_parent=parent if "pids" in wanted else None,
                )
            except OSError as exc:
                problems.append(f"cgroup v2 at {parent} is not usable: {exc}")

    found: dict[str, Path] = {}
    for ctrl in ("memory", "pids"):
        mount = mounts.v1.get(ctrl)
        if mount is None:
            continue
        parent = _child(mount, own_v1.get(ctrl, "/")) / name
        try:
            _prepare_parent(parent)
            _try_controller(parent, "cgroup-v1", ctrl)
            found[ctrl] = parent
        except OSError as exc:
            problems.append(f"cgroup v1 {ctrl} at {parent} is not usable: {exc}")
    return CgroupHost(
        memory="cgroup-v1" if "memory" in found else None,
        pids="cgroup-v1" if "pids" in found else None,
        memory_parent=found.get("memory"),
        pids_parent=found.get("pids"),
        problems=tuple(problems),
    )
