"""The MCP surface through the official client, in both protocol eras (see conftest ``client``)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, MCPError
from mcp.server import MCPServer

from container_mcp.clock import ManualClock
from container_mcp.server.app import create_server
from container_mcp.service import ContainerService
from container_mcp.settings import Settings

from ..calls import call

pytestmark = pytest.mark.anyio

TOOLS = {
    "container_create": dict(read_only_hint=False, idempotent_hint=False),
    "container_list": dict(read_only_hint=True),
    "container_retrieve": dict(read_only_hint=True),
    "container_delete": dict(destructive_hint=True, idempotent_hint=True),
    "file_create": dict(read_only_hint=False),
    "file_list": dict(read_only_hint=True),
    "file_retrieve": dict(read_only_hint=True),
    "file_delete": dict(destructive_hint=True, idempotent_hint=True),
    "file_read": dict(read_only_hint=True),
    "session_usage": dict(read_only_hint=True),
}


async def error(client: Client, tool: str, **args: Any) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error is True
    text = result.content[0].text  # type: ignore[union-attr]
    assert text != f"Error executing tool {tool}", "a model must never see a bare error"
    return text


async def test_tools_are_the_contract(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == set(TOOLS)  # no exec: this server was built without the exec capability
    for name, hints in TOOLS.items():
        tool = tools[name]
        assert tool.title, name
        assert tool.description, name
        assert tool.output_schema is not None, name
        assert tool.annotations is not None
        for hint, value in hints.items():
            assert getattr(tool.annotations, hint) == value, (name, hint)
        for prop, schema in tool.input_schema.get("properties", {}).items():
            assert "description" in schema or "$ref" in schema or "anyOf" in schema, (name, prop)


async def test_a_whole_session(client: Client) -> None:
    c = await call(client, "container_create", name="work", expires_after_minutes=30, memory_limit="4g")
    assert c["object"] == "container" and c["status"] == "running" and c["memory_limit"] == "4g"
    assert c["expires_after"] == {"anchor": "last_active_at", "minutes": 30}
    cid = c["id"]
    f = await call(client, "file_create", container_id=cid, path="data/in.csv", text="a,b\n1,2\n")
    assert f["path"] == "/mnt/data/data/in.csv" and f["bytes"] == 8 and f["source"] == "user"
    assert f["mime_type"] == "text/csv"
    assert (await call(client, "file_retrieve", container_id=cid, file_id=f["id"]))["id"] == f["id"]
    listed = await call(client, "file_list", container_id=cid)
    assert [x["id"] for x in listed["data"]] == [f["id"]] and listed["has_more"] is False
    assert (await call(client, "container_retrieve", container_id=cid))["name"] == "work"
    containers = await call(client, "container_list")
    assert [x["id"] for x in containers["data"]] == [cid]
    assert (await call(client, "file_delete", container_id=cid, file_id=f["id"]))["deleted"] is True
    assert (await call(client, "container_delete", container_id=cid)) == {
        "id": cid,
        "object": "container.deleted",
        "deleted": True,
    }
    assert "not found" in await error(client, "container_retrieve", container_id=cid)


async def test_binary_round_trip_through_base64_and_resource(client: Client) -> None:
    cid = (await call(client, "container_create", name="bin"))["id"]
    data = bytes(range(256))
    f = await call(client, "file_create", container_id=cid, path="all.bin", base64=base64.b64encode(data).decode())
    assert f["bytes"] == 256
    read = await client.read_resource(f"container://{cid}/files/{f['id']}")
    (content,) = read.contents
    assert content.mime_type == "application/octet-stream"
    assert base64.b64decode(content.blob) == data  # type: ignore[union-attr]
    chunk = await call(client, "file_read", container_id=cid, file_id=f["id"])
    assert chunk["encoding"] == "base64" and base64.b64decode(chunk["content"]) == data


async def test_text_resource_keeps_its_mime_type(client: Client) -> None:
    cid = (await call(client, "container_create", name="txt"))["id"]
    f = await call(client, "file_create", container_id=cid, path="notes.md", text="# héllo\n")
    read = await client.read_resource(f"container://{cid}/files/{f['id']}")
    (content,) = read.contents
    assert content.mime_type == "text/markdown"
    assert content.text == "# héllo\n"  # type: ignore[union-attr]


async def test_file_read_pages_big_files_without_splitting_characters(client: Client) -> None:
    cid = (await call(client, "container_create", name="big"))["id"]
    text = "é" * 5000  # 10,000 bytes of two-byte characters
    f = await call(client, "file_create", container_id=cid, path="big.txt", text=text)
    pieces, offset = [], 0
    while True:
        chunk = await call(client, "file_read", container_id=cid, file_id=f["id"], offset=offset, max_bytes=999)
        assert chunk["encoding"] == "text"
        pieces.append(chunk["content"])
        if chunk["eof"]:
            assert chunk["next_offset"] is None and chunk["hint"] is None
            break
        assert "offset=" in chunk["hint"]
        offset = chunk["next_offset"]
    assert "".join(pieces) == text


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("../../etc/passwd", "'..'"),
        ("/etc/passwd", "outside /mnt/data"),
        ("a\x00b", "NUL"),
        ("..\\x", "backslash"),
        ("n" * 300, "255 bytes"),
    ],
)
async def test_bad_paths_are_refused_and_change_nothing(client: Client, path: str, says: str) -> None:
    cid = (await call(client, "container_create", name="paths"))["id"]
    message = await error(client, "file_create", container_id=cid, path=path, text="x")
    assert says in message
    assert (await call(client, "file_list", container_id=cid))["data"] == []


async def test_errors_tell_what_to_do(client: Client) -> None:
    cid = (await call(client, "container_create", name="errs"))["id"]
    assert "exactly one of" in await error(client, "file_create", container_id=cid, path="a", text="x", base64="eA==")
    assert "not valid base64" in await error(client, "file_create", container_id=cid, path="a", base64="***")
    assert "Invalid container id" in await error(client, "container_retrieve", container_id="../../etc")
    assert "file_list" in await error(client, "file_retrieve", container_id=cid, file_id="cfile_" + "0" * 32)
    assert "Reading host files is disabled" in await error(
        client, "file_create", container_id=cid, path="a", source_path="/etc/passwd"
    )
    bad_limit = await client.call_tool("container_list", {"limit": 1000})
    assert bad_limit.is_error and "limit" in bad_limit.content[0].text  # type: ignore[union-attr]


async def test_quota_error_names_the_limit(tmp_path: Path, clock: ManualClock, local_provider: Any) -> None:
    from container_mcp.ledger.sqlite import SqliteLedger
    from container_mcp.runtime import limits_from

    settings = Settings.isolated(data_dir=tmp_path, max_containers=2, max_file_bytes=10)
    service = ContainerService(local_provider, SqliteLedger(), limits_from(settings), clock=clock)
    async with Client(create_server(service, settings)) as client:
        cid = (await call(client, "container_create", name="1"))["id"]
        await call(client, "container_create", name="2")
        message = await error(client, "container_create", name="3")
        assert "2 of 2" in message and "container_delete" in message and "CONTAINER_MCP_MAX_CONTAINERS" in message
        message = await error(client, "file_create", container_id=cid, path="big", text="x" * 11)
        assert "CONTAINER_MCP_MAX_FILE_BYTES" in message
        assert (await call(client, "file_list", container_id=cid))["data"] == []
        usage = await call(client, "session_usage")
        assert usage["containers"] == {"used": 2, "limit": 2, "setting": "CONTAINER_MCP_MAX_CONTAINERS"}


async def test_expired_container_says_so(client: Client, clock: ManualClock) -> None:
    c = await call(client, "container_create", name="short", expires_after_minutes=1)
    f = await call(client, "file_create", container_id=c["id"], path="a.txt", text="a")
    clock.advance(61)
    assert (await call(client, "container_retrieve", container_id=c["id"]))["status"] == "expired"
    message = await error(client, "file_read", container_id=c["id"], file_id=f["id"])
    assert "expired" in message and "container_create" in message
    usage = await call(client, "session_usage")
    assert usage["containers"]["used"] == 0  # an expired container frees its slot


async def test_file_ids_copy_from_own_containers(client: Client) -> None:
    src = (await call(client, "container_create", name="src"))["id"]
    f = await call(client, "file_create", container_id=src, path="lib/util.py", text="print(1)\n")
    dst = await call(client, "container_create", name="dst", file_ids=[f["id"]])
    files = (await call(client, "file_list", container_id=dst["id"]))["data"]
    assert [x["path"] for x in files] == ["/mnt/data/lib/util.py"]
    message = await error(client, "container_create", name="bad", file_ids=["cfile_" + "1" * 32])
    assert "not a file in any of your live containers" in message
    message = await error(client, "container_create", name="bad", file_ids=["file-abc"])
    assert "cfile_" in message
    # a refused create leaves no container behind
    names = [c["name"] for c in (await call(client, "container_list"))["data"]]
    assert "bad" not in names


async def test_resources_list_pages_the_sessions_files(tmp_path: Path, service: ContainerService) -> None:
    settings = Settings.isolated(data_dir=tmp_path, resource_page_size=3)
    async with Client(create_server(service, settings)) as client:
        a = (await call(client, "container_create", name="a"))["id"]
        b = (await call(client, "container_create", name="b"))["id"]
        made = {(await call(client, "file_create", container_id=a, path=f"a{i}.txt", text="a"))["id"] for i in range(4)}
        made |= {
            (await call(client, "file_create", container_id=b, path=f"b{i}.txt", text="b"))["id"] for i in range(3)
        }
        uris: list[str] = []
        cursor = None
        pages = 0
        while True:
            page = await client.list_resources(cursor=cursor)
            pages += 1
            uris += [r.uri for r in page.resources]
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        assert uris[:2] == ["container://capabilities", "container://usage"]
        assert {u.rsplit("/", 1)[-1] for u in uris[2:]} == made
        assert len(uris) == len(set(uris)) and pages == 3
        templates = await client.list_resource_templates()
        assert [t.uri_template for t in templates.resource_templates] == ["container://{container_id}/files/{file_id}"]
        with pytest.raises(MCPError):
            await client.list_resources(cursor="not-a-cursor")


async def test_capabilities_and_usage_resources(client: Client) -> None:
    caps = (await client.read_resource("container://capabilities")).contents[0]
    assert caps.mime_type == "application/json" and '"provider": "local"' in caps.text  # type: ignore[union-attr]
    usage = (await client.read_resource("container://usage")).contents[0]
    assert '"containers"' in usage.text  # type: ignore[union-attr]


async def test_resource_of_unknown_file_is_not_found(client: Client) -> None:
    cid = (await call(client, "container_create", name="nf"))["id"]
    with pytest.raises(MCPError) as info:
        await client.read_resource(f"container://{cid}/files/cfile_{'0' * 32}")
    assert info.value.error.code == -32602


async def test_source_path_only_under_allowed_roots(tmp_path: Path, service: ContainerService) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "data.csv").write_bytes(b"x,y\n")
    (tmp_path / "secret.txt").write_text("nope")
    (allowed / "link.txt").symlink_to(tmp_path / "secret.txt")
    settings = Settings.isolated(data_dir=tmp_path / "d", allow_paths=[allowed])
    server: MCPServer = create_server(service, settings)
    async with Client(server) as client:
        cid = (await call(client, "container_create", name="host"))["id"]
        f = await call(
            client, "file_create", container_id=cid, path="in/data.csv", source_path=str(allowed / "data.csv")
        )
        assert f["bytes"] == 4
        assert "outside" in await error(
            client, "file_create", container_id=cid, path="s", source_path=str(tmp_path / "secret.txt")
        )
        assert "outside" in await error(
            client, "file_create", container_id=cid, path="s", source_path=str(allowed / "link.txt")
        )
        assert "outside" in await error(
            client, "file_create", container_id=cid, path="s", source_path=str(allowed / ".." / "secret.txt")
        )


async def test_concurrent_creates_through_the_tool_respect_the_quota(
    tmp_path: Path, clock: ManualClock, local_provider: Any
) -> None:
    import anyio

    from container_mcp.ledger.sqlite import SqliteLedger
    from container_mcp.runtime import limits_from

    settings = Settings.isolated(data_dir=tmp_path, max_containers=5)
    service = ContainerService(local_provider, SqliteLedger(), limits_from(settings), clock=clock)
    async with Client(create_server(service, settings)) as client:
        results: list[bool] = []

        async def create(i: int) -> None:
            results.append((await client.call_tool("container_create", {"name": f"r{i}"})).is_error)

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(create, i)
        assert results.count(False) == 5 and results.count(True) == 45
        assert len((await call(client, "container_list", limit=100))["data"]) == 5


async def test_source_path_never_reads_the_servers_own_data(tmp_path: Path, service: ContainerService) -> None:
    data_dir = tmp_path / "d"
    (data_dir / "local").mkdir(parents=True)
    (data_dir / "local" / "registry-copy").write_text("other sessions' state")
    settings = Settings.isolated(
        data_dir=data_dir, allow_paths=[tmp_path]
    )  # an allowed root that contains the data dir
    async with Client(create_server(service, settings)) as client:
        cid = (await call(client, "container_create", name="host"))["id"]
        message = await error(
            client, "file_create", container_id=cid, path="s", source_path=str(data_dir / "local" / "registry-copy")
        )
        assert "data directory" in message
