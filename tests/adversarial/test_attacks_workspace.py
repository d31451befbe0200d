"""Attacks on the persistent $HOME, background processes and bounded results (issue 9).

Through the MCP client on the local provider's real sandbox, with small bounds for speed. Each
test is an attack that got through the first version, now contained.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

from container_mcp.clock import ManualClock
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.models import ContainerSpec, ExpiresAfter
from container_mcp.processes import MAX_STDIN_WRITE_BYTES
from container_mcp.providers.base import ExecRequest, ExecResult, FileChanges
from container_mcp.providers.local import LocalProvider
from container_mcp.providers.local_exec import ExecLimits
from container_mcp.providers.local_processes import KEEP_ENDED
from container_mcp.runtime import limits_from
from container_mcp.server.app import create_server
from container_mcp.server.results import MAX_RESULT_BYTES
from container_mcp.service import ContainerService
from container_mcp.settings import Settings

from ..calls import call
from ..local.test_workspace import run, workspace
from ..processes import processes_running

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]

MiB = 1 << 20


@pytest.fixture
async def env(tmp_path: Path, clock: ManualClock) -> AsyncIterator[tuple[Client, Path]]:
    async with workspace(tmp_path, clock, home_bytes=16 * MiB) as made:
        yield made


async def test_a_wide_directory_is_no_disk_limit(env: tuple[Client, Path]) -> None:
    """300 sibling directories (a node_modules) were "too deep" for the watchdog: the command was killed."""
    client, _ = env
    cid = (await call(client, "container_create", name="wide"))["id"]
    wide = "mkdir -p n && cd n && mkdir $(seq -f p%g 300) && touch p300/f"
    done = await run(client, cid, f"({wide}) && (cd ~ && {wide}) && sleep 0.8")  # the watchdog looks meanwhile
    assert done["killed_reason"] is None and done["exit_code"] == 0


async def test_a_wide_home_does_not_hide_bytes_from_the_home_bound(env: tuple[Client, Path]) -> None:
    """Past 256 sibling directories the watchdog stopped looking: 1,000 of them held 40 MiB unseen."""
    client, _ = env
    cid = (await call(client, "container_create", name="wide-home"))["id"]
    fill = "cd ~ && mkdir $(seq -f d%g 1000) && for d in d*; do head -c 40000 /dev/zero > $d/f; done"
    done = await run(client, cid, f"{fill} && sleep 0.8")
    assert done["killed_reason"] == "disk_limit"


async def test_reading_control_characters_from_a_process_stays_within_the_result_budget(
    env: tuple[Client, Path],
) -> None:
    """16 KiB of \\x01 is 96 KiB of JSON (each escaped as \\u0001): a read result broke the 64 KiB bound."""
    client, _ = env
    cid = (await call(client, "container_create", name="ctl"))["id"]
    command = "head -c 100000 /dev/zero | tr '\\0' '\\1'; printf '\\377\\376'"
    pid = (await call(client, "container_process", container_id=cid, action="start", command=command, wait_s=20))[
        "processes"
    ][0]["id"]
    offset, text = 0, ""
    with anyio.fail_after(30):
        while True:
            result = await client.call_tool(
                "container_process", {"container_id": cid, "action": "read", "process_id": pid, "offset": offset}
            )
            assert len(json.dumps(result.structured_content, ensure_ascii=False).encode()) <= MAX_RESULT_BYTES
            chunk = result.structured_content["output"]
            text += chunk["text"]
            assert chunk["next_offset"] > offset or chunk["eof"]
            offset = chunk["next_offset"]
            if chunk["eof"]:
                break
    assert offset == 100_002 and text == "\x01" * 100_000 + "\ufffd\ufffd"


async def test_a_path_prefix_with_a_lone_surrogate_is_a_clear_refusal(env: tuple[Client, Path]) -> None:
    client, _ = env
    cid = (await call(client, "container_create", name="sur"))["id"]
    for prefix in ("/mnt/data/\ud800", "/mnt/data/%", "/mnt/data/_", "/mnt/data/a\x00b", "/mnt/data/" + "x" * 5000):
        result = await client.call_tool("file_list", {"container_id": cid, "path_prefix": prefix})
        text = result.content[0].text  # type: ignore[union-attr]
        assert (result.is_error and "path_prefix" in text) or result.structured_content["data"] == [], text


async def _accept(_: FileChanges) -> None:
    return None


async def _ignore(_: ExecResult | None, __: BaseException | None) -> None:
    return None


async def test_another_server_process_neither_expires_nor_strands_a_running_process(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Gap (e): server B's touch cut short A's hold and B's reaper expired the container under A's
    running process; and a delete through B left A's process running (up to its lifetime) on nothing."""
    marker = "sleep 1000.0625"
    root = tmp_path / "local"
    async with (
        LocalProvider(root, clock=clock, exec_limits=ExecLimits()) as a,
        LocalProvider(root, clock=clock, exec_limits=ExecLimits()) as b,
    ):
        cid = (await a.create_container(ContainerSpec(name="shared", expires_after=ExpiresAfter(minutes=1)))).id
        await a.start_process(
            cid, ExecRequest(argv=["sh", "-c", marker], timeout_s=600), approve=_accept, on_exit=_ignore
        )
        with anyio.fail_after(20):
            while not processes_running(marker):  # noqa: ASYNC110 (the sandbox's progress has no event)
                await anyio.sleep(0.02)
        await b.get_container(cid)  # any call through B touches it
        clock.advance(10 * 60)
        assert await b.sweep() == [] and await a.sweep() == []
        assert (await b.get_container(cid)).status == "running" and processes_running(marker)
        await b.delete_container(cid)
        await a.sweep()  # A's reaper notices: the process ends with its container
        with anyio.fail_after(20):
            while processes_running(marker):  # noqa: ASYNC110
                await anyio.sleep(0.02)
        with anyio.fail_after(20):
            for p in a._processes.of(cid):
                await p.done.wait()
        assert [p.state for p in a._processes.of(cid)] in ([], ["killed"])


