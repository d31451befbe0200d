"""Issue 8 item 4: four server processes (``--provider openai``) share one real redis-server.

Ownership, the container quota and the rate limit hold across the processes exactly as inside
one; a Redis that goes away gives a clear, retryable error and no wrong count.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import pytest

from ..processes import ServerProcess
from ..redis_server import RedisServer, redis_server
from .replicas import KEYS, UPSTREAM_KEY, client, replicas, upstream

pytestmark = pytest.mark.anyio

LIMIT = 5
CALLS = 80


@dataclass
class Cluster:
    redis: RedisServer
    upstream: ServerProcess
    replicas: list[ServerProcess]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    tmp = tmp_path_factory.mktemp("replicas")
    async with redis_server(tmp / "redis") as redis, upstream(tmp) as up:
        flags = ["--max-containers", str(LIMIT), "--max-calls-per-minute", str(CALLS)]
        async with replicas(tmp, up.origin, redis.url, 4, *flags) as procs:
            yield Cluster(redis, up, procs)


async def _upstream_ids(cluster: Cluster) -> set[str]:
    async with client(cluster.upstream.origin, UPSTREAM_KEY) as http:
        page = (await http.get("/containers", params={"limit": 100})).raise_for_status().json()
    return {c["id"] for c in page["data"]}


async def test_sixty_concurrent_creates_over_four_processes_yield_exactly_the_limit(cluster: Cluster) -> None:
    before = await _upstream_ids(cluster)
    statuses: list[int] = []
    bodies: list[Any] = []

    async def create(i: int) -> None:
        async with client(cluster.replicas[i % 4].origin, KEYS[0]) as http:
            r = await http.post("/containers", json={"name": f"c{i}"})
            statuses.append(r.status_code)
            bodies.append(r.json())

    async with anyio.create_task_group() as tg:
        for i in range(60):
            tg.start_soon(create, i)
    assert sorted(statuses) == [200] * LIMIT + [403] * (60 - LIMIT)
    refused = [b for b in bodies if "error" in b]
    assert all("CONTAINER_MCP_MAX_CONTAINERS" in b["error"]["message"] for b in refused)
    made = {b["id"] for b in bodies if "id" in b}
    assert (await _upstream_ids(cluster)) - before == made  # nothing half-created behind a refusal
    for proc in cluster.replicas:  # every process lists the same five
        async with client(proc.origin, KEYS[0]) as http:
            listed = (await http.get("/containers", params={"limit": 100})).raise_for_status().json()
        assert {c["id"] for c in listed["data"]} == made


async def test_ownership_holds_across_processes(cluster: Cluster) -> None:
    a, b = cluster.replicas[0], cluster.replicas[1]
    async with client(a.origin, KEYS[1]) as mine:
        cid = (await mine.post("/containers", json={"name": "mine"})).raise_for_status().json()["id"]
    async with client(b.origin, KEYS[2]) as other:
        r = await other.get(f"/containers/{cid}")
        assert r.status_code == 404  # another session on another process: not found, like no container
        assert (await other.delete(f"/containers/{cid}")).status_code == 404
        assert (await other.get("/containers")).json()["data"] == []
    async with client(b.origin, KEYS[1]) as same:
        assert (await same.get(f"/containers/{cid}")).raise_for_status().json()["id"] == cid
        up = await same.post(f"/containers/{cid}/files", files={"file": ("x.txt", b"hello")})
        assert up.status_code == 200
    async with client(cluster.replicas[2].origin, KEYS[1]) as again:
        files = (await again.get(f"/containers/{cid}/files")).raise_for_status().json()["data"]
        assert [f["bytes"] for f in files] == [5]
        assert (await again.delete(f"/containers/{cid}")).status_code == 200
    async with client(a.origin, KEYS[1]) as mine:
        assert (await mine.get(f"/containers/{cid}")).status_code == 404  # gone for every process


async def test_the_rate_limit_is_shared_by_the_processes(cluster: Cluster) -> None:
    outcomes: list[int] = []
    for i in range(CALLS):  # spread round-robin: no process alone sees more than a quarter
        async with client(cluster.replicas[i % 4].origin, KEYS[3]) as http:
            outcomes.append((await http.get("/containers")).status_code)
    assert outcomes == [200] * CALLS
    for proc in cluster.replicas:
        async with client(proc.origin, KEYS[3]) as http:
            r = await http.get("/containers")
        assert r.status_code == 429 and "CONTAINER_MCP_MAX_CALLS_PER_MINUTE" in r.json()["error"]["message"]
        assert int(r.headers["retry-after"]) >= 1


async def test_redis_going_away_gives_a_clear_error_and_no_wrong_count(cluster: Cluster) -> None:
    """Killed, then restarted from its append-only file: refused calls change nothing, and the
    quota counts exactly what exists once it is back (this test runs last: it restarts Redis)."""
    key = KEYS[2]
    async with client(cluster.replicas[0].origin, key) as http:
        kept = [
            (await http.post("/containers", json={"name": f"k{i}"})).raise_for_status().json()["id"] for i in range(2)
        ]
    before = await _upstream_ids(cluster)
    await cluster.redis.stop(kill=True)
    for proc in cluster.replicas:
        async with client(proc.origin, key) as http:
            r = await http.post("/containers", json={"name": "during"})
        assert r.status_code == 503
        error = r.json()["error"]
        assert error["code"] == "state_unavailable" and "CONTAINER_MCP_STATE_URL" in error["message"]
    assert await _upstream_ids(cluster) == before  # nothing was created while the ledger was away
    await cluster.redis.start()
    async with client(cluster.replicas[3].origin, key) as http:
        listed = (await http.get("/containers", params={"limit": 100})).raise_for_status().json()
        assert sorted(c["id"] for c in listed["data"]) == sorted(kept)
        made = [(await http.post("/containers", json={"name": f"m{i}"})).status_code for i in range(LIMIT)]
    assert made == [200] * (LIMIT - 2) + [403, 403]  # exactly the remaining slots, no leaked reservation
