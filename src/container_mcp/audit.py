"""The operator's audit trail: one JSON line per MCP tool call or resource read, and per REST request.

A boundary (``server/observe.py`` for MCP, ``api/observe.py`` for REST) opens one ``AuditRecord``
per call with ``recording(record)``; whatever runs inside the call fills in what only it knows
through the ``note_*`` functions (the ``ContainerService`` notes container and file ids, file bytes
and exit codes; the boundary notes the error). The boundary then finishes the record and hands it
to the ``AuditLog`` (and to the metrics). Outside a recording the ``note_*`` functions do nothing.

What a record never holds: file contents, commands or their environment, tokens, and session keys
in clear. The principal is a label (``principal_label``); the session is the first 16 hex digits of
the session key's HMAC under the data dir's ``session.key``, the digest the session store keeps as
the owner (``Ledger.digest``), so records of one session can be told apart and matched with
the store without revealing the key (a live ``Mcp-Session-Id`` is a credential).

``CONTAINER_MCP_AUDIT`` chooses where records go: ``off`` (the default), ``stderr``, or an absolute
file path, opened for appending (created 0600; an existing file must be a regular file of this user
that no one else can read), one line written per record (line-buffered, not fsynced).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TextIO

from pydantic import ValidationError

from .errors import ContainerMCPError, UnsafeConfiguration

__all__ = [
    "SESSION_DIGEST_HEX",
    "AuditLog",
    "AuditRecord",
    "Surface",
    "cause",
    "check_audit_target",
    "error_type",
    "note_bytes_in",
    "note_bytes_out",
    "note_container",
    "note_error",
    "note_exec",
    "note_file",
    "open_audit_log",
    "principal_label",
    "recording",
]

log = logging.getLogger("container_mcp.audit")

Outcome = Literal["ok", "error"]
Surface = Literal["mcp", "rest"]

SESSION_DIGEST_HEX = 16
"""Hex digits of the session key's HMAC kept in a record: enough to tell sessions apart."""


@dataclass
class AuditRecord:
    """One call, as the audit log and the metrics see it. ``time`` is when it started (Unix seconds)."""

    surface: Surface
    operation: str
    """The tool name (``container_exec``), ``resources/read:<kind>``, or the REST route template
    (``POST /v1/containers/{container_id}/files``)."""
    time: float
    principal: str = "anonymous"
    session: str | None = None
    transport: str | None = None
    container_id: str | None = None
    file_id: str | None = None
    bytes_in: int = 0
    """File content stored by the call."""
    bytes_out: int = 0
    """File content read out by the call."""
    exit_code: int | None = None
    duration_ms: float = 0.0
    outcome: Outcome = "ok"
    error_type: str | None = None
    status: int | None = None
    """The HTTP status (REST only)."""
    request_id: str | None = None
    """The ``x-request-id`` (REST only)."""
    exec_seconds: float | None = field(default=None, repr=False)
    """How long a command ran (metrics only)."""
    error: BaseException | None = field(default=None, repr=False)
    """The error the call failed with, when one was raised (metrics only)."""
    started: float = field(default=0.0, repr=False)
    """``time.perf_counter()`` at the start (for ``duration_ms``)."""

    def fail(self, kind: str) -> None:
        self.outcome = "error"
        self.error_type = kind

    def to_json(self) -> str:
        """The record as one JSON line (no newline); every field present, ``null`` when it does not apply."""
        stamp = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return json.dumps(
            {
                "time": stamp,
                "surface": self.surface,
                "transport": self.transport,
                "principal": self.principal,
                "session": self.session,
                "operation": self.operation,
                "container_id": self.container_id,
                "file_id": self.file_id,
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "exit_code": self.exit_code,
                "duration_ms": round(self.duration_ms, 1),
                "outcome": self.outcome,
                "error_type": self.error_type,
                "status": self.status,
                "request_id": self.request_id,
            },
            separators=(",", ":"),
        )


_current: ContextVar[AuditRecord | None] = ContextVar("container_mcp_audit_record", default=None)


@contextmanager
def recording(record: AuditRecord) -> Iterator[AuditRecord]:
    """Make ``record`` the one the ``note_*`` functions fill in, for the block (and tasks it starts)."""
    token = _current.set(record)
    try:
        yield record
    finally:
        _current.reset(token)


def note_container(container_id: str) -> None:
    if (record := _current.get()) is not None:
        record.container_id = container_id


def note_file(file_id: str) -> None:
    if (record := _current.get()) is not None:
        record.file_id = file_id


def note_bytes_in(n: int) -> None:
    if (record := _current.get()) is not None:
        record.bytes_in += n


