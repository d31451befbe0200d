"""container_exec through the MCP client, on the local provider's bubblewrap sandbox.

The escape battery lives with the sandbox (tests/sandbox); these tests pin what an agent sees:
results, file changes as container files at once, quotas, timeouts, progress and cancellation.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from container_mcp.clock import ManualClock
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.providers.local import LocalProvider
from container_mcp.providers.local_exec import ExecLimits
from container_mcp.runtime import limits_from
from container_mcp.server.app import create_server
from container_mcp.service import ContainerService
from container_mcp.settings import Settings

from ..calls import call

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]


@pytest.fixture
async def exec_client(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Client]:
    settings = Settings.isolated(data_dir=tmp_path, max_files_per_container=5, max_session_bytes=1 << 20)
    limits = ExecLimits(max_file_bytes=settings.max_file_bytes, max_output_bytes=settings.exec_max_output_bytes)
    async with LocalProvider(tmp_path / "local", clock=clock, exec_limits=limits) as provider:
        if not provider.capabilities.exec:
            pytest.skip(f"sandbox unavailable: {provider.capabilities.exec_unavailable_reason}")
        service = ContainerService(provider, SqliteLedger(), limits_from(settings), clock=clock)
        async with Client(create_server(service, settings)) as client:
            yield client


async def error(client: Client, tool: str, **args: Any) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error is True, result.structured_content
    return result.content[0].text  # type: ignore[union-attr]


async def test_exec_is_offered_with_annotations(exec_client: Client) -> None:
    tools = {t.name: t for t in (await exec_client.list_tools()).tools}
    tool = tools["container_exec"]
    assert tool.title and tool.annotations is not None and tool.annotations.read_only_hint is False
    caps = (await exec_client.read_resource("container://capabilities")).contents[0].text  # type: ignore[union-attr]
    assert '"exec": true' in caps


async def test_python_reads_a_csv_and_writes_a_result(exec_client: Client) -> None:
    cid = (await call(exec_client, "container_create", name="analysis"))["id"]
    await call(exec_client, "file_create", container_id=cid, path="data.csv", text="x,y\n1,2\n3,4\n")
    script = (
        "import csv\n"
        "rows = list(csv.DictReader(open('/mnt/data/data.csv')))\n"
        "total = sum(int(r['x']) + int(r['y']) for r in rows)\n"
        "open('/mnt/data/out/result.txt', 'w').write(f'total={total}\\n')\n"
        "print('rows', len(rows))\n"
    )
    await call(exec_client, "file_create", container_id=cid, path="analyse.py", text=script)
    result = await call(exec_client, "container_exec", container_id=cid, command="mkdir -p out && python3 analyse.py")
    assert result["exit_code"] == 0, result["stderr"]
    assert result["stdout"] == "rows 2\n"
    assert result["timed_out"] is False and result["duration_ms"] >= 0
    created = {f["path"]: f for f in result["files_created"]}
    assert set(created) == {"/mnt/data/out/result.txt"}
    assert created["/mnt/data/out/result.txt"]["source"] == "assistant"
    chunk = await call(exec_client, "file_read", container_id=cid, file_id=created["/mnt/data/out/result.txt"]["id"])
    assert chunk["content"] == "total=10\n"
    listed = {f["path"] for f in (await call(exec_client, "file_list", container_id=cid))["data"]}
    assert listed == {"/mnt/data/data.csv", "/mnt/data/analyse.py", "/mnt/data/out/result.txt"}


async def test_changes_and_deletions_are_reflected(exec_client: Client) -> None:
    cid = (await call(exec_client, "container_create", name="edit"))["id"]
    a = await call(exec_client, "file_create", container_id=cid, path="a.txt", text="one\n")
    await call(exec_client, "file_create", container_id=cid, path="b.txt", text="gone soon\n")
    result = await call(
        exec_client, "container_exec", container_id=cid, command=["sh", "-c", "echo two >> a.txt; rm b.txt"]
    )
    assert [f["path"] for f in result["files_changed"]] == ["/mnt/data/a.txt"]
    assert result["files_deleted"] == ["/mnt/data/b.txt"]
    files = (await call(exec_client, "file_list", container_id=cid))["data"]
    assert [f["path"] for f in files] == ["/mnt/data/a.txt"]
    new_id = files[0]["id"]
    chunk = await call(exec_client, "file_read", container_id=cid, file_id=new_id)
    assert chunk["content"] == "one\ntwo\n"
    del a


async def test_argv_stdin_env_workdir_and_exit_codes(exec_client: Client) -> None:
    cid = (await call(exec_client, "container_create", name="argv"))["id"]
    r = await call(
        exec_client,
        "container_exec",
        container_id=cid,
        command=["sh", "-c", 'read line; echo "$line/$GREETING/$(pwd)"; exit 3'],
        stdin="from stdin\n",
        env=[{"name": "GREETING", "value": "hi"}],
        workdir="/mnt/data/sub",
    )
    assert r["exit_code"] == 3
    assert r["stdout"] == "from stdin/hi//mnt/data/sub\n"


async def test_output_is_capped_and_binary_safe(exec_client: Client) -> None:
    cid = (await call(exec_client, "container_create", name="noisy"))["id"]
    r = await call(
        exec_client,
        "container_exec",
        container_id=cid,
        command="head -c 100000 /dev/zero | tr '\\0' 'a'; head -c 100000 /dev/zero | tr '\\0' 'z';"
        "printf '\\377\\376 bad utf8' >&2",
    )
    assert r["stdout_bytes"] == 200000 and r["stdout_truncated"] is True
    # stdout and stderr share one budget: the 11 bytes of stderr leave the rest to stdout, whose
    # head and tail survive with a marker saying how much was left out between them
    kept = 32 * 1024 - 11
    head, marker, tail = r["stdout"].partition(f"\n[... {200000 - kept} bytes omitted ...]\n")
    assert marker and head == "a" * (kept - kept // 2) and tail == "z" * (kept // 2)
    assert r["stderr_truncated"] is False and r["stderr"] == "\ufffd\ufffd bad utf8"


async def test_a_timeout_is_a_result_with_partial_output_files_and_a_hint(exec_client: Client) -> None:
    cid = (await call(exec_client, "container_create", name="slow"))["id"]
    r = await call(
        exec_client,
        "container_exec",
        container_id=cid,
        command="echo started; echo partial > wrote.txt; echo oops >&2; sleep 30",
        timeout_s=0.5,
    )
    assert r["timed_out"] is True and r["killed_reason"] == "timeout" and r["exit_code"] is None
    assert r["stdout"] == "started\n" and r["stderr"] == "oops\n"
    assert [f["path"] for f in r["files_created"]] == ["/mnt/data/wrote.txt"] and r["files_created_total"] == 1
    hint = r["hint"]
    assert "timed out after 0.5 s" in hint and "timeout_s" in hint and "CONTAINER_MCP_EXEC_MAX_TIMEOUT_S" in hint
    listed = (await call(exec_client, "file_list", container_id=cid))["data"]
    assert [f["path"] for f in listed] == ["/mnt/data/wrote.txt"]
    too_long = await error(exec_client, "container_exec", container_id=cid, command="true", timeout_s=10_000)
    assert "maximum" in too_long


async def test_refused_changes_of_a_killed_command_say_how_it_ended(tmp_path: Path, clock: ManualClock) -> None:
    settings = Settings.isolated(data_dir=tmp_path, max_files_per_container=5)
    limits = ExecLimits(max_stage_files=5)
    async with LocalProvider(tmp_path / "local", clock=clock, exec_limits=limits) as provider:
        service = ContainerService(provider, SqliteLedger(), limits_from(settings), clock=clock)
        async with Client(create_server(service, settings)) as client:
            cid = (await call(client, "container_create", name="flood"))["id"]
            message = await error(
                client, "container_exec", container_id=cid, command="for i in $(seq 50); do : > f$i; done; sleep 30"
            )
    assert "was killed for writing more files or bytes (under /mnt/data or in $HOME) than the quotas allow" in message
    assert "None" not in message and "CONTAINER_MCP_MAX_FILES_PER_CONTAINER" in message


async def test_over_quota_output_is_rejected_and_nothing_changes(exec_client: Client) -> None:
    cid = (await call(exec_client, "container_create", name="quota"))["id"]
    await call(exec_client, "file_create", container_id=cid, path="keep.txt", text="original\n")
    message = await error(
        exec_client,
        "container_exec",
        container_id=cid,
        command="echo changed > keep.txt; for i in 1 2 3 4 5 6 7; do echo $i > f$i.txt; done",
    )
    assert "CONTAINER_MCP_MAX_FILES_PER_CONTAINER" in message
    files = (await call(exec_client, "file_list", container_id=cid))["data"]
    assert [f["path"] for f in files] == ["/mnt/data/keep.txt"]
    chunk = await call(exec_client, "file_read", container_id=cid, file_id=files[0]["id"])
    assert chunk["content"] == "original\n"
    big = await error(exec_client, "container_exec", container_id=cid, command="head -c 2000000 /dev/zero > big.bin")
    assert "CONTAINER_MCP_MAX_SESSION_BYTES" in big or "CONTAINER_MCP_MAX_FILE_BYTES" in big
    assert [f["path"] for f in (await call(exec_client, "file_list", container_id=cid))["data"]] == [
        "/mnt/data/keep.txt"
    ]


async def test_progress_is_reported_while_it_runs(exec_client: Client) -> None:
    cid = (await call(exec_client, "container_create", name="progress"))["id"]
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    result = await exec_client.call_tool(
        "container_exec",
        {"container_id": cid, "command": "sleep 3; echo done", "timeout_s": 30},
        progress_callback=on_progress,
    )
    assert result.is_error is False
    assert len(seen) >= 2 and all(total == 30 for _, total, _ in seen)
    assert [p for p, _, _ in seen] == sorted(p for p, _, _ in seen)


async def test_cancellation_kills_the_command(exec_client: Client, tmp_path: Path) -> None:
    cid = (await call(exec_client, "container_create", name="cancel"))["id"]
    # A duration no other test (or another suite on this host) runs: the check scans every process.
    sleep = f"sleep 300.{secrets.randbelow(10**6):06d}"
    with anyio.move_on_after(1.0):
        await exec_client.call_tool("container_exec", {"container_id": cid, "command": f"{sleep} & {sleep}"})
    # nothing of the command survives (the kill is asynchronous: poll, bounded)
    with anyio.fail_after(5):
        while _survivors(sleep):  # noqa: ASYNC110
            await anyio.sleep(0.05)
    assert (await call(exec_client, "container_retrieve", container_id=cid))["status"] == "running"


def _survivors(cmd: str) -> list[Path]:
    return [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p) == cmd]


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


async def test_binary_written_by_a_command_reads_back_exactly(exec_client: Client) -> None:
    cid = (await call(exec_client, "container_create", name="binary"))["id"]
    r = await call(
        exec_client,
        "container_exec",
        container_id=cid,
        command=["python3", "-c", "open('/mnt/data/all.bin','wb').write(bytes(range(256)))"],
    )
    (f,) = r["files_created"]
    read = await exec_client.read_resource(f"container://{cid}/files/{f['id']}")
    assert base64.b64decode(read.contents[0].blob) == bytes(range(256))  # type: ignore[union-attr]


async def test_without_a_usable_sandbox_exec_is_not_offered_and_capabilities_say_why(
    tmp_path: Path, clock: ManualClock
) -> None:
    from container_mcp.sandbox import Sandbox, SandboxConfig

    settings = Settings.isolated(data_dir=tmp_path)
    broken = Sandbox(SandboxConfig(bwrap="/nonexistent/bwrap"))
    async with LocalProvider(tmp_path / "local", clock=clock, exec_limits=ExecLimits(), sandbox=broken) as provider:
        service = ContainerService(provider, SqliteLedger(), limits_from(settings), clock=clock)
        async with Client(create_server(service, settings)) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert "container_exec" not in names and "container_create" in names
            caps = (await client.read_resource("container://capabilities")).contents[0].text  # type: ignore[union-attr]
            assert '"exec": false' in caps and "bwrap" in caps
