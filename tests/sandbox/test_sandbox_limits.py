"""Limits really enforced: processes, memory, file size, disk, wall clock, cancellation."""

from __future__ import annotations

import secrets
import signal
import time
from pathlib import Path

import anyio
import pytest

from container_mcp.sandbox import Sandbox, SandboxJob, SandboxProbe, SandboxProgress

from .conftest import listing, processes_with, snapshot
from .helpers import PYTHON, py, sh

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]

MiB = 1 << 20


async def _wait_gone(marker: str) -> list[int]:
    """Pids still carrying ``marker`` after up to 3 s (the kernel reaps a dead PID namespace asynchronously)."""
    with anyio.move_on_after(3):
        while processes_with(marker):  # noqa: ASYNC110 - polling /proc, there is no event to wait on
            await anyio.sleep(0.02)
    return processes_with(marker)


def _stages(data_dir: Path) -> list[Path]:
    return list(data_dir.parent.glob(".sandbox-run-*"))


async def test_pids_limit_contains_forks(sandbox: Sandbox, probe: SandboxProbe, data_dir: Path) -> None:
    code = """
import os, time
n = 0
try:
    for _ in range(500):
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
except OSError as exc:
    print("fork failed:", exc.strerror)
print(n)
"""
    async with await py(sandbox, data_dir, code, pids_limit=32, timeout_s=20) as run:
        lines = run.stdout_text.splitlines()
        assert lines[0].startswith("fork failed"), run.stdout_text + run.stderr_text
        assert int(lines[-1]) < 32
    assert probe.pids_enforcement in ("cgroup-v1", "cgroup-v2", "rlimit-nproc")


async def test_fork_bomb_is_contained(sandbox: Sandbox, data_dir: Path) -> None:
    marker = "bomb" + secrets.token_hex(6)
    (data_dir / f"{marker}.sh").write_text("b() { b | b & }; b; sleep 30\n")
    start = time.monotonic()
    async with await sh(sandbox, data_dir, f"sh ./{marker}.sh", pids_limit=64, timeout_s=1.0) as run:
        assert run.duration_s < 5
    assert time.monotonic() - start < 10
    assert await _wait_gone(marker) == []
    # The host can still fork.
    assert (await anyio.run_process(["true"])).returncode == 0


async def test_memory_bomb_is_killed_and_reported(sandbox: Sandbox, probe: SandboxProbe, data_dir: Path) -> None:
    code = "x = b'x' * (400 << 20)\nprint('survived', len(x))"
    async with await py(sandbox, data_dir, code, memory_bytes=64 * MiB, timeout_s=20) as run:
        assert "survived" not in run.stdout_text
        assert run.exit_code != 0
        if probe.memory_enforcement.startswith("cgroup"):
            assert run.oom_killed
            assert run.killed_reason == "memory_limit"
            assert run.exit_code is None and run.signal == signal.SIGKILL
        else:
            assert "MemoryError" in run.stderr_text
    assert run.memory_enforcement == probe.memory_enforcement


async def test_file_size_limit(sandbox: Sandbox, data_dir: Path) -> None:
    script = "dd if=/dev/zero of=big bs=64k count=64 2>&1; echo rc=$?"
    async with await sh(sandbox, data_dir, script, max_file_bytes=MiB) as run:
        assert "rc=0" not in run.stdout_text
        (big,) = run.changes.created
        assert big.path == "big" and big.size == MiB
    assert not (data_dir / "big").exists()


async def test_disk_fill_is_stopped(sandbox: Sandbox, data_dir: Path) -> None:
    # 1 GiB to write against a 4 MiB stage: the watchdog has seconds, not a scheduling slice, to stop
    # it, however loaded the machine is.
    code = """
import os
block = os.urandom(256 << 10)
for i in range(4096):
    with open(f"f{i}", "wb") as f:
        f.write(block)
print("wrote everything")
"""
    async with await py(sandbox, data_dir, code, max_stage_bytes=4 * MiB, timeout_s=20) as run:
        assert run.killed_reason == "disk_limit"
        assert run.exit_code is None
        assert "wrote everything" not in run.stdout_text
    assert listing(data_dir) == []
    assert _stages(data_dir) == []


