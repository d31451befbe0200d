"""Quotas: no way around max_containers, max_files_per_container, max_file_bytes,
max_session_bytes or calls-per-minute, and usage returns to the truth after deletes and expiry."""

from __future__ import annotations

import base64

import anyio
import pytest
from mcp import Client

from ..calls import call as ok
from .conftest import EnvFactory, err

pytestmark = pytest.mark.anyio

KiB = 1024


async def _truth(c: Client) -> tuple[int, int]:
    """(files, bytes) actually stored across the session's running containers."""
    files = bytes_ = 0
    for cont in (await ok(c, "container_list", limit=100))["data"]:
        if cont["status"] != "running":
            continue
        for f in (await ok(c, "file_list", container_id=cont["id"], limit=100))["data"]:
            files += 1
            bytes_ += f["bytes"]
    return files, bytes_


async def _usage(c: Client) -> tuple[int, int]:
    u = await ok(c, "session_usage")
    return u["files"], u["stored_bytes"]["used"]


async def test_concurrent_file_creates_respect_files_per_container(env_factory: EnvFactory) -> None:
    async with env_factory(max_files_per_container=5) as env, env.session("s") as c:
        cid = (await ok(c, "container_create", name="x"))["id"]
        outcomes: list[bool] = []

        async def put(i: int) -> None:
            r = await c.call_tool("file_create", {"container_id": cid, "path": f"f{i}.txt", "text": "x"})
            outcomes.append(r.is_error)

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(put, i)
        assert outcomes.count(False) == 5
        assert await _truth(c) == await _usage(c) == (5, 5)


async def test_concurrent_uploads_across_containers_respect_session_bytes(env_factory: EnvFactory) -> None:
    async with env_factory(max_session_bytes=100 * KiB) as env, env.session("s") as c:
        cids = [(await ok(c, "container_create", name=f"c{i}"))["id"] for i in range(4)]
        payload = base64.b64encode(b"\0" * (30 * KiB)).decode()

        async def put(i: int) -> None:
            await c.call_tool("file_create", {"container_id": cids[i % 4], "path": f"f{i}.bin", "base64": payload})

        async with anyio.create_task_group() as tg:
            for i in range(12):
                tg.start_soon(put, i)
        files, stored = await _truth(c)
        assert stored <= 100 * KiB and files == 3
        assert await _usage(c) == (files, stored)


async def test_replacing_a_file_charges_only_the_difference(env_factory: EnvFactory) -> None:
    async with env_factory(max_session_bytes=100 * KiB, max_files_per_container=1) as env, env.session("s") as c:
        cid = (await ok(c, "container_create", name="x"))["id"]
        for size in (60, 90, 10, 99):
            await ok(c, "file_create", container_id=cid, path="a.bin", text="y" * (size * KiB))
        assert await _usage(c) == await _truth(c) == (1, 99 * KiB)
        # growing past the limit by replacing is refused and keeps the old file
        assert "CONTAINER_MCP_MAX_SESSION_BYTES" in await err(
            c, "file_create", container_id=cid, path="a.bin", text="y" * (101 * KiB)
        )
        assert await _usage(c) == await _truth(c) == (1, 99 * KiB)


async def test_file_ids_copies_count_and_over_quota_leave_nothing(env_factory: EnvFactory) -> None:
    async with env_factory(max_session_bytes=100 * KiB, max_containers=3) as env, env.session("s") as c:
        src = (await ok(c, "container_create", name="src"))["id"]
        fid = (await ok(c, "file_create", container_id=src, path="big.bin", text="z" * (60 * KiB)))["id"]
        text = await err(c, "container_create", name="copy", file_ids=[fid, fid, fid])
        assert "CONTAINER_MCP_MAX_SESSION_BYTES" in text
        assert [x["name"] for x in (await ok(c, "container_list"))["data"]] == ["src"]
        assert await _usage(c) == await _truth(c) == (1, 60 * KiB)
        assert (await ok(c, "session_usage"))["containers"]["used"] == 1


