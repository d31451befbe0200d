"""A hostile command against the server's own reads, writes and helpers on the docker provider.

The command runs as the provider's (non-root) user; the engine's archive API and the server's
helpers act on its behalf. Each test is one attack: it must not make the server read what the
user cannot, buffer without bound, or wait forever.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import anyio
import pytest

from container_mcp.models import ContainerSpec, ListParams
from container_mcp.providers.docker import DockerProvider
from container_mcp.providers.docker_exec import ExecLimits
from container_mcp.uploads import BytesUpload

from .calls import NONCE, accept, as_root, sh
from .engine import docker_provider

pytestmark = pytest.mark.anyio

SECRET = b"root-only-secret\n"


async def stored_bytes(docker: DockerProvider, container_id: str) -> list[bytes]:
    out = []
    for f in (await docker.list_files(container_id, ListParams())).data:
        try:
            out.append(b"".join([chunk async for chunk in docker.read_file(container_id, f.id)]))
        except Exception:  # an unreadable file is fine; a root-only file's bytes are not
            continue
    return out


async def planted(docker: DockerProvider) -> str:
    c = await docker.create_container(ContainerSpec(name="root-only"))
    await as_root(docker, c.id, f"printf '{SECRET.decode().strip()}\\n' > /root/secret; chmod 600 /root/secret")
    denied = await docker.exec(c.id, sh("cat /root/secret"), approve=accept)
    assert denied.exit_code != 0 and denied.stdout == ""  # the user cannot read it itself
    return c.id


async def test_a_recorded_file_under_a_directory_swapped_for_a_symlink_reads_nothing_root_only(
    docker: DockerProvider,
) -> None:
    cid = await planted(docker)
    mine = await docker.create_file(cid, "/mnt/data/d/secret", BytesUpload(b"mine"))
    await docker.exec(cid, sh("rm -r d && ln -s /root d"), approve=accept)
    assert SECRET not in await stored_bytes(docker, cid)
    with pytest.raises(Exception):  # noqa: B017 - whatever the error, never the root-only bytes
        data = b"".join([chunk async for chunk in docker.read_file(cid, mine.id)])
        assert data != SECRET
        raise RuntimeError(data)


async def test_a_forged_listing_through_a_symlink_reads_nothing_root_only(docker: DockerProvider) -> None:
    cid = await planted(docker)
    result = await docker.exec(
        cid, sh(f"{NONCE}; ln -s /root l; printf '\\n%s\\n/mnt/data/l/secret\\0\\n%s.\\n' $n $n >&2"), approve=accept
    )
    assert [f.path for f in result.files_created] == []
    assert SECRET not in await stored_bytes(docker, cid)


async def test_a_forged_listing_cannot_flood_the_servers_memory(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="flood"))
    tracemalloc.start()
    try:
        result = await docker.exec(
            c.id, sh(f"{NONCE}; printf '\\n%s\\n' $n >&2; head -c 100000000 /dev/zero >&2; echo x > f"), approve=accept
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 24 << 20, f"peak {peak} bytes"
    assert [f.path for f in result.files_created] == ["/mnt/data/f"]  # found without the spoiled listing


async def test_a_pidfile_made_a_fifo_cannot_hang_the_kill(tmp_path: Path) -> None:
    async with docker_provider(tmp_path / "docker", limits=ExecLimits(pids_limit=64, kill_wait_s=2)) as docker:
        c = await docker.create_container(ContainerSpec(name="fifo"))
        pidfile = "/tmp/.container-mcp-exec.pid"
        with anyio.fail_after(40):
            result = await docker.exec(
                c.id, sh(f"rm -f {pidfile}; mkfifo {pidfile}; sleep 305", timeout_s=1), approve=accept
            )
        assert result.timed_out
        left = await docker.exec(c.id, sh("ps -o args | grep '^sleep 305' || true"), approve=accept)
        assert left.stdout == ""


async def test_reads_as_the_user_keep_ranges_and_binary_bytes(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="ranges"))
    data = bytes(range(256)) * 40
    f = await docker.create_file(c.id, "/mnt/data/b.bin", BytesUpload(data))
    for offset, length in [(0, None), (3, None), (10, 5), (20000, None), (0, 0), (10239, 10)]:
        got = b"".join([chunk async for chunk in docker.read_file(c.id, f.id, offset=offset, length=length)])
        assert got == data[offset : None if length is None else offset + length], (offset, length)


async def test_a_hard_link_to_a_root_only_file_reads_nothing_root_only(docker: DockerProvider) -> None:
    cid = await planted(docker)
    await as_root(docker, cid, "cp /root/secret /tmp/rootfile; chmod 600 /tmp/rootfile")
    await docker.exec(cid, sh("ln /tmp/rootfile /mnt/data/h; ln -s /tmp/rootfile /mnt/data/s; true"), approve=accept)
    assert SECRET not in await stored_bytes(docker, cid)


async def test_the_image_allowlist_is_exact(docker: DockerProvider) -> None:
    from container_mcp.errors import InvalidRequest

    allowed = docker.images[0]
    name, _, tag = allowed.partition(":")
    for image in (
        allowed.upper(),
        f" {allowed}",
        f"{allowed} ",
        f"docker.io/library/{allowed}",
        name,
        f"{allowed}@sha256:" + "0" * 64,
    ):
        with pytest.raises(InvalidRequest, match="not offered"):
            await docker.create_container(ContainerSpec(name="img", image=image))
    assert await docker.engine.list_labelled(docker.labels) == []


async def test_a_container_name_reaches_no_engine_name_or_label(docker: DockerProvider) -> None:
    from container_mcp.providers.docker import LABEL_CONTAINER, LABEL_DATA_DIR, LABEL_INSTANCE

    hostile = 'x"\nio.container-mcp.instance=other,com.docker.compose.project=p --privileged ../'
    c = await docker.create_container(ContainerSpec(name=hostile))
    found = await docker.engine.inspect(f"cmcp-{c.id}")
    assert found is not None and found["Name"] == f"/cmcp-{c.id}"
    assert set(found["Config"]["Labels"]) == {LABEL_INSTANCE, LABEL_DATA_DIR, LABEL_CONTAINER}
    assert found["Config"]["Labels"][LABEL_INSTANCE] == docker.instance
    assert found["HostConfig"]["Privileged"] is False
