"""One app's observer: the process's audit log plus that app's metrics, fed by the same records."""

from __future__ import annotations

import time

from .audit import SESSION_DIGEST_HEX, AuditLog, AuditRecord, Surface, principal_label
from .clock import Clock, system_clock
from .ledger.base import Ledger
from .metrics import Metrics

__all__ = ["Observer"]


class Observer:
    """Starts and finishes the audit records of one app (an MCP server or the REST API).

    ``log`` is shared by every app of the process; ``metrics`` is this app's own. Session keys are
    hashed with the ledger's keyed digest (``Ledger.digest``). ``clock`` stamps the
    records' ``time``; durations are measured on the monotonic clock.
    """

    def __init__(self, log: AuditLog, store: Ledger, *, clock: Clock = system_clock) -> None:
        self.log = log
        self.metrics = Metrics(store)
        self._store = store
        self._clock = clock

    def start(self, surface: Surface, operation: str, *, transport: str | None = None) -> AuditRecord:
        """A record of a call starting now; ``identify`` it once the caller is known."""
        return AuditRecord(
            surface=surface, operation=operation, time=self._clock(), transport=transport, started=time.perf_counter()
        )

    def identify(self, record: AuditRecord, session_key: str | None) -> None:
        """Name the caller of ``record``: its principal label and hashed session (None: not authenticated)."""
        record.principal = principal_label(session_key)
        record.session = self._store.digest(session_key)[:SESSION_DIGEST_HEX] if session_key is not None else None

    def finish(self, record: AuditRecord) -> None:
        """The call of ``record`` is over: time it, write it to the audit log, count it."""
        record.duration_ms = (time.perf_counter() - record.started) * 1000
        self.log.write(record)
        self.metrics.observe(record)