async def test_containers_quota_holds_under_concurrent_create_and_delete(env_factory: EnvFactory) -> None:
    async with env_factory(max_containers=3) as env, env.session("s") as c:
        ids = [(await ok(c, "container_create", name=f"c{i}"))["id"] for i in range(3)]
        created: list[str] = []

        async def create(i: int) -> None:
            r = await c.call_tool("container_create", {"name": f"n{i}"})
            if not r.is_error:
                created.append(r.structured_content["id"])

        async with anyio.create_task_group() as tg:
            tg.start_soon(c.call_tool, "container_delete", {"container_id": ids[0]})
            for i in range(20):
                tg.start_soon(create, i)
        live = [x for x in (await ok(c, "container_list", limit=100))["data"] if x["status"] == "running"]
        assert len(live) <= 3
        assert (await ok(c, "session_usage"))["containers"]["used"] == len(live)


async def test_usage_returns_to_zero_after_deletes_and_expiry(env_factory: EnvFactory) -> None:
    async with env_factory() as env, env.session("s") as c:
        a = (await ok(c, "container_create", name="a", expires_after_minutes=1))["id"]
        b = (await ok(c, "container_create", name="b", expires_after_minutes=5))["id"]
        f = (await ok(c, "file_create", container_id=a, path="x", text="x" * 100))["id"]
        await ok(c, "file_create", container_id=b, path="y", text="y" * 50)
        await ok(c, "file_delete", container_id=a, file_id=f)
        # a second delete answers not found and must not release the bytes twice
        assert "not found" in await err(c, "file_delete", container_id=a, file_id=f)
        assert await _usage(c) == (1, 50)
        env.clock.advance(6 * 60)
        u = await ok(c, "session_usage")
        assert (u["containers"]["used"], u["files"], u["stored_bytes"]["used"]) == (0, 0, 0)


async def test_expired_containers_bytes_stop_counting_for_uploads(env_factory: EnvFactory) -> None:
    """Was a bug (fixed in HEAD while this suite was written, commit d46607f): an expired
    container's bytes kept counting against max_session_bytes for uploads until something called
    ``reconcile``. Kept as a regression test."""
    async with env_factory(max_session_bytes=1 << 20) as env, env.session("s") as c:
        old = (await ok(c, "container_create", name="old", expires_after_minutes=1))["id"]
        new = (await ok(c, "container_create", name="new", expires_after_minutes=60))["id"]
        await ok(c, "file_create", container_id=old, path="big.bin", text="o" * (900 * KiB))
        env.clock.advance(5 * 60)
        await env.provider.sweep()  # the reaper runs: the old container's files are gone
        result = await c.call_tool("file_create", {"container_id": new, "path": "n.bin", "text": "n" * (300 * KiB)})
        assert result.is_error is False, result.content


async def test_deleting_a_file_a_command_is_shrinking_keeps_counters_true(env_factory: EnvFactory) -> None:
    """BUG: ``ContainerService.delete_file`` reads the file's size before the provider's lock and
    releases that stale size; if a running command shrinks the file meanwhile, both the command's
    delta and the stale size are released, so stored_bytes under-counts (clamped at 0) and the
    session can store more than max_session_bytes."""
    async with env_factory(exec_=True) as env, env.session("s") as c:
        cid = (await ok(c, "container_create", name="x"))["id"]
        await ok(c, "file_create", container_id=cid, path="keep.bin", text="k" * (64 * KiB))
        fid = (await ok(c, "file_create", container_id=cid, path="big.bin", text="b" * (64 * KiB)))["id"]

        async def shrink() -> None:
            await ok(c, "container_exec", container_id=cid, command="sleep 0.6; : > big.bin")

        async with anyio.create_task_group() as tg:
            tg.start_soon(shrink)
            await anyio.sleep(0.3)  # the command is running and holds the container's lock
            tg.start_soon(c.call_tool, "file_delete", {"container_id": cid, "file_id": fid})
        assert await _truth(c) == (1, 64 * KiB)
        assert await _usage(c) == (1, 64 * KiB)  # fails today: stored_bytes says 0


