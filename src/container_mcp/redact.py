"""Session ids never reach the logs: a filter on the loggers that print them rewrites each one.

Without authentication an MCP session id (``Mcp-Session-Id``, SSE ``session_id``) is the caller's
only credential (session key ``http:<id>`` / ``sse:<id>``); with it, it still names a live session.
The SDK and the libraries under it log them in full: ``mcp.server.streamable_http_manager`` on
creation (INFO) and on a replay by another token (WARNING), ``mcp.server.sse`` likewise, the SSE
transport's disconnect line on the root logger, sse-starlette's chunk dump (DEBUG), and uvicorn's
access log prints each SSE POST's ``?session_id=...`` query.

``install()`` puts one ``logging.Filter`` on each of those loggers (a logger's filters see the
records created on it, whatever handlers the operator configured). The filter replaces anything
shaped like a session id — a run of exactly 32 hex digits, dashed or not, any case, as ``uuid.UUID``
would parse it — and the whole value of a ``session_id=`` query parameter with ``sid#`` and the
first 8 hex digits of its SHA-256: log lines about one session can still be told apart and matched,
but not replayed.
"""

from __future__ import annotations

import hashlib
import logging
import re
from uuid import UUID

__all__ = ["SESSION_ID_LOGGERS", "SessionIdRedactor", "install", "redact"]

SESSION_ID_LOGGERS = (
    "mcp.server.streamable_http_manager",
    "mcp.server.streamable_http",
    "mcp.server.sse",
    "sse_starlette.sse",
    "uvicorn.access",
    "",  # the root logger: the SDK's SSE transport logs a disconnect with logging.debug
)

_H = "[0-9A-Fa-f]"
# Whole runs only: a longer hex run (a container id's 48 digits) is not a session id.
_SESSION_ID = re.compile(rf"(?<![0-9A-Fa-f]){_H}{{8}}-?{_H}{{4}}-?{_H}{{4}}-?{_H}{{4}}-?{_H}{{12}}(?![0-9A-Fa-f])")
_QUERY_VALUE = re.compile(r"(?i)(session_id=)[^&\s\"'\\]*")


def _fingerprint(value: str) -> str:
    canonical = re.sub(r"[^0-9a-f]", "", value.lower())
    return "sid#" + hashlib.sha256(canonical.encode()).hexdigest()[:8]


def redact(text: str) -> str:
    """``text`` with every session id (and every ``session_id=`` query value) replaced by its fingerprint."""
    text = _QUERY_VALUE.sub(lambda m: m.group(1) + _fingerprint(m.group(0)[len(m.group(1)) :]), text)
    return _SESSION_ID.sub(lambda m: _fingerprint(m.group(0)), text)


class SessionIdRedactor(logging.Filter):
    """Rewrites a record's message and its string (and UUID) arguments with ``redact``; drops nothing.

    Arguments stay a tuple of the same length, so a formatter that unpacks them (uvicorn's access
    formatter takes five) still works.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redact_arg(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _redact_arg(v) for k, v in record.args.items()}
        return True


def _redact_arg(value: object) -> object:
    if isinstance(value, UUID):
        return _fingerprint(value.hex)
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(str(value))  # what %s would have printed
    return value


def install() -> None:
    """Put the redactor on every logger of ``SESSION_ID_LOGGERS``, once (calling again adds nothing)."""
    for name in SESSION_ID_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, SessionIdRedactor) for f in logger.filters):
            logger.addFilter(SessionIdRedactor())
