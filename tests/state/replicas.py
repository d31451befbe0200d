"""Several ``container-mcp api --provider openai`` processes sharing one Redis, in front of one upstream.

The upstream is a real ``container-mcp api`` process over the local provider (so containers are
real directories); each replica is the console script started with ``CONTAINER_MCP_STATE_URL``
pointing at the shared redis-server. Every process gets an explicit environment, nothing of the
test runner's.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx2 as httpx

from ..processes import ServerProcess, console_script, started

UPSTREAM_KEY = "sk-test-upstream-0123456789"
KEYS = [f"sk-test-replica-{i}-0123456789" for i in range(4)]
"""Bearer tokens the replicas accept: each one is its own owner, on every replica."""


def _env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1", **extra}


def _keys_file(path: Path, keys: Sequence[str]) -> Path:
    path.write_text("".join(k + "\n" for k in keys))
    path.chmod(0o600)
    return path


@asynccontextmanager
async def upstream(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """``container-mcp api`` over the local provider, accepting ``UPSTREAM_KEY``, limits out of the way."""
    keys = _keys_file(tmp_path / "upstream.keys", [UPSTREAM_KEY])
    limits = ["--max-containers", "100000", "--max-calls-per-minute", "1000000"]
    argv = [console_script(), "api", "--data-dir", str(tmp_path / "upstream"), "--port", "0",
            "--api-keys-file", str(keys), *limits]  # fmt: skip
    async with started(argv, _env()) as server:
        yield server


@asynccontextmanager
async def replicas(
    tmp_path: Path, origin: str, state_url: str, count: int, *flags: str
) -> AsyncIterator[list[ServerProcess]]:
    """``count`` replicas on ``state_url`` in front of the upstream at ``origin``."""
    keys = _keys_file(tmp_path / "replica.keys", KEYS)
    env = _env(
        CONTAINER_MCP_STATE_URL=state_url,
        CONTAINER_MCP_OPENAI_API_KEY=UPSTREAM_KEY,
        CONTAINER_MCP_OPENAI_BASE_URL=origin + "/v1",
        CONTAINER_MCP_OPENAI_MAX_RETRIES="0",
    )
    async with AsyncExitStack() as stack:
        out: list[ServerProcess] = []
        for i in range(count):
            argv = [console_script(), "api", "--provider", "openai", "--data-dir", str(tmp_path / f"replica{i}"),
                    "--port", "0", "--api-keys-file", str(keys), *flags]  # fmt: skip
            out.append(await stack.enter_async_context(started(argv, env)))
        yield out


def client(origin: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=origin + "/v1", headers={"Authorization": f"Bearer {key}"}, timeout=60, trust_env=False
    )
