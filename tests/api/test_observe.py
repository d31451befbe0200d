"""Audit records and /metrics of ``container-mcp api``, from real calls of the official openai SDK.

Before: no record of who did what, and no /metrics. In-process tests serve ``create_app`` on
uvicorn at 127.0.0.1:0; the last one runs the real ``container-mcp api`` process with
``CONTAINER_MCP_AUDIT`` naming a file.
"""

from __future__ import annotations

import io
import json
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from openai import AsyncOpenAI, AuthenticationError, NotFoundError, PermissionDeniedError
from prometheus_client.parser import text_string_to_metric_families

from container_mcp.api.app import create_app
from container_mcp.audit import AuditLog
from container_mcp.auth import owner_for_key
from container_mcp.clock import ManualClock
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.providers.local import LocalProvider
from container_mcp.runtime import limits_from
from container_mcp.service import ContainerService
from container_mcp.settings import Settings
from tests.processes import console_script, started

from ..envs import clean_env
from .live import KEY_A, KEY_B, serve_app

pytestmark = pytest.mark.anyio

CONTENT = b"rest-secret-content-0099"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


@dataclass
class Live:
    origin: str
    audit: io.StringIO
    service: ContainerService

    def client(self, key: str = KEY_A) -> AsyncOpenAI:
        return AsyncOpenAI(api_key=key, base_url=self.origin + "/v1", max_retries=0)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.audit.getvalue().splitlines()]

    async def scrape(self, key: str | None = KEY_A, **headers: str) -> httpx2.Response:
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        async with httpx2.AsyncClient() as http:
            return await http.get(self.origin + "/metrics", headers=headers)


@pytest.fixture
async def live(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Live]:
    settings = Settings.isolated(data_dir=tmp_path / "data", api_keys=[KEY_A, KEY_B], max_containers=1)
    store = SqliteLedger()
    audit = io.StringIO()
    try:
        async with LocalProvider(tmp_path / "data" / "local", clock=clock) as provider:
            service = ContainerService(provider, store, limits_from(settings), clock=clock)
            async with serve_app(create_app(service, settings, audit_log=AuditLog(audit))) as origin:
                yield Live(origin, audit, service)
    finally:
        store.close()


async def test_requests_are_audited_and_counted(live: Live) -> None:
    async with live.client() as client:
        cid = (await client.containers.create(name="audited")).id
        created = await client.containers.files.create(cid, file=("notes.txt", CONTENT, "text/plain"))
        content = await client.containers.files.content.retrieve(created.id, container_id=cid)
        assert content.content == CONTENT
        with pytest.raises(PermissionDeniedError):  # max_containers=1
            await client.containers.create(name="over")
        with pytest.raises(NotFoundError):
            await client.containers.retrieve("cntr_doesnotexist")
    async with live.client("sk-wrong-key-000") as wrong:
        with pytest.raises(AuthenticationError):
            await wrong.containers.list()

    # Written as each response ends: a streamed download may finish after the next request began.
    by_op = {(r["operation"], r["status"]): r for r in live.records()}
    assert sorted(by_op) == [
        ("GET /v1/containers", 401),
        ("GET /v1/containers/{container_id}", 404),
        ("GET /v1/containers/{container_id}/files/{file_id}/content", 200),
        ("POST /v1/containers", 200),
        ("POST /v1/containers", 403),
        ("POST /v1/containers/{container_id}/files", 200),
    ]
    made, uploaded, downloaded, refused, missing, unauthenticated = (
        by_op[("POST /v1/containers", 200)],
        by_op[("POST /v1/containers/{container_id}/files", 200)],
        by_op[("GET /v1/containers/{container_id}/files/{file_id}/content", 200)],
        by_op[("POST /v1/containers", 403)],
        by_op[("GET /v1/containers/{container_id}", 404)],
        by_op[("GET /v1/containers", 401)],
    )
    owner = owner_for_key(KEY_A)
    for r in (made, uploaded, downloaded, refused, missing):
        assert r["surface"] == "rest" and r["transport"] is None
        assert r["principal"] == "apikey:" + owner.removeprefix("apikey:")[:8]
        assert r["session"] == live.service.ledger.digest(owner)[:16]
        assert r["request_id"].startswith("req_") and r["time"].endswith("Z")
    assert (made["container_id"], made["status"], made["outcome"]) == (cid, 200, "ok")
    assert (uploaded["container_id"], uploaded["file_id"], uploaded["bytes_in"]) == (cid, created.id, len(CONTENT))
    assert (downloaded["file_id"], downloaded["bytes_out"]) == (created.id, len(CONTENT))
    assert (refused["status"], refused["outcome"], refused["error_type"]) == (403, "error", "QuotaExceeded")
    assert (missing["status"], missing["error_type"]) == (404, "ContainerNotFound")
    assert (unauthenticated["principal"], unauthenticated["session"]) == ("unauthenticated", None)
    assert (unauthenticated["status"], unauthenticated["error_type"]) == (401, "http_401")

    text = live.audit.getvalue()
    assert KEY_A not in text and "sk-wrong-key-000" not in text and owner not in text
    assert CONTENT.decode() not in text

    scraped = samples((await live.scrape()).text)
    calls = "container_mcp_calls_total"
    assert value(scraped, calls, surface="rest", operation="POST /v1/containers", outcome="ok") == 1
    assert value(scraped, calls, surface="rest", operation="POST /v1/containers", outcome="error") == 1
    assert value(scraped, calls, surface="rest", operation="GET /v1/containers", outcome="error") == 1
    assert value(scraped, "container_mcp_quota_refusals_total", surface="rest", kind="max_containers") == 1
    assert value(scraped, "container_mcp_file_bytes_total", surface="rest", direction="in") == len(CONTENT)
    assert value(scraped, "container_mcp_file_bytes_total", surface="rest", direction="out") == len(CONTENT)
    latency = "container_mcp_call_duration_seconds_count"
    assert value(scraped, latency, surface="rest", operation="POST /v1/containers/{container_id}/files") == 1
    assert value(scraped, "container_mcp_live_containers") == 1
    assert value(scraped, "container_mcp_stored_bytes") == len(CONTENT)


