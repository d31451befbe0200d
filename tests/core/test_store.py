"""Quota bookkeeping: atomic, race-free, and exact under concurrency."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from container_mcp.clock import ManualClock
from container_mcp.errors import QuotaExceeded, RateLimited, render
from container_mcp.ledger.base import Limits
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.models import ContainerSpec, ListParams
from container_mcp.providers.local import LocalProvider
from container_mcp.service import ContainerService

pytestmark = pytest.mark.anyio

LIMITS = Limits(
    max_containers=5,
    max_files_per_container=3,
    max_file_bytes=100,
    max_session_bytes=250,
    max_calls_per_minute=10_000,
)


async def test_fifty_concurrent_creates_yield_exactly_the_limit(tmp_path: Path) -> None:
    clock = ManualClock()
    store = SqliteLedger()
    async with LocalProvider(tmp_path, clock=clock) as provider:
        service = ContainerService(provider, store, LIMITS, clock=clock)
        outcomes: list[str] = []

        async def create(i: int) -> None:
            try:
                await service.create_container("s1", ContainerSpec(name=f"c{i}"))
                outcomes.append("ok")
            except QuotaExceeded as exc:
                assert "5 of 5" in exc.message and "CONTAINER_MCP_MAX_CONTAINERS" in render(exc, "mcp")
                outcomes.append("quota")

        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(create, i)
        assert outcomes.count("ok") == 5
        assert outcomes.count("quota") == 45
        page = await provider.list_containers(ListParams(limit=100))
        assert len(page.data) == 5  # nothing half-created behind the refusals
        # another session has its own quota
        await service.create_container("s2", ContainerSpec(name="other"))


async def test_reservation_of_a_crashed_create_stops_counting() -> None:
    store = SqliteLedger()
    for _ in range(5):
        await store.reserve("s", "x", 1000.0, LIMITS)
    with pytest.raises(QuotaExceeded):
        await store.reserve("s", "x", 1000.0, LIMITS)
    await store.reserve("s", "x", 1000.0 + 601, LIMITS)


async def test_bytes_and_files_limits_are_checked_before_applying() -> None:
    store = SqliteLedger()
    r = await store.reserve("s", "x", 0.0, LIMITS)
    await store.commit(r, "cntr_a", 0, "{}")
    await store.charge("s", "cntr_a", 1, 200, LIMITS)
    with pytest.raises(QuotaExceeded) as info:
        await store.charge("s", "cntr_a", 1, 60, LIMITS)
    assert "CONTAINER_MCP_MAX_SESSION_BYTES" in info.value.message
    await store.charge("s", "cntr_a", 2, 50, LIMITS)
    with pytest.raises(QuotaExceeded) as info:
        await store.charge("s", "cntr_a", 1, 0, LIMITS)
    assert "CONTAINER_MCP_MAX_FILES_PER_CONTAINER" in render(info.value, "mcp")
    usage = await store.usage("s", 0.0)
    assert (usage.containers, usage.files, usage.bytes) == (1, 3, 250)
    await store.release("cntr_a", 1, 50)
    usage = await store.usage("s", 0.0)
    assert (usage.files, usage.bytes) == (2, 200)
    await store.mark_expired("cntr_a")
    usage = await store.usage("s", 0.0)
    assert (usage.containers, usage.files, usage.bytes) == (0, 0, 0)


async def test_rate_limit_counts_a_sliding_minute() -> None:
    store = SqliteLedger()
    limits = Limits(5, 5, 5, 5, max_calls_per_minute=3)
    now = 6000.0
    for _ in range(3):
        await store.hit("s", now, limits)
    with pytest.raises(RateLimited) as info:
        await store.hit("s", now + 1, limits)
    assert info.value.retry_after > 0 and "CONTAINER_MCP_MAX_CALLS_PER_MINUTE" in info.value.message
    await store.hit("other", now + 1, limits)
    await store.hit("s", now + 121, limits)


async def test_state_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite3"
    store = SqliteLedger(path)
    r = await store.reserve("s", "x", 0.0, LIMITS)
    await store.commit(r, "cntr_a", 0, "{}")
    await store.aclose()
    store = SqliteLedger(path)
    assert await store.owns("s", "cntr_a") and not await store.owns("t", "cntr_a")
    await store.aclose()


async def test_a_cancelled_caller_never_cuts_a_transaction_short() -> None:
    """A charge whose caller is cancelled while it runs in its worker thread still lands whole:
    counters equal what the ledger says was charged, never half of it."""
    store = SqliteLedger()
    r = await store.reserve("s", "x", 0.0, LIMITS)
    await store.commit(r, "cntr_a", 0, "{}")
    with anyio.CancelScope() as scope:
        scope.cancel()
        await store.charge("s", "cntr_a", 1, 10, LIMITS)
    usage = await store.usage("s", 0.0)
    assert (usage.files, usage.bytes) == (1, 10)


async def test_a_database_without_the_view_column_gains_it_and_keeps_its_rows(tmp_path: Path) -> None:
    """A data dir an older version wrote has no ``meta`` column; opening it adds one, rows intact."""
    db_path = tmp_path / "state.db"
    old = sqlite3.connect(db_path)
    old.executescript(
        "CREATE TABLE owned (container_id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, "
        "created_at INTEGER NOT NULL, state TEXT NOT NULL, files INTEGER NOT NULL DEFAULT 0, "
        "bytes INTEGER NOT NULL DEFAULT 0, reserved_at REAL);"
        "INSERT INTO owned VALUES ('cntr_old', 'stdio:local', 'kept', 7, 'live', 2, 30, NULL);"
    )
    old.commit()
    old.close()
    store = SqliteLedger(db_path)
    try:
        row = await store.get("cntr_old")
        assert row is not None and (row.name, row.files, row.bytes, row.meta) == ("kept", 2, 30, None)
        await store.record("cntr_old", '{"seen": true}')
        again = await store.get("cntr_old")
        assert again is not None and again.meta == '{"seen": true}'
    finally:
        store.close()


async def test_a_call_counted_while_another_process_writes_waits_in_the_worker_thread(tmp_path: Path) -> None:
    """The rate-limit count is tried on the event loop without waiting for the write lock; while
    another process holds it, the count goes to the worker thread and lands once the lock is free."""
    path = tmp_path / "sessions.sqlite3"
    store = SqliteLedger(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await store.hit("s", 6000.0, LIMITS)
        other.execute("BEGIN IMMEDIATE")  # another process mid-write
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.hit, "s", 6000.0, LIMITS)
            await anyio.wait_all_tasks_blocked()  # the loop is free: the count waits in its thread
            other.execute("COMMIT")
        assert (await store.usage("s", 6000.0)).calls_last_minute == 2
    finally:
        other.close()
        await store.aclose()
