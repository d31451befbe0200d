"""A container that holds real work: cost follows the change, not the container.

Reproduce with::

    .venv/bin/python bench/workspace.py            # 30 rounds of `true`
    .venv/bin/python bench/workspace.py --runs 100

Printed side by side, all measured in this run:

* ``bare bwrap: true`` p50: bubblewrap alone (``exec_overhead.bare_bwrap``), the floor;
* ``exec true`` p50 through ``ContainerService.exec`` on the local provider, in an empty
  container and in one holding 100,000 files (target: within 10 ms of each other);
* commit time of 1,000 and 10,000 new files: the call's wall time minus the command's own
  ``duration_ms`` (target for 10,000: at most 1 s);
* background start-to-first-output: ``container_process`` start of ``echo hi`` until a read by
  offset returns its output (polled every 1 ms).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).parent))

from container_mcp.clock import system_clock
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.models import ContainerSpec
from container_mcp.providers.base import ExecRequest
from container_mcp.providers.local import LocalProvider
from container_mcp.providers.local_exec import ExecLimits
from container_mcp.runtime import limits_from
from container_mcp.service import ContainerService
from container_mcp.settings import Settings
from exec_overhead import bare_bwrap, pct


def _touch(n: int, where: str) -> list[str]:
    return ["sh", "-c", f"mkdir -p {where} && cd {where} && seq 1 {n} | xargs touch"]


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
            owner = f"stdio:{settings.stdio_session_key}"
            empty = (await service.create_container(owner, ContainerSpec(name="empty"))).id
            full = (await service.create_container(owner, ContainerSpec(name="full"))).id
            commits = (await service.create_container(owner, ContainerSpec(name="commits"))).id
            fill = ["sh", "-c", "for d in $(seq 1 10); do mkdir d$d; (cd d$d && seq 1 10000 | xargs touch); done"]
            filled = await service.exec(owner, full, ExecRequest(argv=fill, timeout_s=600))
            assert filled.files_created_total == 100_000, filled.stderr

            series: dict[str, list[float]] = {}

            def record(name: str, ms: float) -> None:
                series.setdefault(name, []).append(ms)

            for _ in range(runs):
                start = time.perf_counter()
                await anyio.run_process(bare_bwrap(["true"], bare_dir), check=True)
                record("bare bwrap: true", (time.perf_counter() - start) * 1000)
                for label, cid in (("exec true, empty container", empty), ("exec true, 100,000 files", full)):
                    start = time.perf_counter()
                    result = await service.exec(owner, cid, ExecRequest(argv=["true"]))
                    record(label, (time.perf_counter() - start) * 1000)
                    assert result.exit_code == 0, result.stderr
            for _ in range(min(runs, 20)):
                start = time.perf_counter()
                procs = await service.processes(owner, empty)
                info = await procs.start(ExecRequest(argv=["echo", "hi"], timeout_s=60))
                # A client polls: there is no event to await from outside the process.
                while not (await procs.read(info.id, stream="stdout", offset=0, max_bytes=16)).text:  # noqa: ASYNC110
                    await anyio.sleep(0.001)
                record("background start to first output", (time.perf_counter() - start) * 1000)
                await procs.wait(info.id, 30)
            for n in (1_000, 10_000):
                for i in range(3):
                    start = time.perf_counter()
                    result = await service.exec(owner, commits, ExecRequest(argv=_touch(n, f"c{n}-{i}"), timeout_s=600))
                    wall = (time.perf_counter() - start) * 1000
                    assert result.files_created_total == n, result.stderr
                    record(f"commit {n:,} new files (beyond the command)", wall - result.duration_ms)

            print(f"{'series':<46} {'p50 ms':>9} {'p90 ms':>9} {'n':>4}")
            for name, samples in series.items():
                print(f"{name:<46} {pct(samples, 0.5):9.1f} {pct(samples, 0.9):9.1f} {len(samples):4d}")
            gap = pct(series["exec true, 100,000 files"], 0.5) - pct(series["exec true, empty container"], 0.5)
            print(f"# 100,000 files vs empty: {gap:+.1f} ms at p50 (target: within 10 ms)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    anyio.run(main, parser.parse_args().runs)