async def test_rate_limit_holds_under_concurrency(env_factory: EnvFactory) -> None:
    async with env_factory(max_calls_per_minute=5) as env, env.session("s") as c:
        results: list[str] = []

        async def one() -> None:
            r = await c.call_tool("container_list", {})
            results.append("err" if r.is_error else "ok")

        async with anyio.create_task_group() as tg:
            for _ in range(25):
                tg.start_soon(one)
        assert results.count("ok") == 5
        text = await err(c, "container_create", name="x")
        assert "CONTAINER_MCP_MAX_CALLS_PER_MINUTE" in text and "Wait about" in text
        env.clock.advance(121)
        await ok(c, "container_list")


async def test_rate_limit_covers_every_tool(env_factory: EnvFactory) -> None:
    """BUG (low): session_usage (and resources/read container://usage) never count against
    max_calls_per_minute (``ContainerService.usage`` skips ``_call``), though each one queries the
    provider once per live container: an agent can spin on it without limit."""
    async with env_factory(max_calls_per_minute=3) as env, env.session("s") as c:
        for _ in range(3):
            await ok(c, "container_list")
        result = await c.call_tool("session_usage", {})
        assert result.is_error is True, "session_usage ran past the per-minute budget"


async def test_exec_output_is_not_stored_and_is_capped(env_factory: EnvFactory) -> None:
    async with env_factory(exec_=True, max_session_bytes=64 * KiB) as env, env.session("s") as c:
        cid = (await ok(c, "container_create", name="x"))["id"]
        r = await ok(
            c, "container_exec", container_id=cid, command="head -c 5000000 /dev/zero; head -c 5000000 /dev/zero >&2"
        )
        assert r["stdout_truncated"] and r["stderr_truncated"]
        # head + tail kept, plus an omission marker line (NULs are six bytes each in JSON: cut further)
        assert len(r["stdout"]) + len(r["stderr"]) <= env.settings.exec_max_output_bytes + 128
        assert "omitted ...]" in r["stdout"] and "omitted ...]" in r["stderr"]
        assert r["stdout_bytes"] == 5_000_000
        assert await _usage(c) == (0, 0)


async def test_exec_cannot_exceed_file_or_byte_quotas(env_factory: EnvFactory) -> None:
    async with (
        env_factory(exec_=True, max_files_per_container=3, max_session_bytes=64 * KiB, max_file_bytes=48 * KiB) as env,
        env.session("s") as c,
    ):
        cid = (await ok(c, "container_create", name="x"))["id"]
        await ok(c, "file_create", container_id=cid, path="orig.txt", text="orig")
        for cmd, limit in [
            ("for i in $(seq 10); do echo $i > f$i; done", "CONTAINER_MCP_MAX_FILES_PER_CONTAINER"),
            ("head -c 40000 /dev/zero > a; head -c 30000 /dev/zero > b", "CONTAINER_MCP_MAX_SESSION_BYTES"),
        ]:
            text = await err(c, "container_exec", container_id=cid, command=cmd)
            assert limit in text and "discarded" in text, text
        r = await c.call_tool("container_exec", {"container_id": cid, "command": "head -c 60000 /dev/zero > huge"})
        # a single file over max_file_bytes: either RLIMIT_FSIZE stops it or the approval refuses it
        if not r.is_error:
            sizes = [f["bytes"] for f in r.structured_content["files_created"]]
            assert all(s <= env.settings.max_file_bytes for s in sizes), sizes
        files, stored = await _truth(c)
        assert stored <= 64 * KiB and files <= 3
        assert await _usage(c) == (files, stored)
