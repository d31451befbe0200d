"""What the MCP surface costs an agent: ``tools/list`` size, and a tool call's round trip.

Reproduce with::

    .venv/bin/python bench/mcp_surface.py              # 300 rounds
    .venv/bin/python bench/mcp_surface.py --runs 1000

Prints, side by side:

* ``tools/list`` as compact JSON (``json.dumps(separators=(",", ":"))`` of the tools), in bytes and
  in tokens at 4 characters a token, for this tree and for the commit before the compact surface
  (``83ab9ba``, extracted with ``git archive`` into a temp dir and listed in a subprocess in the
  same run, with every tool of the product: the local provider with ``container_exec``);
* the round trip of ``container_retrieve`` through the official ``mcp`` client in memory, against
  a bare ``mcp`` echo tool on a plain ``MCPServer`` over the same transport, interleaved so the
  machine's noise falls on both: the difference is what this server adds to a call (session
  key, ownership and rate checks, the argument check, structured output).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import anyio
from mcp import Client
from mcp.server import MCPServer

BEFORE = "83ab9ba"
ROOT = Path(__file__).resolve().parent.parent

LIST_TOOLS = """
import anyio, json, sys, tempfile
from pathlib import Path
from mcp import Client
from container_mcp.clock import ManualClock
from container_mcp.providers.local import LocalProvider
from container_mcp.providers.local_exec import ExecLimits
from container_mcp.runtime import limits_from
from container_mcp.server.app import create_server
from container_mcp.service import ContainerService
from container_mcp.settings import Settings
try:
    from container_mcp.ledger.sqlite import SqliteLedger
except ImportError:  # the old tree: the same store, before the ledger package
    from container_mcp.store import SqliteSessionStore as SqliteLedger


async def main() -> None:
    d = Path(tempfile.mkdtemp())
    # The old tree has no Settings.isolated; this child runs with a clean environment (see tools_list).
    s = Settings(data_dir=d / "data")
    limits = ExecLimits(max_file_bytes=s.max_file_bytes, max_output_bytes=s.exec_max_output_bytes)
    async with LocalProvider(d / "local", clock=ManualClock(), exec_limits=limits) as p:
        store = SqliteLedger()
        service = ContainerService(p, store, limits_from(s), clock=ManualClock())
        async with Client(create_server(service, s)) as c:
            tools = (await c.list_tools()).tools
        store.close()
    dumped = [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]
    print(json.dumps({"tools": len(dumped), "bytes": len(json.dumps(dumped, separators=(",", ":")))}))


anyio.run(main)
"""


def tools_list(src: Path) -> dict[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONTAINER_MCP_", "OPENAI_"))}
    env["PYTHONPATH"] = str(src)
    out = subprocess.run([sys.executable, "-c", LIST_TOOLS], env=env, check=True, capture_output=True, text=True).stdout
    result: dict[str, int] = json.loads(out.strip().splitlines()[-1])
    return result


def old_tree(into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE, "src"], check=True, capture_output=True)
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


async def round_trips(runs: int) -> tuple[list[float], list[float]]:
    from container_mcp.clock import ManualClock
    from container_mcp.ledger.sqlite import SqliteLedger
    from container_mcp.providers.local import LocalProvider
    from container_mcp.runtime import limits_from
    from container_mcp.server.app import create_server
    from container_mcp.service import ContainerService
    from container_mcp.settings import Settings

    bare = MCPServer("echo")

    @bare.tool()
    def echo(text: str) -> str:
        """Return the text."""
        return text

    ours: list[float] = []
    baseline: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.isolated(data_dir=Path(tmp) / "data", max_calls_per_minute=1_000_000)
        async with LocalProvider(Path(tmp) / "local", clock=ManualClock()) as provider:
            store = SqliteLedger()
            service = ContainerService(provider, store, limits_from(settings), clock=ManualClock())
            async with Client(create_server(service, settings)) as client, Client(bare) as echo_client:
                created = await client.call_tool("container_create", {"name": "bench"})
                cid = created.structured_content["id"]
                for _ in range(20):  # warm both
                    await client.call_tool("container_retrieve", {"container_id": cid})
                    await echo_client.call_tool("echo", {"text": cid})
                for _ in range(runs):
                    t0 = time.perf_counter()
                    await client.call_tool("container_retrieve", {"container_id": cid})
                    t1 = time.perf_counter()
                    await echo_client.call_tool("echo", {"text": cid})
                    t2 = time.perf_counter()
                    ours.append((t1 - t0) * 1000)
                    baseline.append((t2 - t1) * 1000)
            store.close()
    return ours, baseline


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        before = tools_list(old_tree(Path(tmp)))
    after = tools_list(ROOT / "src")
    print(f"{'tools/list (compact JSON)':<28}{'tools':>7}{'bytes':>9}{'tokens (4 ch)':>15}")
    for label, m in ((f"before ({BEFORE})", before), ("after (this tree)", after)):
        print(f"{label:<28}{m['tools']:>7}{m['bytes']:>9}{m['bytes'] // 4:>15}")
    print(f"{'saved':<28}{'':>7}{before['bytes'] - after['bytes']:>9}{(before['bytes'] - after['bytes']) // 4:>15}")

    ours, baseline = anyio.run(round_trips, args.runs)
    print()
    print(f"round trip, in-memory mcp Client, {args.runs} interleaved calls (ms)")
    print(f"{'':<28}{'p50':>9}{'p90':>9}{'p99':>9}")
    for label, series in (("bare mcp echo tool", baseline), ("container_retrieve", ours)):
        print(f"{label:<28}{pct(series, 50):>9.3f}{pct(series, 90):>9.3f}{pct(series, 99):>9.3f}")
    print(f"{'added by container-mcp':<28}{pct(ours, 50) - pct(baseline, 50):>9.3f}")


if __name__ == "__main__":
    main()
