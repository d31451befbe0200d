"""``kill -9`` of a real docker-provider server mid-create, mid-exec and mid-upload, then a restart: no orphans,
and the rows equal what is stored.

The server is the console script (stdio, through the official client) with ``--provider docker``
on the test engine and image. What is left is read from the engine (containers carrying this
data dir's label, the processes inside) and from the registry the server keeps.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from container_mcp.providers.docker_api import Engine
from container_mcp.providers.docker_exec import PIDFILE
from container_mcp.providers.local_registry import Registry

from ..calls import call
from ..processes import console_script, server_pids
from .engine import DOCKER_HOST, busybox_image, engine_containers, remove_all, require_engine

pytestmark = pytest.mark.anyio


async def _params(data_dir: Path) -> StdioServerParameters:
    await require_engine()
    async with Engine(DOCKER_HOST) as engine:
        image = await busybox_image(engine)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CONTAINER_MCP_DOCKER_IMAGE": image,
        "DOCKER_HOST": DOCKER_HOST,
    }
    return StdioServerParameters(
        command=console_script(), args=["--provider", "docker", "--data-dir", str(data_dir)], env=env
    )


def _running_rows(data_dir: Path) -> set[str]:
    registry = Registry(data_dir / "docker" / "registry.sqlite3")
    try:
        return {i for i in registry.all_ids() if (row := registry.container(i)) and row.status == "running"}
    finally:
        registry.close()


async def _labelled_ids(data_dir: Path) -> set[str]:
    async with Engine(DOCKER_HOST) as engine:
        found = await engine.list_labelled({"io.container-mcp.instance": _instance(data_dir)})
    return {str(c["Labels"]["io.container-mcp.container"]) for c in found}


def _instance(data_dir: Path) -> str:
    from container_mcp.providers.docker import instance_label

    return instance_label(data_dir / "docker")


async def _kill_when(data_dir: Path, ready: Callable[[], Awaitable[bool]]) -> None:
    """SIGKILL the server once ``ready()`` holds."""
    with anyio.fail_after(30):
        # Another process's progress shows only on the engine: there is no event to await.
        while not await ready():  # noqa: ASYNC110
            await anyio.sleep(0.002)
    (pid,) = server_pids(data_dir)
    os.kill(pid, signal.SIGKILL)


async def test_kill_9_during_create_then_restart_leaves_no_orphan(tmp_path: Path) -> None:
    data = tmp_path / "data"
    params = await _params(data)
    try:

        async def engine_has_one() -> bool:
            return bool(await _labelled_ids(data))

        with contextlib.suppress(Exception):  # the server dies under the call
            async with Client(params) as client:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_call_quietly, client, "container_create", {"name": "doomed"})
                    await _kill_when(data, engine_has_one)
        async with Client(params) as client:  # the restart reconciles before it serves
            await call(client, "container_list")
            assert await _labelled_ids(data) == _running_rows(data)
            assert len(_running_rows(data)) <= 1
    finally:
        await remove_all(data / "docker")


async def test_kill_9_during_exec_then_restart_kills_the_command_and_keeps_the_container(tmp_path: Path) -> None:
    data = tmp_path / "data"
    params = await _params(data)
    try:
        async with Client(params) as client:
            cid = (await call(client, "container_create", name="busy"))["id"]

        async def command_started() -> bool:
            async with Engine(DOCKER_HOST) as engine:
                return await engine.stat_path(f"cmcp-{cid}", PIDFILE) is not None

        with contextlib.suppress(Exception):
            async with Client(params) as client:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(
                        _call_quietly, client, "container_exec", {"container_id": cid, "command": "sleep 1000"}
                    )
                    await _kill_when(data, command_started)
        async with Client(params) as client:
            assert await _labelled_ids(data) == _running_rows(data) == {cid}
            ps = await call(client, "container_exec", container_id=cid, command="ps -o args | grep -c '^sleep 1000'")
            assert ps["stdout"].strip() == "0"  # the dead server's command went with the repair
        assert len(await engine_containers(data / "docker")) == 1
    finally:
        await remove_all(data / "docker")


async def test_kill_9_during_a_background_process_then_restart_kills_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    params = await _params(data)
    try:
        with contextlib.suppress(Exception):
            async with Client(params) as client:
                cid = (await call(client, "container_create", name="bg"))["id"]
                # It removes its pid file first: the next start kills by the session the server recorded.
                script = "rm -f /tmp/.container-mcp-proc-*.pid; echo gone; sleep 1002"
                started = await call(client, "container_process", container_id=cid, action="start", command=script)
                pid = started["processes"][0]["id"]
                with anyio.fail_after(20):
                    args = {"container_id": cid, "action": "read", "process_id": pid}
                    while "gone" not in (await call(client, "container_process", **args))["output"]["text"]:  # noqa: ASYNC110
                        await anyio.sleep(0.02)
                (server,) = server_pids(data)
                os.kill(server, signal.SIGKILL)
                await call(client, "container_list")
        assert await _count(cid, "^sleep 1002") == 1  # the exec outlives the server's connection
        async with Client(params) as client:  # the restart kills what the dead server's process left
            assert (await call(client, "container_process", container_id=cid, action="list"))["processes"] == []
            ps = await call(client, "container_exec", container_id=cid, command="ps -o args | grep -c '^sleep 1002'")
            assert ps["stdout"].strip() == "0"
        assert list((data / "docker" / "processes" / cid / "procs").iterdir()) == []
    finally:
        await remove_all(data / "docker")


async def test_kill_9_during_an_upload_then_restart_leaves_the_rows_equal_to_what_is_stored(tmp_path: Path) -> None:
    data, host = tmp_path / "data", tmp_path / "host"
    host.mkdir()
    (host / "big.bin").write_bytes(bytes(range(256)) * (4096 * 48))  # 48 MiB: the helper is mid-stream a while
    base = await _params(data)
    params = StdioServerParameters(command=base.command, args=[*base.args, "--allow-path", str(host)], env=base.env)
    try:
        async with Client(params) as client:
            cid = (await call(client, "container_create", name="upload"))["id"]
            await call(client, "file_create", container_id=cid, path="kept.txt", text="kept\n")

        async def helper_writing() -> bool:
            async with Engine(DOCKER_HOST) as engine:
                changed = await engine.changes(f"cmcp-{cid}", max_bytes=1 << 20, under="/mnt/data")
            return any(".container-mcp-upload-" in path for path in changed or ())

        killed = False
        with contextlib.suppress(Exception):
            async with Client(params) as client:
                async with anyio.create_task_group() as tg:
                    args = {"container_id": cid, "path": "big.bin", "source_path": str(host / "big.bin")}
                    tg.start_soon(_call_quietly, client, "file_create", args)
                    await _kill_when(data, helper_writing)
                    killed = True
        assert killed, "the server was not killed while its helper wrote"
        with anyio.fail_after(10):  # the helper, its stdin cut, removes its temporary file
            while await helper_writing():  # noqa: ASYNC110 - the engine has no event for it
                await anyio.sleep(0.02)
        async with Client(params) as client:
            listed = await call(client, "file_list", container_id=cid)
            rows = {f["path"]: f["bytes"] for f in listed["data"]}
            usage = await call(client, "session_usage")
            assert (usage["files"], usage["stored_bytes"]["used"]) == (len(rows), sum(rows.values()))
        async with Engine(DOCKER_HOST) as engine:
            stored = await engine.changes(f"cmcp-{cid}", max_bytes=1 << 20, under="/mnt/data")
            sizes = {p: (await engine.stat_path(f"cmcp-{cid}", p) or {}).get("size") for p in stored or ()}
        assert rows == {p: size for p, size in sizes.items() if p != "/mnt/data"}
        assert "/mnt/data/kept.txt" in rows and rows.get("/mnt/data/big.bin") in (None, 48 << 20)
    finally:
        await remove_all(data / "docker")


async def _count(cid: str, pattern: str) -> int:
    """How many processes of the engine container run ``pattern`` (asked past any server)."""
    async with Engine(DOCKER_HOST) as engine:
        argv = ["/bin/sh", "-c", f"ps -o args | grep -c '{pattern}'"]
        exec_id = await engine.exec_create(f"cmcp-{cid}", argv, user="1000", env=[], workdir="/", stdin=False)
        stream = await engine.exec_start(exec_id)
        try:
            await stream.send_stdin(None)
            out = b"".join([payload async for kind, payload in stream.frames() if kind == 1])
        finally:
            await stream.aclose()
    return int(out.strip() or 0)


async def _call_quietly(client: Client, tool: str, args: dict[str, Any]) -> None:
    with contextlib.suppress(Exception):
        await client.call_tool(tool, args)


async def test_a_server_without_an_engine_says_so_and_exits(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "DOCKER_HOST": f"unix://{tmp_path}/none.sock"}
    argv = [console_script(), "api", "--provider", "docker", "--data-dir", str(tmp_path / "d"), "--port", "0"]
    done = await anyio.run_process(argv, env=env, check=False)
    assert done.returncode == 1
    assert done.stderr.decode().strip().startswith("container-mcp: The Docker engine at unix://")
    assert "Traceback" not in done.stderr.decode()
