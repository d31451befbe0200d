"""A hostile agent and a hostile command against the docker provider's file paths.

The agent chooses paths and contents (every name the path rules let through must reach the upload
helper's shell as data, never as code, on busybox ash and on Debian's dash); the command runs as
the container's user and may leave processes behind (they grow files while the server reads them,
forge the wrapper's listing). Each test is one attack: the server must record only what is stored,
read no byte past what it recorded, and spend time in proportion to what is really there.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from container_mcp.errors import InvalidPath
from container_mcp.models import ContainerSpec, ListParams
from container_mcp.providers import docker_exec
from container_mcp.providers.docker import MAX_DEPTH, DockerProvider
from container_mcp.providers.docker_api import Engine
from container_mcp.uploads import BytesUpload

from .calls import NONCE, accept, as_root, rows, sh, stored
from .engine import DOCKER_HOST, debian_image, docker_provider, require_engine

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["busybox", "debian"])
async def shell_provider(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DockerProvider]:
    """The provider on the busybox image (ash) and on the Debian one (dash)."""
    image = None
    if request.param == "debian":
        await require_engine()
        async with Engine(DOCKER_HOST) as engine:
            image = await debian_image(engine)
    async with docker_provider(tmp_path / "docker", image=image) as provider:
        yield provider


HOSTILE = [
    "-n",
    "--",
    "-",
    "-rf/--/x",
    "a'b\"c",
    "$(touch${IFS}/tmp/pwned)",
    "`touch /tmp/pwned`",
    "x;touch /tmp/pwned;y",
    "*/?/[a]",
    "!/(/)/=",
    " lead/trail ",
    "a b/c  d",
    "ünï/中文/🙂.txt",
    ".container-mcp-upload-0",
    "d/.container-mcp-upload-" + "0" * 32,
    "%s%n%x",
    "-e/-d/-L",
    "IFS=x/PATH=/y",
]


async def test_hostile_names_are_data_to_the_upload_helper_on_both_shells(shell_provider: DockerProvider) -> None:
    docker = shell_provider
    c = await docker.create_container(ContainerSpec(name="names"))
    for i, name in enumerate(HOSTILE):
        body = f"body {i}\n".encode()
        f = await docker.create_file(c.id, f"/mnt/data/{name}", BytesUpload(body))
        assert f.path == f"/mnt/data/{name}"
        got = b"".join([chunk async for chunk in docker.read_file(c.id, f.id)])
        assert got == body, name
    assert await as_root(docker, c.id, "ls /tmp/pwned /pwned 2>/dev/null; true") == b""
    expected = {name: len(f"body {i}\n") for i, name in enumerate(HOSTILE)}
    assert await rows(docker, c.id) == expected
    # What root sees, and what the user's scan finds, are the same files (find's -type f names them all).
    assert await stored(docker, c.id) == expected
    scanned = await docker.exec(c.id, sh("true"), approve=accept)
    assert (scanned.files_created, scanned.files_changed, scanned.files_deleted) == ([], [], [])


async def test_the_longest_and_deepest_paths_store_and_are_recorded_on_both_shells(
    shell_provider: DockerProvider,
) -> None:
    docker = shell_provider
    c = await docker.create_container(ContainerSpec(name="deep"))
    deep = "/".join(["d"] * (MAX_DEPTH - 1)) + "/f"  # as deep as the docker provider stores
    wide = "/".join(["d" * 100] * 9) + "/" + "f" * 104  # /mnt/data/ + 1014 bytes: the 1024-byte limit exactly
    long = "x" * 250 + "/" + "é" * 127  # 254 bytes of two-byte characters: the longest name
    for path in (deep, wide, long):
        f = await docker.create_file(c.id, f"/mnt/data/{path}", BytesUpload(b"deep\n"))
        assert b"".join([chunk async for chunk in docker.read_file(c.id, f.id)]) == b"deep\n"
    assert await rows(docker, c.id) == {deep: 5, wide: 5, long: 5} == await stored(docker, c.id)


async def test_a_path_deeper_than_the_engine_can_stat_is_refused_before_anything_is_stored(
    docker: DockerProvider,
) -> None:
    """Docker's stat fails past 256 names: stored there, a file would stay uncounted by every scan."""
    c = await docker.create_container(ContainerSpec(name="deeper"))
    for depth in (MAX_DEPTH + 1, 300):
        with pytest.raises(InvalidPath, match=f"at most {MAX_DEPTH} names below /mnt/data"):
            await docker.create_file(c.id, "/mnt/data/" + "/".join(["d"] * depth), BytesUpload(b"uncounted\n"))
    assert await stored(docker, c.id) == {} == await rows(docker, c.id)
    assert await as_root(docker, c.id, "ls /mnt/data") == b""


# Once the server's read helper (`head`) runs, a process the command left grows the file 1 GiB at a
# time (sparse: no disk), up to 8 GiB: a reader that reads to the end never catches up with it.
GROWER = (
    "dd if=/dev/zero of=big bs=1M count=0 seek=16 2>/dev/null; "
    "{ until pidof head; do :; done; i=1; while [ $i -le 8 ]; do "
    "dd if=/dev/null of=big bs=1M count=0 seek=$((i*1024)) 2>/dev/null; i=$((i+1)); done; } > /dev/null 2>&1 &"
)


async def _count(chunks: AsyncIterator[bytes], cap: int) -> int:
    """Bytes in ``chunks``, reading no more than ``cap`` + 1 of them."""
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if total > cap:
            break
    return total


