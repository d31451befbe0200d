"""The change set of a run, ``commit()`` applying it, ``discard()`` leaving the directory as it was."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import anyio
import pytest

from container_mcp.errors import ExecError, InvalidRequest
from container_mcp.sandbox import FileChange, Sandbox, SandboxJob, SkippedEntry, changes, recover_stage, sweep_stages
from container_mcp.sandbox.changes import Stage

from .conftest import listing, snapshot
from .helpers import py, sh

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]

ANALYSIS = """
import csv, os, statistics
with open("/mnt/data/sales.csv", newline="") as f:
    rows = list(csv.DictReader(f))
os.makedirs("/mnt/data/out", exist_ok=True)
total = sum(float(r["amount"]) for r in rows)
with open("/mnt/data/out/summary.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["rows", "total", "mean"])
    w.writerow([len(rows), total, statistics.mean(float(r["amount"]) for r in rows)])
print(f"{len(rows)} rows, total {total}")
"""

SALES = "region,amount\nnorth,10\nsouth,32.5\neast,7.5\n"


def _populate(data_dir: Path) -> None:
    (data_dir / "sales.csv").write_text(SALES)
    (data_dir / "notes").mkdir()
    (data_dir / "notes" / "a.txt").write_text("alpha\n")
    (data_dir / "notes" / "b.txt").write_text("bravo\n")
    (data_dir / "keep.txt").write_text("unchanged\n")
    os.chmod(data_dir / "keep.txt", 0o640)


async def test_python_reads_an_uploaded_csv_and_writes_a_result(sandbox: Sandbox, data_dir: Path) -> None:
    _populate(data_dir)
    before = snapshot(data_dir)
    async with await py(sandbox, data_dir, ANALYSIS) as run:
        assert run.exit_code == 0, run.stderr_text
        assert run.stdout_text == "3 rows, total 50.0\n"
        size = len(b"rows,total,mean\r\n3,50.0,16.666666666666668\r\n")
        assert run.changes.created == (FileChange("out/summary.csv", size),)
        assert run.changes.dirs_created == ("out",)
        assert run.changes.changed == run.changes.deleted == ()
        assert (run.changes.files_delta, run.changes.bytes_delta) == (1, size)
        # Not applied yet.
        assert snapshot(data_dir) == before
        applied = await run.commit()
    assert applied is run.changes
    assert run.state == "committed"
    assert (data_dir / "out" / "summary.csv").read_text().startswith("rows,total,mean")
    after = snapshot(data_dir)
    assert {k: v for k, v in after.items() if not k.startswith("out")} == before


async def test_discard_restores_the_directory_exactly(sandbox: Sandbox, data_dir: Path) -> None:
    _populate(data_dir)
    before = snapshot(data_dir)
    script = (
        "echo more >> sales.csv; rm notes/a.txt; echo new > notes/c.txt; rm -r notes; mkdir notes; "
        "echo fresh > notes/a.txt; chmod 600 keep.txt; mkdir -p deep/er; echo x > deep/er/f; "
        "ln -s /etc/passwd link; mkfifo pipe; touch keep.txt"
    )
    async with await sh(sandbox, data_dir, script) as run:
        assert run.exit_code == 0, run.stderr_text
        assert not run.changes.empty
        await run.discard()
    assert run.state == "discarded"
    assert snapshot(data_dir) == before
    assert not list(data_dir.parent.glob(".sandbox-run-*"))
    await run.discard()  # idempotent
    with pytest.raises(ExecError):
        await run.commit()


async def test_change_set_and_commit_cover_every_kind_of_change(sandbox: Sandbox, data_dir: Path) -> None:
    _populate(data_dir)
    (data_dir / "olddir").mkdir()
    (data_dir / "olddir" / "x.txt").write_text("x")
    (data_dir / "becomes_dir").write_text("file first")
    script = (
        "echo more >> sales.csv; "  # changed
        "rm notes/b.txt; "  # deleted
        "rm -r olddir; mkdir olddir; echo y > olddir/y.txt; "  # opaque directory
        "rm becomes_dir; mkdir becomes_dir; echo z > becomes_dir/z.txt; "  # file -> directory
        "cat keep.txt > /dev/null; cp keep.txt keep.tmp && mv keep.tmp keep.txt; chmod 640 keep.txt; "  # same bytes
        "echo hi > 'name with spaces.txt'; printf 'x' > \"$(printf 'bad\\001name')\"; "
        "ln -s /etc/passwd link.txt; mkfifo fifo"
    )
    async with await sh(sandbox, data_dir, script) as run:
        assert run.exit_code == 0, run.stderr_text
        ch = run.changes
        assert [f.path for f in ch.changed] == ["sales.csv"]
        previous = len(SALES)
        assert ch.changed[0].previous_size == previous and ch.changed[0].size == previous + len("more\n")
        assert sorted(f.path for f in ch.created) == [
            "becomes_dir/z.txt",
            "name with spaces.txt",
            "olddir/y.txt",
        ]
        assert sorted(f.path for f in ch.deleted) == ["becomes_dir", "notes/b.txt", "olddir/x.txt"]
        assert ch.dirs_created == ("becomes_dir",)
        assert sorted(s.kind for s in ch.skipped) == ["fifo", "invalid-path", "symlink"]
        assert SkippedEntry("link.txt", "symlink") in ch.skipped
        await run.commit()
    assert (data_dir / "sales.csv").read_text().endswith("east,7.5\nmore\n")
    assert not (data_dir / "notes" / "b.txt").exists()
    assert (data_dir / "notes" / "a.txt").read_text() == "alpha\n"
    assert sorted(p.name for p in (data_dir / "olddir").iterdir()) == ["y.txt"]
    assert (data_dir / "becomes_dir" / "z.txt").read_text() == "z\n"
    assert (data_dir / "keep.txt").read_text() == "unchanged\n"
    assert not (data_dir / "link.txt").exists() and not (data_dir / "link.txt").is_symlink()
    assert not (data_dir / "fifo").exists()
    # Nothing the overlay uses internally leaks into the container's files.
    for root, dirs, files in os.walk(data_dir):
        for name in dirs + files:
            assert not [x for x in os.listxattr(Path(root) / name, follow_symlinks=False) if "overlay" in x]


async def test_a_later_run_sees_committed_files(sandbox: Sandbox, data_dir: Path) -> None:
    async with await sh(sandbox, data_dir, "mkdir -p a/b && echo one > a/b/f.txt") as run:
        await run.commit()
    async with await sh(sandbox, data_dir, "cat a/b/f.txt && echo two >> a/b/f.txt && rm -r a") as run:
        assert run.stdout_text == "one\n"
        assert [f.path for f in run.changes.deleted] == ["a/b/f.txt"]
        assert sorted(run.changes.dirs_deleted) == ["a", "a/b"]
        await run.commit()
    assert listing(data_dir) == []


async def test_context_manager_discards_unless_committed(sandbox: Sandbox, data_dir: Path) -> None:
    async with await sh(sandbox, data_dir, "echo x > f") as run:
        assert [f.path for f in run.changes.created] == ["f"]
    assert run.state == "discarded"
    assert not (data_dir / "f").exists()


async def test_deeply_nested_output_is_discarded_cleanly(sandbox: Sandbox, data_dir: Path) -> None:
    code = """
import os
os.chdir("/mnt/data")
for _ in range(700):
    os.mkdir("d")
    os.chdir("d")
open("leaf", "w").write("x")
"""
    async with await py(sandbox, data_dir, code) as run:
        assert run.exit_code == 0, run.stderr_text
        # Paths longer than /mnt/data allows are reported and never applied.
        assert any(s.kind == "invalid-path" for s in run.changes.skipped)
        await run.commit()
    assert not list(data_dir.parent.glob(".sandbox-run-*"))
    depth = 0
    p = data_dir
    while (p / "d").is_dir():
        p, depth = p / "d", depth + 1
    assert depth < 700


async def test_workdir(sandbox: Sandbox, data_dir: Path) -> None:
    (data_dir / "sub").mkdir()
    async with await sandbox.run(SandboxJob(data_dir=data_dir, argv=["pwd"], workdir="/mnt/data/sub")) as run:
        assert run.stdout_text == "/mnt/data/sub\n"
    with pytest.raises(InvalidRequest):
        await sandbox.run(SandboxJob(data_dir=data_dir, argv=["pwd"], workdir="/mnt/data/missing"))


async def test_stage_must_share_the_filesystem(sandbox: Sandbox, data_dir: Path) -> None:
    other = Path("/dev/shm")
    if not await anyio.Path(other).is_dir() or os.stat(other).st_dev == os.stat(data_dir).st_dev:
        pytest.skip("no second filesystem to test with")
    with pytest.raises(ExecError, match="same filesystem"):
        await sandbox.run(SandboxJob(data_dir=data_dir, argv=["true"], stage_root=other))


def _staged(tmp_path: Path) -> tuple[Path, Stage]:
    """A container directory and a stage whose upper layer holds what a run wrote (as overlayfs
    leaves it: new files, a whiteout for a deletion, a directory where a file was)."""
    data_dir = tmp_path / "files"
    data_dir.mkdir()
    (data_dir / "gone.txt").write_text("deleted by the run\n")
    (data_dir / "x").write_text("a file the run replaced by a directory\n")
    stage = Stage.create(data_dir, tmp_path, owner=None)
    (stage.upper / "out").mkdir()
    for i in range(50):
        (stage.upper / "out" / f"f{i}.txt").write_text(f"file {i}\n")
    os.mknod(stage.upper / "gone.txt", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    (stage.upper / "x").mkdir()
    (stage.upper / "x" / "y.txt").write_text("inside\n")
    return data_dir, stage


def _files(root: Path) -> set[str]:
    return {path for path, (kind, _, _) in snapshot(root).items() if kind == "file"}


AFTER_COMMIT = {"x/y.txt", *(f"out/f{i}.txt" for i in range(50))}


def test_a_commit_cut_short_mid_install_is_rolled_forward(tmp_path: Path) -> None:
    data_dir, stage = _staged(tmp_path)
    _, plan = stage.scan()
    # What a kill -9 halfway through the renames leaves: the journal, the removals, half the files.
    changes._write_journal(stage.root, plan)
    half = changes._Plan(plan.removes, plan.mkdirs, plan.installs[: len(plan.installs) // 2])
    changes._carry_out(data_dir, stage.root, half, removed=False)
    assert _files(data_dir) != AFTER_COMMIT
    assert recover_stage(stage.root, data_dir) is True
    assert _files(data_dir) == AFTER_COMMIT
    assert not stage.root.exists()


def test_rolling_forward_twice_never_repeats_the_removals(tmp_path: Path) -> None:
    """A crash after the whole plan was applied (before the stage went): rolling forward again
    must not remove 'x' — it is now the run's directory, holding the run's file."""
    data_dir, stage = _staged(tmp_path)
    _, plan = stage.scan()
    stage.apply(plan)
    assert recover_stage(stage.root, data_dir) is True
    assert (data_dir / "x" / "y.txt").read_text() == "inside\n"
    assert _files(data_dir) == AFTER_COMMIT


def test_a_stage_without_a_journal_is_rolled_back(tmp_path: Path) -> None:
    data_dir, stage = _staged(tmp_path)
    before = snapshot(data_dir)
    assert recover_stage(stage.root, data_dir) is False
    assert snapshot(data_dir) == before
    assert not stage.root.exists()


def test_sweeping_a_dead_servers_stage_finishes_its_journaled_commit(tmp_path: Path) -> None:
    data_dir, stage = _staged(tmp_path)
    _, plan = stage.scan()
    changes._write_journal(stage.root, plan)
    dead = stage.root.with_name(f"{changes.STAGE_PREFIX}{_dead_pid()}-x")
    stage.root.rename(dead)
    assert sweep_stages(tmp_path) == 1
    assert _files(data_dir) == AFTER_COMMIT
    assert not dead.exists()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
