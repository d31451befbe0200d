"""Uploads on the docker provider against a hostile container, and the scan's fallback against a flood.

An upload is stored by a helper as the container's user (``DockerExec.write``): whatever a command
puts at or above the destination (symlinks swapped in by a background loop, a dangling symlink, a
FIFO, a directory it made unwritable), no file appears where the user may not write, every upload
lands in /mnt/data or fails with a clear error, and the rows (what the quotas count) stay equal to
what is stored. A command that floods the engine's change list cannot grow the server's memory.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from container_mcp.errors import InvalidPath, ProviderError
from container_mcp.models import ContainerSpec
from container_mcp.providers import docker_exec
from container_mcp.providers.docker import DockerProvider
from container_mcp.providers.docker_exec import ExecLimits
from container_mcp.uploads import BytesUpload

from .calls import accept, as_root, rows, sh, stored
from .engine import docker_provider, engine_containers
from .programs import PTRACE_LOOP

pytestmark = pytest.mark.anyio


async def read(docker: DockerProvider, container_id: str, file_id: str) -> bytes:
    return b"".join([chunk async for chunk in docker.read_file(container_id, file_id)])


async def test_uploads_while_a_loop_swaps_their_folder_for_symlinks_to_root_only_dirs_land_only_in_mnt_data(
    docker: DockerProvider,
) -> None:
    c = await docker.create_container(ContainerSpec(name="race"))
    swapper = (
        "{ while [ ! -e /tmp/stop ]; do rm -rf d; mkdir d; rm -rf d; ln -s /root d; rm -f d; ln -s /etc d; rm -f d; "
        "done; touch /tmp/stopped; } > /dev/null 2>&1 &"
    )
    await docker.exec(c.id, sh(swapper), approve=accept)
    landed, refused = 0, 0
    for i in range(40):
        try:
            await docker.create_file(c.id, f"/mnt/data/d/up-{i}.txt", BytesUpload(b"uploaded %d\n" % i))
            landed += 1
        except (InvalidPath, ProviderError) as exc:  # the folder was a symlink or went mid-way: said, nothing stored
            assert "Nothing was stored" in exc.message
            refused += 1
    await docker.exec(c.id, sh("touch /tmp/stop; while [ ! -e /tmp/stopped ]; do :; done"), approve=accept)
    assert landed + refused == 40
    everywhere = await as_root(docker, c.id, "find / -xdev -name 'up-*.txt' 2>/dev/null; ls -a /root /etc")
    found = [p for p in everywhere.decode().split() if "up-" in p]
    assert all(p.startswith("/mnt/data/d/") for p in found), found
    # What is recorded is what is stored once a scan has seen what the loop did.
    await docker.exec(c.id, sh("true"), approve=accept)
    assert await rows(docker, c.id) == await stored(docker, c.id)


@pytest.mark.parametrize("target", ["/root", "/etc", "/tmp"])
async def test_a_parent_symlinked_anywhere_is_refused_and_writes_nothing_there(
    docker: DockerProvider, target: str
) -> None:
    c = await docker.create_container(ContainerSpec(name="link"))
    await docker.exec(c.id, sh(f"ln -s {target} d; mkdir -p e/f; ln -s ../e e/g"), approve=accept)
    for path in ("/mnt/data/d/planted", "/mnt/data/d/deeper/planted", "/mnt/data/e/g/f/planted"):
        with pytest.raises(InvalidPath, match="symlink is where one of its parent directories"):
            await docker.create_file(c.id, path, BytesUpload(b"x"))
    assert (await as_root(docker, c.id, "find / -xdev -name planted 2>/dev/null; find / -xdev -name deeper")) == b""
    assert await rows(docker, c.id) == {}


async def test_a_dangling_symlink_at_the_destination_is_replaced_never_followed(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="dangling"))
    await docker.exec(c.id, sh("ln -s /tmp/followed a; ln -s /root/followed b"), approve=accept)
    for name in ("a", "b"):
        f = await docker.create_file(c.id, f"/mnt/data/{name}", BytesUpload(b"mine\n"))
        assert await read(docker, c.id, f.id) == b"mine\n"
    left = await as_root(docker, c.id, "ls /tmp /root; [ -L /mnt/data/a ] || [ -L /mnt/data/b ] || echo regular")
    assert b"followed" not in left and left.endswith(b"regular\n")
    assert await rows(docker, c.id) == await stored(docker, c.id) == {"a": 5, "b": 5}


async def test_a_fifo_at_the_destination_is_replaced_without_a_hang(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="fifo"))
    await docker.exec(c.id, sh("mkfifo p"), approve=accept)
    with anyio.fail_after(20):
        f = await docker.create_file(c.id, "/mnt/data/p", BytesUpload(b"through\n"))
    assert await read(docker, c.id, f.id) == b"through\n"
    assert await stored(docker, c.id) == {"p": 8}


async def test_an_unwritable_directory_is_a_clear_error_and_changes_nothing(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="ro"))
    old = await docker.create_file(c.id, "/mnt/data/ro/kept.txt", BytesUpload(b"old\n"))
    await docker.exec(c.id, sh("chmod 555 ro"), approve=accept)
    before = await rows(docker, c.id)
    for path in ("/mnt/data/ro/new.txt", "/mnt/data/ro/kept.txt", "/mnt/data/ro/sub/new.txt"):
        with pytest.raises(InvalidPath, match="not writable by the container's user|may not make them"):
            await docker.create_file(c.id, path, BytesUpload(b"new\n"))
    assert await rows(docker, c.id) == before == await stored(docker, c.id)
    assert await read(docker, c.id, old.id) == b"old\n"


async def test_a_directory_at_the_path_is_a_clear_error(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="dir"))
    await docker.exec(c.id, sh("mkdir -p taken/inside; ln -s taken alias"), approve=accept)
    for path in ("/mnt/data/taken", "/mnt/data/alias"):
        with pytest.raises(InvalidPath, match="a directory .* is at that path"):
            await docker.create_file(c.id, path, BytesUpload(b"x"))
    assert await stored(docker, c.id) == {} and await rows(docker, c.id) == {}


async def test_binary_uploads_replace_on_the_same_path_byte_exact(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="bin"))
    first = bytes(range(256)) * 4096 + b"\r\n\0tail"  # 1 MiB and change, every byte value
    second = b"\0" * 3
    await docker.create_file(c.id, "/mnt/data/x/b.bin", BytesUpload(first))
    f = await docker.create_file(c.id, "/mnt/data/x/b.bin", BytesUpload(second))
    assert await read(docker, c.id, f.id) == second
    assert await rows(docker, c.id) == await stored(docker, c.id) == {"x/b.bin": 3}
    leftovers = await as_root(docker, c.id, "find /mnt/data -name '.container-mcp-upload-*'")
    assert leftovers == b""


async def _cut(data: bytes, *, fail: bool) -> AsyncIterator[bytes]:
    yield data
    if fail:
        raise OSError("the source went away")


@pytest.mark.parametrize("fail", [False, True], ids=["short", "source-fails"])
async def test_an_upload_cut_mid_stream_stores_nothing(docker: DockerProvider, fail: bool) -> None:
    """What a ``kill -9`` of the server does to the helper: its stdin ends before the size sent."""
    c = await docker.create_container(ContainerSpec(name="cut"))
    await docker.create_file(c.id, "/mnt/data/kept.txt", BytesUpload(b"kept\n"))
    helper = docker_exec.DockerExec(docker.engine, user=docker.user, limits=docker.limits)
    with pytest.raises((ProviderError, OSError)):
        await helper.write(f"cmcp-{c.id}", "kept.txt", 1 << 20, _cut(b"half", fail=fail), shared=False)
    with anyio.fail_after(10):  # the helper, cut off, cleans up after itself
        while await as_root(docker, c.id, "find /mnt/data -name '.container-mcp-upload-*'"):  # noqa: ASYNC110
            await anyio.sleep(0.02)
    assert await stored(docker, c.id) == {"kept.txt": 5}


@pytest.mark.parametrize(
    ("depth", "files"),
    [(15, 5000), (30, 100)],
    ids=["a-change-list-past-the-cap", "paths-past-the-engines-path-max"],
)
async def test_a_flood_in_tmp_then_a_timeout_keeps_memory_bounded_and_finds_the_real_files(
    docker: DockerProvider, depth: int, files: int
) -> None:
    c = await docker.create_container(ContainerSpec(name="flood"))
    # Directories of 250-character names: 15 deep, 5000 files make a change list of ~19 MB; 30 deep,
    # paths the engine itself cannot lstat (it fails the whole list).
    flood = (
        f"d=$(printf 'd%.0s' $(seq 250)); cd /tmp; i=0; while [ $i -lt {depth} ]; do mkdir $d; cd $d; i=$((i+1)); "
        f"done; i=0; while [ $i -lt {files} ]; do : > f$i; i=$((i+1)); done"
    )
    made = await docker.exec(c.id, sh(flood), approve=accept)
    assert made.exit_code == 0
    tracemalloc.start()
    try:
        result = await docker.exec(
            c.id, sh("echo real > real.txt; mkdir -p sub; echo x > sub/y; sleep 300", timeout_s=1), approve=accept
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.timed_out
    assert peak < 24 << 20, f"peak {peak} bytes"
    assert sorted(f.path for f in result.files_created) == ["/mnt/data/real.txt", "/mnt/data/sub/y"]


async def test_the_users_listing_is_cut_at_the_cap_to_whole_paths(
    docker: DockerProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = await docker.create_container(ContainerSpec(name="cap"))
    await docker.exec(c.id, sh("i=0; while [ $i -lt 40 ]; do : > file-$i; i=$((i+1)); done"), approve=accept)
    monkeypatch.setattr(docker_exec, "_MAX_LISTING", 200)  # the change list and the listing are both over it
    listed = await docker._exec.listing(f"cmcp-{c.id}")
    assert 0 < len(listed) < 40
    assert all(p.startswith("/mnt/data/file-") and p.removeprefix("/mnt/data/file-").isdigit() for p in listed)


async def test_a_stop_loop_at_the_helper_is_refused_and_the_upload_lands(tmp_path: Path) -> None:
    async with docker_provider(tmp_path / "docker", limits=ExecLimits(pids_limit=64, helper_idle_s=1)) as docker:
        c = await docker.create_container(ContainerSpec(name="stopped"))
        stopper = "while :; do for p in $(pidof cat); do kill -STOP $p; done; done > /dev/null 2>&1 &"
        await docker.exec(c.id, sh(stopper), approve=accept)
        with anyio.fail_after(30):  # stop signals are refused by the containers' seccomp profile
            f = await docker.create_file(c.id, "/mnt/data/big.bin", BytesUpload(b"\xa5" * (16 << 20)))
        assert await rows(docker, c.id) == await stored(docker, c.id) == {"big.bin": f.bytes}


async def test_a_helper_held_by_the_containers_processes_is_given_up_and_records_nothing(tmp_path: Path) -> None:
    # A uid-1000 process can still hold the helper by ptrace (it is dumpable once it runs).
    async with docker_provider(tmp_path / "docker", limits=ExecLimits(pids_limit=64, helper_idle_s=1)) as docker:
        if (await docker.engine.version()).get("Arch") != "amd64":
            pytest.skip("the attack program is x86-64 machine code")
        c = await docker.create_container(ContainerSpec(name="held"))
        await docker.create_file(c.id, "/mnt/data/tracer", BytesUpload(PTRACE_LOOP))
        # Started once this command has ended, so the call returns (a traced wrapper would time out, and
        # the kill that fails on it restarts the container, tracer and all).
        await docker.exec(
            c.id,
            sh("chmod +x tracer; setsid sh -c 'sleep 0.5; exec ./tracer' >/dev/null 2>&1 </dev/null &"),
            approve=accept,
        )
        with anyio.fail_after(10):
            while not await as_root(docker, c.id, "pidof tracer || true"):  # noqa: ASYNC110
                await anyio.sleep(0.05)
        with anyio.fail_after(60), pytest.raises(ProviderError) as caught:
            await docker.create_file(c.id, "/mnt/data/big.bin", BytesUpload(b"\xa5" * (64 << 20)))
        assert "Nothing was" in caught.value.message
        assert "big.bin" not in await rows(docker, c.id)
        with anyio.fail_after(60):
            await docker.delete_container(c.id)
        assert await engine_containers(docker.data_dir) == []


async def test_the_helper_says_how_it_ended_in_its_status_too(docker: DockerProvider) -> None:
    # Podman can lose the last output of a process that exits at once: the status is the fallback.
    c = await docker.create_container(ContainerSpec(name="status"))
    await docker.exec(c.id, sh("mkdir adir; ln -s /etc alink; mkdir ro; chmod 555 ro"), approve=accept)
    engine, by_word = docker.engine, {word: code for code, word in docker_exec._WRITTEN.items()}
    for parents, base, data, word in [
        ("", "new.txt", b"hi", "stored"),
        ("alink", "x", b"hi", "parent"),
        ("", "adir", b"hi", "directory"),
        ("ro", "x", b"hi", "unwritable"),
    ]:
        argv = ["/bin/sh", "-c", docker_exec._WRITE, "sh", parents, base, "n0nce", "2", "022"]
        exec_id = await engine.exec_create(f"cmcp-{c.id}", argv, user="1000:1000", env=[], workdir="/", stdin=True)
        stream = await engine.exec_start(exec_id)
        said = bytearray()
        try:
            await stream.send_stdin(data)
            async for kind, payload in stream.frames():
                said += payload if kind == 1 else b""
        finally:
            await stream.aclose()
        assert said.decode().strip() == word
        assert (
            await docker._exec._written(exec_id) == word
            and by_word[word] == (await engine.exec_inspect(exec_id))["ExitCode"]
        )
