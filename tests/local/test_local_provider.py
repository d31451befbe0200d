"""The local provider's own promises: durability, crash recovery, expiry, confinement, O(page) lists."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from container_mcp.clock import ManualClock
from container_mcp.errors import ContainerExpired, InvalidPath, render
from container_mcp.models import ContainerFile, ContainerSpec, ExpiresAfter, ListParams
from container_mcp.providers.local import LocalProvider
from container_mcp.uploads import BytesUpload

pytestmark = pytest.mark.anyio


async def read_all(provider: LocalProvider, container_id: str, file_id: str) -> bytes:
    return b"".join([c async for c in provider.read_file(container_id, file_id)])


async def test_restart_keeps_live_containers_and_files(tmp_path: Path) -> None:
    clock = ManualClock()
    async with LocalProvider(tmp_path, clock=clock) as p:
        c = await p.create_container(ContainerSpec(name="keep"))
        f = await p.create_file(c.id, "/mnt/data/dir/keep.txt", BytesUpload(b"precious"))
    async with LocalProvider(tmp_path, clock=clock) as p:
        again = await p.get_container(c.id)
        assert again.status == "running" and again.name == "keep"
        assert await read_all(p, c.id, f.id) == b"precious"
        assert [x.id for x in (await p.list_files(c.id, ListParams())).data] == [f.id]


async def test_expiry_follows_inactivity_with_an_injected_clock(tmp_path: Path) -> None:
    clock = ManualClock()
    async with LocalProvider(tmp_path, clock=clock) as p:
        c = await p.create_container(ContainerSpec(name="e", expires_after=ExpiresAfter(minutes=2)))
        f = await p.create_file(c.id, "/mnt/data/a.txt", BytesUpload(b"a"))
        clock.advance(100)
        await p.get_file(c.id, f.id)  # activity: the window restarts
        clock.advance(100)
        assert (await p.get_container(c.id, touch=False)).status == "running"
        assert await p.sweep() == []
        clock.advance(121)
        assert await p.sweep() == [c.id]
        expired = await p.get_container(c.id)
        assert expired.status == "expired"
        # its files are gone from disk, and file operations say "expired", not "not found"
        assert list((tmp_path / "containers" / c.id / "files").iterdir()) == []
        with pytest.raises(ContainerExpired) as info:
            await p.get_file(c.id, f.id)
        assert "expired" in info.value.message and "container_create" in render(info.value, "mcp")
        with pytest.raises(ContainerExpired):
            await p.create_file(c.id, "/mnt/data/b.txt", BytesUpload(b"b"))
        listed = await p.list_containers(ListParams())
        assert [(x.id, x.status) for x in listed.data] == [(c.id, "expired")]


async def test_expiry_is_exact_between_sweeps_and_survives_restart(tmp_path: Path) -> None:
    clock = ManualClock()
    async with LocalProvider(tmp_path, clock=clock) as p:
        c = await p.create_container(ContainerSpec(name="e", expires_after=ExpiresAfter(minutes=1)))
        await p.create_file(c.id, "/mnt/data/a.txt", BytesUpload(b"a"))
    clock.advance(61)
    async with LocalProvider(tmp_path, clock=clock) as p:
        # recovery expired it at start; it does not come back
        assert (await p.get_container(c.id)).status == "expired"
    clock.advance(3600)
    async with LocalProvider(tmp_path, clock=clock) as p:
        assert (await p.get_container(c.id)).status == "expired"
        assert list((tmp_path / "containers" / c.id / "files").iterdir()) == []


async def test_recovery_drops_what_a_crash_left_half_done(tmp_path: Path) -> None:
    clock = ManualClock()
    async with LocalProvider(tmp_path, clock=clock) as p:
        c = await p.create_container(ContainerSpec(name="crash"))
        kept = await p.create_file(c.id, "/mnt/data/kept.txt", BytesUpload(b"kept"))
        lost = await p.create_file(c.id, "/mnt/data/lost.txt", BytesUpload(b"lost"))
        changed = await p.create_file(c.id, "/mnt/data/changed.txt", BytesUpload(b"old"))
    root = tmp_path / "containers" / c.id
    (root / "tmp" / "upload-deadbeef").write_bytes(b"half written")  # crash mid-upload
    (root / "files" / "orphan.txt").write_bytes(b"renamed, never recorded")  # crash before the row
    (root / "files" / "lost.txt").unlink()  # row without bytes
    (root / "files" / "changed.txt").write_bytes(b"newer content")  # crash between rename and row update
    (tmp_path / "containers" / ("cntr_" + "f" * 48)).mkdir()  # dir of a container never recorded
    old = time.time() - 3600
    os.utime(tmp_path / "containers" / ("cntr_" + "f" * 48), (old, old))
    async with LocalProvider(tmp_path, clock=clock) as p:
        files = {f.path: f for f in (await p.list_files(c.id, ListParams())).data}
        # A file on disk without a row is never left invisible-but-present: it is adopted (its
        # upload was complete, fsynced and charged; only the row was lost).
        assert set(files) == {"/mnt/data/kept.txt", "/mnt/data/changed.txt", "/mnt/data/orphan.txt"}
        assert await read_all(p, c.id, kept.id) == b"kept"
        assert await read_all(p, c.id, files["/mnt/data/orphan.txt"].id) == b"renamed, never recorded"
        assert files["/mnt/data/changed.txt"].bytes == len(b"newer content")
        assert files["/mnt/data/changed.txt"].id == changed.id
        del lost
    assert list((root / "tmp").iterdir()) == []
    assert not (tmp_path / "containers" / ("cntr_" + "f" * 48)).exists()


async def test_symlinks_planted_inside_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("host secret")
    async with LocalProvider(tmp_path / "data", clock=ManualClock()) as p:
        c = await p.create_container(ContainerSpec(name="links"))
        files = tmp_path / "data" / "containers" / c.id / "files"
        os.symlink(outside, files / "escape")  # as a command could
        os.symlink(outside / "secret.txt", files / "link.txt")
        with pytest.raises(InvalidPath):
            await p.create_file(c.id, "/mnt/data/escape/new.txt", BytesUpload(b"x"))
        with pytest.raises(InvalidPath):
            await p.create_file(c.id, "/mnt/data/link.txt", BytesUpload(b"overwrite"))
        assert sorted(x.name for x in outside.iterdir()) == ["secret.txt"]
        assert (outside / "secret.txt").read_text() == "host secret"


async def test_replacing_a_path_keeps_one_file(tmp_path: Path) -> None:
    async with LocalProvider(tmp_path, clock=ManualClock()) as p:
        c = await p.create_container(ContainerSpec(name="replace"))
        first = await p.create_file(c.id, "report.csv", BytesUpload(b"v1"))
        second = await p.create_file(c.id, "/mnt/data/report.csv", BytesUpload(b"version 2"))
        listed = (await p.list_files(c.id, ListParams())).data
        assert [f.id for f in listed] == [second.id] and second.id != first.id
        assert await read_all(p, c.id, second.id) == b"version 2"


async def test_pages_walk_an_index(tmp_path: Path) -> None:
    async with LocalProvider(tmp_path, clock=ManualClock()) as p:
        for order in ("asc", "desc"):
            for after in (False, True):
                for name in (False, True):
                    plan = p.registry.explain_page(order=order, after=after, name=name)
                    assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
                    assert "TEMP B-TREE" not in plan, plan


async def test_background_reaper_expires_within_its_interval(tmp_path: Path) -> None:
    import anyio

    clock = ManualClock()
    intervals: list[float] = []
    ticks = anyio.create_memory_object_stream[None](0)
    send, receive = ticks

    async def sleep(seconds: float) -> None:
        intervals.append(seconds)
        await receive.receive()  # one sweep per tick the test gives

    async with LocalProvider(tmp_path, clock=clock, reaper_interval_s=3600, sleep=sleep) as p:
        c = await p.create_container(ContainerSpec(name="reap", expires_after=ExpiresAfter(minutes=1)))
        await p.create_file(c.id, "/mnt/data/a.txt", BytesUpload(b"a"))
        clock.advance(61)
        await send.send(None)  # the reaper wakes and sweeps
        await send.send(None)  # ...and is asleep again: the first sweep has finished
        assert p.registry.container(c.id).status == "expired"  # type: ignore[union-attr]
        assert list((tmp_path / "containers" / c.id / "files").iterdir()) == []
    assert intervals[0] == 60.0  # capped: never slower than a minute
    send.close()
    receive.close()


async def test_the_reaper_repairs_a_container_a_dead_process_left_marked(tmp_path: Path) -> None:
    """A lock file that still names its holder is what kill -9 mid-write leaves: the periodic
    repair adopts the file that holder installed but never recorded, and reports real usage."""
    clock = ManualClock()
    reported: dict[str, tuple[int, int]] = {}
    async with LocalProvider(tmp_path, clock=clock) as p:

        async def sink(cid: str, files: int, bytes_: int) -> None:
            reported[cid] = (files, bytes_)

        indexed: dict[str, list[str]] = {}

        async def files_sink(cid: str, files: list[ContainerFile]) -> None:
            indexed[cid] = sorted(f.path for f in files)

        p.attach_usage_sink(sink, files_sink)
        c = await p.create_container(ContainerSpec(name="marked"))
        await p.create_file(c.id, "/mnt/data/a.txt", BytesUpload(b"aa"))
        (tmp_path / "containers" / c.id / "files" / "b.txt").write_bytes(b"bbb")  # installed, no row
        (tmp_path / "locks" / f"{c.id}.lock").write_text("999999")  # its holder died holding the lock
        assert await p.repair_abandoned() == [c.id]
        assert reported[c.id] == (2, 5)
        assert indexed[c.id] == ["/mnt/data/a.txt", "/mnt/data/b.txt"]  # the adopted file reaches the index
        listed = {f.path for f in (await p.list_files(c.id, ListParams())).data}
        assert listed == {"/mnt/data/a.txt", "/mnt/data/b.txt"}
        assert await p.repair_abandoned() == []  # the marker is cleared once repaired


async def test_expiry_on_access_leaves_a_container_another_process_holds(tmp_path: Path) -> None:
    """Another process mid-write holds the container's lock (a flock on its lock file): an access
    here past the expiry time must not clear the files under it; once released, it expires."""
    clock = ManualClock()
    async with LocalProvider(tmp_path, clock=clock) as p:
        c = await p.create_container(ContainerSpec(name="busy", expires_after=ExpiresAfter(minutes=1)))
        await p.create_file(c.id, "/mnt/data/a.txt", BytesUpload(b"a"))
        clock.advance(61)
        fd = os.open(tmp_path / "locks" / f"{c.id}.lock", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: as another process would
            assert (await p.get_container(c.id, touch=False)).status == "running"
            assert await p.sweep() == []
            assert (tmp_path / "containers" / c.id / "files" / "a.txt").exists()
        finally:
            os.close(fd)
        assert (await p.get_container(c.id, touch=False)).status == "expired"
        assert not (tmp_path / "containers" / c.id / "files" / "a.txt").exists()
