"""Commands and file scans in a Docker container, through the engine alone.

**Running.** A command runs by the engine's exec, as the provider's user, under a small
``/bin/sh`` wrapper (``_WRAP``) that records its pid (the exec's process is a session leader, so
its pid is also its session id), makes and enters the working directory, runs the argv unchanged
and, once it has ended, lists the files under /mnt/data on stderr between two marker lines made
of a random nonce; ``_Divert`` takes them out of the output. Its stdin is written up the hijacked
stream and closed; stdout and stderr come down it and are kept head and tail (``OutputCapture``).
The command has ended when its output streams close (a background process that keeps them open
keeps the call waiting until the timeout: redirect it); on Podman, whose exec ends with its main
process, when the wrapper has exited (such a process then outlives the call instead). A timeout,
or a cancelled call, kills every process of the command's session (``_KILL``: scans of ``/proc``
run by another exec as the same user kill them until none is left), so nothing it started
survives the call unless it left the session; when no helper can start (every pid taken) or it
does not answer within ``kill_wait_s`` (the command made its pid file a FIFO), the engine restarts
the container instead (all processes go, files stay). Every helper's stream gives up after
``helper_idle_s`` of silence. A container whose main process a command killed (``kill -9 -1``
reaches it: same user) has stopped; the next exec starts it again (files stay), and an exec that
the engine accepted as it was stopping, but never ran, is a clear error asking to run the command
again. Stop signals cannot be sent at all (``docker_seccomp``): a stopped ``runc init`` would hang
the engine on the container.
An exit by signal N shows as 128+N, as from a shell; a SIGKILL with the container's OOM-kill counter
grown is reported as ``killed_reason="memory_limit"``.

**Scanning.** ``scan_files`` tells what a command did to /mnt/data. The wrapper's listing names the
candidate paths; without one (after a timeout, or for a repair, once the command's processes are
killed) ``DockerExec.listing`` does: the engine's change list ``GET /containers/{id}/changes``
(exact but slow, ~10 ms on a busybox image and ~300 ms on a Debian one, where Docker walks the
image), read to at most ``_MAX_LISTING`` bytes, since a command that made a million files in /tmp
makes it that long (and one that nested directories past the engine's PATH_MAX makes it fail); past
that, a helper lists /mnt/data's files as the container's user, kept to ``_MAX_LISTING`` bytes too
(files past the cap go unrecorded, as hidden ones do). The engine's own stat (archive API) of each
candidate and of every file recorded before gives size, type and mtime, and the files' bytes are
hashed from helpers run as the container's user (``digests``: one per ~64 KiB of paths; the archive
API would read as root, through symlinked parent directories): the listing only says where to
look. A listing over ``_MAX_LISTING`` bytes or ``_MAX_NEW_PATHS`` paths is dropped for the change
list (the nonce is in the wrapper's argv, which the command can read, so it can forge the markers:
what it lists is only ever a hint), and one scan stats at most ``_MAX_NEW_PATHS`` new paths (each
stat costs the engine ~1.5 ms). A file's bytes are read up to the size stated, never further (a
process left running can grow it without end while it is read; the row's size also bounds every
later read). A command can hide a file from the listing (it is then not counted; the container's
writable layer is not a disk quota anyway) but cannot make the server record a size or content that
is not there. A path is a file when the engine says it is a regular file and its name is a valid
container path; symlinks, devices and the like are never reported. Compared with the rows before the
command, that yields created, changed
(size or mtime differ) and deleted files.

**Writing.** ``write`` stores an upload as the container's user, never through the archive API
(which writes as root and resolves the destination's parent directories itself, so a command
swapping a folder for a symlink to /etc or /root at the right instant would have the server write
where the user may not). A helper (``_WRITE``) makes and enters each parent directory in turn
(``mkdir``, ``cd -P``) and checks that the directory it is in is really /mnt/data/<parents so
far> (from then on, swapping path components cannot move where it writes: it writes relative to
its working directory), copies its stdin into a fresh temporary file there (``set -C``: created,
never an existing one opened), checks its type and that its size is the size sent, and renames it
over the destination (``mv -T``: atomic; a symlink or FIFO at the destination is replaced, never
followed or opened). Whatever a command does meanwhile, the helper acts with the user's rights
only, and a cut or short upload (the server killed mid-stream: stdin ends early) leaves nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import anyio

from ..errors import Hint, InvalidPath, InvalidRequest, ProviderError
from ..paths import MOUNT, normalize_path, relative_path
from ..sandbox.output import OutputCapture, decode_output
from .base import ExecRequest, ExecResult, FileChanges, ProgressCallback
from .docker_api import Engine
from .exec_files import exec_result
from .local_registry import FileRow

__all__ = ["BACKGROUND_PIDFILE", "DockerExec", "ExecLimits", "ExecOutcome", "FileScan", "scan_files"]

log = logging.getLogger(__name__)

PIDFILE = "/tmp/.container-mcp-exec.pid"
"""Where the wrapper records the running command's pid (one command at a time per container)."""

_WALK = """walk() { for f in "$1"/* "$1"/.[!.]* "$1"/..?*; do
  if [ -L "$f" ]; then :; elif [ -d "$f" ]; then walk "$f"; elif [ -f "$f" ]; then printf '%s\\000' "$f"; fi
done; }"""
"""``walk DIR`` prints DIR's regular files, NUL-terminated, by the shell alone (no symlink followed)."""

