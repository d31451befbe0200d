"""Audit records and /metrics of the MCP transports, from real calls of the official client over HTTP.

Before: no record of who did what, and no metrics endpoint at all. Each test serves the app the CLI
builds (``create_server`` + ``http_app``) on uvicorn at 127.0.0.1:0, makes real calls, then reads
the captured audit lines and scrapes ``/metrics``, parsed with prometheus_client's own parser.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, MCPError
from prometheus_client.parser import text_string_to_metric_families

from container_mcp.audit import AuditLog
from container_mcp.auth import BearerVerifier, owner_for_key
from container_mcp.clock import ManualClock
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.providers.local import LocalProvider
from container_mcp.providers.local_exec import ExecLimits
from container_mcp.runtime import limits_from
from container_mcp.server.app import create_server
from container_mcp.server.http import HttpTransport, http_app
from container_mcp.service import ContainerService
from container_mcp.settings import Settings
from tests.live import serve

from ..calls import call as ok
from ..envs import clean_env
from ..processes import console_script, started
from .bearer import Seen, http_client, sse

pytestmark = pytest.mark.anyio

KEY = "mcp-audit-key-5e6f7a8b9c0d"
OTHER = "mcp-audit-key-other-123456"
SECRET_TEXT = "top-secret-file-content-4242"
MISSING_FILE = "cfile_" + "0" * 32


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape, by (sample name, labels)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@dataclass
class Served:
    url: str
    audit: io.StringIO
    service: ContainerService


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.isolated(data_dir=tmp_path / "data", api_keys=[KEY, OTHER], max_containers=2)


async def _serve(service: ContainerService, settings: Settings, transport: HttpTransport) -> AsyncIterator[Served]:
    audit = io.StringIO()
    mcp = create_server(service, settings, verifier=BearerVerifier.from_keys(settings), audit_log=AuditLog(audit))
    async with serve(http_app(mcp, settings, transport, "127.0.0.1")) as url:
        yield Served(url, audit, service)


@pytest.fixture
async def served(service: ContainerService, settings: Settings) -> AsyncIterator[Served]:
    async for s in _serve(service, settings, "streamable-http"):
        yield s


async def scrape(url: str, token: str | None = KEY, **headers: str) -> httpx2.Response:
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient() as http:
        return await http.get(url + "/metrics", headers=headers)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_tool_calls_are_audited_and_counted(served: Served, mode: str) -> None:
    seen = Seen()
    async with http_client(served.url + "/mcp", KEY, mode, seen) as client:
        c = await ok(client, "container_create", name="audited")
        f = await ok(client, "file_create", container_id=c["id"], path="notes.txt", text=SECRET_TEXT)
        chunk = await ok(client, "file_read", container_id=c["id"], file_id=f["id"])
        assert chunk["content"] == SECRET_TEXT
        read = await client.read_resource(f"container://{c['id']}/files/{f['id']}")
        assert read.contents
        await ok(client, "container_create", name="second")
        over = await client.call_tool("container_create", {"name": "third"})  # max_containers=2
        assert over.is_error
        missing = await client.call_tool("container_retrieve", {"container_id": "cntr_doesnotexist"})
        assert missing.is_error
        unknown = await client.call_tool("no_such_tool_" + "x" * 40, {})
        assert unknown.is_error

    lines = records(served.audit)
    ops = [r["operation"] for r in lines]
    assert ops == [
        "container_create",
        "file_create",
        "file_read",
        "resources/read:file",
        "container_create",
        "container_create",
        "container_retrieve",
        "unknown",
    ]
    owner = owner_for_key(KEY)
    for r in lines:
        assert r["surface"] == "mcp" and r["transport"] == "streamable-http"
        assert r["principal"] == "apikey:" + owner.removeprefix("apikey:")[:8]
        assert r["session"] == served.service.ledger.digest(owner)[:16]
        assert r["time"].endswith("Z") and r["duration_ms"] >= 0
    created, uploaded, read_tool, read_resource, _, refused, not_found, bogus = lines
    assert created["container_id"] == c["id"] and created["outcome"] == "ok" and created["error_type"] is None
    assert uploaded["file_id"] == f["id"] and uploaded["bytes_in"] == len(SECRET_TEXT)
    assert read_tool["bytes_out"] == len(SECRET_TEXT) and read_tool["file_id"] == f["id"]
    assert read_resource["bytes_out"] == len(SECRET_TEXT) and read_resource["container_id"] == c["id"]
    assert (refused["outcome"], refused["error_type"]) == ("error", "QuotaExceeded")
    assert (not_found["outcome"], not_found["error_type"]) == ("error", "ContainerNotFound")
    assert not_found["container_id"] == "cntr_doesnotexist"
    assert (bogus["outcome"], bogus["error_type"]) == ("error", "InvalidRequest")

    # Never a token, a session id in clear, or file content.
    text = served.audit.getvalue()
    assert KEY not in text and SECRET_TEXT not in text and owner not in text
    sid = seen.header("mcp-session-id")
    assert (sid is not None) == (mode == "legacy")
    if sid is not None:
        assert sid not in text

    scraped = samples((await scrape(served.url)).text)
    calls = "container_mcp_calls_total"
    assert value(scraped, calls, surface="mcp", operation="container_create", outcome="ok") == 2
    assert value(scraped, calls, surface="mcp", operation="container_create", outcome="error") == 1
    assert value(scraped, calls, surface="mcp", operation="container_retrieve", outcome="error") == 1
    assert value(scraped, calls, surface="mcp", operation="unknown", outcome="error") == 1
    assert value(scraped, calls, surface="mcp", operation="resources/read:file", outcome="ok") == 1
    assert value(scraped, "container_mcp_quota_refusals_total", surface="mcp", kind="max_containers") == 1
    assert value(scraped, "container_mcp_file_bytes_total", surface="mcp", direction="in") == len(SECRET_TEXT)
    assert value(scraped, "container_mcp_file_bytes_total", surface="mcp", direction="out") == 2 * len(SECRET_TEXT)
    latency = "container_mcp_call_duration_seconds_count"
    assert value(scraped, latency, surface="mcp", operation="container_create") == 3
    assert value(scraped, "container_mcp_live_containers") == 2
    assert value(scraped, "container_mcp_stored_files") == 1
    assert value(scraped, "container_mcp_stored_bytes") == len(SECRET_TEXT)
    # A made-up tool name is no label of its own.
    assert not any("no_such_tool" in str(labels) for _, labels in scraped)


async def test_rate_limit_refusals_are_counted(local_provider: LocalProvider, tmp_path: Path) -> None:
    settings = Settings.isolated(data_dir=tmp_path / "data", api_keys=[KEY], max_calls_per_minute=2)
    service = ContainerService(local_provider, SqliteLedger(), limits_from(settings), clock=ManualClock())
    async for s in _serve(service, settings, "streamable-http"):
        async with http_client(s.url + "/mcp", KEY, "auto") as client:
            await ok(client, "container_list")
            await ok(client, "container_list")
            limited = await client.call_tool("container_list", {})
            assert limited.is_error
        assert records(s.audit)[-1]["error_type"] == "RateLimited"
        scraped = samples((await scrape(s.url)).text)
        assert (
            value(scraped, "container_mcp_rate_limit_refusals_total", surface="mcp", kind="max_calls_per_minute") == 1
        )
        assert value(scraped, "container_mcp_quota_refusals_total", surface="mcp", kind="max_calls_per_minute") == 0


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_metrics_need_the_same_bearer_and_host_as_mcp(
    service: ContainerService, settings: Settings, transport: HttpTransport
) -> None:
    """Before: there was no /metrics; an SDK custom route would have served it to anyone."""
    async for s in _serve(service, settings, transport):
        for token in (None, "wrong-token", KEY + "x"):
            refused = await scrape(s.url, token)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert "container_mcp" not in refused.text
        assert (await scrape(s.url, KEY, host="rebind.evil.example")).status_code == 421
        assert (await scrape(s.url, KEY, origin="https://evil.example")).status_code == 403
        good = await scrape(s.url, OTHER)
        assert good.status_code == 200
        assert good.headers["content-type"].startswith("text/plain")
        assert {f.name for f in text_string_to_metric_families(good.text)} >= {
            "container_mcp_calls",
            "container_mcp_call_duration_seconds",
            "container_mcp_live_containers",
            "container_mcp_stored_bytes",
            "container_mcp_exec_seconds",
        }
        # Scrapes are not calls: nothing audited.
        assert s.audit.getvalue() == ""


async def test_sse_calls_are_audited_with_their_transport(service: ContainerService, settings: Settings) -> None:
    sessions: list[str] = []
    async for s in _serve(service, settings, "sse"):
        async with sse(s.url + "/sse", KEY, on_session=sessions.append) as client:
            await ok(client, "container_create", name="over-sse")
        (record,) = records(s.audit)
        assert (record["transport"], record["operation"], record["outcome"]) == ("sse", "container_create", "ok")
        assert sessions and sessions[0] not in s.audit.getvalue()
        scraped = samples((await scrape(s.url)).text)
        assert (
            value(scraped, "container_mcp_calls_total", surface="mcp", operation="container_create", outcome="ok") == 1
        )


async def test_without_auth_metrics_are_open_on_loopback_and_callers_are_anonymous(
    service: ContainerService, tmp_path: Path
) -> None:
    settings = Settings.isolated(data_dir=tmp_path / "data")
    async for s in _serve(service, settings, "streamable-http"):
        async with Client(s.url + "/mcp", mode="legacy") as client:
            await ok(client, "container_list")
        (record,) = records(s.audit)
        assert record["principal"] == "anonymous" and record["session"] is not None
        assert (await scrape(s.url, None)).status_code == 200


async def test_stdio_callers_are_the_stdio_principal(service: ContainerService, settings: Settings) -> None:
    audit = io.StringIO()
    async with Client(create_server(service, settings, audit_log=AuditLog(audit))) as client:
        await ok(client, "session_usage")
        c = await ok(client, "container_create", name="c")
        with pytest.raises(MCPError):
            await client.read_resource(f"container://{c['id']}/files/{MISSING_FILE}")
    usage, _, missing = records(audit)
    assert (usage["principal"], usage["transport"], usage["operation"]) == ("stdio", "stdio", "session_usage")
    assert usage["session"] == service.ledger.digest(f"stdio:{settings.stdio_session_key}")[:16]
    # A failed resource read reaches the middleware as the raised protocol error; its cause is named.
    assert (missing["operation"], missing["outcome"], missing["error_type"]) == (
        "resources/read:file",
        "error",
        "FileNotFound",
    )
    assert (missing["container_id"], missing["file_id"]) == (c["id"], MISSING_FILE)


@pytest.mark.sandbox
async def test_exec_records_the_exit_code_and_the_seconds_run(tmp_path: Path, clock: ManualClock) -> None:
    settings = Settings.isolated(data_dir=tmp_path / "data", api_keys=[KEY])
    limits = ExecLimits(max_file_bytes=settings.max_file_bytes, max_output_bytes=settings.exec_max_output_bytes)
    async with LocalProvider(tmp_path / "local", clock=clock, exec_limits=limits) as provider:
        if not provider.capabilities.exec:
            pytest.skip(f"sandbox unavailable: {provider.capabilities.exec_unavailable_reason}")
        service = ContainerService(provider, SqliteLedger(), limits_from(settings), clock=clock)
        async for s in _serve(service, settings, "streamable-http"):
            async with http_client(s.url + "/mcp", KEY, "auto") as client:
                c = await ok(client, "container_create", name="runs")
                secret_env = "env-value-never-logged-77"
                await ok(
                    client, "container_exec", container_id=c["id"], command=["sh", "-c", "exit 3"],
                    env=[{"name": "TOKEN", "value": secret_env}],
                )  # fmt: skip
            run = records(s.audit)[-1]
            assert (run["operation"], run["exit_code"], run["outcome"]) == ("container_exec", 3, "ok")
            assert run["container_id"] == c["id"]
            assert secret_env not in s.audit.getvalue() and "exit 3" not in s.audit.getvalue()
            scraped = samples((await scrape(s.url)).text)
            assert value(scraped, "container_mcp_exec_seconds_count") == 1
            assert value(scraped, "container_mcp_exec_seconds_sum") > 0


async def test_the_mcp_http_process_audits_to_stderr_and_serves_metrics(tmp_path: Path) -> None:
    """The CLI's own assembly: ``container-mcp --transport streamable-http`` with CONTAINER_MCP_AUDIT=stderr."""
    env = clean_env()
    env |= {"CONTAINER_MCP_API_KEYS": KEY, "CONTAINER_MCP_AUDIT": "stderr"}
    argv = [console_script(), "--transport", "streamable-http", "--port", "0", "--data-dir", str(tmp_path / "data")]
    async with started([*argv, "--log-level", "INFO"], env) as server:
        async with http_client(server.url, KEY, "legacy") as client:
            created = await ok(client, "container_create", name="from-the-process")
        assert (await scrape(server.origin, None)).status_code == 401
        scraped = samples((await scrape(server.origin)).text)
        assert value(scraped, "container_mcp_live_containers") == 1
        err = await server.stop()
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert [(r["operation"], r["container_id"], r["outcome"]) for r in lines] == [
        ("container_create", created["id"], "ok")
    ]
    assert KEY not in err.decode()
