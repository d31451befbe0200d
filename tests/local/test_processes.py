"""Issue 8 items 2 and 3: several real server processes on one data dir, and real ``kill -9``.

Every test drives the console script (``container-mcp api`` over HTTP, or the stdio server
through the official ``mcp`` client) and then compares three views of a container for exact
equality: the session store's counters (what ``session_usage`` sums), what ``file_list`` shows,
and the files really on disk. Kill points come from a seeded RNG, so a failure replays.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
from pathlib import Path
from typing import Any

import anyio
import httpx2 as httpx
import pytest
from mcp import Client

from container_mcp.sandbox.changes import STAGE_PREFIX

from ..calls import call as structured
from ..processes import processes_running, server_pids
from .servers import KEY, api_server, stdio_params, stored

pytestmark = pytest.mark.anyio

MIB = 1 << 20
SEED = 8


def _http(origin: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=origin + "/v1", headers={"Authorization": f"Bearer {KEY}"}, timeout=60, trust_env=False
    )


async def _listed(http: httpx.AsyncClient, container_id: str) -> tuple[int, int, set[str]]:
    """(files, bytes, paths) as file_list pages them."""
    files = bytes_ = 0
    paths: set[str] = set()
    after: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100, "order": "asc"} | ({"after": after} if after else {})
        page = (await http.get(f"/containers/{container_id}/files", params=params)).raise_for_status().json()
        files += len(page["data"])
        bytes_ += sum(f["bytes"] for f in page["data"])
        paths |= {f["path"] for f in page["data"]}
        if not page["has_more"]:
            return files, bytes_, paths
        after = page["data"][-1]["id"]


async def _upload(http: httpx.AsyncClient, container_id: str, name: str, size: int) -> int:
    try:
        r = await http.post(f"/containers/{container_id}/files", files={"file": (name, b"x" * size)})
    except httpx.TransportError:
        return 0  # the server was killed mid-request
    return r.status_code


async def test_two_api_processes_keep_the_session_bytes_quota_exact(tmp_path: Path) -> None:
    """Uploads and replacements split across two processes: never over 10 MiB, counters exact."""
    data = tmp_path / "data"
    rng = random.Random(SEED)
    quota = ["--max-session-bytes", str(10 * MIB), "--max-file-bytes", str(4 * MIB)]
    async with api_server(data, *quota) as a, api_server(data, *quota) as b:
        async with _http(a.origin) as ha, _http(b.origin) as hb:
            cid = (await ha.post("/containers", json={"name": "q"})).raise_for_status().json()["id"]
            # A few shared paths, so the two processes replace each other's files: each replacement
            # charges (new - old), which only holds if 'old' is read under a cross-process lock.
            plan = [
                (rng.choice([ha, hb]), f"p{rng.randrange(3)}.bin", rng.choice([1, MIB // 2, 3 * MIB]))
                for _ in range(120)
            ]
            async with anyio.create_task_group() as uploads:
                for http, name, size in plan:
                    uploads.start_soon(_upload, http, cid, name, size)
            # Fill what is left from both sides at once: exactly up to the quota, never over.
            async with anyio.create_task_group() as uploads:
                for i in range(24):
                    uploads.start_soon(_upload, [ha, hb][i % 2], cid, f"fill{i}.bin", MIB // 2)
            files, bytes_, paths = await _listed(hb, cid)
    seen = stored(data, cid)
    assert bytes_ <= 10 * MIB
    assert seen.counted == seen.listed == seen.on_disk == (files, bytes_)
    assert bytes_ > 10 * MIB - MIB // 2  # the fill did reach the quota
    assert seen.disk_paths == {p.removeprefix("/mnt/data/") for p in paths}


async def test_two_api_processes_hold_exactly_the_container_limit(tmp_path: Path) -> None:
    """Creates raced from both processes at once (and deletes freeing slots meanwhile)."""
    data = tmp_path / "data"
    async with api_server(data, "--max-containers", "3") as a, api_server(data, "--max-containers", "3") as b:
        async with _http(a.origin) as ha, _http(b.origin) as hb:
            codes: list[int] = []

            async def create(http: httpx.AsyncClient) -> None:
                codes.append((await http.post("/containers", json={"name": "race"})).status_code)

            async with anyio.create_task_group() as creates:
                for i in range(30):
                    creates.start_soon(create, [ha, hb][i % 2])
            assert sorted(codes) == [200] * 3 + [403] * 27
            listed = (await hb.get("/containers", params={"limit": 100})).raise_for_status().json()["data"]
            assert len(listed) == 3
            usage_a = (await ha.get("/containers", params={"limit": 100})).json()["data"]
            assert {c["id"] for c in usage_a} == {c["id"] for c in listed}


FILES = 200
# The command outlives the other one's start: without a cross-process lock both would run over the
# same lower layer and both report (and charge) 200 created files.
MAKE_FILES = f"for i in $(seq 1 {FILES}); do echo same > f$i.txt; done; sleep 1"


async def test_two_stdio_servers_running_commands_in_one_container_count_each_file_once(tmp_path: Path) -> None:
    """Two stdio servers each run a command making the same 200 files: 210 files, counted 210."""
    params = stdio_params(tmp_path)
    async with Client(params) as one, Client(params) as two:
        cid = (await structured(one, "container_create", name="shared"))["id"]
        for i in range(10):
            await structured(one, "file_create", container_id=cid, path=f"seed{i}.txt", text="seed")
        results: list[dict[str, Any]] = []

        async def run(client: Client) -> None:
            results.append(await structured(client, "container_exec", container_id=cid, command=MAKE_FILES))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run, one)
            tg.start_soon(run, two)
        assert [r["exit_code"] for r in results] == [0, 0]
        # The second command ran after the first committed: it saw the files and changed nothing.
        assert sorted(r["files_created_total"] for r in results) == [0, FILES]
        usage_one = await structured(one, "session_usage")
        usage_two = await structured(two, "session_usage")
    assert usage_one["files"] == usage_two["files"] == FILES + 10
    seen = stored(tmp_path, cid)
    assert seen.counted == seen.listed == seen.on_disk
    assert seen.on_disk[0] == FILES + 10


async def test_kill_9_during_concurrent_uploads_leaves_counters_equal_to_what_is_stored(tmp_path: Path) -> None:
    """SIGKILL at a random instant during 100 concurrent uploads, several trials, each then restarted."""
    data = tmp_path / "data"
    rng = random.Random(SEED)
    trials = 5
    async with api_server(data) as server, _http(server.origin) as http:
        cid = (await http.post("/containers", json={"name": "crash"})).raise_for_status().json()["id"]
    for trial in range(trials + 1):
        async with api_server(data) as server, _http(server.origin) as http:  # recovery runs at start
            files, bytes_, paths = await _listed(http, cid)
            seen = stored(data, cid)
            assert seen.counted == seen.listed == seen.on_disk == (files, bytes_), f"after trial {trial - 1}"
            assert seen.disk_paths == {p.removeprefix("/mnt/data/") for p in paths}, f"after trial {trial - 1}"
            assert not list((data / "local" / "containers" / cid / "tmp").iterdir())
            if trial == trials:
                break
            delay = rng.uniform(0.05, 0.6)
            sizes = [rng.choice([64 << 10, 256 << 10, MIB]) for _ in range(100)]
            names = [f"t{trial}-{i % 60}.bin" for i in range(100)]  # some replace each other
            with anyio.move_on_after(delay):
                async with anyio.create_task_group() as uploads:
                    for name, size in zip(names, sizes, strict=True):
                        uploads.start_soon(_upload, http, cid, name, size)
            server.process.send_signal(signal.SIGKILL)
            await server.process.wait()
            assert server.process.returncode == -signal.SIGKILL


COMMIT_FILES = 400
# The pause first: a kill soon after the run starts lands before the commit, however loaded the host.
MAKE_MANY = (
    f"sleep 0.3; mkdir -p out && for i in $(seq 1 {COMMIT_FILES}); do echo file $i > out/f$i.txt; done; rm seed0.txt"
)


async def _exec_until_killed(client: Client, container_id: str) -> None:
    with contextlib.suppress(Exception):  # the server dies under the call
        await client.call_tool("container_exec", {"container_id": container_id, "command": MAKE_MANY})


async def test_kill_9_during_a_large_commit_lands_all_of_it_or_none(tmp_path: Path) -> None:
    """SIGKILL while a command's 400 files move into the container: after restart, all or none,
    and the quota, file_list and the next command all see the same files."""
    rng = random.Random(SEED)
    params = stdio_params(tmp_path)
    seeds = {"seed0.txt", "seed1.txt", "seed2.txt"}
    after_all = (seeds - {"seed0.txt"}) | {f"out/f{i}.txt" for i in range(1, COMMIT_FILES + 1)}
    outcomes: list[str] = []
    # Even trials die once the commit has begun (rolled forward); odd ones mid-run, before the
    # commit (rolled back).
    for trial in range(4):
        mid_commit = trial % 2 == 0
        async with Client(params) as client:
            cid = (await structured(client, "container_create", name=f"commit{trial}"))["id"]
            for name in sorted(seeds):
                await structured(client, "file_create", container_id=cid, path=name, text="seed")
        files_dir = tmp_path / "local" / "containers" / cid / "files"
        delay = rng.uniform(0.0, 0.01)
        try:
            async with Client(params) as client:
                pids = server_pids(tmp_path)
                assert len(pids) == 1, pids
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_exec_until_killed, client, cid)
                    # The commit has begun once the command's first file shows in the container;
                    # the run, once its stage exists. A seeded random moment later, the server dies.
                    with anyio.fail_after(30):
                        # Another process's progress shows only on disk: there is no event to await.
                        while not (  # noqa: ASYNC110
                            (files_dir / "out").exists()
                            if mid_commit
                            else any(p.name.startswith(STAGE_PREFIX) for p in files_dir.parent.iterdir())
                        ):
                            await anyio.sleep(0.0005)
                    await anyio.sleep(delay)
                    os.kill(pids[0], signal.SIGKILL)
                    tg.cancel_scope.cancel()
        except Exception:
            pass
        async with Client(params) as client:  # a new server: recovery rolls the commit forward or back
            # ... and kills what is left of the dead server's command (bubblewrap's PID 1 can
            # outlive it, its overlay still mounted over the container).
            assert processes_running(MAKE_MANY) == [], f"trial {trial}: an orphaned sandbox survived"
            usage = await structured(client, "session_usage")
            listed = await structured(client, "file_list", container_id=cid, limit=1)
            ls = await structured(client, "container_exec", container_id=cid, command="find . -type f | wc -l")
            seen = stored(tmp_path, cid)
            await structured(client, "container_delete", container_id=cid)
        assert seen.counted == seen.listed == seen.on_disk, f"trial {trial}"
        assert seen.listed_paths == seen.disk_paths, f"trial {trial}"
        assert usage["files"] == seen.on_disk[0] and usage["stored_bytes"]["used"] == seen.on_disk[1]
        assert int(ls["stdout"].strip()) == seen.on_disk[0]  # the next command sees exactly those files
        assert len(listed["data"]) == 1 and listed["has_more"] == (seen.listed[0] > 1)
        if seen.disk_paths == after_all:
            outcomes.append("all")
        else:
            assert seen.disk_paths == seeds, f"trial {trial}: a partial commit: {len(seen.disk_paths)} files"
            outcomes.append("none")
    assert outcomes == ["all", "none", "all", "none"]


async def test_a_live_process_repairs_what_a_killed_peer_left_before_using_the_container(tmp_path: Path) -> None:
    """B dies mid-commit; A (alive all along, never restarted) finds the crash marker on its next
    write to that container and repairs it first: the commit lands whole, counters exact."""
    params = stdio_params(tmp_path)
    files_dir: Path | None = None
    async with Client(params) as a:
        (a_pid,) = server_pids(tmp_path)
        cid = (await structured(a, "container_create", name="peer"))["id"]
        await structured(a, "file_create", container_id=cid, path="seed0.txt", text="seed")
        files_dir = tmp_path / "local" / "containers" / cid / "files"
        try:
            async with Client(params) as b:
                (b_pid,) = set(server_pids(tmp_path)) - {a_pid}
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_exec_until_killed, b, cid)
                    with anyio.fail_after(30):
                        # Another process's progress shows only on disk: there is no event to await.
                        while not (files_dir / "out").exists():  # noqa: ASYNC110
                            await anyio.sleep(0.0005)
                    os.kill(b_pid, signal.SIGKILL)
                    tg.cancel_scope.cancel()
        except Exception:
            pass
        await structured(a, "file_create", container_id=cid, path="after.txt", text="after")
        usage = await structured(a, "session_usage")
        ls = await structured(a, "container_exec", container_id=cid, command="find . -type f | wc -l")
        seen = stored(tmp_path, cid)
    assert seen.counted == seen.listed == seen.on_disk
    assert seen.disk_paths == {"after.txt"} | {f"out/f{i}.txt" for i in range(1, COMMIT_FILES + 1)}
    assert usage["files"] == seen.on_disk[0] == int(ls["stdout"].strip())
