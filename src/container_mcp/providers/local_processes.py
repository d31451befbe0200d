"""Background processes of the local provider: the table of who runs where, and their output.

A background process is an ordinary sandboxed run (its own stage over the container's files,
cgroup, limits, network namespace) that no call waits on: it runs in the provider's task group,
without the container's lock, for at most ``max_lifetime_s``; it takes the lock only at its end,
to commit its file changes like a foreground command. Its stdout and stderr go to files in
``<container>/procs/<server pid>-<id>/`` as they come: the first ``max_output_bytes`` of each are
kept, the rest only counted, so neither memory nor disk grows with a chatty process.

Everything a process holds is released when it ends, and it is made to end (killed, its changes
discarded) when its container is deleted or expires, or the provider closes. A server that
crashes usually takes its sandboxes with it (bubblewrap's ``--die-with-parent``); bubblewrap's
PID 1 can outlive it, and is killed at the next start through the dead server's cgroups
(``Cgroups.sweep``); what stays on disk (a stage, an output directory) is removed by the next
repair of the container (``sweep_outputs``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..errors import InvalidRequest, QuotaExceeded
from ..sandbox.cgroups import pid_alive
from ..sandbox.output import decode_output
from .base import ExecResult, OnExit, ProcessInfo, ProcessOutput, ProcessState
from .registry_backed import RegistryBacked

__all__ = [
    "OUTPUTS",
    "STDIN_WAIT_S",
    "BackgroundProcess",
    "ProcessBacked",
    "ProcessTable",
    "runs_anywhere",
    "sweep_outputs",
]

log = logging.getLogger(__name__)

OUTPUTS = "procs"
"""The directory of a container holding its background processes' output."""

KEEP_ENDED = 20
"""Ended processes remembered per container (with their output); older ones are forgotten."""

RUNNING = "running"
"""A file in a process's output directory while it runs: how another server process on the same
data dir knows the container is in use (``runs_anywhere``) though no lock is held."""


class _Log:
    """One stream written to a file: the first ``cap`` bytes kept, the rest only counted."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = cap
        self.total = 0
        self.kept = 0
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.cap - self.kept
        if room <= 0 or self._fd is None:
            return
        view = memoryview(chunk)[:room]
        while view:
            written = os.write(self._fd, view)
            self.kept += written
            view = view[written:]

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def read(self, offset: int, length: int) -> bytes:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return b""
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)


@dataclass
class BackgroundProcess:
    """One process and everything needed to talk to it while it runs."""

    id: str
    container_id: str
    command: str
    started_at: int
    directory: Path
    stdout: _Log
    stderr: _Log
    stdin: MemoryObjectSendStream[bytes] | None
    """Where ``write`` puts stdin data; closed with ``close_stdin`` or at the end."""
    stdin_source: MemoryObjectReceiveStream[bytes]
    """The other end, read by the sandbox (``Attachment.stdin``)."""
    started_mono: float = field(default_factory=time.monotonic)
    ended_mono: float | None = None
    state: ProcessState = "running"
    exit_code: int | None = None
    signal: int | None = None
    result: ExecResult | None = None
    error: str | None = None
    send_signal: Callable[[int], None] | None = None
    signalled: int | None = None
    """The last signal a caller sent it: a run that then fails to start was ended by it."""
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    ready: anyio.Event = field(default_factory=anyio.Event)
    """Set once signals can be sent (or it ended before)."""
    done: anyio.Event = field(default_factory=anyio.Event)

    def output(self, fd: int, chunk: bytes) -> None:
        (self.stdout if fd == 1 else self.stderr).feed(chunk)

    def started(self, send: Callable[[int], None]) -> None:
        self.send_signal = send
        self.ready.set()

    def info(self) -> ProcessInfo:
        end = self.ended_mono if self.ended_mono is not None else time.monotonic()
        r = self.result
        return ProcessInfo(
            id=self.id,
            container_id=self.container_id,
            command=self.command,
            state=self.state,
            exit_code=self.exit_code,
            signal=self.signal,
            started_at=self.started_at,
            runtime_s=round(end - self.started_mono, 3),
            stdout_bytes=self.stdout.total,
            stderr_bytes=self.stderr.total,
            output_capped=self.stdout.total > self.stdout.kept or self.stderr.total > self.stderr.kept,
            files_created_total=r.files_created_total if r else 0,
            files_changed_total=r.files_changed_total if r else 0,
            files_deleted_total=r.files_deleted_total if r else 0,
            error=self.error,
        )

    def read(self, stream: Literal["stdout", "stderr"], offset: int, max_bytes: int) -> ProcessOutput:
        """At most ``max_bytes`` of output from ``offset``, and at most that much once JSON-escaped
        (a control character is six bytes there, an undecodable byte three): the text of a read
        is bounded as it travels, not only as it was written."""
        log_ = self.stdout if stream == "stdout" else self.stderr
        data = log_.read(offset, max_bytes) if offset < log_.kept else b""
        text = decode_output(data)
        while len(data) > 1 and (size := _json_size(text)) > max_bytes:
            data = data[: max(1, len(data) * max_bytes // size)]
            text = decode_output(data)
        # Stop before a UTF-8 sequence cut by the bound or by a write still to come (unless that is
        # all there is), so the next read starts on a character.
        if not (self.done.is_set() and offset + len(data) >= log_.kept):
            cut = _utf8_boundary(data)
            if 0 < cut < len(data):
                data = data[:cut]
                text = decode_output(data)
        nxt = offset + len(data)
        return ProcessOutput(text=text, offset=offset, next_offset=nxt, eof=self.done.is_set() and nxt >= log_.kept)


def _json_size(text: str) -> int:
    """Bytes of ``text`` as a JSON string's content (UTF-8, escapes included)."""
    return len(json.dumps(text, ensure_ascii=False).encode()) - 2