async def test_too_many_files_are_stopped(sandbox: Sandbox, data_dir: Path) -> None:
    script = "i=0; while [ $i -lt 100000 ]; do : > f$i; i=$((i+1)); done; echo done"
    async with await sh(sandbox, data_dir, script, max_stage_files=200, timeout_s=20) as run:
        assert run.killed_reason == "disk_limit"
        assert "done" not in run.stdout_text


async def test_cpu_time_limit(sandbox: Sandbox, data_dir: Path) -> None:
    async with await py(sandbox, data_dir, "while True: pass", cpu_seconds=1, timeout_s=20) as run:
        assert run.signal in (signal.SIGXCPU, signal.SIGKILL)
        assert not run.timed_out
        assert run.duration_s < 10


async def test_timeout_kills_everything_left_behind(sandbox: Sandbox, data_dir: Path) -> None:
    marker = "linger" + secrets.token_hex(6)
    (data_dir / f"{marker}.sh").write_text("sleep 1000\n")
    script = f"sh ./{marker}.sh & (setsid sh ./{marker}.sh &) ; echo started > started.txt; sh ./{marker}.sh"
    before = snapshot(data_dir)
    async with await sh(sandbox, data_dir, script, timeout_s=0.5) as run:
        assert run.timed_out
        assert run.killed_reason == "timeout"
        assert run.exit_code is None and run.signal == signal.SIGKILL
        assert run.duration_s < 3
        assert [f.path for f in run.changes.created] == ["started.txt"]
    assert await _wait_gone(marker) == []
    assert snapshot(data_dir) == before


async def test_background_process_dies_with_the_command(sandbox: Sandbox, data_dir: Path) -> None:
    marker = "orphan" + secrets.token_hex(6)
    (data_dir / f"{marker}.sh").write_text("sleep 1000\n")
    async with await sh(sandbox, data_dir, f"sh ./{marker}.sh >/dev/null 2>&1 & echo bye") as run:
        assert run.exit_code == 0 and run.stdout_text == "bye\n"
        assert run.duration_s < 3
    assert await _wait_gone(marker) == []


async def test_cancellation_kills_the_tree_and_discards(sandbox: Sandbox, data_dir: Path) -> None:
    marker = "cancel" + secrets.token_hex(6)
    (data_dir / f"{marker}.sh").write_text("sleep 1000\n")
    before = snapshot(data_dir)
    job = SandboxJob(data_dir=data_dir, argv=["/bin/sh", "-c", f"echo x > new.txt; sh ./{marker}.sh"], timeout_s=30)
    with anyio.move_on_after(0.5) as scope:
        await sandbox.run(job)
    assert scope.cancelled_caught
    assert await _wait_gone(marker) == []
    assert snapshot(data_dir) == before
    assert _stages(data_dir) == []


async def test_progress_is_reported(sandbox: Sandbox, data_dir: Path) -> None:
    reports: list[SandboxProgress] = []

    async def progress(p: SandboxProgress) -> None:
        reports.append(p)

    job = SandboxJob(
        data_dir=data_dir,
        argv=[PYTHON, "-u", "-c", "import time\nfor i in range(8):\n print('tick', i)\n time.sleep(0.1)"],
        progress_interval_s=0.2,
    )
    async with await sandbox.run(job, progress=progress) as run:
        assert run.exit_code == 0
    assert len(reports) >= 2
    assert [r.elapsed_s for r in reports] == sorted(r.elapsed_s for r in reports)
    assert reports[-1].stdout_bytes > 0
    assert "bytes of output" in reports[-1].message()


async def test_failing_progress_callback_aborts_the_run(sandbox: Sandbox, data_dir: Path) -> None:
    marker = "abort" + secrets.token_hex(6)
    (data_dir / f"{marker}.sh").write_text("sleep 1000\n")

    async def progress(p: SandboxProgress) -> None:
        raise RuntimeError("client went away")

    job = SandboxJob(data_dir=data_dir, argv=["/bin/sh", f"./{marker}.sh"], progress_interval_s=0.1)
    with pytest.raises(RuntimeError, match="client went away"):
        await sandbox.run(job, progress=progress)
    assert await _wait_gone(marker) == []
    assert _stages(data_dir) == []
