"""The docker provider's engine objects: labelled, removed on delete and expiry, reconciled at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from container_mcp.clock import ManualClock
from container_mcp.errors import ContainerExpired, ProviderUnavailable
from container_mcp.models import ContainerSpec, ExpiresAfter, ListParams
from container_mcp.providers.base import ExecRequest
from container_mcp.providers.docker import LABEL_CONTAINER, LABEL_DATA_DIR, DockerProvider, is_podman
from container_mcp.providers.docker_seccomp import security_opt
from container_mcp.uploads import BytesUpload

from .calls import accept
from .engine import DOCKER_HOST, docker_provider, engine_containers

pytestmark = pytest.mark.anyio
ENGINES = ["docker", "podman"]


async def test_delete_removes_the_engine_container(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="del"))
    found = await docker.engine.inspect(f"cmcp-{c.id}")
    assert found is not None and found["State"]["Running"] is True
    labels = found["Config"]["Labels"]
    assert labels[LABEL_CONTAINER] == c.id and labels[LABEL_DATA_DIR] == str(docker.data_dir)
    await docker.delete_container(c.id)
    assert await docker.engine.inspect(f"cmcp-{c.id}") is None
    assert await engine_containers(docker.data_dir, docker.engine.docker_host) == []


async def test_expiry_removes_the_engine_container_and_keeps_the_row(tmp_path: Path, engine_host: str) -> None:
    clock = ManualClock()
    async with docker_provider(tmp_path / "docker", clock=clock, host=engine_host) as docker:
        c = await docker.create_container(ContainerSpec(name="exp", expires_after=ExpiresAfter(minutes=1)))
        await docker.create_file(c.id, "/mnt/data/a.txt", BytesUpload(b"a"))
        clock.advance(61)
        assert await docker.sweep() == [c.id]
        assert await engine_containers(docker.data_dir, docker.engine.docker_host) == []
        assert (await docker.get_container(c.id)).status == "expired"
        with pytest.raises(ContainerExpired):
            await docker.list_files(c.id, ListParams())


async def test_restart_removes_unrowed_engine_containers_and_expires_vanished_ones(
    tmp_path: Path, engine_host: str
) -> None:
    data = tmp_path / "docker"
    async with docker_provider(data, cleanup=False, host=engine_host) as docker:
        kept = await docker.create_container(ContainerSpec(name="kept"))
        vanished = await docker.create_container(ContainerSpec(name="vanished"))
        orphan = await docker.create_container(ContainerSpec(name="orphan"))
        docker.registry.delete_container(orphan.id)  # as if a crash came between engine create and row
        await docker.engine.remove(f"cmcp-{vanished.id}")  # as if someone removed it on the engine
    async with docker_provider(data, host=engine_host) as docker:
        labelled = await engine_containers(data, engine_host)
        assert len(labelled) == 1
        assert (await docker.engine.inspect(f"cmcp-{kept.id}")) is not None
        assert (await docker.get_container(vanished.id)).status == "expired"
        assert (await docker.get_container(kept.id)).status == "running"


async def test_a_missing_image_that_cannot_be_pulled_is_a_clear_error(tmp_path: Path, engine_host: str) -> None:
    # A registry on loopback where nothing listens: the engine's pull fails at once, and no
    # traffic leaves the machine.
    missing = "127.0.0.1:9/container-mcp-missing:1"
    async with docker_provider(tmp_path / "docker", host=engine_host) as docker:
        docker.images.append(missing)
        with pytest.raises(ProviderUnavailable) as caught:
            await docker.create_container(ContainerSpec(name="img", image=missing))
        assert missing in caught.value.message and "docker load" in caught.value.message
        assert await engine_containers(docker.data_dir, docker.engine.docker_host) == []
        assert (await docker.list_containers(ListParams())).data == []


async def test_stop_signals_are_refused_on_both_engines(docker: DockerProvider, engine_host: str) -> None:
    # Docker takes the profile inline; Podman reads it as a path on its host, so a local Podman is
    # given it as a file in the data dir (the provider tells Podman from its /_ping).
    c = await docker.create_container(ContainerSpec(name="profile"))
    inspected = await docker.engine.inspect(f"cmcp-{c.id}")
    assert inspected is not None
    podman = is_podman(await docker.engine.ping())
    assert podman == (engine_host != DOCKER_HOST)
    opts = " ".join(inspected["HostConfig"].get("SecurityOpt") or [])
    assert (str(docker.data_dir / "seccomp") in opts) if podman else (security_opt() in opts)
    ran = await docker.exec(
        c.id,
        ExecRequest(
            argv=["/bin/sh", "-c", "sleep 30 & kill -STOP $!; echo stop=$?; kill -CONT $!; echo cont=$?; kill $!"]
        ),
        approve=accept,
    )
    assert ran.stdout.split() == ["stop=1", "cont=0"]