def _utf8_boundary(data: bytes) -> int:
    """Length of ``data`` without a trailing, incomplete UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # a lead byte (or ASCII): is its sequence whole?
            need = 1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110 else 4
            return len(data) if need <= back else len(data) - back
    return len(data)


class ProcessTable:
    """The provider's background processes, by container; runs them in its own task group."""

    def __init__(self, *, max_per_container: int, max_output_bytes: int) -> None:
        self.max_per_container = max_per_container
        self.max_output_bytes = max_output_bytes
        self._by_container: dict[str, dict[str, BackgroundProcess]] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> ProcessTable:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        tg, self._tg = self._tg, None
        if tg is not None:
            tg.cancel_scope.cancel()  # every process is killed, its changes discarded
            await tg.__aexit__(None, None, None)

    def running(self, container_ids: Collection[str]) -> int:
        return sum(1 for cid in container_ids for p in self._by_container.get(cid, {}).values() if p.state == "running")

    def of(self, container_id: str) -> list[BackgroundProcess]:
        return sorted(self._by_container.get(container_id, {}).values(), key=lambda p: p.started_mono)

    def get(self, container_id: str, process_id: str) -> BackgroundProcess:
        proc = self._by_container.get(container_id, {}).get(process_id)
        if proc is None:
            raise InvalidRequest(
                f"No background process {process_id[:80]!r} in container {container_id}; action 'list' shows its "
                "processes (ended ones are kept a while, then forgotten).",
                param="process_id",
            )
        return proc

    def new(self, container_id: str, root: Path, command: str, started_at: int) -> BackgroundProcess:
        """Register a process about to start (the per-container limit is checked here)."""
        if self.running([container_id]) >= self.max_per_container:
            raise QuotaExceeded(
                f"Container {container_id} already runs {self.max_per_container} background processes, the limit. "
                "Wait for one or signal it (action 'signal'), or ask the operator to raise "
                "CONTAINER_MCP_EXEC_MAX_PROCESSES_PER_CONTAINER.",
                limit_name="CONTAINER_MCP_EXEC_MAX_PROCESSES_PER_CONTAINER",
                limit=self.max_per_container,
                used=self.max_per_container,
            )
        pid = f"proc_{secrets.token_hex(12)}"
        directory = root / OUTPUTS / f"{os.getpid()}-{pid}"
        directory.mkdir(parents=True, mode=0o700)
        (directory / RUNNING).touch(mode=0o600)
        send, receive = anyio.create_memory_object_stream[bytes](16)
        proc = BackgroundProcess(
            id=pid,
            container_id=container_id,
            command=command[:200],
            started_at=started_at,
            directory=directory,
            stdout=_Log(directory / "stdout", self.max_output_bytes),
            stderr=_Log(directory / "stderr", self.max_output_bytes),
            stdin=send,
            stdin_source=receive,
        )
        self._by_container.setdefault(container_id, {})[pid] = proc
        self._forget_old(container_id)
        return proc

    def forget(self, proc: BackgroundProcess) -> None:
        """Drop a process that never started."""
        self._by_container.get(proc.container_id, {}).pop(proc.id, None)
        if proc.stdin is not None:
            proc.stdin.close()
        proc.stdin_source.close()
        proc.stdout.close()
        proc.stderr.close()
        shutil.rmtree(proc.directory, ignore_errors=True)

    def containers(self) -> list[str]:
        """The containers with a running process here."""
        return [cid for cid in self._by_container if self.running([cid])]

    def _forget_old(self, container_id: str) -> None:
        ended = [p for p in self.of(container_id) if p.done.is_set()]
        for proc in ended[: max(0, len(ended) - KEEP_ENDED)]:
            del self._by_container[container_id][proc.id]
            shutil.rmtree(proc.directory, ignore_errors=True)

    def launch(self, proc: BackgroundProcess, body: Callable[[], Awaitable[ExecResult]], on_exit: OnExit) -> None:
        """Run ``body`` (the sandboxed run and its commit) for ``proc`` in the table's task group."""
        if self._tg is None:
            raise RuntimeError("the process table is not open")
        self._tg.start_soon(self._run, proc, body, on_exit)

    async def _run(self, proc: BackgroundProcess, body: Callable[[], Awaitable[ExecResult]], on_exit: OnExit) -> None:
        result: ExecResult | None = None
        error: BaseException | None = None
        try:
            with proc.scope:
                try:
                    result = await body()
                except QuotaExceeded as exc:
                    error, proc.state = exc, "failed"
                    proc.error = f"{exc.message} (The limit is the operator's {exc.limit_name}.)"
                except Exception as exc:
                    error = exc
                    if proc.signalled is not None:
                        # Signalled while its sandbox was still starting: the start fails, but the caller ended it.
                        proc.state, proc.signal = "killed", proc.signalled
                        proc.error = f"Ended by signal {proc.signalled} before it had started; nothing it did was kept."
                    else:
                        log.exception("background process %s of %s failed", proc.id, proc.container_id)
                        proc.state, proc.error = "failed", f"The process could not be run or committed: {exc}"
            if proc.scope.cancelled_caught:
                error = error or anyio.get_cancelled_exc_class()()
                proc.state = "killed"
                proc.error = proc.error or "Killed because its container was deleted or expired; changes discarded."
        except BaseException as exc:  # the server stops
            error = exc
            proc.state = "killed"
            raise
        finally:
            if result is not None:
                proc.result = result
                proc.exit_code, proc.signal = result.exit_code, result.signal
                proc.state = "killed" if result.killed_reason or result.signal else "exited"
            proc.ended_mono = proc.ended_mono or time.monotonic()
            with contextlib.suppress(FileNotFoundError):
                (proc.directory / RUNNING).unlink()
            proc.stdout.close()
            proc.stderr.close()
            if proc.stdin is not None:
                proc.stdin.close()
            proc.stdin_source.close()
            proc.done.set()
            proc.ready.set()
            with anyio.CancelScope(shield=True):
                try:
                    await on_exit(result, error)
                except Exception:
                    log.exception("the exit of background process %s could not be reported", proc.id)

    def cancel(self, container_id: str) -> list[BackgroundProcess]:
        """Make every process of the container end now (killed, changes discarded)."""
        procs = [p for p in self.of(container_id) if not p.done.is_set()]
        for proc in procs:
            proc.scope.cancel()
        return procs

    async def stop(self, container_id: str) -> None:
        """``cancel`` and wait until they are gone; then forget the container's processes."""
        for proc in self.cancel(container_id):
            await proc.done.wait()
        self._by_container.pop(container_id, None)


