"""Both ledgers keep the same books: one suite run against SQLite and against a real redis-server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from pydantic import ValidationError

from container_mcp.cli import parse_args
from container_mcp.errors import InvalidRequest, QuotaExceeded, RateLimited, StateUnavailable
from container_mcp.ledger.base import Ledger, Limits
from container_mcp.ledger.redis import RedisLedger
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.models import ContainerFile
from container_mcp.providers.local import LocalProvider
from container_mcp.service import ContainerService
from container_mcp.settings import Settings

from ..redis_server import RedisServer, redis_server

pytestmark = pytest.mark.anyio

LIMITS = Limits(
    max_containers=3, max_files_per_container=3, max_file_bytes=100, max_session_bytes=250, max_calls_per_minute=5
)


@pytest.fixture
async def redis(tmp_path: Path) -> AsyncIterator[RedisServer]:
    async with redis_server(tmp_path / "redis") as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Ledger]:
    if request.param == "sqlite":
        sqlite = SqliteLedger(tmp_path / "s.sqlite3")
        yield sqlite
        await sqlite.aclose()
        return
    async with redis_server(tmp_path / "redis") as server:
        red = await RedisLedger.open(server.url)
        yield red
        await red.aclose()


async def _own(ledger: Ledger, owner: str, container_id: str, created_at: int, name: str = "c") -> None:
    await ledger.commit(await ledger.reserve(owner, name, 0.0, LIMITS), container_id, created_at, "{}")


async def test_concurrent_reservations_hold_exactly_the_limit(ledger: Ledger) -> None:
    won: list[str] = []

    async def reserve() -> None:
        try:
            won.append(await ledger.reserve("s", "x", 0.0, LIMITS))
        except QuotaExceeded as exc:
            assert exc.limit_name == "CONTAINER_MCP_MAX_CONTAINERS" and exc.used == 3

    async with anyio.create_task_group() as tg:
        for _ in range(20):
            tg.start_soon(reserve)
    assert len(won) == 3
    await ledger.cancel(won[0])  # a cancelled reservation frees its slot
    await ledger.reserve("s", "x", 0.0, LIMITS)
    with pytest.raises(QuotaExceeded):
        await ledger.reserve("s", "x", 0.0, LIMITS)
    await ledger.reserve("s", "x", 601.0, LIMITS)  # reservations of crashed creates stop counting


async def test_charges_are_checked_then_applied_and_totals_follow(ledger: Ledger) -> None:
    await _own(ledger, "s", "cntr_a", 1)
    await _own(ledger, "s", "cntr_b", 2)
    await ledger.charge("s", "cntr_a", 1, 200, LIMITS)
    with pytest.raises(QuotaExceeded) as info:
        await ledger.charge("s", "cntr_b", 1, 60, LIMITS)  # session bytes span containers
    assert info.value.limit_name == "CONTAINER_MCP_MAX_SESSION_BYTES" and info.value.used == 200
    await ledger.charge("s", "cntr_b", 2, 50, LIMITS)
    with pytest.raises(QuotaExceeded) as info:
        await ledger.charge("s", "cntr_b", 2, 0, LIMITS)
    assert info.value.limit_name == "CONTAINER_MCP_MAX_FILES_PER_CONTAINER"
    await ledger.release("cntr_b", 1, 20)
    await ledger.set_usage("cntr_a", 2, 10)
    usage = await ledger.usage("s", 0.0)
    assert (usage.containers, usage.files, usage.bytes) == (2, 3, 40)
    totals = await ledger.totals()
    assert (totals.containers, totals.files, totals.bytes) == (2, 3, 40)
    await ledger.mark_expired("cntr_a")
    await ledger.charge("s", "cntr_a", 1, 1, LIMITS)  # an expired container takes no charges
    assert (await ledger.usage("s", 0.0)).containers == 1
    await ledger.forget("cntr_b")
    totals = await ledger.totals()
    assert (totals.containers, totals.files, totals.bytes) == (0, 0, 0)
    assert [c.container_id for c in await ledger.live("s")] == []
    expired = await ledger.get("cntr_a")
    assert expired is not None and (expired.state, expired.files, expired.bytes) == ("expired", 0, 0)


async def test_ownership_is_by_session_key(ledger: Ledger) -> None:
    await _own(ledger, "alice", "cntr_a", 1)
    assert await ledger.owns("alice", "cntr_a")
    assert not await ledger.owns("bob", "cntr_a")
    assert not await ledger.owns("alice", "cntr_zz")
    stored = await ledger.get("cntr_a")
    assert stored is not None and "alice" not in stored.owner  # a digest, never the key


async def test_pages_follow_created_at_then_id_with_name_filter_and_bad_cursor(ledger: Ledger) -> None:
    for i, (cid, at) in enumerate([("cntr_c", 5), ("cntr_a", 5), ("cntr_b", 7), ("cntr_d", 3)]):
        await ledger.commit(
            await ledger.reserve("s", "even" if i % 2 == 0 else "odd", 0.0, Limits(9, 9, 9, 9, 9)), cid, at, "{}"
        )
    order = ["cntr_d", "cntr_a", "cntr_c", "cntr_b"]
    seen: list[str] = []
    after: str | None = None
    while True:
        rows, more = await ledger.page("s", limit=3, order="asc", after=after, name=None)
        seen += [r.container_id for r in rows]
        if not more:
            break
        after = rows[-1].container_id
    assert seen == order
    rows, more = await ledger.page("s", limit=10, order="desc", after="cntr_c", name=None)
    assert ([r.container_id for r in rows], more) == (["cntr_a", "cntr_d"], False)
    rows, _ = await ledger.page("s", limit=10, order="asc", after=None, name="even")
    assert [r.container_id for r in rows] == ["cntr_c", "cntr_b"]
    rows, _ = await ledger.page("s", limit=10, order="asc", after="cntr_a", name="even")  # anchor of another name
    assert [r.container_id for r in rows] == ["cntr_c", "cntr_b"]
    with pytest.raises(InvalidRequest, match="not one of your containers"):
        await ledger.page("other", limit=10, order="asc", after="cntr_a", name=None)


async def test_the_rate_limit_counts_a_sliding_minute(ledger: Ledger) -> None:
    for _ in range(5):
        await ledger.hit("s", 6000.0, LIMITS)
    with pytest.raises(RateLimited) as info:
        await ledger.hit("s", 6001.0, LIMITS)
    assert info.value.retry_after > 0
    await ledger.hit("other", 6001.0, LIMITS)
    assert (await ledger.usage("s", 6001.0)).calls_last_minute == 5
    await ledger.hit("s", 6121.0, LIMITS)


async def test_redis_down_is_a_clear_error_and_a_restart_keeps_the_books(redis: RedisServer) -> None:
    ledger = await RedisLedger.open(redis.url)
    try:
        await _own(ledger, "s", "cntr_a", 1)
        await ledger.charge("s", "cntr_a", 2, 100, LIMITS)
        await redis.stop(kill=True)  # a crash: the append-only file holds every acknowledged write
        with pytest.raises(StateUnavailable) as info:
            await ledger.charge("s", "cntr_a", 1, 1, LIMITS)
        assert "CONTAINER_MCP_STATE_URL" in str(info.value.hint) and info.value.code == "state_unavailable"
        with pytest.raises(StateUnavailable):
            await ledger.reserve("s", "x", 0.0, LIMITS)
        await redis.start()
        usage = await ledger.usage("s", 0.0)  # the same client reconnects by itself
        assert (usage.containers, usage.files, usage.bytes) == (1, 2, 100)
        assert await ledger.owns("s", "cntr_a")
    finally:
        await ledger.aclose()


async def test_opening_an_unreachable_redis_is_a_clear_error(tmp_path: Path) -> None:
    async with redis_server(tmp_path / "r") as server:
        url = server.url
    with pytest.raises(StateUnavailable, match="cannot be reached"):
        await RedisLedger.open(url)


def test_a_redis_ledger_with_the_local_provider_is_refused_at_start() -> None:
    """Local (and docker) containers are tracked in one host's data dir: sharing their books
    across hosts cannot be right."""
    url = parse_args(["--state-url", "redis://127.0.0.1:6379/0"]).state_url
    with pytest.raises(ValidationError, match="valid only with provider 'openai'"):
        Settings.isolated(state_url=url)
    with pytest.raises(ValidationError, match="valid only with provider 'openai': docker"):
        Settings.isolated(provider="docker", state_url=url)
    with pytest.raises(ValidationError, match="must be a Redis URL"):
        Settings.isolated(provider="openai", state_url="http://127.0.0.1:6379")
    settings = Settings.isolated(provider="openai", state_url="redis://:pw@127.0.0.1:1/0")
    assert settings.state_url is not None and "pw" not in repr(settings)  # a URL with a password is a secret


async def test_capabilities_say_which_ledger_is_in_force(redis: RedisServer, tmp_path: Path) -> None:
    async with LocalProvider(tmp_path / "local") as provider:
        ledger = await RedisLedger.open(redis.url)
        try:
            caps = ContainerService(provider, ledger, LIMITS).capabilities
            assert caps.state == "redis" and "every host using the same Redis" in caps.state_shared_by
        finally:
            await ledger.aclose()
        sqlite = SqliteLedger()
        assert ContainerService(provider, sqlite, LIMITS).capabilities.state == "sqlite"
        sqlite.close()


def _file(container_id: str, file_id: str, path: str, size: int = 1) -> ContainerFile:
    return ContainerFile(id=file_id, container_id=container_id, created_at=1, bytes=size, path=path, source="user")


async def test_the_file_index_follows_puts_replacements_and_drops(ledger: Ledger) -> None:
    await _own(ledger, "s", "cntr_a", 1)
    await ledger.put_files(
        "cntr_a", [_file("cntr_a", "cfile_1", "/mnt/data/x"), _file("cntr_a", "cfile_2", "/mnt/data/y")]
    )
    await ledger.put_files("cntr_a", [_file("cntr_a", "cfile_3", "/mnt/data/x", 9)])  # replaces cfile_1 at its path
    page, more = await ledger.file_page("s", None, 10)
    assert [(at, f.id, f.bytes) for at, f in page] == [(1, "cfile_2", 1), (1, "cfile_3", 9)] and not more
    assert await ledger.locate("s", "cfile_3") == "cntr_a"
    assert await ledger.locate("s", "cfile_1") is None
    assert await ledger.locate("other", "cfile_3") is None  # another owner's file is not found
    await ledger.drop_files("cntr_a", file_ids=["cfile_2"], paths=["/mnt/data/x"])
    assert (await ledger.file_page("s", None, 10))[0] == []
    await ledger.set_files("cntr_a", [_file("cntr_a", "cfile_4", "/mnt/data/z")])
    assert [f.id for _, f in (await ledger.file_page("s", None, 10))[0]] == ["cfile_4"]
    await ledger.mark_expired("cntr_a")  # an expired container's files are gone
    assert (await ledger.file_page("s", None, 10))[0] == []
    await ledger.put_files("cntr_a", [_file("cntr_a", "cfile_5", "/mnt/data/w")])  # and take no new ones
    assert await ledger.locate("s", "cfile_5") is None
    assert await ledger.unindexed("s") == []


async def test_file_pages_go_on_past_a_deleted_cursor_container(ledger: Ledger) -> None:
    for cid, at in (("cntr_a", 1), ("cntr_b", 2), ("cntr_c", 2), ("cntr_d", 3)):
        await ledger.commit(await ledger.reserve("s", "c", 0.0, Limits(9, 9, 9, 9, 9)), cid, at, "{}")
        await ledger.put_files(cid, [_file(cid, f"cfile_{cid[-1]}{i}", f"/mnt/data/{i}") for i in range(2)])
    page, more = await ledger.file_page("s", None, 3)
    assert [f.id for _, f in page] == ["cfile_a0", "cfile_a1", "cfile_b0"] and more
    cursor = (page[-1][0], page[-1][1].container_id, page[-1][1].id)
    await ledger.forget("cntr_b")  # the cursor's container goes between pages
    page, more = await ledger.file_page("s", cursor, 3)
    assert [f.id for _, f in page] == ["cfile_c0", "cfile_c1", "cfile_d0"] and more
    page, more = await ledger.file_page("s", (page[-1][0], page[-1][1].container_id, page[-1][1].id), 3)
    assert [f.id for _, f in page] == ["cfile_d1"] and not more


async def test_a_file_cursor_naming_another_owners_container_shows_only_ones_own(ledger: Ledger) -> None:
    await _own(ledger, "alice", "cntr_b", 2)
    await ledger.put_files("cntr_b", [_file("cntr_b", "cfile_secret", "/mnt/data/s")])
    await _own(ledger, "mallory", "cntr_a", 1)
    await _own(ledger, "mallory", "cntr_c", 3)
    await ledger.put_files("cntr_c", [_file("cntr_c", "cfile_mine", "/mnt/data/m")])
    for cursor in [(2, "cntr_b", ""), (2, "cntr_b", "cfile_a"), (0, "", ""), (2, "cntr_b", "cfile_secret")]:
        page, more = await ledger.file_page("mallory", cursor, 10)
        assert [f.id for _, f in page] == ["cfile_mine"] and not more
    assert await ledger.locate("mallory", "cfile_secret") is None