async def test_stdin_a_process_does_not_read_cannot_pile_up_in_the_server(env: tuple[Client, Path]) -> None:
    """A write of any size a request may carry (~130 MiB) was queued in memory, 16 deep, per process."""
    client, _ = env
    cid = (await call(client, "container_create", name="stdin"))["id"]
    big = "x" * (MAX_STDIN_WRITE_BYTES + 1)
    start = await client.call_tool(
        "container_process", {"container_id": cid, "action": "start", "command": "cat", "stdin": big}
    )
    assert start.is_error and "stdin" in start.content[0].text  # type: ignore[union-attr]
    pid = (await call(client, "container_process", container_id=cid, action="start", command="cat"))["processes"][0][
        "id"
    ]
    write = await client.call_tool(
        "container_process", {"container_id": cid, "action": "write", "process_id": pid, "stdin": big}
    )
    assert write.is_error and f"{MAX_STDIN_WRITE_BYTES}" in write.content[0].text  # type: ignore[union-attr]
    await call(client, "container_process", container_id=cid, action="write", process_id=pid, stdin="ok\n")
    await call(client, "container_process", container_id=cid, action="write", process_id=pid)  # closes stdin
    done = await call(client, "container_process", container_id=cid, action="wait", process_id=pid, wait_s=20)
    assert done["processes"][0]["stdout_bytes"] == 3


async def test_what_a_refused_command_left_in_its_home_is_counted_at_once(tmp_path: Path, clock: ManualClock) -> None:
    """Gap (b) keeps a refused command's home writes (the home is written in place); they were not
    counted until some later command or the reaper's recount: stored bytes said less than the disk."""
    settings = Settings.isolated(data_dir=tmp_path, max_files_per_container=3, max_calls_per_minute=100_000)
    async with LocalProvider(tmp_path / "local", clock=clock, exec_limits=ExecLimits()) as provider:
        store = SqliteLedger()
        provider.attach_usage_sink(store.set_usage)
        service = ContainerService(provider, store, limits_from(settings), clock=clock)
        async with Client(create_server(service, settings)) as client:
            cid = (await call(client, "container_create", name="refused"))["id"]
            over = "head -c 3000000 /dev/zero > ~/blob; for i in $(seq 10); do echo $i > f$i; done"
            result = await client.call_tool("container_exec", {"container_id": cid, "command": over})
            assert result.is_error and "CONTAINER_MCP_MAX_FILES_PER_CONTAINER" in result.content[0].text  # type: ignore[union-attr]
            assert (await call(client, "session_usage"))["stored_bytes"]["used"] >= 3_000_000
            started = await call(
                client, "container_process", container_id=cid, action="start", command=over.replace("blob", "blob2")
            )
            pid = started["processes"][0]["id"]
            ended = await call(client, "container_process", container_id=cid, action="wait", process_id=pid, wait_s=30)
            assert ended["processes"][0]["state"] == "failed"
            assert (await call(client, "session_usage"))["stored_bytes"]["used"] >= 6_000_000