def runs_anywhere(container_root: Path) -> bool:
    """Whether a live server process (this one or another on the data dir) runs a background
    process in the container. Blocking (a few stats)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in (container_root / OUTPUTS).iterdir():
            pid = entry.name.split("-", 1)[0]
            if pid.isdigit() and (entry / RUNNING).exists() and pid_alive(int(pid)):
                return True
    return False


def sweep_outputs(container_root: Path) -> int:
    """Remove output directories of processes whose server is gone (a crash). Blocking."""
    removed = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in (container_root / OUTPUTS).iterdir():
            pid = entry.name.split("-", 1)[0]
            if not pid.isdigit() or not pid_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
    return removed


STDIN_WAIT_S = 5.0
"""How long a write waits for a process to take its stdin, or a signal for it to start, before
either is refused."""


class ProcessBacked(RegistryBacked):
    """A registry-backed provider whose background processes live in a ``ProcessTable``
    (``self._processes``): the ``ProcessProvider`` calls but ``start_process``, which is the
    backend's own. ``ready`` of a process means its ``send_signal`` is set."""

    _processes: ProcessTable

    async def list_processes(self, container_id: str) -> list[ProcessInfo]:
        await self._row(container_id, touch=True)
        return [p.info() for p in self._processes.of(container_id)]

    def running_processes(self, container_ids: Collection[str]) -> int:
        return self._processes.running(container_ids)

    async def read_process(
        self, container_id: str, process_id: str, *, stream: Literal["stdout", "stderr"], offset: int, max_bytes: int
    ) -> ProcessOutput:
        await self._row(container_id, touch=True)
        proc = self._processes.get(container_id, process_id)
        return await anyio.to_thread.run_sync(lambda: proc.read(stream, offset, max_bytes))

    async def write_process(self, container_id: str, process_id: str, data: bytes, *, close: bool) -> ProcessInfo:
        await self._running(container_id)
        proc = self._processes.get(container_id, process_id)
        if proc.stdin is None or proc.done.is_set():
            raise InvalidRequest(f"The stdin of {process_id} is closed (or the process ended).", param="process_id")
        if data:
            with anyio.move_on_after(STDIN_WAIT_S) as waited:
                await proc.stdin.send(data)
            if waited.cancelled_caught:
                raise InvalidRequest(
                    f"{process_id} is not reading its stdin (its buffer is full); nothing was written. Read its output "
                    "or wait for it, then try again.",
                    param="stdin",
                )
        if close:
            proc.stdin.close()
            proc.stdin = None
        return proc.info()

    async def signal_process(self, container_id: str, process_id: str, signal: int) -> ProcessInfo:
        await self._running(container_id)
        proc = self._processes.get(container_id, process_id)
        with anyio.move_on_after(STDIN_WAIT_S):  # just started: its wrapper may not have said its session yet
            await proc.ready.wait()
        if proc.done.is_set():
            raise InvalidRequest(f"{process_id} has already ended ({proc.state}).", param="process_id")
        if proc.send_signal is None:
            raise InvalidRequest(f"{process_id} is still starting; send the signal again in a moment.", param="signal")
        proc.signalled = signal
        proc.send_signal(signal)
        return proc.info()

    async def wait_process(self, container_id: str, process_id: str, timeout_s: float) -> ProcessInfo:
        await self._row(container_id, touch=True)
        proc = self._processes.get(container_id, process_id)
        with anyio.move_on_after(timeout_s):
            await proc.done.wait()
        return proc.info()


STDIN_WAIT_S = 5.0
"""How long a write waits for a process to take its stdin, or a signal for it to start, before
either is refused."""
