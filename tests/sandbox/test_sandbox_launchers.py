"""Warm and cold starts behave the same, and nothing of a launcher outlives the ``Sandbox``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import anyio
import pytest

from container_mcp.sandbox import Sandbox, SandboxConfig, SandboxJob, SandboxProbe, sweep_stages

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]


def _run_cgroups(probe_parent: Path | None) -> list[str]:
    """This process's run groups. The parent is shared by every server of this user on the host;
    groups are named ``run-<server pid>-<random>``, so another live server's are not ours to count."""
    if probe_parent is None or not probe_parent.is_dir():
        return []
    return sorted(p.name for p in probe_parent.iterdir() if p.name.startswith(f"run-{os.getpid()}-"))


def _children() -> set[int]:
    me = os.getpid()
    kids: set[int] = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                kids.add(int(entry))
    return kids


async def test_cold_and_warm_runs(sandbox_config: SandboxConfig, data_dir: Path) -> None:
    cold = Sandbox(sandbox_config)
    probe: SandboxProbe = await cold.probe()
    if not probe.available:
        pytest.skip(f"sandbox unavailable: {probe.reason}")
    job = SandboxJob(data_dir=data_dir, argv=["/bin/sh", "-c", "echo $((6 * 7)) > answer; cat answer"])
    async with await cold.run(job) as run:
        assert run.stdout == b"42\n" and [f.path for f in run.changes.created] == ["answer"]
    async with Sandbox(sandbox_config) as warm:
        for _ in range(3):
            async with await warm.run(job) as run:
                assert run.stdout == b"42\n" and [f.path for f in run.changes.created] == ["answer"]


async def test_closing_the_sandbox_leaves_nothing_behind(sandbox_config: SandboxConfig, data_dir: Path) -> None:
    before_children = _children()
    box = Sandbox(SandboxConfig(**{**sandbox_config.__dict__, "warm_launchers": 2}))
    async with box:
        probe = await box.probe()
        if not probe.available:
            pytest.skip(f"sandbox unavailable: {probe.reason}")
        parent = box._cgroups.memory_parent or box._cgroups.pids_parent
        async with await box.run(SandboxJob(data_dir=data_dir, argv=["true"])) as run:
            assert run.exit_code == 0
        with anyio.fail_after(10):
            while len(_children() - before_children) < 2:  # noqa: ASYNC110 - waiting for the pool's refill
                await anyio.sleep(0.01)
        if parent is not None:
            assert len(_run_cgroups(parent)) >= 2
            # Another live container-mcp on the host shares the parent: its run groups are not ours.
            other = parent / f"run-{os.getppid()}-0therserver0"
            other.mkdir()
    try:
        assert _children() - before_children == set()
        assert _run_cgroups(parent) == []
        if parent is not None:
            assert other.is_dir()  # closing (and sweeping) left the other server's group alone
    finally:
        if parent is not None:
            other.rmdir()


def test_sweep_stages_removes_only_dead_servers_stages(tmp_path: Path) -> None:
    gone_pid = _dead_pid()
    stale = tmp_path / f".sandbox-run-{gone_pid}-abc"
    (stale / "upper" / "deep").mkdir(parents=True)
    (stale / "upper" / "deep" / "f").write_text("x")
    live = tmp_path / f".sandbox-run-{os.getpid()}-def"
    live.mkdir()
    other = tmp_path / "files"
    other.mkdir()
    assert sweep_stages(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "files"])


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


async def test_the_sweep_kills_a_dead_servers_orphaned_command(sandbox_config: SandboxConfig) -> None:
    """A command left running in the run group of a server that died (kill -9) is killed and its
    group removed when the next server starts its sandbox: nobody would ever read or commit it."""
    box = Sandbox(sandbox_config)
    probe = await box.probe()
    parent = box._cgroups.memory_parent or box._cgroups.pids_parent
    if not probe.available or parent is None:
        pytest.skip("no run cgroups here")
    group = parent / f"run-{_dead_pid()}-orphan"
    group.mkdir()
    orphan = await anyio.open_process(["sleep", "60"])
    try:
        (group / "cgroup.procs").write_text(str(orphan.pid))
        await Sandbox(sandbox_config).probe()  # a new server's start
        with anyio.fail_after(5):
            assert await orphan.wait() == -9
        assert not group.exists()
    finally:
        if orphan.returncode is None:
            orphan.kill()
            await orphan.wait()
        if group.exists():
            group.rmdir()