def note_bytes_out(n: int) -> None:
    if (record := _current.get()) is not None:
        record.bytes_out += n


def note_exec(exit_code: int | None, seconds: float) -> None:
    if (record := _current.get()) is not None:
        record.exit_code = exit_code
        record.exec_seconds = seconds


def note_error(exc: BaseException, kind: str | None = None) -> None:
    """Record ``exc`` as the error of the current call, of type ``kind`` (default ``error_type(exc)``).
    The first error noted wins: it is the nearest to the cause."""
    if (record := _current.get()) is not None and record.error is None:
        record.error = exc
        record.fail(kind or error_type(exc))


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def cause(exc: BaseException) -> ContainerMCPError | None:
    """The ``ContainerMCPError`` behind ``exc`` (``exc`` itself, or what it was raised from), if any."""
    return next((e for e in _chain(exc) if isinstance(e, ContainerMCPError)), None)


def error_type(exc: BaseException) -> str:
    """The error type a record names: the ``ContainerMCPError`` subclass behind ``exc``;
    ``InvalidRequest`` for arguments the SDK's schema validation refused; ``InternalError`` otherwise."""
    if (known := cause(exc)) is not None:
        return type(known).__name__
    if any(isinstance(e, ValidationError) for e in _chain(exc)):
        return "InvalidRequest"
    return "InternalError"


def principal_label(session_key: str | None) -> str:
    """Who called, for a record: never a token or a session key in clear.

    ``apikey:<first 8 hex of the key's digest>``, ``oauth:<issuer>:<subject>``, ``stdio``, or
    ``anonymous`` (no auth: the REST API's one owner, or an MCP session id); ``unauthenticated`` when
    the request was refused before it was authenticated (``None``).
    """
    if session_key is None:
        return "unauthenticated"
    kind, _, rest = session_key.partition(":")
    if kind == "apikey" and rest != "anonymous":
        return f"apikey:{rest[:8]}"
    if kind == "oauth":
        return session_key
    if kind == "stdio":
        return "stdio"
    return "anonymous"


class AuditLog:
    """Writes finished records as JSON lines to a text stream; ``AuditLog(None)`` writes nothing."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def write(self, record: AuditRecord) -> None:
        """Write ``record``; a failed write is logged (once until writes succeed again), never raised:
        a full disk must not stop the calls being audited."""
        if self._stream is None:
            return
        try:
            self._stream.write(record.to_json() + "\n")
            self._stream.flush()
        except (OSError, ValueError) as exc:
            if not self._failing:
                log.error("could not write an audit record (%s); records are lost until writes succeed", exc)
            self._failing = True
        else:
            self._failing = False


def check_audit_target(value: str) -> str:
    """``off``, ``stderr`` or an absolute path (``ValueError`` naming the choices otherwise)."""
    if value in ("off", "stderr") or Path(value).is_absolute():
        return value
    raise ValueError(
        f"audit must be 'off', 'stderr' or an absolute file path; got {value!r}. "
        "Give a path such as /var/log/container-mcp/audit.jsonl."
    )


def _open_file(path: Path) -> TextIO:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UnsafeConfiguration(
            f"CONTAINER_MCP_AUDIT: cannot open the audit file {path}: {exc.strerror}. Create its directory, "
            "or name a regular file (not a symlink) this user may write."
        ) from None
    st = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "it is not a regular file"
    elif st.st_uid != os.geteuid():
        problem = f"it belongs to uid {st.st_uid}, not to this server's user"
    elif stat.S_IMODE(st.st_mode) & 0o077:
        problem = f"other users may access it (mode {stat.filemode(st.st_mode)})"
    if problem is not None:
        os.close(fd)
        raise UnsafeConfiguration(
            f"CONTAINER_MCP_AUDIT: refusing the audit file {path}: {problem}. Audit records name who did what; "
            "use a file of this user with mode 0600 (chmod 600), or a new path (it is created 0600)."
        )
    return os.fdopen(fd, "a", buffering=1, encoding="utf-8")


@asynccontextmanager
async def open_audit_log(target: str, *, stderr: Callable[[], TextIO] = lambda: sys.stderr) -> AsyncIterator[AuditLog]:
    """The process's audit log for ``target`` (``Settings.audit``), closed when the block ends.

    Raises ``UnsafeConfiguration`` (before anything is written) for a file that cannot be opened or is
    not private to this user. Async only to sit in the ``async with`` that opens the service.
    """
    if target == "off":
        yield AuditLog(None)
    elif target == "stderr":
        yield AuditLog(stderr())
    else:
        with _open_file(Path(target)) as stream:
            yield AuditLog(stream)
