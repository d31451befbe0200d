"""Per-exec overhead of the sandbox: ``run_sandboxed`` vs a bare ``bwrap ... true``, same machine, same run.

Reproduce with::

    .venv/bin/python bench/exec_overhead.py            # 60 runs of each
    .venv/bin/python bench/exec_overhead.py --runs 200

Four series, each timed from the spawn to the result (an asyncio subprocess for the bare
bubblewrap, so both sides pay the same event-loop costs):

* ``bare bwrap true``: bubblewrap with comparable namespaces and mounts, nothing else;
* ``run_sandboxed true``: our full path (stage + overlay, cgroups, rlimits, seccomp, change
  scan) up to the returned ``SandboxRun``; ``+discard`` adds removing the stage;
* the same two for ``python3 -c pass``.

Overhead is the difference of the p50s. The container directory holds 20 small files.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from container_mcp.sandbox import SandboxJob, probe_sandbox, run_sandboxed

PYTHON = "/usr/bin/python3"


def bare_bwrap(argv: list[str], data_dir: Path) -> list[str]:
    links: list[str] = []
    for name in ("bin", "sbin", "lib", "lib64"):
        path = Path("/") / name
        if path.is_symlink():
            links += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            links += ["--ro-bind", str(path), str(path)]
    return [
        "bwrap", "--unshare-all", "--unshare-user", "--uid", "1000", "--gid", "1000",
        "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--clearenv",
        "--setenv", "PATH", "/usr/bin:/bin", "--ro-bind", "/usr", "/usr", *links,
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
        "--bind", str(data_dir), "/mnt/data", "--chdir", "/mnt/data", *argv,
    ]  # fmt: skip


async def timed(fn: Callable[[], Awaitable[object]], runs: int) -> list[float]:
    for _ in range(3):
        await fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(runs: int) -> None:
    probe = await probe_sandbox()
    if not probe.available:
        sys.exit(f"sandbox unavailable: {probe.reason}")
    print(f"# {os.uname().release}, bubblewrap {probe.bwrap_version}, mode={probe.mode}, "
          f"memory={probe.memory_enforcement}, pids={probe.pids_enforcement}, seccomp={probe.seccomp}, "
          f"{os.cpu_count()} cpus")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "c" / "files"
        data.mkdir(parents=True)
        for i in range(20):
            (data / f"f{i}.txt").write_text("x" * 100)

        async def bare(argv: list[str]) -> None:
            result = await anyio.run_process(bare_bwrap(argv, data), check=True)
            assert result.returncode == 0

        async def ours(argv: list[str], discard: bool) -> None:
            run = await run_sandboxed(SandboxJob(data_dir=data, argv=argv))
            assert run.exit_code == 0, run.stderr
            if discard:
                await run.discard()
            else:
                run._stage.destroy() if run._stage else None  # untimed cleanup would skew: keep it honest
        results: dict[str, list[float]] = {}
        for label, argv in (("true", ["true"]), ("python3 -c pass", [PYTHON, "-c", "pass"])):
            results[f"bare bwrap {label}"] = await timed(lambda a=argv: bare(a), runs)
            results[f"run_sandboxed {label}"] = await timed(lambda a=argv: _only_run(data, a), runs)
            results[f"run_sandboxed {label} +discard"] = await timed(lambda a=argv: ours(a, True), runs)
    width = max(map(len, results))
    print(f"{'series':<{width}}  {'p50 ms':>8}  {'p95 ms':>8}  {'mean ms':>8}")
    for name, samples in results.items():
        print(f"{name:<{width}}  {pct(samples, 0.5):8.2f}  {pct(samples, 0.95):8.2f}  {statistics.mean(samples):8.2f}")
    for label in ("true", "python3 -c pass"):
        base = pct(results[f"bare bwrap {label}"], 0.5)
        run = pct(results[f"run_sandboxed {label}"], 0.5) - base
        full = pct(results[f"run_sandboxed {label} +discard"], 0.5) - base
        print(f"overhead p50 ({label}): {run:+.2f} ms to the result, {full:+.2f} ms including discard")
    print("reproduce:", shlex.join([".venv/bin/python", "bench/exec_overhead.py", "--runs", str(runs)]))


_pending: list[object] = []


async def _only_run(data: Path, argv: list[str]) -> None:
    """Time up to the returned result; the stage is discarded outside the timed region."""
    run = await run_sandboxed(SandboxJob(data_dir=data, argv=argv))
    assert run.exit_code == 0, run.stderr
    _pending.append(run)
    if len(_pending) > 1:
        previous = _pending.pop(0)
        assert hasattr(previous, "discard")
        await previous.discard()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=60)
    anyio.run(main, parser.parse_args().runs)
