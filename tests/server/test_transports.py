"""Real transports: streamable HTTP and SSE on uvicorn, stdio as a subprocess of the console script."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client

from container_mcp.server.app import create_server
from container_mcp.service import ContainerService
from container_mcp.settings import Settings
from tests.live import serve

from ..calls import call as structured
from ..envs import clean_env
from ..processes import console_script, started

pytestmark = pytest.mark.anyio


async def assert_isolated(a: Client, b: Client) -> None:
    mine = await structured(a, "container_create", name="mine")
    await structured(a, "file_create", container_id=mine["id"], path="x.txt", text="private")
    # b cannot see, read, write or delete a's container: it answers exactly like a missing id
    assert (await structured(b, "container_list"))["data"] == []
    for tool, args in [
        ("container_retrieve", {}),
        ("file_list", {}),
        ("file_create", {"path": "y.txt", "text": "intrusion"}),
        ("container_delete", {}),
    ]:
        result = await b.call_tool(tool, {"container_id": mine["id"], **args})
        assert result.is_error
        assert f"Container with id '{mine['id']}' not found" in result.content[0].text  # type: ignore[union-attr]
    b_resources = [r.uri for r in (await b.list_resources()).resources]
    assert not any(mine["id"] in uri for uri in b_resources)
    files = await structured(a, "file_list", container_id=mine["id"])
    assert [f["path"] for f in files["data"]] == ["/mnt/data/x.txt"]


async def test_streamable_http_sessions_are_isolated(service: ContainerService, settings: Settings) -> None:
    mcp = create_server(service, settings)
    async with serve(mcp.streamable_http_app()) as url:
        async with Client(f"{url}/mcp", mode="legacy") as a, Client(f"{url}/mcp", mode="legacy") as b:
            await assert_isolated(a, b)


async def test_sse_sessions_are_isolated(service: ContainerService, settings: Settings) -> None:
    mcp = create_server(service, settings)
    async with serve(mcp.sse_app()) as url:
        async with Client(sse_client(f"{url}/sse")) as a, Client(sse_client(f"{url}/sse")) as b:
            await assert_isolated(a, b)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_stdio_subprocess_and_restart_durability(tmp_path: Path, mode: str) -> None:
    params = StdioServerParameters(command=console_script(), args=["--data-dir", str(tmp_path)])
    async with Client(params, mode=mode) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"container_create", "file_read", "session_usage"} <= names
        c = await structured(client, "container_create", name="durable")
        f = await structured(client, "file_create", container_id=c["id"], path="keep.txt", text="still here")
    # a new server process on the same data dir: the stdio user sees what it made before
    async with Client(params, mode=mode) as client:
        listed = await structured(client, "container_list")
        assert [x["id"] for x in listed["data"]] == [c["id"]]
        chunk = await structured(client, "file_read", container_id=c["id"], file_id=f["id"])
        assert chunk["content"] == "still here"


@pytest.mark.parametrize(("transport", "path"), [("streamable-http", "/mcp"), ("sse", "/sse")])
async def test_http_server_process_serves_and_stops_cleanly_on_sigterm(
    tmp_path: Path, transport: str, path: str
) -> None:
    argv = [console_script(), "--transport", transport, "--port", "0", "--data-dir", str(tmp_path)]
    async with started([*argv, "--log-level", "INFO"], clean_env()) as server:
        assert server.path == path
        client = Client(sse_client(server.url)) if transport == "sse" else Client(server.url, mode="legacy")
        async with client:
            created = await structured(client, "container_create", name="over-http")
            assert created["status"] == "running"
        await server.stop()


async def test_remote_client_roots_do_not_open_the_servers_files(
    service: ContainerService, settings: Settings, tmp_path: Path
) -> None:
    import warnings

    from mcp.types import ListRootsResult, Root

    secret = tmp_path / "host-secret.txt"
    secret.write_text("server-side secret")

    async def roots(context: Any) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri="file:///")])  # "everything", says the remote client

    mcp = create_server(service, settings)  # no --allow-path
    async with serve(mcp.streamable_http_app()) as url:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the roots capability is deprecated in 2026-07-28
            client = Client(f"{url}/mcp", mode="legacy", list_roots_callback=roots)
        async with client:
            cid = (await structured(client, "container_create", name="roots"))["id"]
            result = await client.call_tool(
                "file_create", {"container_id": cid, "path": "x", "source_path": str(secret)}
            )
            assert result.is_error
            assert "Reading host files is disabled" in result.content[0].text  # type: ignore[union-attr]
