"""What an agent gets back from container_exec stays small, however much the command did.

Every result's JSON is at most 64 KiB; stdout and stderr share one budget; a command that made
thousands of files lists a few of each kind with totals, and file_list's path_prefix finds the
rest. A container holding 100,000 files is ordinary.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from container_mcp.clock import ManualClock
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.providers.local import LocalProvider
from container_mcp.providers.local_exec import ExecLimits
from container_mcp.runtime import limits_from
from container_mcp.server.app import create_server
from container_mcp.server.results import MAX_RESULT_BYTES
from container_mcp.service import ContainerService
from container_mcp.settings import Settings

from ..calls import call

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]


@pytest.fixture
async def client(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Client]:
    settings = Settings.isolated(data_dir=tmp_path, max_calls_per_minute=100_000)
    limits = ExecLimits(max_file_bytes=settings.max_file_bytes, max_output_bytes=settings.exec_max_output_bytes)
    async with LocalProvider(tmp_path / "local", clock=clock, exec_limits=limits) as provider:
        service = ContainerService(provider, SqliteLedger(), limits_from(settings), clock=clock)
        async with Client(create_server(service, settings)) as c:
            yield c


def size(result: dict[str, Any]) -> int:
    return len(json.dumps(result, ensure_ascii=False).encode())


async def test_a_thousand_new_files_are_a_short_list_with_totals_and_a_way_to_the_rest(client: Client) -> None:
    cid = (await call(client, "container_create", name="many"))["id"]
    r = await call(
        client,
        "container_exec",
        container_id=cid,
        command="mkdir -p out/deep && cd out/deep && seq 1 1000 | xargs touch && echo top > /mnt/data/top.txt",
    )
    assert r["files_created_total"] == 1001 and r["files_truncated"] is True
    assert len(r["files_created"]) == 20
    # the shallowest paths come first: the file at the top is not lost among the thousand
    assert r["files_created"][0]["path"] == "/mnt/data/top.txt"
    assert "file_list" in r["hint"] and "path_prefix" in r["hint"]
    assert size(r) < 16 * 1024
    seen: list[str] = []
    after = None
    while True:
        page = await call(
            client, "file_list", container_id=cid, path_prefix="/mnt/data/out/", limit=100, after=after, order="asc"
        )
        seen += [f["path"] for f in page["data"]]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert len(seen) == 1000 and all(p.startswith("/mnt/data/out/deep/") for p in seen)
    top = await call(client, "file_list", container_id=cid, path_prefix="/mnt/data/top")
    assert [f["path"] for f in top["data"]] == ["/mnt/data/top.txt"]
    # deleting them is bounded the same way
    gone = await call(client, "container_exec", container_id=cid, command="rm -r out")
    assert gone["files_deleted_total"] == 1000 and len(gone["files_deleted"]) == 20 and gone["files_truncated"]


async def test_a_path_prefix_outside_mnt_data_is_refused(client: Client) -> None:
    cid = (await call(client, "container_create", name="prefix"))["id"]
    result = await client.call_tool("file_list", {"container_id": cid, "path_prefix": "/etc/"})
    assert result.is_error is True
    assert "path_prefix must start with /mnt/data/" in result.content[0].text  # type: ignore[union-attr]


async def test_output_that_escapes_badly_still_fits_the_result_budget(client: Client) -> None:
    cid = (await call(client, "container_create", name="escapes"))["id"]
    # control characters become six bytes each in JSON; both streams overflow
    r = await call(
        client,
        "container_exec",
        container_id=cid,
        command="head -c 300000 /dev/zero | tr '\\0' '\\1'; head -c 300000 /dev/zero | tr '\\0' '\\2' >&2",
    )
    assert r["stdout_bytes"] == 300000 and r["stderr_bytes"] == 300000
    assert r["stdout_truncated"] and r["stderr_truncated"]
    assert size(r) <= MAX_RESULT_BYTES
    # both streams keep a share, head and tail
    assert r["stdout"].startswith("\x01") and r["stdout"].endswith("\x01")
    assert r["stderr"].startswith("\x02") and r["stderr"].endswith("\x02")


async def test_a_container_of_100000_files_is_ordinary(client: Client) -> None:
    cid = (await call(client, "container_create", name="huge"))["id"]
    r = await call(
        client,
        "container_exec",
        container_id=cid,
        command="for d in $(seq 1 10); do mkdir d$d; (cd d$d && seq 1 10000 | xargs touch); done",
        timeout_s=300,
    )
    assert r["exit_code"] == 0, (r["killed_reason"], r["stderr"])
    assert r["files_created_total"] == 100_000 and len(r["files_created"]) == 20 and size(r) < 16 * 1024
    usage = await call(client, "session_usage")
    assert usage["files"] == 100_000 and usage["max_files_per_container"] == 100_000
    after = await call(client, "container_exec", container_id=cid, command="ls d7 | wc -l")
    assert after["stdout"] == "10000\n" and after["files_created_total"] == after["files_changed_total"] == 0
    page = await call(client, "file_list", container_id=cid, path_prefix="/mnt/data/d3/", limit=5)
    assert len(page["data"]) == 5 and page["has_more"] is True


async def _resource_paths(client: Client) -> list[str]:
    uris: list[str] = []
    cursor: str | None = None
    while True:
        listed = await client.list_resources(cursor=cursor)
        uris += [str(r.uri) for r in listed.resources if "/files/" in str(r.uri)]
        cursor = listed.next_cursor
        if cursor is None:
            return uris


async def test_resources_list_shows_every_file_of_a_command_whose_result_listed_only_some(client: Client) -> None:
    cid = (await call(client, "container_create", name="index"))["id"]
    r = await call(client, "container_exec", container_id=cid, command="seq 1 150 | xargs touch && echo x > keep")
    assert r["files_created_total"] == 151 and len(r["files_created"]) == 20
    # a listing filtered by path is part of the container: it must not shrink the index
    [keep] = (await call(client, "file_list", container_id=cid, path_prefix="/mnt/data/keep"))["data"]
    assert len(await _resource_paths(client)) == 151
    gone = await call(client, "container_exec", container_id=cid, command="seq 1 150 | xargs rm")
    assert gone["files_deleted_total"] == 150 and len(gone["files_deleted"]) == 20
    [only] = await _resource_paths(client)
    assert only.endswith(f"{cid}/files/{keep['id']}")
