"""Attacks on the Redis ledger: a Redis that is up but holds the wrong data, names that look like
Redis syntax. Each was a break in the first version; a real redis-server throughout."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx2 as httpx
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from container_mcp.errors import ContainerMCPError, QuotaExceeded, StateUnavailable
from container_mcp.ledger.base import Limits
from container_mcp.ledger.redis import RedisLedger
from container_mcp.models import ContainerFile, ContainerSpec, ListParams
from container_mcp.providers.local import LocalProvider
from container_mcp.service import ContainerService
from container_mcp.uploads import BytesUpload

from ..processes import console_script, started
from ..redis_server import RedisServer, redis_server

pytestmark = pytest.mark.anyio

ONE = Limits(
    max_containers=1, max_files_per_container=3, max_file_bytes=100, max_session_bytes=250, max_calls_per_minute=50
)


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with redis_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture
async def raw(redis: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis.url)
    yield client
    await client.aclose()


async def test_a_flushed_redis_leaves_every_process_hashing_session_keys_alike(
    redis: RedisServer, raw: aioredis.Redis
) -> None:
    """After FLUSHDB a process that opens the ledger made a new secret, while the running ones kept
    the old: the same session was two owners, each with the whole quota."""
    old = await RedisLedger.open(redis.url)
    try:
        await raw.flushdb()
        new = await RedisLedger.open(redis.url)
        try:
            held = 0
            for i, ledger in enumerate((new, old, new, old)):
                try:
                    await ledger.commit(await ledger.reserve("s", "x", 0.0, ONE), f"cntr_{i}", i, "{}")
                    held += 1
                except QuotaExceeded:
                    pass
                except StateUnavailable as exc:  # a process learning of the reset may say so once
                    assert "reset" in str(exc)
            assert held == 1
            assert old.digest("s") == new.digest("s")
            assert (await old.usage("s", 0.0)).containers == (await new.usage("s", 0.0)).containers == 1
            assert await old.owns("s", "cntr_0")
        finally:
            await new.aclose()
    finally:
        await old.aclose()


async def test_a_flush_with_no_new_process_keeps_the_secret(redis: RedisServer, raw: aioredis.Redis) -> None:
    ledger = await RedisLedger.open(redis.url)
    try:
        before = ledger.digest("s")
        await raw.flushdb()
        await ledger.reserve("s", "x", 0.0, ONE)  # the secret is put back: no error, no new owner
        assert ledger.digest("s") == before
        with pytest.raises(QuotaExceeded):
            await ledger.reserve("s", "x", 0.0, ONE)
    finally:
        await ledger.aclose()


@pytest.mark.parametrize("key", ["cmcp:totals", "cmcp:c:cntr_a", "cmcp:o:{owner}:live"])
async def test_another_apps_key_of_the_wrong_type_is_a_clear_error(
    redis: RedisServer, raw: aioredis.Redis, key: str
) -> None:
    ledger = await RedisLedger.open(redis.url)
    try:
        await raw.set(key.format(owner=ledger.digest("s")), "not ours")
        with pytest.raises(ContainerMCPError) as info:
            await ledger.commit(await ledger.reserve("s", "x", 0.0, ONE), "cntr_a", 1, "{}")
            await ledger.usage("s", 0.0)
        assert isinstance(info.value, StateUnavailable)
        assert "WRONGTYPE" not in str(info.value) and "script" not in str(info.value).lower()
        assert "CONTAINER_MCP_STATE_URL" in str(info.value.hint)
    finally:
        await ledger.aclose()


@pytest.mark.parametrize("name", ["*", "a?b", "[x]", "s:n:other", "cmcp:o:*", "x\x00y", ""])
async def test_names_that_look_like_redis_syntax_stay_names(redis: RedisServer, name: str) -> None:
    ledger = await RedisLedger.open(redis.url)
    try:
        wide = Limits(9, 9, 9, 9, 99)
        await ledger.commit(await ledger.reserve("s", name, 0.0, wide), "cntr_a", 1, "{}")
        await ledger.commit(await ledger.reserve("s", "plain", 0.0, wide), "cntr_b", 2, "{}")
        rows, more = await ledger.page("s", limit=10, order="asc", after=None, name=name)
        assert [r.container_id for r in rows] == ["cntr_a"] and not more
        rows, _ = await ledger.page("s", limit=10, order="asc", after=None, name=None)
        assert [r.container_id for r in rows] == ["cntr_a", "cntr_b"]
        await ledger.forget("cntr_a")
        rows, _ = await ledger.page("s", limit=10, order="asc", after=None, name=name)
        assert rows == []
    finally:
        await ledger.aclose()


# --- Redis failing in the middle of an operation -------------------------------------------------


def _lost_reply(ledger: RedisLedger, script: str, *, times: int = 1) -> list[int]:
    """Make ``script`` run on Redis, then fail as a connection dropped before the reply would."""
    original = getattr(ledger, script)
    left = [times]

    async def run(**kwargs: Any) -> Any:
        result = await original(**kwargs)
        if left[0] > 0:
            left[0] -= 1
            raise RedisConnectionError("Connection closed by server.")
        return result

    setattr(ledger, script, run)
    return left


def _refused(ledger: RedisLedger, script: str, *, times: int = 1) -> None:
    """Make ``script`` fail before it reaches Redis (the connection was down at that moment)."""
    original = getattr(ledger, script)
    left = [times]

    async def run(**kwargs: Any) -> Any:
        if left[0] > 0:
            left[0] -= 1
            raise RedisConnectionError("Error 111 connecting to 127.0.0.1. Connection refused.")
        return await original(**kwargs)

    setattr(ledger, script, run)


@pytest.fixture
async def service(redis: RedisServer, tmp_path: Path) -> AsyncIterator[ContainerService]:
    ledger = await RedisLedger.open(redis.url)
    try:
        async with LocalProvider(tmp_path / "local") as provider:
            yield ContainerService(provider, ledger, ONE)
    finally:
        await ledger.aclose()


def _ledger(service: ContainerService) -> RedisLedger:
    assert isinstance(service.ledger, RedisLedger)
    return service.ledger


@pytest.mark.parametrize("script", ["_reserve", "_commit"])
@pytest.mark.parametrize("fault", [_refused, _lost_reply])
async def test_a_create_whose_ledger_call_fails_holds_no_slot(
    service: ContainerService, fault: Any, script: str
) -> None:
    fault(_ledger(service), script)
    with pytest.raises(StateUnavailable):
        await service.create_container("s", ContainerSpec(name="a"))
    assert (await service.usage("s")).containers.used == 0
    made = await service.create_container("s", ContainerSpec(name="b"))  # the one slot is free
    assert [c.id for c in (await service.list_containers("s", ListParams())).data] == [made.id]


async def test_a_charge_whose_reply_was_lost_is_taken_back(service: ContainerService) -> None:
    box = await service.create_container("s", ContainerSpec(name="a"))
    _lost_reply(_ledger(service), "_charge")
    with pytest.raises(StateUnavailable):
        await service.create_file("s", box.id, "a.txt", BytesUpload(b"x" * 100))
    usage = await service.usage("s")
    assert (usage.files, usage.stored_bytes.used) == (0, 0)  # nothing was stored, nothing is counted
    await service.create_file("s", box.id, "a.txt", BytesUpload(b"x" * 100))
    usage = await service.usage("s")
    assert (usage.files, usage.stored_bytes.used) == (1, 100)


async def test_a_refund_whose_reply_was_lost_is_taken_back(service: ContainerService) -> None:
    box = await service.create_container("s", ContainerSpec(name="a"))
    made = await service.create_file("s", box.id, "a.txt", BytesUpload(b"x" * 100))
    _lost_reply(_ledger(service), "_charge")  # a deletion is charged as a negative change
    with pytest.raises(StateUnavailable):
        await service.delete_file("s", box.id, made.id)
    usage = await service.usage("s")
    assert (usage.files, usage.stored_bytes.used) == (1, 100)  # the file is still there, still counted
    assert [f.id for f in (await service.list_files("s", box.id, ListParams())).data] == [made.id]


async def test_a_charge_that_lands_after_it_was_taken_back_changes_nothing(service: ContainerService) -> None:
    """A script Redis runs only after the client gave up on it (a timeout) and took it back."""
    ledger = _ledger(service)
    box = await service.create_container("s", ContainerSpec(name="a"))
    original = ledger._charge
    late: list[dict[str, Any]] = []

    async def give_up(**kwargs: Any) -> Any:
        late.append(kwargs)
        raise RedisTimeoutError("Timeout reading from 127.0.0.1:6379")

    ledger._charge = give_up
    with pytest.raises(StateUnavailable):
        await service.create_file("s", box.id, "a.txt", BytesUpload(b"x" * 100))
    ledger._charge = original
    await original(**late[0])  # it arrives now
    usage = await service.usage("s")
    assert (usage.files, usage.stored_bytes.used) == (0, 0)


@pytest.mark.parametrize("script", ["_put_files", "_drop_files"])
async def test_an_operation_done_before_redis_dropped_succeeds_and_the_index_catches_up(
    service: ContainerService, script: str
) -> None:
    box = await service.create_container("s", ContainerSpec(name="a"))
    kept = await service.create_file("s", box.id, "kept.txt", BytesUpload(b"k"))
    gone = await service.create_file("s", box.id, "gone.txt", BytesUpload(b"g"))
    _refused(_ledger(service), script)
    if script == "_put_files":
        made = await service.create_file("s", box.id, "new.txt", BytesUpload(b"n"))  # stored: no 503
        expected = {kept.id, gone.id, made.id}
    else:
        await service.delete_file("s", box.id, gone.id)  # deleted: no 503
        expected = {kept.id}
    files, _ = await service.file_index("s", after=None, limit=10)
    assert {f.id for f in files} == expected
    assert (await service.usage("s")).files == len(expected)


# --- a Redis URL with a password --------------------------------------------------------------

PASSWORD = "redis-pw-9f8e7d6c5b4a"


def _env(**extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONUNBUFFERED": "1",
        "CONTAINER_MCP_OPENAI_API_KEY": "sk-test-unused-0123456789",
        "CONTAINER_MCP_OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        **extra,
    }


async def test_a_redis_password_never_reaches_the_log_and_on_argv_is_warned_about(
    redis: RedisServer, raw: aioredis.Redis, tmp_path: Path
) -> None:
    await raw.config_set("requirepass", PASSWORD)
    url = redis.url.replace("redis://", f"redis://:{PASSWORD}@")
    argv = [console_script(), "api", "--provider", "openai", "--data-dir", str(tmp_path / "d"), "--port", "0",
            "--log-level", "DEBUG", "--state-url", url]  # fmt: skip
    async with started(argv, _env()) as server:
        async with httpx.AsyncClient(base_url=server.origin + "/v1", trust_env=False) as http:
            assert (await http.get("/containers")).json()["data"] == []  # it serves, from that Redis
        seen = (await server.stop()).decode()
    assert PASSWORD not in seen
    assert "--state-url" in seen and "/proc/<pid>/cmdline" in seen and "CONTAINER_MCP_STATE_URL" in seen
    # A wrong password is named as such, not as a server that cannot be reached.
    wrong = redis.url.replace("redis://", "redis://:not-the-password@")
    done = await anyio.run_process(
        [console_script(), "api", "--provider", "openai", "--data-dir", str(tmp_path / "e"), "--port", "0"],
        env=_env(CONTAINER_MCP_STATE_URL=wrong),
        check=False,
    )
    err = done.stderr.decode()
    assert done.returncode == 1 and "not-the-password" not in err and PASSWORD not in err
    assert "refused the credentials" in err and "Traceback" not in err


async def test_the_file_views_do_no_work_per_expired_container(redis: RedisServer, raw: aioredis.Redis) -> None:
    """resources/list, file-id resolution and the index check walked every container the owner
    ever had: with thousands expired, each page held the one Redis every replica shares."""
    ledger = await RedisLedger.open(redis.url)
    try:
        wide = Limits(10**6, 9, 9, 10**6, 10**6)
        for i in range(300):
            await ledger.commit(await ledger.reserve("s", "x", 0.0, wide), f"cntr_{i:04d}", i, "{}")
            await ledger.mark_expired(f"cntr_{i:04d}")
        await ledger.commit(await ledger.reserve("s", "x", 0.0, wide), "cntr_live", 1000, "{}")
        await ledger.put_files("cntr_live", [_file("cntr_live", "cfile_a", "/mnt/data/a")])
        await raw.config_resetstat()
        page, more = await ledger.file_page("s", None, 10)
        assert [f.id for _, f in page] == ["cfile_a"] and not more
        assert await ledger.locate("s", "cfile_a") == "cntr_live"
        assert await ledger.unindexed("s") == []
        stats = await raw.info("commandstats")
        inside = sum(v["calls"] for k, v in stats.items() if k not in ("cmdstat_evalsha", "cmdstat_config"))
        assert inside < 40, stats  # a few calls per view, not one per container (was over 900)
    finally:
        await ledger.aclose()


def _file(container_id: str, file_id: str, path: str) -> ContainerFile:
    return ContainerFile(id=file_id, container_id=container_id, created_at=1, bytes=1, path=path, source="user")


async def test_a_read_only_replica_is_a_clear_error_that_names_why(redis: RedisServer, raw: aioredis.Redis) -> None:
    ledger = await RedisLedger.open(redis.url)
    try:
        await raw.replicaof("127.0.0.1", "1")  # a replica of nothing: every write is refused
        with pytest.raises(StateUnavailable) as info:
            await ledger.reserve("s", "x", 0.0, ONE)
        assert "read-only replica" in str(info.value) and "READONLY" not in str(info.value)
        assert "primary" in str(info.value.hint)
        await raw.replicaof("NO", "ONE")
        await ledger.reserve("s", "x", 0.0, ONE)
    finally:
        await ledger.aclose()