async def test_a_timed_out_command_half_way_through_a_file_is_charged_exactly_what_it_kept(
    env: tuple[Client, Path],
) -> None:
    client, _ = env
    cid = (await call(client, "container_create", name="partial"))["id"]
    command = "head -c 1000000 /dev/zero > a; while :; do echo line >> b; done"
    result = await run(client, cid, command, timeout_s=0.5)
    assert result["timed_out"] is True and result["files_created_total"] == 2
    files = (await call(client, "file_list", container_id=cid))["data"]
    usage = await call(client, "session_usage")
    assert usage["files"] == 2 and usage["stored_bytes"]["used"] == sum(f["bytes"] for f in files)


async def test_links_fifos_and_locked_directories_in_home_reach_nothing_outside(
    env: tuple[Client, Path], clock: ManualClock, tmp_path: Path
) -> None:
    client, containers = env
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("host file")
    cid = (await call(client, "container_create", name="links", expires_after_minutes=1))["id"]
    plant = (
        f"ln -s {outside} ~/host; ln -s {outside}/keep ~/host-file; ln -s / ~/root; mkfifo ~/fifo; "
        "ln /mnt/data/x ~/hard 2>&1 | grep -q 'No such\\|cross-device\\|Invalid' && echo nolink; "
        "mkdir -p ~/locked/in && echo x > ~/locked/in/f && chmod 000 ~/locked/in ~/locked"
    )
    assert (await run(client, cid, "echo x > /mnt/data/x"))["exit_code"] == 0
    planted = await run(client, cid, plant)
    assert planted["exit_code"] == 0, planted
    assert (await run(client, cid, "ln /mnt/data/x ~/hard"))["exit_code"] != 0  # another mount: no hard link
    await call(client, "session_usage")  # the home was measured (lstat only, no fifo opened) after each
    clock.advance(120)
    assert (await call(client, "container_retrieve", container_id=cid))["status"] == "expired"
    home = containers / cid / "home"
    assert not home.exists() or not any(home.iterdir())
    assert (outside / "keep").read_text() == "host file" and os.listdir(outside) == ["keep"]
    await call(client, "container_delete", container_id=cid)
    assert not (containers / cid).exists() and (outside / "keep").exists()


LOCKED_HOME = """
import os, sys
from pathlib import Path
from container_mcp.providers.local_fs import ContainerDir
c = ContainerDir(Path(sys.argv[1]) / "c")
c.create()
for sub in (c.home, c.files):
    (sub / "locked" / "in").mkdir(parents=True)
    (sub / "locked" / "in" / "f").write_text("x")
    os.chmod(sub / "locked" / "in", 0)
    os.chmod(sub / "locked", 0)
c.clear_files()
print(os.path.lexists(c.home / "locked"), os.path.lexists(c.files / "locked"))
c.home.mkdir(exist_ok=True)
(c.home / "locked").mkdir(mode=0)
c.destroy()
print(os.path.lexists(c.root))
"""


async def test_a_locked_directory_does_not_outlive_its_container_on_an_unprivileged_server() -> None:
    """A chmod 000 directory in $HOME (written in place) survived expiry and delete when the server
    is not root: the container's directory stayed on disk, uncounted, after every delete."""
    top = Path(tempfile.mkdtemp(prefix="locked-home-"))
    try:
        drop: list[str] = []
        if os.geteuid() == 0:  # as the unprivileged server would run
            os.chown(top, 65534, 65534)
            drop = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "--"]
        done = await anyio.run_process([*drop, sys.executable, "-c", LOCKED_HOME, str(top)], check=False)
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout.decode().split() == ["False", "False", "False"]
    finally:
        await anyio.run_process(["chmod", "-R", "u+rwx", str(top)], check=False)
        shutil.rmtree(top, ignore_errors=True)


