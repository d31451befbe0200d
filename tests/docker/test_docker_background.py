"""Background processes (container_process) on the docker provider, against the real engine.

What an agent relies on: a started command runs on while other calls go on; its output is read by
offset; stdin and signals reach it; its files become container files when it exits, under the
quotas; and nothing of it outlives its container or the provider. The pid file a process could
tamper with is never what the kill trusts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from container_mcp.clock import ManualClock
from container_mcp.errors import QuotaExceeded
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.models import ContainerSpec, ListParams
from container_mcp.providers.base import ExecResult, FileChanges, ProcessInfo
from container_mcp.providers.docker import DockerProvider
from container_mcp.providers.docker_exec import ExecLimits
from container_mcp.runtime import limits_from
from container_mcp.server.app import create_server
from container_mcp.service import ContainerService
from container_mcp.settings import Settings

from ..calls import call
from .calls import accept, sh
from .engine import DOCKER_HOST, docker_provider

pytestmark = pytest.mark.anyio


async def ignore(result: ExecResult | None, error: BaseException | None) -> None:
    return None


async def start(docker: DockerProvider, cid: str, script: str, **kw: Any) -> ProcessInfo:
    return await docker.start_process(cid, sh(script, **kw), approve=accept, on_exit=ignore)


async def stdout_until(docker: DockerProvider, cid: str, pid: str, text: str) -> str:
    seen, offset = "", 0
    with anyio.fail_after(20):
        while text not in seen:
            chunk = await docker.read_process(cid, pid, stream="stdout", offset=offset, max_bytes=4096)
            seen, offset = seen + chunk.text, chunk.next_offset
            await anyio.sleep(0.02)
    return seen


async def sleepers(docker: DockerProvider, cid: str, marker: str) -> str:
    ran = await docker.exec(cid, sh(f"ps -o args | grep '^sleep {marker}' || true"), approve=accept)
    return ran.stdout


async def test_output_exit_and_files_come_at_exit(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="bg"))
    info = await start(docker, c.id, "echo hi; echo oops >&2; echo made > made.txt; exit 3")
    assert info.state == "running" and info.id.startswith("proc_")
    ended = await docker.wait_process(c.id, info.id, 20)
    assert (ended.state, ended.exit_code, ended.signal, ended.files_created_total) == ("exited", 3, None, 1)
    out = await docker.read_process(c.id, info.id, stream="stdout", offset=0, max_bytes=100)
    err = await docker.read_process(c.id, info.id, stream="stderr", offset=0, max_bytes=100)
    assert (out.text, out.eof, err.text) == ("hi\n", True, "oops\n")  # no session line, no listing
    files = (await docker.list_files(c.id, ListParams())).data
    assert [(f.path, f.bytes, f.source) for f in files] == [("/mnt/data/made.txt", 5, "assistant")]
    assert [p.id for p in await docker.list_processes(c.id)] == [info.id]


async def test_stdin_is_written_and_closed_while_other_calls_go_on(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="stdin"))
    info = await start(docker, c.id, "echo ready; cat > got.txt; wc -c < got.txt", stdin=b"ab")
    await stdout_until(docker, c.id, info.id, "ready\n")
    # the container is not locked by its background process
    assert (await docker.exec(c.id, sh("echo fg"), approve=accept)).stdout == "fg\n"
    await docker.write_process(c.id, info.id, b"cd", close=False)
    await docker.write_process(c.id, info.id, b"", close=True)
    ended = await docker.wait_process(c.id, info.id, 20)
    assert ended.state == "exited" and ended.exit_code == 0
    assert (await stdout_until(docker, c.id, info.id, "4")).split() == ["ready", "4"]
    files = (await docker.list_files(c.id, ListParams())).data
    assert [f.path for f in files] == ["/mnt/data/got.txt"]
    assert b"".join([b async for b in docker.read_file(c.id, files[0].id)]) == b"abcd"


async def test_term_reaches_the_command_and_kill_ends_one_that_ignores_it(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="signals"))
    trapped = await start(docker, c.id, "trap 'echo bye; exit 7' TERM; echo up; while :; do sleep 0.05; done")
    plain = await start(docker, c.id, "sleep 301 & echo up; wait")
    stubborn = await start(docker, c.id, "trap '' TERM; sleep 302 & wait; wait")
    await stdout_until(docker, c.id, trapped.id, "up\n")
    await stdout_until(docker, c.id, plain.id, "up\n")  # its sleep runs: the signal has a command to reach
    # Signalled at once: the wrapper may not have started the command yet; the signal waits for it.
    quick = await start(docker, c.id, "sleep 310")
    await docker.signal_process(c.id, quick.id, 15)
    assert (await docker.wait_process(c.id, quick.id, 20)).signal == 15
    await docker.signal_process(c.id, trapped.id, 15)
    await docker.signal_process(c.id, plain.id, 15)
    ended = await docker.wait_process(c.id, trapped.id, 20)
    assert (ended.state, ended.exit_code) == ("exited", 7)
    assert await stdout_until(docker, c.id, trapped.id, "bye\n") == "up\nbye\n"
    killed = await docker.wait_process(c.id, plain.id, 20)
    assert (killed.state, killed.signal) == ("killed", 15)
    await docker.signal_process(c.id, stubborn.id, 9)
    gone = await docker.wait_process(c.id, stubborn.id, 20)
    assert (gone.state, gone.signal) == ("killed", 9)
    assert await sleepers(docker, c.id, "30") == ""


async def test_changes_over_the_quota_at_exit_fail_the_process_and_are_removed(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="quota"))
    told: list[BaseException | None] = []

    async def refuse(changes: FileChanges) -> None:
        raise QuotaExceeded("too much", limit_name="CONTAINER_MCP_MAX_FILES_PER_CONTAINER", limit=0, used=1)

    async def on_exit(result: ExecResult | None, error: BaseException | None) -> None:
        told.append(error)

    info = await docker.start_process(c.id, sh("echo big > big.txt"), approve=refuse, on_exit=on_exit)
    ended = await docker.wait_process(c.id, info.id, 20)
    assert ended.state == "failed" and "CONTAINER_MCP_MAX_FILES_PER_CONTAINER" in (ended.error or "")
    assert isinstance(told[0], QuotaExceeded)
    assert (await docker.list_files(c.id, ListParams())).data == []
    assert (await docker.exec(c.id, sh("ls /mnt/data"), approve=accept)).stdout == ""


async def test_lifetime_and_per_container_limit(tmp_path: Path) -> None:
    limits = ExecLimits(pids_limit=64, max_processes_per_container=1, process_max_lifetime_s=1.0)
    async with docker_provider(tmp_path / "d", limits=limits) as docker:
        c = await docker.create_container(ContainerSpec(name="limits"))
        info = await start(docker, c.id, "sleep 303")
        with pytest.raises(QuotaExceeded, match="CONTAINER_MCP_EXEC_MAX_PROCESSES_PER_CONTAINER"):
            await start(docker, c.id, "true")
        ended = await docker.wait_process(c.id, info.id, 20)
        assert (ended.state, ended.signal) == ("killed", 9)
        assert await sleepers(docker, c.id, "303") == ""


async def test_delete_and_close_kill_every_process(tmp_path: Path) -> None:
    async with docker_provider(tmp_path / "d", cleanup=False) as docker:
        doomed = await docker.create_container(ContainerSpec(name="doomed"))
        kept = await docker.create_container(ContainerSpec(name="kept"))
        await start(docker, doomed.id, "sleep 304")
        b = await start(docker, kept.id, "sleep 305 & sleep 306")
        await docker.delete_container(doomed.id)
        assert await docker.engine.inspect(f"cmcp-{doomed.id}") is None
        assert [p.id for p in await docker.list_processes(kept.id)] == [b.id]
        with anyio.fail_after(10):
            while "sleep 306" not in await sleepers(docker, kept.id, "30"):  # noqa: ASYNC110
                await anyio.sleep(0.05)
    async with docker_provider(tmp_path / "d") as again:  # the provider closed: its processes were killed
        assert await sleepers(again, kept.id, "30") == ""


async def test_a_process_tampering_with_its_pid_file_is_still_killed(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="tamper"))
    fifo = await start(docker, c.id, "for f in /tmp/.container-mcp-proc-*.pid; do rm -f $f; mkfifo $f; done; sleep 307")
    forged = await start(docker, c.id, "echo 1 > /tmp/.container-mcp-proc-*.pid; echo forged; sleep 308")
    removed = await start(docker, c.id, "rm -f /tmp/.container-mcp-proc-*.pid; echo removed; sleep 309")
    await stdout_until(docker, c.id, forged.id, "forged")
    await stdout_until(docker, c.id, removed.id, "removed")
    with anyio.fail_after(20):
        for info in (fifo, forged, removed):
            await docker.signal_process(c.id, info.id, 9)
            ended = await docker.wait_process(c.id, info.id, 20)
            assert (ended.state, ended.signal) == ("killed", 9)
    assert await sleepers(docker, c.id, "30") == ""


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[Client]:
    settings = Settings.isolated(data_dir=tmp_path / "data", provider="docker", docker_host=DOCKER_HOST)
    store = SqliteLedger()
    try:
        async with docker_provider(tmp_path / "data" / "docker", clock=ManualClock()) as docker:
            service = ContainerService(docker, store, limits_from(settings))
            async with Client(create_server(service, settings)) as c:
                yield c
    finally:
        store.close()


async def test_the_mcp_tool_runs_a_background_process_on_docker(client: Client) -> None:
    caps = (await client.read_resource("container://capabilities")).contents[0]
    assert '"processes":true' in caps.text.replace(" ", "")  # type: ignore[union-attr]
    cid = (await call(client, "container_create", name="mcp-bg"))["id"]
    script = "read x; echo $x > x.txt"
    started = await call(client, "container_process", container_id=cid, action="start", command=script)
    pid = started["processes"][0]["id"]
    await call(client, "container_process", container_id=cid, action="write", process_id=pid, stdin="hello\n")
    ended = await call(client, "container_process", container_id=cid, action="wait", process_id=pid, wait_s=20)
    assert ended["processes"][0]["state"] == "exited" and ended["processes"][0]["files_created_total"] == 1
    files = (await call(client, "file_list", container_id=cid))["data"]
    assert [f["path"] for f in files] == ["/mnt/data/x.txt"]
