"""What a tool call costs over stdio: ``container_retrieve`` against a bare ``mcp`` echo tool.

Reproduce with::

    .venv/bin/python bench/state_roundtrip.py                 # 500 interleaved calls
    .venv/bin/python bench/state_roundtrip.py --runs 2000 --before main

Starts, in the same run, two stdio servers through the official ``mcp`` client: the real
``container-mcp`` console script (local provider, a fresh data dir: the ledger is the SQLite file
with ``synchronous=FULL``, the registry too), and a plain ``MCPServer`` with one echo tool. The
calls alternate between the two, so the machine's noise falls on both; the ratio of the medians is
what this server adds to a call (the rate limit, ownership, the provider's read, the argument
check, structured output), less what its stdio transport saves: the echo server runs on the SDK's
(three worker-thread calls a message: the read, the write, the flush), ``container-mcp`` on its own
(``stdio.py``: one, the write). ``--before REF`` measures the tree at git ``REF`` the same way in the
same run (its ``src`` extracted with ``git archive``), for the figure before a change.
"""

from __future__ import annotations

import argparse
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
from mcp import Client, StdioServerParameters

BARE = """
from mcp.server import MCPServer

bare = MCPServer("echo")


@bare.tool()
def echo(text: str) -> str:
    \"\"\"Return the text.\"\"\"
    return text


bare.run("stdio")
"""


ROOT = Path(__file__).resolve().parent.parent


def _env(**extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1", **extra}


def old_tree(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], check=True, capture_output=True)
    with tarfile.open(fileobj=BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1]


async def round_trips(runs: int, data_dir: Path, src: Path | None = None) -> tuple[list[float], list[float]]:
    """(container_retrieve, echo) round trips in ms; ``src``: run that tree instead of this one."""
    env = _env(PYTHONPATH=str(src)) if src is not None else _env()
    flags = ["--data-dir", str(data_dir), "--max-calls-per-minute", "1000000"]
    ours = StdioServerParameters(command=sys.executable, args=["-m", "container_mcp", *flags], env=env)
    bare = StdioServerParameters(command=sys.executable, args=["-c", BARE], env=_env())
    retrieve: list[float] = []
    echo: list[float] = []
    async with Client(ours) as client, Client(bare) as echo_client:
        created = await client.call_tool("container_create", {"name": "bench"})
        assert created.structured_content is not None
        cid = created.structured_content["id"]
        for _ in range(50):  # warm both
            await client.call_tool("container_retrieve", {"container_id": cid})
            await echo_client.call_tool("echo", {"text": cid})
        for _ in range(runs):
            t0 = time.perf_counter()
            result = await client.call_tool("container_retrieve", {"container_id": cid})
            t1 = time.perf_counter()
            await echo_client.call_tool("echo", {"text": cid})
            t2 = time.perf_counter()
            assert not result.is_error
            retrieve.append((t1 - t0) * 1000)
            echo.append((t2 - t1) * 1000)
    return retrieve, echo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--before", metavar="REF", help="also measure the tree at this git ref")
    args = parser.parse_args()
    trees: list[tuple[str, Path | None]] = [("this tree", None)]
    with tempfile.TemporaryDirectory() as tmp:
        if args.before:
            trees.insert(0, (f"before ({args.before})", old_tree(args.before, Path(tmp) / "old")))
        print(f"stdio round trip, official mcp client, {args.runs} interleaved calls (ms)")
        print(f"{'':<42}{'p50':>9}{'p90':>9}{'p99':>9}")
        for i, (label, src) in enumerate(trees):
            retrieve, echo = anyio.run(round_trips, args.runs, Path(tmp) / f"data{i}", src)
            for name, series in ((f"{label}: bare mcp echo tool", echo), (f"{label}: container_retrieve", retrieve)):
                print(f"{name:<42}{pct(series, 50):>9.3f}{pct(series, 90):>9.3f}{pct(series, 99):>9.3f}")
            print(f"{label + ': ratio of medians':<42}{pct(retrieve, 50) / pct(echo, 50):>9.2f}x")


if __name__ == "__main__":
    main()