async def test_a_file_grown_while_the_server_reads_it_is_hashed_and_served_only_to_its_recorded_size(
    docker: DockerProvider,
) -> None:
    c = await docker.create_container(ContainerSpec(name="grow"))
    result = await docker.exec(c.id, sh(GROWER), approve=accept)
    assert [(f.path, f.bytes) for f in result.files_created] == [("/mnt/data/big", 16 << 20)]
    (row,) = (await docker.list_files(c.id, ListParams())).data
    assert row.bytes == 16 << 20
    recorded = docker.registry.file_at(c.id, "big")
    assert recorded is not None and recorded.sha256 == hashlib.sha256(bytes(16 << 20)).hexdigest()
    # Later reads (a download, a copy's source) stop at the recorded size too, however large it is now.
    assert await _count(docker.read_file(c.id, row.id), 16 << 20) == 16 << 20
    assert await _count(docker.read_file(c.id, row.id, offset=(16 << 20) - 3), 1 << 20) == 3
    assert await _count(docker.read_file(c.id, row.id, offset=16 << 20), 1 << 20) == 0
    other = await docker.create_container(ContainerSpec(name="copy"))
    copied = await docker.copy_file(c.id, row.id, other.id)
    assert copied.bytes == 16 << 20 and await stored(docker, other.id) == {"big": 16 << 20}


async def test_a_forged_listing_of_a_hundred_thousand_names_costs_no_stat_per_name(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="forged"))
    calls = 0
    stat_path = docker.engine.stat_path

    async def counted(ref: str, path: str) -> dict[str, Any] | None:
        nonlocal calls
        calls += 1
        return await stat_path(ref, path)

    docker.engine.stat_path = counted  # type: ignore[method-assign]  # counted, still the engine's own
    forge = (
        f"{NONCE}; echo real > real.txt; {{ printf '\\n%s\\n' $n; "
        "seq 1 100000 | sed 's|^|/mnt/data/|' | tr '\\n' '\\0'; printf '\\n%s.\\n' $n; } >&2"
    )
    result = await docker.exec(c.id, sh(forge), approve=accept)
    assert result.exit_code == 0
    assert [f.path for f in result.files_created] == ["/mnt/data/real.txt"]  # found by the change list instead
    assert calls < 100


async def test_a_flood_of_real_files_is_scanned_to_the_cap_and_counters_follow_the_rows(
    docker: DockerProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = await docker.create_container(ContainerSpec(name="many"))
    await docker.create_file(c.id, "/mnt/data/kept.txt", BytesUpload(b"kept\n"))
    monkeypatch.setattr(docker_exec, "_MAX_NEW_PATHS", 20)
    result = await docker.exec(c.id, sh("i=0; while [ $i -lt 60 ]; do echo $i > f$i; i=$((i+1)); done"), approve=accept)
    assert len(result.files_created) == 20
    recorded = await rows(docker, c.id)
    assert len(recorded) == 21 and recorded["kept.txt"] == 5
    assert all(size == len(f"{path[1:]}\n") for path, size in recorded.items() if path != "kept.txt")
    # The next scans record the rest, at most the cap at a time.
    await docker.exec(c.id, sh("true"), approve=accept)
    await docker.exec(c.id, sh("true"), approve=accept)
    assert await rows(docker, c.id) == await stored(docker, c.id)


async def test_many_new_files_are_hashed_by_a_few_batched_helpers_and_each_digest_is_its_own_on_both_shells(
    shell_provider: DockerProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A helper per file (~75 ms each) let a command buy minutes of the server's time per thousand files."""
    docker = shell_provider
    c = await docker.create_container(ContainerSpec(name="hashes"))
    execs = 0
    exec_create = docker.engine.exec_create

    async def counted(*args: Any, **kw: Any) -> str:
        nonlocal execs
        execs += 1
        return await exec_create(*args, **kw)

    docker.engine.exec_create = counted  # type: ignore[method-assign]  # counted, still the engine's own
    monkeypatch.setattr(docker_exec, "_DIGEST_ARGV_BYTES", 4096)  # ~100 files a helper: several batches
    make = (
        "i=0; while [ $i -lt 600 ]; do echo $i > f$i; i=$((i+1)); done; "
        "echo hidden > unreadable; chmod 000 unreadable; : > empty; mkfifo fifo"
    )
    result = await docker.exec(c.id, sh(make), approve=accept)
    assert result.exit_code == 0
    assert execs < 12, execs  # the command, and one helper per batch
    recorded = {row.path: row for row in docker.registry.files_of(c.id).values()}
    assert "unreadable" not in recorded and "fifo" not in recorded and len(recorded) == 601
    assert recorded["empty"].sha256 == hashlib.sha256(b"").hexdigest()
    for i in range(600):
        assert recorded[f"f{i}"].sha256 == hashlib.sha256(f"{i}\n".encode()).hexdigest(), i


async def test_uploads_racing_to_one_path_from_two_server_processes_leave_one_row_equal_to_the_bytes(
    tmp_path: Path,
) -> None:
    async with (
        docker_provider(tmp_path / "docker") as first,
        docker_provider(tmp_path / "docker", cleanup=False) as second,
    ):
        c = await first.create_container(ContainerSpec(name="race"))
        bodies = [bytes([i]) * (1000 + i) for i in range(12)]

        async def put(docker: DockerProvider, body: bytes) -> None:
            await docker.create_file(c.id, "/mnt/data/same/path.bin", BytesUpload(body))

        async with anyio.create_task_group() as tg:
            for i, body in enumerate(bodies):
                tg.start_soon(put, (first, second)[i % 2], body)
        assert await rows(first, c.id) == await rows(second, c.id) == await stored(first, c.id)
        (row,) = (await second.list_files(c.id, ListParams())).data
        data = b"".join([chunk async for chunk in second.read_file(c.id, row.id)])
        assert data in bodies and first.registry.file_at(c.id, "same/path.bin").sha256 == (  # type: ignore[union-attr]
            hashlib.sha256(data).hexdigest()
        )
