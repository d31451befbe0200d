"""Listing cost of the local provider at scale: page 1 and a deep page of 100,000 containers.

Prints, side by side in one run, the time of one page (index walk from the cursor) and of a full
table scan of the same registry (the cost an O(n) implementation would pay), plus SQLite's plan.

    .venv/bin/python bench/list_paging.py [--containers 100000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from container_mcp.clock import ManualClock
from container_mcp.ids import new_container_id
from container_mcp.models import ListParams
from container_mcp.providers.local import LocalProvider
from container_mcp.providers.local_registry import ContainerRow


def timed(samples: list[float], start: float) -> None:
    samples.append((time.perf_counter() - start) * 1000)


async def main(n: int) -> None:
    clock = ManualClock()
    with tempfile.TemporaryDirectory() as tmp:
        async with LocalProvider(Path(tmp), clock=clock) as provider:
            rows = [
                ContainerRow(
                    id=new_container_id(clock.now + i),
                    name=f"c{i % 100}",
                    created_at=int(clock.now + i),
                    last_active_at=clock.now + i,
                    expiry_minutes=1440,
                    expires_at=clock.now + 10**9,
                    memory_limit="1g",
                    network_policy='{"type":"disabled"}',
                    status="running",
                )
                for i in range(n)
            ]
            t0 = time.perf_counter()
            provider.registry.insert_containers(rows)
            print(f"inserted {n} containers in {time.perf_counter() - t0:.2f} s")
            middle = rows[n // 2].id
            cases = {
                "page 1 (desc, limit 20)": ListParams(),
                "deep page (after the middle, asc)": ListParams(order="asc", after=middle),
                "name filter page 1": ListParams(name="c7"),
            }
            for label, params in cases.items():
                samples: list[float] = []
                for _ in range(50):
                    start = time.perf_counter()
                    page = await provider.list_containers(params)
                    timed(samples, start)
                assert len(page.data) == 20
                print(f"{label:38s} p50 {statistics.median(samples):7.3f} ms  p95 {sorted(samples)[47]:7.3f} ms")
            scan: list[float] = []
            for _ in range(5):
                start = time.perf_counter()
                provider.registry._db.execute("SELECT * FROM containers ORDER BY name, last_active_at").fetchall()
                timed(scan, start)
            print(f"{'baseline: full scan + sort of all rows':38s} p50 {statistics.median(scan):7.3f} ms")
            print("plan (page 1):", provider.registry.explain_page(order="desc", after=False, name=False))
            print("plan (after): ", provider.registry.explain_page(order="asc", after=True, name=False))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--containers", type=int, default=100_000)
    anyio.run(main, parser.parse_args().containers)
