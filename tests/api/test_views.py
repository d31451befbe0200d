"""Views that do not touch, through the chain: MCP tools -> OpenAIProvider -> live ``container-mcp api``.

Upstream, every read of a container refreshes its activity (as OpenAI's does), so a view that asks
the provider per row keeps containers alive forever and costs one request per row. The views
(``container_list``, ``session_usage``, ``resources/list``) read the MCP server's store instead.
Requests are counted at the upstream's ASGI boundary; both sides share one ``ManualClock``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from pydantic import SecretStr

from container_mcp.api.app import create_app
from container_mcp.clock import ManualClock
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.providers.local import LocalProvider
from container_mcp.providers.openai import OpenAIProvider
from container_mcp.runtime import limits_from
from container_mcp.server.app import create_server
from container_mcp.service import ContainerService
from container_mcp.settings import Settings
from container_mcp.uploads import BytesUpload

from ..calls import call
from .live import KEY_A, KEY_B, serve_app

pytestmark = pytest.mark.anyio


@dataclass
class Chain:
    client: Client
    upstream: LocalProvider
    clock: ManualClock
    requests: list[tuple[str, str]] = field(default_factory=list)
    """(method, path) of every HTTP request the upstream API received."""


@pytest.fixture
async def chain(tmp_path: Path) -> AsyncIterator[Chain]:
    clock = ManualClock()
    requests: list[tuple[str, str]] = []
    up_settings = Settings.isolated(data_dir=tmp_path / "up", api_keys=[KEY_A, KEY_B])
    up_store, store = SqliteLedger(), SqliteLedger()
    try:
        async with LocalProvider(tmp_path / "up" / "local", clock=clock) as upstream:
            app = create_app(ContainerService(upstream, up_store, limits_from(up_settings), clock=clock), up_settings)

            async def counted(scope: Any, receive: Any, send: Any) -> None:
                if scope["type"] == "http":
                    requests.append((scope["method"], scope["path"]))
                await app(scope, receive, send)

            async with serve_app(counted) as origin:
                settings = Settings.isolated(
                    data_dir=tmp_path / "mcp",
                    provider="openai",
                    openai_base_url=origin + "/v1",
                    openai_api_key=SecretStr(KEY_A),
                    openai_max_retries=0,
                    resource_page_size=3,
                )
                async with OpenAIProvider.from_settings(settings) as provider:
                    service = ContainerService(provider, store, limits_from(settings), clock=clock)
                    async with Client(create_server(service, settings)) as client:
                        yield Chain(client, upstream, clock, requests)
    finally:
        store.close()
        up_store.close()


async def test_a_container_polled_by_usage_and_listing_expires_on_time(chain: Chain) -> None:
    cid = (await call(chain.client, "container_create", name="polled", expires_after_minutes=1))["id"]
    chain.requests.clear()
    for _ in range(20):  # 300 s of polling every 15 s: each poll used to refresh the 1-minute expiry
        chain.clock.advance(15)
        await call(chain.client, "session_usage")
        listed = await call(chain.client, "container_list")
        assert [c["id"] for c in listed["data"]] == [cid]
    assert (await chain.upstream.get_container(cid, touch=False)).status == "expired"
    # One read, once the recorded activity said the container's time was up, learnt the expiry.
    assert chain.requests == [("GET", f"/v1/containers/{cid}")]
    assert [c["status"] for c in (await call(chain.client, "container_list"))["data"]] == ["expired"]
    assert (await call(chain.client, "session_usage"))["containers"]["used"] == 0


async def test_a_page_of_containers_costs_no_upstream_request(chain: Chain) -> None:
    made = [(await call(chain.client, "container_create", name=f"c{i}"))["id"] for i in range(10)]
    await call(chain.client, "file_create", container_id=made[0], path="a.txt", text="hello")
    chain.requests.clear()
    listed = await call(chain.client, "container_list", limit=10, order="asc")
    assert [c["id"] for c in listed["data"]] == made
    assert {c["name"] for c in listed["data"]} == {f"c{i}" for i in range(10)}
    assert all(c["status"] == "running" for c in listed["data"])
    usage = await call(chain.client, "session_usage")
    assert (usage["containers"]["used"], usage["files"], usage["stored_bytes"]["used"]) == (10, 1, 5)
    assert chain.requests == []


async def test_resources_list_pages_on_when_the_cursor_container_is_deleted(chain: Chain) -> None:
    files: dict[str, list[str]] = {}
    for i in range(3):
        chain.clock.advance(1)  # created_at orders the containers
        cid = (await call(chain.client, "container_create", name=f"r{i}"))["id"]
        files[cid] = [
            (await call(chain.client, "file_create", container_id=cid, path=f"f{j}.txt", text=f"{i}{j}"))["id"]
            for j in range(2)
        ]
    first, second, third = files
    page = await chain.client.list_resources()
    uris = [r.uri for r in page.resources if "/files/" in r.uri]
    # Capabilities and usage, then three files: the cursor stops inside the second container.
    assert uris == [f"container://{first}/files/{f}" for f in files[first]] + [
        f"container://{second}/files/{files[second][0]}"
    ]
    assert page.next_cursor is not None

    await call(chain.client, "container_delete", container_id=second)
    chain.clock.advance(1)
    fourth = (await call(chain.client, "container_create", name="r3"))["id"]
    late = (await call(chain.client, "file_create", container_id=fourth, path="late.txt", text="late"))["id"]

    seen = list(uris)
    cursor: str | None = page.next_cursor
    while cursor is not None:
        page = await chain.client.list_resources(cursor=cursor)
        seen += [r.uri for r in page.resources]
        cursor = page.next_cursor
    remaining = [f"container://{c}/files/{f}" for c in (first, third) for f in files[c]]
    remaining.append(f"container://{fourth}/files/{late}")
    after_first_page = seen[len(uris) :]
    assert after_first_page == [u for u in remaining if u not in uris]  # each once, in order
    assert len(set(seen)) == len(seen)


async def test_a_container_in_use_while_usage_is_polled_stays_running(chain: Chain) -> None:
    """The store's activity lags the backend's (operations move it upstream only): usage must not
    count a container that is in use as expired."""
    cid = (await call(chain.client, "container_create", name="busy", expires_after_minutes=1))["id"]
    for _ in range(20):
        chain.clock.advance(15)
        await call(chain.client, "file_list", container_id=cid)
        assert (await call(chain.client, "session_usage"))["containers"]["used"] == 1
    assert (await chain.upstream.get_container(cid, touch=False)).status == "running"
    assert [c["status"] for c in (await call(chain.client, "container_list"))["data"]] == ["running"]


async def test_resources_list_pages_from_the_index_with_no_upstream_request(chain: Chain) -> None:
    """Paging every file of every container asks the upstream nothing (so it touches nothing);
    a file the backend made on its own appears once a whole file_list has seen it."""
    made: list[str] = []
    for i in range(4):
        chain.clock.advance(1)
        cid = (await call(chain.client, "container_create", name=f"i{i}"))["id"]
        for j in range(2):
            f = await call(chain.client, "file_create", container_id=cid, path=f"f{j}.txt", text=f"{i}{j}")
            made.append(f"container://{cid}/files/{f['id']}")
    chain.requests.clear()
    assert await _file_uris(chain.client) == made  # three to a page (resource_page_size=3), each once, in order
    assert chain.requests == []

    last = made[-1].split("/")[2]
    behind = await chain.upstream.create_file(last, "/mnt/data/behind.txt", BytesUpload(b"upstream"))
    await call(chain.client, "file_list", container_id=last)
    assert await _file_uris(chain.client) == [*made, f"container://{last}/files/{behind.id}"]


async def _file_uris(client: Client) -> list[str]:
    """Every file resource, page after page."""
    page = await client.list_resources()
    uris = [r.uri for r in page.resources]
    while page.next_cursor is not None:
        page = await client.list_resources(cursor=page.next_cursor)
        uris += [r.uri for r in page.resources]
    return [u for u in uris if "/files/" in u]


async def test_usage_polled_after_a_use_does_not_stretch_the_expiry(chain: Chain) -> None:
    """The recorded activity was the last retrieve's: after an upload it said "may have expired"
    too early, and the read that asked refreshed a container that was still in its time."""
    cid = (await call(chain.client, "container_create", name="used", expires_after_minutes=1))["id"]
    chain.clock.advance(30)
    await call(chain.client, "file_create", container_id=cid, path="a.txt", text="x")  # in use until 90
    chain.clock.advance(31)
    await call(chain.client, "session_usage")
    chain.clock.advance(30)
    assert (await chain.upstream.get_container(cid, touch=False)).status == "expired"
    assert (await call(chain.client, "session_usage"))["containers"]["used"] == 0