_PIDFILE = """{ [ ! -L "$1" ] && { [ ! -e "$1" ] || { [ -f "$1" ] && [ -w "$1" ]; }; }; } || rm -f -- "$1"
echo $$ > "$1" || exit 126"""
"""Records the shell's pid in file $1: a writable regular file there is reused, anything else (a FIFO,
which would block, a symlink, a read-only file) removed first, all by builtins but that ``rm``."""

_LISTED = (
    """{ printf '\\n%s\\n' "$n"; ("""
    + _WALK
    + """
walk /mnt/data); printf '\\n%s.\\n' "$n"; } >&2"""
)
"""The listing of /mnt/data between marker lines of nonce $n on stderr, by the shell (a subshell: one
fork, no exec, where ``find`` would cost a process start; and a shell that crashes on a deep tree
takes only the listing with it, which is then incomplete, so the engine's change list is used)."""

_WRAP = (
    """[ -d "$2" ] || mkdir -p -- "$2" || exit 126; cd -- "$2" || exit 126
"""
    + _PIDFILE
    + """; n=$3; shift 3
"$@"; rc=$?
"""
    + _LISTED
    + """
exit $rc"""
)
"""Enters the workdir, records the pid (``_PIDFILE``), runs the argv, then lists /mnt/data's files on
stderr between two marker lines (which ``_Divert`` takes out of the output); the command's status is
the exit status."""

BACKGROUND_PIDFILE = "/tmp/.container-mcp-proc-{}.pid"
"""Where a background process's wrapper records its pid (``{}``: the process id): one file per
process, so the foreground command's ``PIDFILE`` stays its own."""

_BG_WRAP = (
    """echo $$; [ -d "$2" ] || mkdir -p -- "$2" || exit 126; cd -- "$2" || exit 126
"""
    + _PIDFILE
    + """; p=$1 n=$3; shift 3
"$@"; rc=$?
rm -f -- "$p"
"""
    + _LISTED
    + """
exit $rc"""
)
"""``_WRAP`` for a background process: first says its session id on stdout (before anything of the
command's runs, so the first line is the wrapper's and cannot be forged; the server kills and
signals by it, never by trusting the pid file, which the command can rewrite, remove or make a
FIFO), then records it in its pid file (for a later server to find after a crash) and removes that
when the command ends."""

_MEMBERS = """
members() {
  for f in /proc/[0-9]*/stat; do
    read -r line < "$f" 2>/dev/null || continue
    set -- ${line##*") "}
    [ "$4" = "$s" ] && [ "$1" != Z ] && { p=${f#/proc/}; echo "${p%/stat}"; }
  done
}
"""
"""Lists the pids of session ``$s``'s live processes."""

_KILL_TREE = """i=0
while [ $i -lt 100 ]; do
  i=$((i+1)); found=
  for p in $(members); do kill -9 "$p" 2>/dev/null; found=1; done
  [ -n "$found" ] || break
done
"""
"""Kills every process of session ``$s``, pass after pass until a scan finds none: a child forked between a
scan and its parent's death is found by the next pass (stop signals, which would freeze the tree first, are
refused in these containers: ``docker_seccomp``)."""

_KILL = (
    """
read -r s < "$1" 2>/dev/null; [ -n "$s" ] || { echo done; exit 0; }"""
    + _MEMBERS
    + _KILL_TREE
    + "echo done\n"
)

_SIGNAL = (
    """s=$1; [ -n "$s" ] || read -r s < "$3" 2>/dev/null
case $s in ""|*[!0-9]*) echo done; exit 0;; esac"""
    + _MEMBERS
    + """if [ "$2" != 9 ]; then
  i=0; while [ $i -lt 30 ]; do
    for p in $(members); do [ "$p" = "$s" ] || break 2; done; i=$((i+1)); sleep 0.1
  done
  for p in $(members); do [ "$p" = "$s" ] || kill -"$2" "$p" 2>/dev/null; done; echo done; exit 0
fi
"""
    + _KILL_TREE
    + """rm -f -- "$3"; echo done
"""
)
"""Sends signal $2 to every process of session $1 (a background process's, as the server learned it
from the wrapper's first line; when not known, the one in pid file $3) but the wrapper, which so
still reports how the command ended and lists its files (a process just started may not have
forked its command yet: up to 3 s are given it). Signal 9 is ``_KILL_TREE``'s
kill of the whole session, wrapper included, and removes the pid file."""

_READ = 'if [ "$3" -lt 0 ]; then exec tail -c +"$2" -- "$1"; fi; tail -c +"$2" -- "$1" | head -c "$3"'
"""Writes the file's bytes from offset $2 - 1, at most $3 of them (all when negative), to stdout."""

_DIGEST = """set -f; fifth() { echo "$5"; }
while [ $# -gt 1 ]; do
  f=$1 n=$2; shift 2
  [ -f "$f" ] && [ -r "$f" ] && echo ok || { echo no; continue; }
  { head -c "$n" < "$f" 2>/dev/null; head -c "$n" /dev/zero; } | head -c "$n"
  fifth $(ls -ln -- "$f" 2>/dev/null || echo - - - - -1)
done"""
"""For each (path, size) pair of its arguments: ``no``, or ``ok``, exactly size bytes (the file's first ones,
padded with zeros if it shrank) and the file's size after (-1 when it went), each line ended by a newline
(the size from ``ls``: busybox's ``wc -c`` counts in 32 bits, and would read a sparse file through)."""

_DIGEST_ARGV_BYTES = 64 << 10
"""Bytes of paths one ``_DIGEST`` helper is given at most (well inside every kernel's ARG_MAX)."""

