"""Inline file content (file_create text/base64) has a process-wide memory budget (``inline.py``).

The attack from the issue: four concurrent 99 MiB inline base64 uploads peaked at 2.2 GiB RSS.
Here the budget is small and held by the test (standing for uploads already in flight), so which
call fits is decided by the budget, not by timing. A refused call stores nothing and leaves every
counter, and the spool directory, as it was.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.server import MCPServer

from container_mcp.inline import GATED_BODY_BYTES, InlineBodyGate, InlineBudget, mcp_body_limit
from container_mcp.server.app import create_server
from container_mcp.service import ContainerService
from container_mcp.settings import MiB, Settings
from tests.calls import call as structured
from tests.live import serve

pytestmark = pytest.mark.anyio

BUSY = "busy receiving other inline uploads"


def small_budget_server(service: ContainerService, settings: Settings, capacity: int) -> tuple[MCPServer, InlineBudget]:
    budget = InlineBudget(capacity)
    tight = Settings.isolated(data_dir=settings.data_dir, max_inline_bytes_in_flight=capacity)
    return create_server(service, tight, inline_budget=budget), budget


def b64(n: int, seed: int = 0) -> tuple[str, bytes]:
    data = (bytes([seed]) + os.urandom(15)) * (n // 16)
    return base64.b64encode(data).decode(), data


async def attempt(client: Client, cid: str, name: str, content: str) -> tuple[str, Any]:
    result = await client.call_tool("file_create", {"container_id": cid, "path": name, "base64": content})
    return name, result


async def released(budget: InlineBudget) -> None:
    """Wait for the server's request task to finish (the response reaches the client just before)."""
    with anyio.fail_after(10):
        while budget.in_flight:  # noqa: ASYNC110 - nothing signals the end of the ASGI call
            await anyio.sleep(0.01)


