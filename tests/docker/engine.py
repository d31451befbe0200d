"""The Docker engine the docker tests run against, and their image, built offline.

The engine is the one at the default socket (scripts/test starts a ``dockerd`` there when none
answers), or the one ``CONTAINER_MCP_TEST_DOCKER_HOST`` names (read by the tests only, to run the
whole directory against another engine); every helper also takes a ``host`` (the ``engine_host``
fixture: docker, or the session's own Podman service, tests/docker/podman.py). The test image is
built here from the host's static busybox (Debian ``busybox-static``) and imported through the
Engine API (``docker import``, ~0.1 s), tagged by the binary's digest so it is built once per
busybox version and engine: a shell, coreutils-like applets, ``/etc/passwd`` with user
``sandbox`` (uid 1000), ``/tmp`` 1777. No registry is needed or contacted.

``debian_image()`` is the real-distribution case: Debian bookworm with python3 (``mmdebstrap
--variant=apt``, from the machine's apt sources, ~1 min once, then cached by tag), whose ``/bin/sh`` is
dash, as in the default ``python:3.12-slim``: the provider's shell scripts must hold on both shells.

``require_engine()`` skips only where neither an engine answers nor ``apt-get`` exists (a machine
that cannot run these tests); where ``apt-get`` exists, a missing engine is a failure: CI must
have one.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from container_mcp.clock import Clock, ManualClock
from container_mcp.errors import ProviderError
from container_mcp.providers.docker import DockerProvider, instance_label
from container_mcp.providers.docker_api import DEFAULT_DOCKER_HOST, Engine, EngineOptions
from container_mcp.providers.docker_exec import ExecLimits

__all__ = [
    "BUSYBOX",
    "DOCKER_HOST",
    "busybox_image",
    "debian_image",
    "docker_provider",
    "engine_containers",
    "require_engine",
]

DOCKER_HOST = os.environ.get("CONTAINER_MCP_TEST_DOCKER_HOST", DEFAULT_DOCKER_HOST)
BUSYBOX = "/bin/busybox"
_IMAGE_REPO = "container-mcp-test-busybox"
DEBIAN_IMAGE = "container-mcp-test-debian:bookworm-python3"
_DEBIAN_BUILD = ["mmdebstrap", "--quiet", "--variant=apt", "--include=python3", "bookworm", "-"]


def _busybox_tar(busybox: bytes) -> bytes:
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, mode in [("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("mnt", 0o755), ("root", 0o700)]:
            entry = tarfile.TarInfo(name)
            entry.type, entry.mode = tarfile.DIRTYPE, mode
            tar.addfile(entry)
        entry = tarfile.TarInfo("bin/busybox")
        entry.size, entry.mode = len(busybox), 0o755
        tar.addfile(entry, io.BytesIO(busybox))
        for applet in applets:
            if applet != "busybox":
                entry = tarfile.TarInfo(f"bin/{applet}")
                entry.type, entry.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(entry)
        for name, text in [
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/tmp:/bin/sh\n"),
            ("etc/group", "root:x:0:\nsandbox:x:1000:\n"),
        ]:
            data = text.encode()
            entry = tarfile.TarInfo(name)
            entry.size, entry.mode = len(data), 0o644
            tar.addfile(entry, io.BytesIO(data))
    return buf.getvalue()


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


async def require_engine(host: str = DOCKER_HOST) -> None:
    """Skip (no engine and no apt-get: this machine cannot run them) or fail (CI must have one)."""
    reason = None
    if not _exists(host.removeprefix("unix://")):
        reason = f"no Docker engine socket at {host}"
    else:
        try:
            async with Engine(host, timeout_s=10) as engine:
                await engine.ping()
        except ProviderError as exc:
            reason = f"the Docker engine at {host} does not answer: {exc}"
    if reason is None:
        if not _exists(BUSYBOX):
            pytest.fail(f"{BUSYBOX} is missing: scripts/bootstrap --dev installs busybox-static")
        return
    if shutil.which("apt-get") is None:
        pytest.skip(f"{reason}, and no apt-get to install docker.io with")
    pytest.fail(f"{reason}: run the tests through scripts/test, which installs docker.io and starts dockerd")


async def busybox_image(engine: Engine, *, user: str | None = None) -> str:
    """The busybox test image's tag (``user``: the variant whose image config names that user),
    imported into the engine if it is not there yet."""
    busybox = _read(BUSYBOX)
    tag = hashlib.sha256(busybox).hexdigest()[:16] + (f"-{user}" if user else "")
    ref = f"{_IMAGE_REPO}:{tag}"
    if await engine.image_inspect(ref) is None:
        changes = ["ENV PATH=/bin", *([f"USER {user}"] if user else [])]
        await engine.image_import(_busybox_tar(busybox), _IMAGE_REPO, tag, changes)
    return ref


async def debian_image(engine: Engine) -> str:
    """The Debian test image's tag, built with mmdebstrap and imported (streamed) if the engine lacks it."""
    if await engine.image_inspect(DEBIAN_IMAGE) is not None:
        return DEBIAN_IMAGE
    if shutil.which("mmdebstrap") is None:
        pytest.fail("mmdebstrap is missing: scripts/bootstrap --dev installs it")
    repo, tag = DEBIAN_IMAGE.split(":")
    with tempfile.TemporaryFile() as log:
        async with await anyio.open_process(_DEBIAN_BUILD, stdin=subprocess.DEVNULL, stderr=log) as build:
            assert build.stdout is not None
            await engine.image_import(build.stdout, repo, tag, ["ENV PATH=/usr/local/bin:/usr/bin:/bin"])
        if build.returncode != 0:
            log.seek(0)
            pytest.fail(f"{' '.join(_DEBIAN_BUILD)} failed: {log.read()[-2000:].decode(errors='replace')}")
    return DEBIAN_IMAGE


async def engine_containers(data_dir: Path, host: str = DOCKER_HOST) -> list[str]:
    """Engine ids of every container (running or not) labelled with ``data_dir``'s instance."""
    async with Engine(host) as engine:
        found = await engine.list_labelled({"io.container-mcp.instance": instance_label(data_dir)})
    return [str(c["Id"]) for c in found]


async def remove_all(data_dir: Path, host: str = DOCKER_HOST) -> None:
    async with Engine(host) as engine:
        for c in await engine.list_labelled({"io.container-mcp.instance": instance_label(data_dir)}):
            await engine.remove(str(c["Id"]))


@asynccontextmanager
async def docker_provider(
    data_dir: Path,
    *,
    clock: Clock | None = None,
    limits: ExecLimits | None = None,
    cleanup: bool = True,
    user: str = "1000:1000",
    image_user: str | None = None,
    image: str | None = None,
    host: str = DOCKER_HOST,
    docker_host: str | None = None,
    options: EngineOptions | None = None,
) -> AsyncIterator[DockerProvider]:
    """A DockerProvider on the test engine (``host``) and image; its engine containers are removed afterwards.

    ``docker_host`` / ``options``: reach that same engine another way (a TLS relay, ssh)."""
    await require_engine(host)
    async with Engine(host) as probe:
        image = image or await busybox_image(probe, user=image_user)
    try:
        async with DockerProvider(
            data_dir,
            engine=Engine(docker_host or host, options=options),
            image=image,
            user=user,
            clock=clock or ManualClock(),
            limits=limits or ExecLimits(pids_limit=64),
        ) as provider:
            yield provider
    finally:
        if cleanup:
            await remove_all(data_dir, host)