_WRITE = """umask "$5"; parents=$1 dest=$2 t=.container-mcp-upload-$3 size=$4
end() { echo "$1"; exit "$2"; }
cd /mnt/data || end parent 3
set -f; w=/mnt/data; IFS=/
for c in $parents; do
  mkdir -- "$c" 2>/dev/null; cd -P -- "./$c" 2>/dev/null || end parent 3; w=$w/$c
  [ "$(pwd -P)" = "$w" ] || end parent 3
done
unset IFS; [ -d "$dest" ] && end directory 4
set -C; cat > "$t" 2>/dev/null || { rm -f -- "$t"; [ -w . ] && end failed 7; end unwritable 5; }
[ -f "$t" ] && [ ! -L "$t" ] && set -- $(ls -ln -- "$t") && [ "$5" = "$size" ] || { rm -f -- "$t"; end short 6; }
[ -L "$dest" ] && rm -f -- "$dest"
mv -f -T -- "$t" "$dest" 2>/dev/null || { rm -f -- "$t"; [ -d "$dest" ] && end directory 4; end failed 7; }
echo stored"""
"""Stores stdin at /mnt/data/$1/$2 ($3: a nonce for the temporary name, $4: the size sent, $5: the
umask) and says on stdout how it ended (see the module docstring), and in its status too
(``_WRITTEN``): the engine may not know the status yet when the stream closes, and Podman can lose
the last output of a process that exits at once, so the word is read first and the status asked
only when no word came. Each parent is made and entered one at a
time, relative to the directory just checked, so no directory is ever made outside /mnt/data. A
symlink at the destination is removed first (it is no file of ours; busybox's ``mv`` cannot
replace one whose target the user may not stat)."""

_WRITTEN = {0: "stored", 3: "parent", 4: "directory", 5: "unwritable", 6: "short", 7: "failed"}
"""``_WRITE``'s exit statuses, by the word it says."""

_LIST = (
    """if command -v find >/dev/null; then exec find /mnt/data -type f -print0 2>/dev/null; fi
"""
    + _WALK
    + """
walk /mnt/data"""
)
"""Lists /mnt/data's regular files, NUL-terminated (``find`` where the image has it, else the shell)."""

_MAX_LISTING = 16 << 20
"""Bytes of listing kept at most (~16k paths of the longest kind); a longer one is dropped and the
engine's change list used instead, so a command that forges the marker cannot grow the server's memory."""

_NOT_STARTED = (
    "The command did not start: every process of the container had just ended (a command killed every process "
    "it may, e.g. `kill -9 -1`). Run it again: the next command starts the container again, with its files."
)

_MAX_NEW_PATHS = 16_384
"""New paths (not recorded before) one scan looks at, at most: each costs an engine stat (~1.5 ms, and a
listing of short names under ``_MAX_LISTING`` bytes names a million), so a wrapper's listing naming more is
dropped for the change list (it names only what is there), and past it files go unrecorded."""

_OOM_COUNT = (
    "cat /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null | sed -n 's/^oom_kill //p'"
)

