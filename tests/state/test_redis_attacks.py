"""Attacks on the Redis ledger: a Redis that is up but holds the wrong data, names that look like
Redis syntax. Each was a break in the first version; a real redis-server throughout."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from container_mcp.errors import ContainerMCPError, QuotaExceeded, StateUnavailable
from container_mcp.ledger.base import Limits
from container_mcp.ledger.redis import RedisLedger

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