async def test_made_up_paths_and_methods_add_no_series(live: Live) -> None:
    async with httpx2.AsyncClient() as http:
        for i in range(5):
            r = await http.request(
                "BREW", f"{live.origin}/v1/made-up-{i}", headers={"authorization": f"Bearer {KEY_A}"}
            )
            assert r.status_code == 404
    assert {r["operation"] for r in live.records()} == {"unmatched"}
    scraped = samples((await live.scrape()).text)
    assert value(scraped, "container_mcp_calls_total", surface="rest", operation="unmatched", outcome="error") == 5
    assert not any("made-up" in str(labels) or "BREW" in str(labels) for _, labels in scraped)


async def test_metrics_need_a_key_and_an_allowed_host(live: Live) -> None:
    """Before: no /metrics. Now it is behind the same bearer and Host/Origin checks as the routes."""
    for key in (None, "sk-wrong-key-000"):
        refused = await live.scrape(key)
        assert refused.status_code == 401 and "container_mcp" not in refused.text
    assert (await live.scrape(KEY_A, host="rebind.evil.example")).status_code == 421
    assert (await live.scrape(KEY_A, origin="https://evil.example")).status_code == 403
    good = await live.scrape(KEY_B)
    assert good.status_code == 200 and good.headers["content-type"].startswith("text/plain")
    assert value(samples(good.text), "container_mcp_live_containers") == 0
    # Scrapes are not audited, refused ones neither: only API requests are.
    assert live.records() == []


def _clean_env(**extra: str) -> dict[str, str]:
    env = clean_env()
    return {**env, **extra}


async def test_the_api_process_writes_its_audit_file_private(tmp_path: Path) -> None:
    audit_file = tmp_path / "logs" / "audit.jsonl"
    audit_file.parent.mkdir()
    argv = [console_script(), "api", "--port", "0", "--data-dir", str(tmp_path / "data"), "--log-level", "INFO"]
    async with started(argv, _clean_env(CONTAINER_MCP_API_KEYS=KEY_A, CONTAINER_MCP_AUDIT=str(audit_file))) as server:
        origin = server.origin
        async with AsyncOpenAI(api_key=KEY_A, base_url=origin + "/v1", max_retries=0) as client:
            cid = (await client.containers.create(name="from-the-process")).id
        async with httpx2.AsyncClient() as http:
            assert (await http.get(origin + "/metrics")).status_code == 401
            scraped = await http.get(origin + "/metrics", headers={"authorization": f"Bearer {KEY_A}"})
        assert value(samples(scraped.text), "container_mcp_live_containers") == 1
        await server.stop()
    assert stat.S_IMODE(audit_file.stat().st_mode) == 0o600
    (record,) = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert (record["operation"], record["container_id"], record["outcome"]) == ("POST /v1/containers", cid, "ok")
    assert KEY_A not in audit_file.read_text()