_DEFAULT_ENV = {"HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}

# Go's os.FileMode type bits: anything but a regular file.
_NOT_REGULAR = (1 << 31) | (1 << 27) | (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19)


@dataclass(frozen=True)
class ExecLimits:
    """Server-wide limits of every Docker container and command (see Settings for their meaning)."""

    pids_limit: int = 256
    cpus: float = 1.0
    max_output_bytes: int = 64 << 10
    kill_wait_s: float = 5.0
    """How long a killed command's stream may take to close before the call gives up on it, and how
    long the kill itself may take before the engine restarts the container instead."""
    helper_idle_s: float = 30.0
    """How long a helper (a file read, a removal) may send nothing before it is given up: the
    container's own processes can stop or block it."""
    max_processes_per_container: int = 4
    max_processes_per_session: int = 8
    process_max_lifetime_s: float = 3600.0
    process_max_output_bytes: int = 8 << 20


@dataclass
class ExecOutcome:
    exit_code: int | None
    signal: int | None
    stdout: OutputCapture
    stderr: OutputCapture
    duration_s: float
    timed_out: bool
    killed_reason: str | None
    exec_id: str | None = None
    """Set while the exit status is still to be asked (``DockerExec.settle``)."""
    listed: set[str] | None = None
    """Absolute paths of the files the wrapper found under /mnt/data after the command (None: no listing)."""

    def result(self, created: list[FileRow], changed: list[FileRow], deleted: list[str], *, listed: int) -> ExecResult:
        """The command's result, its file changes bounded as every provider's are (``exec_files``)."""
        return exec_result(
            created,
            changed,
            deleted,
            listed=listed,
            exit_code=self.exit_code,
            signal=self.signal,
            stdout=decode_output(self.stdout.getvalue()),
            stderr=decode_output(self.stderr.getvalue()),
            stdout_bytes=self.stdout.total,
            stderr_bytes=self.stderr.total,
            stdout_truncated=self.stdout.truncated,
            stderr_truncated=self.stderr.truncated,
            duration_ms=round(self.duration_s * 1000),
            timed_out=self.timed_out,
            killed_reason=self.killed_reason,
        )


def _workdir(workdir: str) -> str:
    if workdir.rstrip("/") == MOUNT:
        return MOUNT
    if not workdir.startswith(MOUNT + "/"):
        raise InvalidRequest(
            f"workdir must be /mnt/data or a directory under it; got {workdir[:200]!r}.", param="workdir"
        )
    relative_path(workdir)
    return normalize_path(workdir)


class _Sink(Protocol):
    def feed(self, chunk: bytes) -> None: ...


@dataclass
class _ToOutput:
    """One stream of a background process, fed to its ``output(fd, chunk)``."""

    fd: int
    output: Callable[[int, bytes], None]

    def feed(self, chunk: bytes) -> None:
        if chunk:
            self.output(self.fd, chunk)


class _Divert:
    """Splits a stderr stream at a marker line: before it, the command's output; after it, the listing."""

    def __init__(self, capture: _Sink, nonce: str) -> None:
        self._capture = capture
        self._start = f"\n{nonce}\n".encode()
        self._end = f"\n{nonce}.\n".encode()
        self._pending = bytearray()
        self._listing: bytearray | None = None
        self._spoiled = False

    def feed(self, chunk: bytes) -> None:
        if self._spoiled:
            return
        if self._listing is not None:
            self._listing += chunk
            if len(self._listing) > _MAX_LISTING:
                self._spoiled, self._listing = True, bytearray()
            return
        self._pending += chunk
        at = self._pending.find(self._start)
        if at >= 0:
            self._capture.feed(bytes(self._pending[:at]))
            self._listing = bytearray(self._pending[at + len(self._start) :])
            self._pending.clear()
            if len(self._listing) > _MAX_LISTING:
                self._spoiled, self._listing = True, bytearray()
        elif len(self._pending) >= len(self._start):
            keep = len(self._start) - 1
            self._capture.feed(bytes(self._pending[:-keep]))
            del self._pending[:-keep]

    def finish(self) -> set[str] | None:
        """The absolute paths listed, or None when no complete listing came (the output is all the command's)
        or it was too long to keep."""
        if self._spoiled:
            return None
        if self._listing is None or not self._listing.endswith(self._end):
            if self._listing is None:
                self._capture.feed(bytes(self._pending))
            return None
        body = bytes(self._listing[: -len(self._end)])
        if body.count(b"\0") > _MAX_NEW_PATHS:
            return None  # forged, or a flood: the change list names only real paths
        return {p.decode("utf-8", errors="replace") for p in body.split(b"\0") if p}


def _check(request: ExecRequest) -> None:
    """Refuse what the engine would misread: NUL in argv or env, '=' in a variable's name."""
    if any("\0" in a for a in request.argv):
        raise InvalidRequest("argv must not contain NUL characters.", param="command")
    for key, value in request.env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise InvalidRequest(
                f"invalid environment variable {key[:50]!r}: names are non-empty, without '=' or NUL.", param="env"
            )


class DockerExec:
    """Runs commands in engine containers as ``user`` (see the module docstring)."""

    def __init__(self, engine: Engine, *, user: str, limits: ExecLimits) -> None:
        self._engine = engine
        self._user = user
        self._limits = limits
        self._oom_seen: dict[str, int] = {}

    async def run(self, name: str, request: ExecRequest, *, progress: ProgressCallback | None) -> ExecOutcome:
        workdir = _workdir(request.workdir)
        _check(request)
        env = {**_DEFAULT_ENV, **request.env}
        limit = min(request.max_output_bytes, self._limits.max_output_bytes)
        out, err = OutputCapture(limit), OutputCapture(limit)
        nonce = "container-mcp-files-" + secrets.token_hex(16)
        divert = _Divert(err, nonce)
        argv = ["/bin/sh", "-c", _WRAP, "sh", PIDFILE, workdir, nonce, *request.argv]
        environ, stdin = [f"{k}={v}" for k, v in env.items()], request.stdin is not None
        try:
            exec_id = await self._exec_create(name, argv, env=environ, stdin=stdin)
            started = time.monotonic()
            stream = await self._engine.exec_start(exec_id)
        except ProviderError as exc:
            if not _not_running(exc):
                raise
            # The container stopped between the exec's create and its start (see ``_exec_create``).
            exec_id = await self._exec_create(name, argv, env=environ, stdin=stdin, stopped=True)
            started = time.monotonic()
            stream = await self._engine.exec_start(exec_id)
        timed_out = False
        try:
            await stream.send_stdin(request.stdin)

            async def pump() -> None:
                async for kind, payload in stream.frames():
                    (divert if kind == 2 else out).feed(payload)

            async def tick() -> None:
                while progress is not None:
                    await anyio.sleep(1.0)
                    elapsed = time.monotonic() - started
                    await progress(
                        elapsed, f"running for {elapsed:.0f}s; {out.total + err.total} bytes of output so far"
                    )

            with anyio.move_on_after(request.timeout_s) as deadline:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(tick)
                    await pump()
                    tg.cancel_scope.cancel()
            if deadline.cancelled_caught:
                timed_out = True
                with anyio.CancelScope(shield=True):
                    await self.kill(name)
                    with anyio.move_on_after(self._limits.kill_wait_s):
                        async for kind, payload in stream.frames():
                            (divert if kind == 2 else out).feed(payload)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.kill(name)
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
        duration = time.monotonic() - started
        listed = divert.finish()
        if timed_out:
            return ExecOutcome(None, 9, out, err, duration, True, "timeout", listed=listed)
        return ExecOutcome(None, None, out, err, duration, False, None, exec_id=exec_id, listed=listed)

    async def settle(self, name: str, outcome: ExecOutcome) -> ExecOutcome:
        """The outcome with the command's exit status, asked of the engine (a separate step, so the
        caller can scan the files meanwhile)."""
        if outcome.exec_id is None:
            return outcome
        out, err, duration, listed = outcome.stdout, outcome.stderr, outcome.duration_s, outcome.listed
        found = await self._engine.exec_inspect(outcome.exec_id)
        code = found.get("ExitCode")
        if found.get("Pid") == 0 and code == 126:
            raise ProviderError(_NOT_STARTED)
        if not isinstance(code, int):
            return ExecOutcome(None, 9, out, err, duration, False, None, listed=listed)
        if 128 < code < 128 + 65:
            reason = "memory_limit" if code == 137 and await self._oom_grew(name) else None
            return ExecOutcome(None, code - 128, out, err, duration, False, reason, listed=listed)
        return ExecOutcome(code, None, out, err, duration, False, None, listed=listed)

    async def _exec_create(
        self, name: str, argv: list[str], *, env: list[str] | None = None, stdin: bool = False, stopped: bool = False
    ) -> str:
        """An exec of ``argv`` as the user. A container whose main process has ended (a command killed every
        process it may signal: ``kill -9 -1``) is started again first (``stopped``: known to be so): its
        processes are gone either way, its files stay."""
        if not stopped:
            try:
                return await self._engine.exec_create(
                    name, argv, user=self._user, env=env or [], workdir="/", stdin=stdin
                )
            except ProviderError as exc:
                if not _not_running(exc):
                    raise
        log.warning("container %s: its main process had ended; starting it again", name)
        try:
            await self._engine.start(name)
            return await self._engine.exec_create(name, argv, user=self._user, env=env or [], workdir="/", stdin=stdin)
        except ProviderError as exc:
            if not _not_running(exc):
                raise
            raise ProviderError(_NOT_STARTED) from exc  # still stopping: the next try starts it

    async def kill(self, name: str) -> None:
        """Kill every process of the running command's session (see ``_KILL``).

        Where that cannot be done from inside (a fork bomb holds every pid the limit allows, so no
        helper can start), the engine restarts the container: every process goes, files stay.
        """
        done = False
        # A command can make the helper wait (its pid file a FIFO, a ptrace loop holding every new process):
        # past the deadline, the restart is what kills.
        with anyio.move_on_after(self._limits.kill_wait_s):
            try:
                done = (await self._quiet(name, ["/bin/sh", "-c", _KILL, "sh", PIDFILE])).strip() == b"done"
            except ProviderError as exc:
                if exc.status is None:
                    raise
        if not done:
            log.warning("container %s: its command could not be killed from inside; restarting it", name)
            await self._engine.restart(name)

    async def run_background(
        self,
        name: str,
        request: ExecRequest,
        *,
        pidfile: str,
        output: Callable[[int, bytes], None],
        stdin: AsyncIterable[bytes],
        started: Callable[[int, Callable[[int], None]], None],
    ) -> ExecOutcome:
        """Run ``request`` as a background process (``_BG_WRAP``) until it ends, or ``request.timeout_s``
        (its lifetime) passes and its session is killed; cancelled, it kills the session too.

        Its output goes to ``output(fd, chunk)`` as it comes, ``stdin``'s chunks up its stdin (closed
        when ``stdin`` ends). ``started(session, send)`` is called once its session id is known:
        ``send(signal)`` signals the session from now until the process ended. The outcome's exit
        status is still to be asked (``settle``) unless it timed out."""
        workdir = _workdir(request.workdir)
        _check(request)
        env = {**_DEFAULT_ENV, **request.env}
        nonce = "container-mcp-files-" + secrets.token_hex(16)
        divert = _Divert(_ToOutput(2, output), nonce)
        exec_id = await self._engine.exec_create(
            name,
            ["/bin/sh", "-c", _BG_WRAP, "sh", pidfile, workdir, nonce, *request.argv],
            user=self._user,
            env=[f"{k}={v}" for k, v in env.items()],
            workdir="/",
            stdin=True,
        )
        begun = time.monotonic()
        stream = await self._engine.exec_start(exec_id)
        session: int | None = None
        head = bytearray()

        def feed(kind: int, payload: bytes) -> None:
            nonlocal session
            if kind == 2:
                divert.feed(payload)
                return
            if session is None:
                head.extend(payload)
                line, sep, rest = bytes(head).partition(b"\n")
                if not sep:
                    return
                session = int(line) if line.isdigit() else 0
                head.clear()
                started(session, send)
                payload = rest
            if payload:
                output(1, payload)

        timed_out = False
        try:
            async with anyio.create_task_group() as signals:

                def send(sig: int) -> None:
                    signals.start_soon(self._signal_logged, name, session, sig, pidfile)

                async def pump_stdin() -> None:
                    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        async for data in stdin:
                            await stream.write(data)
                        await stream.close_stdin()

                with anyio.move_on_after(request.timeout_s) as deadline:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(pump_stdin)
                        async for kind, payload in stream.frames():
                            feed(kind, payload)
                        tg.cancel_scope.cancel()
                if deadline.cancelled_caught:
                    timed_out = True
                    with anyio.CancelScope(shield=True):
                        await self.signal(name, session, 9, pidfile)
                        with anyio.move_on_after(self._limits.kill_wait_s):
                            async for kind, payload in stream.frames():
                                feed(kind, payload)
                signals.cancel_scope.cancel()
        except BaseException:
            with anyio.CancelScope(shield=True), contextlib.suppress(ProviderError):
                await self.signal(name, session, 9, pidfile)  # the container may be gone already
            raise
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
        duration = time.monotonic() - begun
        out, err = OutputCapture(0), OutputCapture(0)
        listed = divert.finish()
        if timed_out:
            return ExecOutcome(None, 9, out, err, duration, True, "timeout", listed=listed)
        return ExecOutcome(None, None, out, err, duration, False, None, exec_id=exec_id, listed=listed)

    async def signal(self, name: str, session: int | None, sig: int, pidfile: str) -> None:
        """Send ``sig`` to every process of a background process's ``session`` (see ``_SIGNAL``; None:
        the session its ``pidfile`` names). A kill (9) that cannot be done from inside in
        ``kill_wait_s`` restarts the container instead, as ``kill`` does."""
        done = False
        argv = ["/bin/sh", "-c", _SIGNAL, "sh", "" if session is None else str(session), str(sig), pidfile]
        with anyio.move_on_after(self._limits.kill_wait_s):
            try:
                done = (await self._quiet(name, argv)).strip() == b"done"
            except ProviderError as exc:
                if exc.status is None or sig != 9:
                    raise
        if not done and sig == 9:
            log.warning("container %s: a background process could not be killed from inside; restarting it", name)
            await self._engine.restart(name)

    async def _signal_logged(self, name: str, session: int | None, sig: int, pidfile: str) -> None:
        try:
            await self.signal(name, session, sig, pidfile)
        except ProviderError as exc:
            log.warning("container %s: signal %d could not be sent: %s", name, sig, exc)

    async def remove(self, name: str, rels: list[str]) -> None:
        """Remove files under /mnt/data (relative paths) in the container."""
        for start in range(0, len(rels), 200):
            await self._quiet(name, ["rm", "-f", "--", *(f"{MOUNT}/{r}" for r in rels[start : start + 200])])

    async def write(self, name: str, rel: str, size: int, chunks: AsyncIterable[bytes], *, shared: bool) -> None:
        """Store ``size`` bytes from ``chunks`` at /mnt/data/``rel`` as the container's user (see the module
        docstring), replacing what is there; ``shared``: writable by every user of the container.

        Streams the bytes up the helper's stdin (flat memory). Raises ``InvalidPath`` when the path
        cannot be written as the user (a file or symlink where a parent directory should be, a
        directory at the path, a directory the user may not write), ``ProviderError`` when the bytes
        stored are not the bytes sent; nothing is stored then.
        """
        parent, _, base = rel.rpartition("/")
        umask = "000" if shared else "022"
        argv = ["/bin/sh", "-c", _WRITE, "sh", parent, base, secrets.token_hex(16), str(size), umask]
        exec_id = await self._engine.exec_create(name, argv, user=self._user, env=[], workdir="/", stdin=True)
        stream = await self._engine.exec_start(exec_id)
        idle = self._limits.helper_idle_s
        said = bytearray()
        failed: Exception | None = None
        try:
            with anyio.CancelScope() as waiting:
                async with anyio.create_task_group() as tg:

                    async def send() -> None:
                        nonlocal failed
                        try:
                            async for chunk in chunks:
                                with anyio.move_on_after(idle) as blocked:
                                    try:
                                        await stream.write(chunk)
                                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                                        return  # the helper ended early: what it said tells why
                                if blocked.cancelled_caught:  # the container's processes stopped the helper
                                    waiting.cancel()
                                    return
                            with contextlib.suppress(OSError):
                                await stream.close_stdin()
                        except Exception as exc:  # the source failed: the helper, cut short, stores nothing
                            failed = exc
                            waiting.cancel()
                        finally:
                            waiting.deadline = min(waiting.deadline, anyio.current_time() + idle)

                    tg.start_soon(send)
                    async for kind, payload in stream.frames():
                        if kind == 1 and len(said) < 64:
                            said += payload
                    tg.cancel_scope.cancel()  # it ended: nothing more it could take is wanted
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
        if failed is not None:
            raise failed
        stalled = waiting.cancelled_caught
        where = f"{MOUNT}/{rel}"
        outcome = bytes(said).strip().decode(errors="replace")
        if not outcome and not stalled:
            outcome = await self._written(exec_id)
        if outcome == "stored":
            return
        hint = Hint(
            mcp="Choose another path, or fix what is in the way with container_exec.",
            rest="Choose another path, or fix what is in the way with a command.",
        )
        if outcome == "parent":
            raise InvalidPath(
                f"{where} cannot be written: in the container, a file or symlink is where one of its parent "
                "directories should be, or the container's user may not make them. Nothing was stored.",
                hint=hint,
                param="path",
            )
        if outcome == "directory":
            raise InvalidPath(
                f"{where} cannot be written: in the container, a directory (or a symlink to one) is at that path. "
                "Nothing was stored.",
                hint=hint,
                param="path",
            )
        if outcome == "unwritable":
            raise InvalidPath(
                f"{where} cannot be written: its directory in the container is not writable by the container's "
                "user (a command changed its permissions; `chmod u+w` it). Nothing was stored.",
                hint=hint,
                param="path",
            )
        if stalled:
            raise ProviderError(
                f"{where} could not be written: the container's helper stalled for {idle:.0f}s (its processes "
                "stopped or blocked it). Nothing was recorded; the next command's file scan records whatever it left.",
                status=504,
            )
        if outcome in _WRITTEN.values():  # it said how it ended, and removed its temporary file
            raise ProviderError(
                f"{where} could not be written in the container ({outcome}: the upload was cut, the disk is full, "
                "or a command changed the file while it was written). Nothing was stored."
            )
        # Killed by the container's processes, before or after its rename: what it left is not known here.
        raise ProviderError(
            f"{where} could not be written in the container (its helper ended without a word: killed by the "
            "container's processes, or the upload was cut). Nothing was recorded; whatever it stored is recorded "
            "by the next command's file scan."
        )

    async def _written(self, exec_id: str) -> str:
        """``_WRITE``'s outcome by its exit status, once the engine knows it (within about a second)."""
        for _ in range(20):
            state = await self._engine.exec_inspect(exec_id)
            if not state.get("Running") and isinstance(code := state.get("ExitCode"), int):
                return _WRITTEN.get(code, "")
            await anyio.sleep(0.05)
        return ""

    async def listing(self, name: str) -> set[str]:
        """Absolute paths of /mnt/data's files, for a scan without the wrapper's listing: the engine's
        change list while it is at most ``_MAX_LISTING`` bytes, else a helper's listing as the user,
        cut at ``_MAX_LISTING`` bytes (see the module docstring). Run it once the command's processes
        are gone (killed, or ended), so what it lists stays put."""
        try:
            found = await self._engine.changes(name, max_bytes=_MAX_LISTING, under=MOUNT)
            why = f"over {_MAX_LISTING} bytes"
        except ProviderError as exc:
            if exc.status is None:
                raise
            found = None  # e.g. paths past the engine's own PATH_MAX make it fail: a command can do that
            why = exc.message[:200]
        if found is not None:
            return found
        log.warning("container %s: its change list is not usable (%s); listing /mnt/data as its user", name, why)
        exec_id = await self._engine.exec_create(
            name, ["/bin/sh", "-c", _LIST], user=self._user, env=[], workdir="/", stdin=False
        )
        stream = await self._engine.exec_start(exec_id)
        data = bytearray()
        cut = False
        try:
            await stream.send_stdin(None)
            async for kind, payload in stream.frames(idle_s=self._limits.helper_idle_s):
                if kind != 1:
                    continue
                if len(data) + len(payload) > _MAX_LISTING:
                    data += payload[: _MAX_LISTING - len(data)]
                    cut = True
                    break
                data += payload
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
        if cut:  # the last entry may be a part of a path
            log.warning(
                "container %s: its /mnt/data listing is over %d bytes; files past it go unrecorded", name, _MAX_LISTING
            )
            del data[data.rfind(b"\0") + 1 :]
        return {p.decode("utf-8", errors="replace") for p in bytes(data).split(b"\0") if p}

    async def _quiet(self, name: str, argv: list[str]) -> bytes:
        """Run a helper command to its end; returns its stdout."""
        exec_id = await self._exec_create(name, argv)
        stream = await self._engine.exec_start(exec_id)
        data = bytearray()
        try:
            await stream.send_stdin(None)
            async for kind, payload in stream.frames(idle_s=self._limits.helper_idle_s):
                if kind == 1:
                    data += payload
        finally:
            await stream.aclose()
        return bytes(data)

    async def read(self, name: str, path: str, *, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The bytes of the file at ``path`` (from ``offset``, at most ``length``), read by a helper as the
        container's user, so with its permissions: the engine's archive API reads as root and follows
        symlinked parent directories, so through it a command could have the server read a file it may
        not. Raises ``ProviderError`` (status 404) when the helper cannot read it."""
        if length == 0:
            return
        argv = ["/bin/sh", "-c", _READ, "sh", path, str(offset + 1), str(-1 if length is None else length)]
        exec_id = await self._exec_create(name, argv)
        stream = await self._engine.exec_start(exec_id)
        try:
            await stream.send_stdin(None)
            async for kind, payload in stream.frames(idle_s=self._limits.helper_idle_s):
                if kind != 1:
                    raise ProviderError(
                        f"{path} cannot be read: {payload.decode(errors='replace').strip()[:200]}", status=404
                    )
                yield payload
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def digests(self, name: str, files: list[tuple[str, int]]) -> dict[str, str]:
        """sha256 (hex) of each file's first ``size`` bytes, read as the container's user by a few helpers
        (one per ~64 KiB of paths: a helper per file costs ~75 ms, and a command can make thousands of
        files); a file the user cannot read, or that went or shrank meanwhile, is left out. Never more
        than ``size`` bytes of a file are read (a process left running can grow it without end)."""
        found: dict[str, str] = {}
        start = 0
        while start < len(files):
            end, argv_bytes = start, 0
            while end < len(files) and (end == start or argv_bytes + len(files[end][0]) < _DIGEST_ARGV_BYTES):
                argv_bytes += len(files[end][0].encode()) + 24
                end += 1
            try:
                await self._digest_batch(name, files[start:end], found)
            except ProviderError as exc:
                if exc.status is None:
                    raise
                # stalled (a FIFO swapped in, its processes stopped it): the rest of the batch goes unrecorded
                log.warning("container %s: a digest helper failed (%s)", name, exc.message[:200])
            start = end
        return found

    async def _digest_batch(self, name: str, files: list[tuple[str, int]], found: dict[str, str]) -> None:
        argv = ["/bin/sh", "-c", _DIGEST, "sh", *(x for path, size in files for x in (path, str(size)))]
        exec_id = await self._engine.exec_create(name, argv, user=self._user, env=[], workdir="/", stdin=False)
        stream = await self._engine.exec_start(exec_id)
        pending = iter(files)
        buf = bytearray()
        state, left, sha, current = "head", 0, hashlib.sha256(), ("", 0)
        try:
            await stream.send_stdin(None)
            async for kind, payload in stream.frames(idle_s=self._limits.helper_idle_s):
                if kind != 1:
                    continue
                buf += payload
                while True:
                    if state == "body":
                        take = min(left, len(buf))
                        sha.update(buf[:take])
                        del buf[:take]
                        left -= take
                        if left:
                            break
                        state = "tail"
                    at = buf.find(b"\n")
                    if at < 0:
                        if len(buf) > 64:  # not the helper's words: another process wrote into its output
                            return
                        break
                    word = bytes(buf[:at])
                    del buf[: at + 1]
                    if state == "tail":
                        if word.isdigit() and int(word) >= current[1]:
                            found[current[0]] = sha.hexdigest()
                        state = "head"
                        continue
                    current = next(pending, ("", -1))
                    if current[1] < 0 or word not in (b"ok", b"no"):
                        return
                    if word == b"ok":
                        state, left, sha = "body", current[1], hashlib.sha256()
        finally:
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    async def _oom_grew(self, name: str) -> bool:
        try:
            text = (await self._quiet(name, ["/bin/sh", "-c", _OOM_COUNT])).decode(errors="replace").split()
        except ProviderError:
            return False
        count = int(text[0]) if text and text[0].isdigit() else 0
        grew = count > self._oom_seen.get(name, 0)
        self._oom_seen[name] = count
        return grew


def _not_running(exc: ProviderError) -> bool:
    """Whether the engine refused an exec because the container is not running (Docker: 409 "is not
    running"; Podman: "can only create exec sessions on running containers")."""
    return exc.status in (409, 500) and ("not running" in exc.message or "on running containers" in exc.message)


def _mtime_ns(text: str) -> int:
    """Nanoseconds of an RFC 3339 time as the engine writes it (``2026-01-02T03:04:05.123456789Z``)."""
    head, _, rest = text.partition(".")
    if not rest:
        return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()) * 10**9
    digits = "".join(c for c in rest if c.isdigit())
    zone = rest[len(digits) :]
    seconds = datetime.fromisoformat(head + (zone.replace("Z", "+00:00") or "+00:00")).timestamp()
    return int(seconds) * 10**9 + int((digits + "000000000")[:9])


@dataclass
class FileScan:
    """What /mnt/data holds now, compared with the rows before (relative paths)."""

    seen: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Every regular file now: (size, mtime_ns)."""
    created: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @staticmethod
    def mtime_ns(stat: Mapping[str, Any]) -> int:
        return _mtime_ns(str(stat.get("mtime", "1970-01-01T00:00:00Z")))

    def changes(self, before: Mapping[str, FileRow]) -> FileChanges:
        sizes = [self.seen[p][0] for p in (*self.created, *self.changed)]
        delta = (
            sum(self.seen[p][0] for p in self.created)
            + sum(self.seen[p][0] - before[p].bytes for p in self.changed)
            - sum(before[p].bytes for p in self.deleted)
        )
        return FileChanges(
            created=[f"{MOUNT}/{p}" for p in self.created],
            changed=[f"{MOUNT}/{p}" for p in self.changed],
            deleted=[f"{MOUNT}/{p}" for p in self.deleted],
            largest_file_bytes=max(sizes, default=0),
            files_delta=len(self.created) - len(self.deleted),
            bytes_delta=delta,
            files_after=len(self.seen),
            bytes_after=sum(s for s, _ in self.seen.values()),
        )


def _candidate(path: str) -> str | None:
    if not path.startswith(MOUNT + "/"):
        return None
    try:
        return relative_path(path)
    except InvalidPath:
        return None


async def scan_files(engine: Engine, name: str, before: Mapping[str, FileRow], listed: set[str]) -> FileScan:
    """Compare the container's /mnt/data with ``before`` (see the module docstring). ``listed``: absolute
    paths where new files may be (the wrapper's listing, or ``DockerExec.listing``'s)."""
    new = sorted({rel for path in listed if (rel := _candidate(path))} - set(before))
    if len(new) > _MAX_NEW_PATHS:
        log.warning(
            "container %s: %d new paths under /mnt/data; past the first %d they go unrecorded",
            name,
            len(new),
            _MAX_NEW_PATHS,
        )
    candidates = sorted([*new[:_MAX_NEW_PATHS], *before])
    stats: dict[str, dict[str, Any] | None] = {}
    limiter = anyio.CapacityLimiter(16)

    async def stat(rel: str) -> None:
        async with limiter:
            try:
                stats[rel] = await engine.stat_path(name, f"{MOUNT}/{rel}")
            except ProviderError as exc:
                if exc.status is None:
                    raise
                stats[rel] = None  # e.g. a parent that became a file: the path names nothing

    async with anyio.create_task_group() as tg:
        for rel in candidates:
            tg.start_soon(stat, rel)
    scan = FileScan()
    for rel in candidates:
        st = stats.get(rel)
        if st is not None and not int(st.get("mode", 0)) & _NOT_REGULAR:
            size = int(st.get("size", 0))
            mtime = FileScan.mtime_ns(st)
            if not math.isfinite(size):
                continue
            scan.seen[rel] = (size, mtime)
            old = before.get(rel)
            if old is None:
                scan.created.append(rel)
            elif old.bytes != size or old.mtime_ns != mtime:
                scan.changed.append(rel)
        elif rel in before:
            scan.deleted.append(rel)
    return scan
