"""Quota-checked ``container_create`` calls per second with 1, 2 and 4 server processes.

Reproduce with::

    .venv/bin/python bench/state_creates.py                  # 400 creates per setup, 16 clients
    .venv/bin/python bench/state_creates.py --creates 1000 --clients 32

Every setup runs real ``container-mcp api`` processes (the console script) on 127.0.0.1, and
clients spread round-robin over them POST ``/v1/containers`` with keep-alive connections, each
client its own API key (its own session), so every create checks and charges the container quota
in the ledger. Side by side, in the same run:

* local provider, SQLite ledger: 1, 2 and 4 processes on one data dir (one host);
* openai provider in front of one upstream ``container-mcp api`` (local provider), the setup of
  several hosts: 1 process and 4 processes on the SQLite ledger of one data dir, and 4 processes
  sharing a real ``redis-server`` (``CONTAINER_MCP_STATE_URL``). The single upstream is part of
  every figure of this group.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.processes import ServerProcess, console_script, started
from tests.redis_server import redis_server

UPSTREAM_KEY = "bench-upstream-key-0123456789"
LIMITS = ["--max-containers", "1000000", "--max-calls-per-minute", "1000000"]


def _env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1", **extra}


def _keys(path: Path, keys: list[str]) -> Path:
    path.write_text("".join(k + "\n" for k in keys))
    path.chmod(0o600)
    return path


@asynccontextmanager
async def servers(
    count: int, data_dir: Path, keys: Path, *flags: str, env: dict[str, str] | None = None
) -> AsyncIterator[list[ServerProcess]]:
    async with AsyncExitStack() as stack:
        out = []
        for _ in range(count):
            argv = [console_script(), "api", "--data-dir", str(data_dir), "--port", "0", "--api-keys-file", str(keys)]
            out.append(await stack.enter_async_context(started([*argv, *LIMITS, *flags], env or _env())))
        yield out


async def creates_per_second(procs: list[ServerProcess], keys: list[str], creates: int) -> float:
    clients = [
        httpx2.AsyncClient(
            base_url=procs[i % len(procs)].origin + "/v1",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
            trust_env=False,
        )
        for i, key in enumerate(keys)
    ]
    todo = iter(range(creates))

    async def worker(http: httpx2.AsyncClient) -> None:
        for i in todo:
            (await http.post("/containers", json={"name": f"b{i}"})).raise_for_status()

    try:
        for http in clients:  # warm: connections open, first-call costs paid
            (await http.get("/containers")).raise_for_status()
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for http in clients:
                tg.start_soon(worker, http)
        return creates / (time.perf_counter() - t0)
    finally:
        for http in clients:
            await http.aclose()


async def run(creates: int, n_clients: int) -> list[tuple[str, float]]:
    keys = [f"bench-client-{i:03d}-0123456789" for i in range(n_clients)]
    results: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        keys_file = _keys(tmp / "clients.keys", keys)
        for count in (1, 2, 4):
            async with servers(count, tmp / f"local{count}", keys_file) as procs:
                results.append((f"local, SQLite, {count} process(es)", await creates_per_second(procs, keys, creates)))
        up_keys = _keys(tmp / "upstream.keys", [UPSTREAM_KEY])
        async with servers(1, tmp / "upstream", up_keys) as (up,):
            remote = _env(
                CONTAINER_MCP_OPENAI_API_KEY=UPSTREAM_KEY,
                CONTAINER_MCP_OPENAI_BASE_URL=up.origin + "/v1",
                CONTAINER_MCP_OPENAI_MAX_RETRIES="0",
            )
            for count in (1, 4):
                async with servers(count, tmp / f"openai{count}", keys_file, "--provider", "openai", env=remote) as ps:
                    label = f"openai -> upstream, SQLite, {count} process(es)"
                    results.append((label, await creates_per_second(ps, keys, creates)))
            async with redis_server(tmp / "redis") as redis:
                shared = remote | {"CONTAINER_MCP_STATE_URL": redis.url}
                async with servers(4, tmp / "openai-redis", keys_file, "--provider", "openai", env=shared) as ps:
                    results.append(
                        ("openai -> upstream, Redis, 4 processes", await creates_per_second(ps, keys, creates))
                    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--creates", type=int, default=400)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    results = anyio.run(run, args.creates, args.clients)
    print(f"quota-checked container_create, {args.creates} creates, {args.clients} clients (keep-alive)")
    print(f"{'setup':<46}{'creates/s':>11}{'vs 1 process':>14}")
    base: float | None = None
    for label, rate in results:
        if "1 process" in label:
            base = rate
        print(f"{label:<46}{rate:>11.1f}{rate / base if base else 1.0:>13.2f}x")


if __name__ == "__main__":
    main()
