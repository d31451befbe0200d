"""Prometheus metrics of one HTTP app (an MCP transport or ``container-mcp api``), served at ``/metrics``.

Each app has its own ``CollectorRegistry`` (never the process-global one), fed by the audit
records its boundary finishes (``Metrics.observe``); the gauges are read from the ledger at
scrape time (one query, awaited before encoding), without asking the provider anything.

Every label takes values from a fixed set: tool names, route templates, the ``CONTAINER_MCP_*``
limits. A caller's made-up tool name or path is counted as ``unknown`` / ``unmatched``, so no
request can grow the number of series.

=============================================  =========  ======================================
name                                           type       labels
=============================================  =========  ======================================
``container_mcp_calls_total``                  counter    surface, operation, outcome
``container_mcp_call_duration_seconds``        histogram  surface, operation
``container_mcp_file_bytes_total``             counter    surface, direction (in, out)
``container_mcp_exec_seconds``                 histogram  (time commands ran)
``container_mcp_quota_refusals_total``         counter    surface, kind (the limit, e.g.
                                                          ``max_containers``)
``container_mcp_rate_limit_refusals_total``    counter    surface, kind (``max_calls_per_minute``,
                                                          ``max_inline_bytes_in_flight``)
``container_mcp_live_containers``              gauge      (live containers in the ledger)
``container_mcp_stored_bytes``                 gauge      (bytes in those containers)
``container_mcp_stored_files``                 gauge      (files in those containers)
=============================================  =========  ======================================
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from .audit import AuditRecord, cause
from .errors import QuotaExceeded, RateLimited
from .ledger.base import Ledger, Usage

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_EXEC_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class _StoreGauges(Collector):
    """Live containers, stored files and bytes, as the ledger said at the scrape (``Metrics.endpoint``)."""

    def __init__(self) -> None:
        self.totals = Usage(containers=0, files=0, bytes=0, calls_last_minute=0)

    def collect(self) -> Iterable[Metric]:
        totals = self.totals
        yield GaugeMetricFamily(
            "container_mcp_live_containers", "Live (not expired) containers in the session store.", totals.containers
        )
        yield GaugeMetricFamily("container_mcp_stored_files", "Files in the live containers.", totals.files)
        yield GaugeMetricFamily("container_mcp_stored_bytes", "Bytes stored in the live containers.", totals.bytes)


def _kind(limit_name: str) -> str:
    return limit_name.removeprefix("CONTAINER_MCP_").lower()


class Metrics:
    """The metrics of one app over the session store ``store`` (see the module docstring)."""

    def __init__(self, store: Ledger) -> None:
        self._store = store
        self._gauges = _StoreGauges()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.calls = Counter(
            "container_mcp_calls", "Tool calls, resource reads and REST requests.", ["surface", "operation", "outcome"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "container_mcp_call_duration_seconds", "Time to answer a call.", ["surface", "operation"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.file_bytes = Counter(
            "container_mcp_file_bytes", "File content stored (in) and read out (out).", ["surface", "direction"],
            registry=r,
        )  # fmt: skip
        self.exec_seconds = Histogram(
            "container_mcp_exec_seconds", "Time commands ran in containers.", buckets=_EXEC_BUCKETS, registry=r
        )
        self.quota_refusals = Counter(
            "container_mcp_quota_refusals", "Calls refused by a per-session quota.", ["surface", "kind"], registry=r
        )
        self.rate_limit_refusals = Counter(
            "container_mcp_rate_limit_refusals", "Calls refused by a rate limit (retry later).", ["surface", "kind"],
            registry=r,
        )  # fmt: skip
        r.register(self._gauges)

    def observe(self, record: AuditRecord) -> None:
        """Count the finished call ``record``."""
        self.calls.labels(record.surface, record.operation, record.outcome).inc()
        self.latency.labels(record.surface, record.operation).observe(record.duration_ms / 1000)
        if record.bytes_in:
            self.file_bytes.labels(record.surface, "in").inc(record.bytes_in)
        if record.bytes_out:
            self.file_bytes.labels(record.surface, "out").inc(record.bytes_out)
        if record.exec_seconds is not None:
            self.exec_seconds.observe(record.exec_seconds)
        refusal = cause(record.error) if record.error is not None else None
        if isinstance(refusal, RateLimited):
            self.rate_limit_refusals.labels(record.surface, _kind(refusal.limit_name)).inc()
        elif isinstance(refusal, QuotaExceeded):
            self.quota_refusals.labels(record.surface, _kind(refusal.limit_name)).inc()

    async def endpoint(self, request: Request) -> Response:
        """``GET /metrics``: the Prometheus text format (OpenMetrics when the scraper asks for it)."""
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        self._gauges.totals = await self._store.totals()
        return Response(encoder(self.registry), headers={"content-type": content_type})
