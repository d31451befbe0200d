"""What to run (``SandboxJob``), progress reports, and what a run produced (``SandboxRun``)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import anyio
import anyio.abc

from ..errors import ExecError, InvalidRequest
from ..models import NetworkPolicy
from .changes import ChangeSet, Stage, _Plan
from .config import MemoryEnforcement, PidsEnforcement
from .output import decode_output

__all__ = ["Attachment", "KillReason", "ProgressCallback", "SandboxJob", "SandboxProgress", "SandboxRun"]

KillReason = Literal["timeout", "disk_limit", "memory_limit"]

MiB = 1 << 20


@dataclass
class Attachment:
    """A live line to a run that nobody waits on (a background process).

    ``output(fd, chunk)`` is called with every chunk of stdout (1) and stderr (2) as it comes;
    ``stdin`` is read until its sending side closes, each item written to the command's stdin;
    ``started`` is handed, once the command runs, a function sending a signal to its process group.
    """

    output: Callable[[int, bytes], None]
    stdin: anyio.abc.ObjectReceiveStream[bytes] | None = None
    started: Callable[[Callable[[int], None]], None] | None = None


@dataclass(frozen=True)
class SandboxJob:
    """One command to run in a container's sandbox.

    ``data_dir`` is the container's host directory, mounted (through a staging overlay) at
    /mnt/data. ``env`` is added to a cleared environment on top of the defaults (PATH, HOME=/tmp,
    TMPDIR=/tmp, LANG=C.UTF-8, PYTHONDONTWRITEBYTECODE=1, and the proxy variables under an
    allowlist policy). Limits are per run. ``max_stage_bytes``/``max_stage_files``, when set, kill
    the run once the files it wrote under /mnt/data exceed them (checked every 0.25 s, so a fast
    writer can overshoot by what it writes in that time); ``max_file_bytes`` caps each file
    (RLIMIT_FSIZE). ``stage_root`` is where the staging directory goes; it must be on the same
    filesystem as ``data_dir`` (default: ``data_dir``'s parent).
    """

    data_dir: Path
    argv: Sequence[str]
    stdin: bytes | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str = "/mnt/data"
    timeout_s: float = 60.0
    memory_bytes: int = 1 << 30
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    max_output_bytes: int = 32 * 1024
    """Bytes kept of stdout and stderr together."""
    pids_limit: int = 256
    cpu_seconds: int = 600
    max_file_bytes: int = 100 * MiB
    max_stage_bytes: int | None = None
    max_stage_files: int | None = None
    stage_root: Path | None = None
    tmp_bytes: int | None = None
    """Size of the private /tmp (and /dev/shm) tmpfs; default: ``memory_bytes``."""
    progress_interval_s: float = 1.0
    home_dir: Path | None = None
    """A host directory mounted read-write at /home/sandbox (and ``$HOME``), written in place: what
    a run leaves there is there for the next one. It must be on ``data_dir``'s filesystem. None:
    ``$HOME`` is the run's private /tmp."""
    max_home_bytes: int | None = None
    max_home_files: int | None = None
    """Kill the run (``disk_limit``) once ``home_dir`` holds more than this (checked like the stage)."""
    attach: Attachment | None = None
    """Set for a background run: output, stdin and signals while it runs (``stdin`` is then unused)."""
    adopt: bool = True
    """Root mode: hand ``data_dir``'s whole tree to the sandbox uid first (a walk of every entry).
    False when the caller knows it already belongs to it (nothing but runs wrote there since)."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.argv or not isinstance(self.argv[0], str) or not self.argv[0]:
            problems.append("argv must name a program")
        if any("\0" in a for a in self.argv):
            problems.append("argv must not contain NUL characters")
        for key, value in self.env.items():
            if not key or "=" in key or "\0" in key or "\0" in value:
                problems.append(f"invalid environment variable {key[:50]!r}")
        if not self.workdir.startswith("/") or "\0" in self.workdir or ".." in self.workdir.split("/"):
            problems.append("workdir must be an absolute path without '..'")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            problems.append("timeout_s must be a positive number")
        if self.memory_bytes < 16 * MiB:
            problems.append("memory_bytes must be at least 16 MiB")
        for name in ("max_output_bytes", "pids_limit", "cpu_seconds", "max_file_bytes"):
            if getattr(self, name) < (0 if name == "max_output_bytes" else 1):
                problems.append(f"{name} is out of range")
        if self.pids_limit < 8:
            problems.append("pids_limit must be at least 8")
        if not self.progress_interval_s > 0:
            problems.append("progress_interval_s must be positive")
        if problems:
            raise InvalidRequest("Invalid sandbox job: " + "; ".join(problems) + ".")


@dataclass(frozen=True)
class SandboxProgress:
    """A progress report while a command runs."""

    elapsed_s: float
    stdout_bytes: int
    stderr_bytes: int

    def message(self) -> str:
        """A one-line text for ``ProgressCallback``-style consumers."""
        return f"running for {self.elapsed_s:.0f}s; {self.stdout_bytes + self.stderr_bytes} bytes of output so far"


ProgressCallback = Callable[[SandboxProgress], Awaitable[None]]
"""Awaited every ``progress_interval_s`` while the command runs; raising aborts the run."""


@dataclass
class SandboxRun:
    """The outcome of a run, holding its uncommitted file changes.

    ``exit_code`` is the command's exit status, or None when the sandbox killed it (timeout,
    disk limit, OOM). bubblewrap reports death by signal N as 128+N, like a shell; ``signal``
    is derived from that (and is SIGKILL when the sandbox killed the command), so a command
    that itself exits with e.g. 137 is indistinguishable from one killed by SIGKILL.

    ``changes`` is what the command did under /mnt/data, not yet applied. Exactly one of
    ``await commit()`` (apply atomically per file, return the change set) or
    ``await discard()`` (the container directory stays exactly as it was) must follow; using
    the run as an async context manager discards on exit unless ``commit()`` was called.
    """

    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    stdout_total: int
    stderr_total: int
    stdout_truncated: bool
    stderr_truncated: bool
    duration_s: float
    timed_out: bool
    killed_reason: KillReason | None
    oom_killed: bool
    memory_enforcement: MemoryEnforcement
    pids_enforcement: PidsEnforcement
    changes: ChangeSet
    _stage: Stage | None = field(default=None, repr=False)
    _plan: _Plan | None = field(default=None, repr=False)
    state: Literal["pending", "committed", "discarded"] = "pending"

    @property
    def stdout_text(self) -> str:
        return decode_output(self.stdout)

    @property
    def stderr_text(self) -> str:
        return decode_output(self.stderr)

    async def commit(self) -> ChangeSet:
        """Apply ``changes`` to the container directory and remove the stage.

        Raises ``ExecError`` if the run was already committed or discarded, or if applying
        failed (the stage is removed either way; files renamed before the failure stay applied).
        """
        stage, plan = self._claim("commit")
        self.state = "discarded"
        try:
            await anyio.to_thread.run_sync(stage.apply, plan)
        except OSError as exc:
            raise ExecError(f"Could not apply the command's file changes: {exc}") from exc
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(stage.destroy)
        self.state = "committed"
        return self.changes

    async def discard(self) -> None:
        """Drop the changes; the container directory stays as it was. Idempotent after discard."""
        if self.state == "discarded":
            return
        stage, _ = self._claim("discard")
        self.state = "discarded"
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(stage.destroy)

    def _claim(self, action: str) -> tuple[Stage, _Plan]:
        if self.state != "pending" or self._stage is None or self._plan is None:
            raise ExecError(f"Cannot {action} a run that is already {self.state}.")
        stage, plan = self._stage, self._plan
        self._stage = self._plan = None
        return stage, plan

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.state == "pending":
            await self.discard()