def spooled(settings: Settings) -> list[Path]:
    inline = settings.data_dir / "inline"
    return list(inline.iterdir()) if inline.exists() else []


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_inline_uploads_over_the_budget_are_refused_and_store_nothing(
    service: ContainerService, settings: Settings, mode: str
) -> None:
    mcp, budget = small_budget_server(service, settings, 4 * MiB)
    content, _ = b64(3 * MiB // 2)  # 2 MiB of base64
    async with Client(mcp, mode=mode) as client:
        cid = (await structured(client, "container_create", name="inline"))["id"]
        assert budget.try_acquire(3 * MiB)  # other uploads in flight: 1 MiB left
        results: list[tuple[str, Any]] = []

        async def one(i: int) -> None:
            results.append(await attempt(client, cid, f"f{i}.bin", content))

        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(one, i)
        for _, result in results:
            assert result.is_error
            text = result.content[0].text
            assert BUSY in text and "Retry in a few seconds" in text and "source_path" in text
            assert "CONTAINER_MCP_MAX_INLINE_BYTES_IN_FLIGHT" in text
        assert (await structured(client, "file_list", container_id=cid))["data"] == []
        usage = await structured(client, "session_usage")
        assert usage["files"] == 0 and usage["stored_bytes"]["used"] == 0
        assert budget.in_flight == 3 * MiB and spooled(settings) == []

        budget.release(3 * MiB)  # the others finished: now two fit at a time
        results.clear()
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(one, i)
        stored = [name for name, r in results if not r.is_error]
        refused = [r for _, r in results if r.is_error]
        assert stored, "at least the first call fits"
        assert all(BUSY in r.content[0].text for r in refused)
        listed = (await structured(client, "file_list", container_id=cid, limit=10))["data"]
        assert sorted(f["path"] for f in listed) == sorted(f"/mnt/data/{n}" for n in stored)
        usage = await structured(client, "session_usage")
        assert usage["stored_bytes"]["used"] == len(stored) * (3 * MiB // 2)
    assert budget.in_flight == 0 and spooled(settings) == []


async def test_base64_is_decoded_in_chunks_to_the_same_bytes(service: ContainerService, settings: Settings) -> None:
    mcp, budget = small_budget_server(service, settings, 64 * MiB)
    content, data = b64(10 * MiB + 7)  # several 4 MiB chunks and a padded tail
    async with Client(mcp) as client:
        cid = (await structured(client, "container_create", name="chunks"))["id"]
        made = await structured(client, "file_create", container_id=cid, path="big.bin", base64=content)
        assert made["bytes"] == len(data) and made["sha256"] == hashlib.sha256(data).hexdigest()
        # padding inside the content (here at the end of the first 4 MiB chunk) is invalid base64
        bad = content[: 4 * MiB - 2] + "==" + content[4 * MiB :]
        result = await client.call_tool("file_create", {"container_id": cid, "path": "bad.bin", "base64": bad})
        assert result.is_error and "not valid base64" in result.content[0].text  # type: ignore[union-attr]
        assert len((await structured(client, "file_list", container_id=cid))["data"]) == 1
    assert budget.in_flight == 0 and spooled(settings) == []


async def test_over_http_the_gate_holds_the_body_and_the_tool_does_not_count_it_twice(
    service: ContainerService, settings: Settings
) -> None:
    capacity = 8 * MiB
    mcp, budget = small_budget_server(service, settings, capacity)
    content, data = b64(4 * MiB)  # a 5.3 MiB body: fits once, not twice
    app = InlineBodyGate(mcp.streamable_http_app(max_request_body_size=capacity), budget, wait_s=30)
    async with serve(app) as url:
        async with Client(f"{url}/mcp", mode="legacy") as client:
            cid = (await structured(client, "container_create", name="gate"))["id"]
            made = await structured(client, "file_create", container_id=cid, path="a.bin", base64=content)
            assert made["sha256"] == hashlib.sha256(data).hexdigest()
            await released(budget)

            # full: the next large call waits (its body unread) and goes ahead once room is freed
            assert budget.try_acquire(6 * MiB)
            done = anyio.Event()

            async def queued() -> None:
                await structured(client, "file_create", container_id=cid, path="b.bin", base64=content)
                done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(queued)
                with anyio.fail_after(10):
                    while budget.waiting == 0:  # noqa: ASYNC110 - the gate exposes no event for "now waiting"
                        await anyio.sleep(0.01)
                assert not done.is_set()
                budget.release(6 * MiB)
            assert done.is_set()
            names = [f["path"] for f in (await structured(client, "file_list", container_id=cid))["data"]]
            assert sorted(names) == ["/mnt/data/a.bin", "/mnt/data/b.bin"]
            await released(budget)
    assert spooled(settings) == []


async def test_over_http_a_body_that_waits_too_long_is_refused_unread(
    service: ContainerService, settings: Settings
) -> None:
    import httpx2

    mcp, budget = small_budget_server(service, settings, 8 * MiB)
    app = InlineBodyGate(mcp.streamable_http_app(max_request_body_size=8 * MiB), budget, wait_s=0.05)
    assert budget.try_acquire(6 * MiB)
    async with serve(app) as url, httpx2.AsyncClient() as http:
        body = b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "pad": "' + b"x" * (3 * MiB) + b'"}'
        response = await http.post(
            f"{url}/mcp",
            content=body,
            headers={"content-type": "application/json", "accept": "application/json, text/event-stream"},
        )
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    message = response.json()["error"]["message"]
    assert BUSY in message and "REST API" in message
    assert budget.in_flight == 6 * MiB  # nothing of the refused request is held


def test_the_mcp_body_limit_fits_the_budget() -> None:
    roomy = Settings.isolated(max_file_bytes=100 * MiB, max_inline_bytes_in_flight=384 * MiB)
    assert mcp_body_limit(roomy) == -(-100 * MiB * 4 // 3) + MiB  # a whole file as base64 + envelope
    tight = Settings.isolated(max_file_bytes=100 * MiB, max_inline_bytes_in_flight=64 * MiB)
    assert mcp_body_limit(tight) == 64 * MiB  # never a body the budget could not hold
    assert mcp_body_limit(tight) > GATED_BODY_BYTES


async def test_a_chunked_body_is_counted_as_it_arrives_and_cut_off_over_the_budget() -> None:
    import httpx2
    from starlette.types import Receive, Scope, Send

    budget = InlineBudget(2 * MiB)
    outcomes: list[tuple[int, bool]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                outcomes.append((size, False))
                await send({"type": "http.response.start", "status": 503, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        outcomes.append((size, True))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"%d" % size})

    async def body(total: int) -> Any:
        for _ in range(total // (256 * 1024)):
            yield b"x" * (256 * 1024)

    async with serve(InlineBodyGate(app, budget)) as url, httpx2.AsyncClient() as http:
        fits = await http.post(url, content=body(5 * MiB // 2))  # 1 MiB free + 1.5 MiB held
        assert fits.status_code == 200 and fits.text == str(5 * MiB // 2)
        await released(budget)
        with contextlib.suppress(httpx2.HTTPError):  # the server may stop reading before all is sent
            await http.post(url, content=body(8 * MiB))
        await released(budget)
    assert outcomes[0] == (5 * MiB // 2, True)
    assert outcomes[1][1] is False and outcomes[1][0] <= GATED_BODY_BYTES + 2 * MiB + 256 * 1024
