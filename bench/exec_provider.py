"""container_exec overhead end to end, next to a bare ``bwrap ... true`` in the same run.

Reproduce with::

    .venv/bin/python bench/exec_provider.py              # 100 rounds
    .venv/bin/python bench/exec_provider.py --runs 300

Series, interleaved round by round so the machine's noise spreads over all of them, for
``true`` and for ``python3 -c pass``:

* ``bare bwrap``: bubblewrap alone with comparable namespaces and mounts (``exec_overhead.py``);
* ``provider``: ``ContainerService.exec`` on the local provider (ownership, quota approval,
  warm sandbox, change scan, registry update);
* ``MCP tool``: the ``container_exec`` tool through the official client in memory (adds argument
  validation, JSON-RPC and structured output).

Overhead is the difference of the p50s against the bare series (target: provider p50 overhead
at most 15 ms).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client

sys.path.insert(0, str(Path(__file__).parent))

from container_mcp.clock import system_clock
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.models import ContainerSpec
from container_mcp.providers.base import ExecRequest
from container_mcp.providers.local import LocalProvider
from container_mcp.providers.local_exec import ExecLimits
from container_mcp.runtime import limits_from
from container_mcp.server.app import create_server
from container_mcp.service import ContainerService
from container_mcp.settings import Settings
from exec_overhead import COMMANDS, bare_bwrap, pct


async def main(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bare_dir = root / "bare"
        bare_dir.mkdir()
        settings = Settings.isolated(data_dir=root / "data", max_calls_per_minute=1_000_000)
        async with LocalProvider(root / "data" / "local", clock=system_clock, exec_limits=ExecLimits()) as provider:
            if not provider.capabilities.exec:
                raise SystemExit(f"sandbox unavailable: {provider.capabilities.exec_unavailable_reason}")
            service = ContainerService(provider, SqliteLedger(), limits_from(settings))
            owner = f"stdio:{settings.stdio_session_key}"  # the in-memory client is the stdio user
            container = await service.create_container(owner, ContainerSpec(name="bench"))
            async with Client(create_server(service, settings)) as client:
                results: dict[str, list[float]] = {}

                def record(name: str, start: float) -> None:
                    results.setdefault(name, []).append((time.perf_counter() - start) * 1000)

                for _ in range(runs):
                    for label, argv in COMMANDS.items():
                        start = time.perf_counter()
                        proc = await anyio.run_process(bare_bwrap(argv, bare_dir), check=True)
                        record(f"bare bwrap: {label}", start)
                        del proc
                        start = time.perf_counter()
                        result = await service.exec(owner, container.id, ExecRequest(argv=argv))
                        record(f"provider: {label}", start)
                        assert result.exit_code == 0, result.stderr
                        start = time.perf_counter()
                        tool = await client.call_tool("container_exec", {"container_id": container.id, "command": argv})
                        record(f"MCP tool: {label}", start)
                        assert tool.is_error is False, tool.content
                    await anyio.sleep(0.03)  # spaced like a client's calls

        print(f"# {runs} rounds; command: .venv/bin/python bench/exec_provider.py --runs {runs}")
        print(f"{'series':34s} {'p50 ms':>8s} {'p95 ms':>8s}")
        for name, samples in results.items():
            print(f"{name:34s} {pct(samples, 0.5):8.2f} {pct(samples, 0.95):8.2f}")
        for label in COMMANDS:
            bare = pct(results[f"bare bwrap: {label}"], 0.5)
            prov = pct(results[f"provider: {label}"], 0.5)
            via_mcp = pct(results[f"MCP tool: {label}"], 0.5)
            print(
                f"p50 overhead over bare bwrap, {label}: provider +{prov - bare:.2f} ms, "
                f"MCP tool +{via_mcp - bare:.2f} ms"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    anyio.run(main, parser.parse_args().runs)
