"""Per-exec overhead of the sandbox over a bare ``bwrap ... true``, same machine, same run.

Reproduce with::

    .venv/bin/python bench/exec_overhead.py             # 100 rounds
    .venv/bin/python bench/exec_overhead.py --runs 300

Each round runs, back to back and in this order, for ``true`` and for ``python3 -c pass``:

* ``bare bwrap``: bubblewrap with comparable namespaces and mounts, spawned as an asyncio
  subprocess (so both sides pay the same event-loop costs), nothing else;
* ``run_sandboxed (cold)``: the module-level API without a warm launcher: everything a run does
  (stage + overlay, cgroups, rlimits, seccomp, change scan) from the call to the returned
  ``SandboxRun``, then ``discard()``;
* ``Sandbox (warm)``: the same through an entered ``Sandbox`` that keeps a launcher ready (the way
  the server uses it).

Interleaving the series spreads the machine's noise over all of them; overhead is the
difference of the p50s against the bare series. The container directory holds 20 small files.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import anyio

from container_mcp.sandbox import Sandbox, SandboxJob, probe_sandbox, run_sandboxed

PYTHON = "/usr/bin/python3"
COMMANDS = {"true": ["true"], "python3 -c pass": [PYTHON, "-c", "pass"]}


def bare_bwrap(argv: list[str], data_dir: Path) -> list[str]:
    """bubblewrap alone, with the namespaces and main mounts the sandbox uses."""
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


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(runs: int) -> None:
    probe = await probe_sandbox()
    if not probe.available:
        sys.exit(f"sandbox unavailable: {probe.reason}")
    print(
        f"# Linux {os.uname().release}, {os.cpu_count()} cpus, bubblewrap {probe.bwrap_version}, mode={probe.mode}, "
        f"memory={probe.memory_enforcement}, pids={probe.pids_enforcement}, seccomp={probe.seccomp}"
    )
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "c" / "files"
        data.mkdir(parents=True)
        for i in range(20):
            (data / f"f{i}.txt").write_text("x" * 100)

        async def bare(argv: list[str]) -> None:
            await anyio.run_process(bare_bwrap(argv, data), check=True)

        async def cold(argv: list[str]) -> None:
            async with await run_sandboxed(SandboxJob(data_dir=data, argv=argv)) as run:
                assert run.exit_code == 0, run.stderr

        async with Sandbox() as sandbox:

            async def warm(argv: list[str]) -> None:
                async with await sandbox.run(SandboxJob(data_dir=data, argv=argv)) as run:
                    assert run.exit_code == 0, run.stderr

            series = {"bare bwrap": bare, "run_sandboxed (cold)": cold, "Sandbox (warm)": warm}
            for round_ in range(runs + 3):
                for label, argv in COMMANDS.items():
                    for name, fn in series.items():
                        # Calls are spaced as a client's would be, so the warm pool's refill (a cgroup
                        # move that briefly stalls every fork on the host) never overlaps a measurement.
                        await anyio.sleep(0.03)
                        start = time.perf_counter()
                        await fn(argv)
                        if round_ >= 3:  # warm-up
                            results.setdefault(f"{name}: {label}", []).append((time.perf_counter() - start) * 1000)
    width = max(map(len, results))
    print(f"{'series':<{width}}  {'p50 ms':>7}  {'p95 ms':>7}")
    for name, samples in results.items():
        print(f"{name:<{width}}  {pct(samples, 0.5):7.2f}  {pct(samples, 0.95):7.2f}")
    print()
    for label in COMMANDS:
        base = pct(results[f"bare bwrap: {label}"], 0.5)
        cold_over = pct(results[f"run_sandboxed (cold): {label}"], 0.5) - base
        warm_over = pct(results[f"Sandbox (warm): {label}"], 0.5) - base
        print(f"p50 overhead over bare bwrap, {label}: warm {warm_over:+.2f} ms, cold {cold_over:+.2f} ms")
    print("reproduce:", shlex.join([".venv/bin/python", "bench/exec_overhead.py", "--runs", str(runs)]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="rounds per series (default 100)")
    anyio.run(main, parser.parse_args().runs)