async def test_homes_of_many_containers_stay_within_the_session_bytes(tmp_path: Path, clock: ManualClock) -> None:
    """Gap (a): each container's home was bounded on its own (1 GiB) and counted after the fact, so a
    session of 10 containers could hold 10 GiB against its 1 GiB quota. Now a command's home may grow
    by the session's room only (one watchdog tick of writes may still land over it)."""
    settings = Settings.isolated(data_dir=tmp_path, max_session_bytes=8 * MiB, max_calls_per_minute=100_000)
    limits = ExecLimits(max_home_bytes=64 * MiB)
    async with LocalProvider(tmp_path / "local", clock=clock, exec_limits=limits) as provider:
        store = SqliteLedger()
        provider.attach_usage_sink(store.set_usage)
        service = ContainerService(provider, store, limits_from(settings), clock=clock)
        async with Client(create_server(service, settings)) as client:
            fill = "head -c 6000000 /dev/zero > ~/blob; sleep 0.8"  # the watchdog looks meanwhile
            first = (await call(client, "container_create", name="h1"))["id"]
            assert (await run(client, first, fill))["killed_reason"] is None  # within the room
            second = (await call(client, "container_create", name="h2"))["id"]
            assert (await run(client, second, fill))["killed_reason"] == "disk_limit"  # the room is 2 MB
            third = (await call(client, "container_create", name="h3"))["id"]
            started = await call(client, "container_process", container_id=third, action="start", command=fill)
            pid = started["processes"][0]["id"]
            ended = await call(
                client, "container_process", container_id=third, action="wait", process_id=pid, wait_s=30
            )
            assert ended["processes"][0]["state"] == "killed"
            # what is already there can always be removed
            assert (await run(client, first, "rm ~/blob; sleep 0.5"))["exit_code"] == 0


async def test_every_container_process_result_stays_within_the_budget(env: tuple[Client, Path]) -> None:
    """The longest list (every remembered process, commands of escaped characters) and odd reads."""
    client, _ = env
    cid = (await call(client, "container_create", name="many"))["id"]
    command = "echo done; exit 3 #" + "\x01" * 400
    for _ in range(4 + KEEP_ENDED):
        await call(client, "container_process", container_id=cid, action="start", command=command, wait_s=20)
    listed = await client.call_tool("container_process", {"container_id": cid, "action": "list"})
    processes = listed.structured_content["processes"]
    assert KEEP_ENDED <= len(processes) <= KEEP_ENDED + 4 and {p["exit_code"] for p in processes} == {3}
    assert len(json.dumps(listed.structured_content, ensure_ascii=False).encode()) <= MAX_RESULT_BYTES
    pid = processes[-1]["id"]
    far = await call(client, "container_process", container_id=cid, action="read", process_id=pid, offset=10**30)
    assert far["output"]["text"] == "" and far["output"]["eof"] is True
    for bad in ({"offset": -1}, {"wait_s": 10**9}, {"process_id": "proc_" + "0" * 10_000}, {"signal": 9}):
        result = await client.call_tool(
            "container_process", {"container_id": cid, "action": "wait", "process_id": pid, **bad}
        )
        assert result.is_error, bad


async def test_a_command_and_a_background_process_share_the_home_both_ways(env: tuple[Client, Path]) -> None:
    """Gap (d): both mount the home as upper layer at once (``index=off``); each sees what the other
    wrote (a name the process looked up before it existed may stay unseen by it: see the README)."""
    client, _ = env
    cid = (await call(client, "container_create", name="shared-home"))["id"]
    waiter = "echo hi > ~/from-bg; echo old > ~/both; read go; cat ~/from-fg ~/both"
    started = await call(client, "container_process", container_id=cid, action="start", command=waiter)
    pid = started["processes"][0]["id"]
    with anyio.fail_after(20):
        while (await run(client, cid, "cat ~/from-bg"))["stdout"] != "hi\n":  # noqa: ASYNC110
            await anyio.sleep(0.02)  # (the sandbox's progress has no event)
    assert (await run(client, cid, "echo fg > ~/from-fg; echo new > ~/both"))["exit_code"] == 0
    await call(client, "container_process", container_id=cid, action="write", process_id=pid, stdin="go\n")
    done = await call(client, "container_process", container_id=cid, action="wait", process_id=pid, wait_s=20)
    assert done["processes"][0]["exit_code"] == 0
    out = await call(client, "container_process", container_id=cid, action="read", process_id=pid)
    assert out["output"]["text"] == "fg\nnew\n"
