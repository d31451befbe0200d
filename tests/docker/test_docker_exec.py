"""container_exec on the docker provider: the local provider's result shape, from a real engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from container_mcp.errors import ContainerExpired, InvalidPath, InvalidRequest, QuotaExceeded
from container_mcp.models import ContainerSpec, ListParams
from container_mcp.providers.base import ExecRequest, FileChanges
from container_mcp.providers.docker import DockerProvider
from container_mcp.uploads import BytesUpload

from .calls import accept, sh
from .engine import docker_provider

pytestmark = pytest.mark.anyio
ENGINES = ["docker", "podman"]


async def test_output_exit_code_stdin_and_file_changes(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="exec"))
    kept = await docker.create_file(c.id, "/mnt/data/keep.txt", BytesUpload(b"old"))
    gone = await docker.create_file(c.id, "/mnt/data/gone.txt", BytesUpload(b"bye"))
    seen: list[FileChanges] = []

    async def record(changes: FileChanges) -> None:
        seen.append(changes)

    result = await docker.exec(
        c.id,
        sh("cat; echo hello; echo oops >&2; printf new > keep.txt; rm gone.txt; exit 3", stdin=b"fed "),
        approve=record,
    )
    assert (result.exit_code, result.stdout, result.stderr) == (3, "fed hello\n", "oops\n")
    assert result.stdout_bytes == 10 and not result.timed_out and result.signal is None
    assert result.files_created == []
    assert [f.path for f in result.files_changed] == ["/mnt/data/keep.txt"]
    assert result.files_changed[0].id == kept.id and result.files_changed[0].bytes == 3
    assert result.files_deleted == ["/mnt/data/gone.txt"]
    assert seen[0].bytes_delta == -3 and seen[0].files_delta == -1

    made = await docker.exec(c.id, sh("mkdir -p out && cat > out/in.txt", stdin=b"fed\x00\xff"), approve=accept)
    assert [(f.path, f.bytes, f.source) for f in made.files_created] == [("/mnt/data/out/in.txt", 5, "assistant")]
    chunks = [b async for b in docker.read_file(c.id, made.files_created[0].id)]
    assert b"".join(chunks) == b"fed\x00\xff"
    listed = {f.path for f in (await docker.list_files(c.id, ListParams())).data}
    assert listed == {"/mnt/data/keep.txt", "/mnt/data/out/in.txt"}
    assert gone.id not in {f.id for f in (await docker.list_files(c.id, ListParams())).data}


async def test_the_file_listing_never_shows_in_the_output(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="listing"))
    result = await docker.exec(c.id, sh("printf 'no newline' >&2; printf x > made.txt"), approve=accept)
    assert (result.stderr, result.stdout, result.stderr_bytes) == ("no newline", "", 10)
    assert [f.path for f in result.files_created] == ["/mnt/data/made.txt"]
    quiet = await docker.exec(c.id, sh("true"), approve=accept)
    assert (quiet.stderr, quiet.stderr_bytes, quiet.files_created) == ("", 0, [])


async def test_a_real_container_keeps_state_and_processes_between_commands(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="state"))
    await docker.exec(c.id, sh("echo kept > /tmp/state; sleep 300 >/dev/null 2>&1 </dev/null &"), approve=accept)
    later = await docker.exec(c.id, sh("cat /tmp/state; ps -o args | grep -c '^sleep 300'"), approve=accept)
    assert later.stdout.split() == ["kept", "1"]
    assert later.files_created == []  # /tmp is not /mnt/data


async def test_a_timeout_kills_the_whole_process_tree(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="timeout"))
    result = await docker.exec(
        c.id, sh("sleep 301 & sh -c 'sleep 302' & echo started; wait", timeout_s=1.5), approve=accept
    )
    assert result.timed_out and result.killed_reason == "timeout" and result.exit_code is None
    assert result.stdout == "started\n"
    left = await docker.exec(c.id, sh("ps -o args | grep '^sleep 30' || true"), approve=accept)
    assert left.stdout == ""


async def test_files_a_timed_out_command_wrote_are_found_without_its_listing(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="partial"))
    result = await docker.exec(c.id, sh("echo part > part.txt; sleep 304", timeout_s=1), approve=accept)
    assert result.timed_out  # killed before its wrapper could list: the engine's change list is used
    assert [(f.path, f.bytes) for f in result.files_created] == [("/mnt/data/part.txt", 5)]


async def test_a_cancelled_call_kills_its_command(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="cancel"))
    with anyio.move_on_after(1.0):
        await docker.exec(c.id, sh("sleep 303; touch /mnt/data/late"), approve=accept)
    left = await docker.exec(c.id, sh("ps -o args | grep '^sleep 303' || true; ls /mnt/data"), approve=accept)
    assert left.stdout == ""


async def test_output_is_capped_head_and_tail(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="output"))
    result = await docker.exec(
        c.id,
        sh("echo first; head -c 100000 /dev/zero | tr '\\0' x; echo; echo last", max_output_bytes=1024),
        approve=accept,
    )
    assert result.stdout_truncated and result.stdout_bytes == 6 + 100_000 + 1 + 5
    assert result.stdout.startswith("first\n") and result.stdout.endswith("last\n") and "omitted" in result.stdout


async def test_refused_changes_leave_nothing_unaccounted(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="quota"))
    await docker.create_file(c.id, "/mnt/data/kept.txt", BytesUpload(b"kept"))

    async def refuse(changes: FileChanges) -> None:
        raise QuotaExceeded("over the limit", limit_name="stored bytes", limit=1, used=1)

    with pytest.raises(QuotaExceeded, match="were removed from /mnt/data"):
        await docker.exec(c.id, sh("head -c 5000 /dev/zero > big.bin"), approve=refuse)
    listed = [f.path for f in (await docker.list_files(c.id, ListParams())).data]
    assert listed == ["/mnt/data/kept.txt"]
    ls = await docker.exec(c.id, sh("ls /mnt/data"), approve=accept)
    assert ls.stdout.split() == ["kept.txt"]


async def test_workdir_outside_mnt_data_is_refused(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="workdir"))
    with pytest.raises(InvalidRequest, match="workdir"):
        await docker.exec(c.id, ExecRequest(argv=["pwd"], workdir="/etc"), approve=accept)
    made = await docker.exec(c.id, ExecRequest(argv=["pwd"], workdir="/mnt/data/sub/dir"), approve=accept)
    assert made.stdout == "/mnt/data/sub/dir\n"


async def test_an_upload_never_goes_through_what_a_command_put_in_its_way(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="inway"))
    await docker.exec(c.id, sh("mkdir adir; echo x > afile; ln -s /etc alink"), approve=accept)
    for path in ("/mnt/data/adir", "/mnt/data/afile/sub.txt", "/mnt/data/alink/passwd2"):
        with pytest.raises(InvalidPath, match="cannot be written"):
            await docker.create_file(c.id, path, BytesUpload(b"hi"))
    ls = await docker.exec(c.id, sh("ls /etc/passwd2 2>&1; cat afile"), approve=accept)
    assert "No such file" in ls.stdout and ls.stdout.endswith("x\n")
    assert [f.path for f in (await docker.list_files(c.id, ListParams())).data] == ["/mnt/data/afile"]


async def test_large_files_stream_with_flat_memory(docker: DockerProvider) -> None:
    import hashlib
    import tracemalloc

    size = 48 << 20
    block = bytes(range(256)) * 4096  # 1 MiB

    class Generated:
        host_fd: int | None = None

        def __init__(self) -> None:
            self.size: int | None = None  # a stream: its size is learned while spooling

        async def chunks(self) -> AsyncIterator[bytes]:
            for _ in range(size // len(block)):
                yield block

    c = await docker.create_container(ContainerSpec(name="big"))
    tracemalloc.start()
    try:
        f = await docker.create_file(c.id, "/mnt/data/big.bin", Generated())
        digest = hashlib.sha256()
        async for chunk in docker.read_file(c.id, f.id):
            digest.update(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f.bytes == size and digest.hexdigest() == f.sha256
    assert peak < 16 << 20, f"peak {peak} bytes for a {size}-byte file"


async def test_the_images_own_named_user_can_use_uploaded_files(tmp_path: Path, engine_host: str) -> None:
    async with docker_provider(tmp_path / "docker", user="", image_user="sandbox", host=engine_host) as docker:
        c = await docker.create_container(ContainerSpec(name="named"))
        up = await docker.create_file(c.id, "/mnt/data/in/up.txt", BytesUpload(b"up"))
        ran = await docker.exec(c.id, sh("id -un; echo more >> in/up.txt; echo new > in/new.txt"), approve=accept)
        assert (ran.exit_code, ran.stdout, ran.stderr) == (0, "sandbox\n", "")
        assert [f.id for f in ran.files_changed] == [up.id]
        assert [f.path for f in ran.files_created] == ["/mnt/data/in/new.txt"]


async def test_progress_is_reported_while_a_command_runs(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="progress"))
    seen: list[tuple[float, str]] = []

    async def progress(elapsed: float, message: str) -> None:
        seen.append((elapsed, message))

    result = await docker.exec(c.id, sh("echo start; sleep 1.3"), approve=accept, progress=progress)
    assert result.exit_code == 0
    assert len(seen) == 1 and seen[0][0] >= 1.0 and "6 bytes of output" in seen[0][1]


async def test_an_engine_container_removed_behind_our_back_is_expired(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="vanish"))
    await docker.engine.remove(f"cmcp-{c.id}")
    with pytest.raises(ContainerExpired):
        await docker.exec(c.id, ExecRequest(argv=["true"]), approve=accept)
    assert (await docker.get_container(c.id)).status == "expired"
    with pytest.raises(ContainerExpired):
        await docker.list_files(c.id, ListParams())
