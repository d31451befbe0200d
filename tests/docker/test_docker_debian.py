"""The docker provider on a real distribution image: Debian, whose ``/bin/sh`` is dash.

The default image (``python:3.12-slim``) is Debian too, so the provider's shell scripts (the exec
wrapper, the kill, the reads) must work on dash as they do on busybox's ash, where the other docker
tests run. The image is built once per machine with mmdebstrap (see engine.py), about a minute.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from container_mcp.models import ContainerSpec, ListParams
from container_mcp.providers.base import ExecRequest
from container_mcp.providers.docker import DockerProvider
from container_mcp.providers.docker_api import Engine
from container_mcp.uploads import BytesUpload

from .calls import accept, sh
from .engine import DOCKER_HOST, debian_image, docker_provider, require_engine

# The first test of a fresh machine builds the image (~1 min on 2 cores, more on a slow mirror).
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(600)]

PROCESSES = "for d in /proc/[0-9]*; do tr '\\0' ' ' < $d/cmdline 2>/dev/null; echo; done | grep '^sleep 30' || true"
"""The command lines of the container's ``sleep 30*`` processes (the image has no ``ps``)."""


@pytest.fixture
async def debian(tmp_path: Path) -> AsyncIterator[DockerProvider]:
    await require_engine()
    async with Engine(DOCKER_HOST) as engine:
        image = await debian_image(engine)
    async with docker_provider(tmp_path / "docker", image=image) as provider:
        yield provider


async def test_commands_files_and_state_on_dash(debian: DockerProvider) -> None:
    c = await debian.create_container(ContainerSpec(name="debian"))
    kept = await debian.create_file(c.id, "/mnt/data/keep.txt", BytesUpload(b"old"))
    await debian.create_file(c.id, "/mnt/data/gone.txt", BytesUpload(b"bye"))
    shell = await debian.exec(c.id, ExecRequest(argv=["readlink", "-f", "/bin/sh"]), approve=accept)
    assert shell.stdout == "/usr/bin/dash\n"

    result = await debian.exec(
        c.id,
        sh("cat; echo oops >&2; printf new > keep.txt; rm gone.txt; mkdir -p out; exit 3", stdin=b"fed\n"),
        approve=accept,
    )
    assert (result.exit_code, result.stdout, result.stderr) == (3, "fed\n", "oops\n")
    assert [(f.id, f.bytes) for f in result.files_changed] == [(kept.id, 3)]
    assert result.files_deleted == ["/mnt/data/gone.txt"]

    python = await debian.exec(
        c.id,
        ExecRequest(
            argv=[
                "python3",
                "-c",
                "import sys; open('out/p.bin', 'wb').write(bytes(range(256))); print(sys.version_info[0])",
            ]
        ),
        approve=accept,
    )
    assert (python.exit_code, python.stdout) == (0, "3\n")
    assert [(f.path, f.bytes) for f in python.files_created] == [("/mnt/data/out/p.bin", 256)]
    read = b"".join([b async for b in debian.read_file(c.id, python.files_created[0].id)])
    assert read == bytes(range(256))

    await debian.exec(c.id, sh("echo kept > /tmp/state; sleep 300 >/dev/null 2>&1 </dev/null &"), approve=accept)
    later = await debian.exec(c.id, sh(f"cat /tmp/state; {PROCESSES}"), approve=accept)
    assert later.stdout.splitlines() == ["kept", "sleep 300 "]
    listed = {f.path for f in (await debian.list_files(c.id, ListParams())).data}
    assert listed == {"/mnt/data/keep.txt", "/mnt/data/out/p.bin"}


async def test_a_timeout_and_a_cancel_kill_the_whole_tree_on_dash(debian: DockerProvider) -> None:
    c = await debian.create_container(ContainerSpec(name="kill"))
    result = await debian.exec(
        c.id, sh("sleep 301 & sh -c 'sleep 302' & echo started; wait", timeout_s=1.5), approve=accept
    )
    assert result.timed_out and result.killed_reason == "timeout" and result.stdout == "started\n"
    assert (await debian.exec(c.id, sh(PROCESSES), approve=accept)).stdout == ""

    with anyio.move_on_after(1.0):
        await debian.exec(c.id, sh("sleep 303; touch /mnt/data/late"), approve=accept)
    left = await debian.exec(c.id, sh(f"{PROCESSES}; ls /mnt/data"), approve=accept)
    assert left.stdout == ""


async def test_a_symlink_to_a_root_only_file_is_never_read_on_dash(debian: DockerProvider) -> None:
    c = await debian.create_container(ContainerSpec(name="shadow"))
    result = await debian.exec(c.id, sh("ln -s /etc/shadow leak; mkdir d; ln -s /etc d/etc"), approve=accept)
    assert (result.files_created, result.files_changed) == ([], [])
    assert (await debian.list_files(c.id, ListParams())).data == []
