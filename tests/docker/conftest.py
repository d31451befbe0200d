"""A docker provider per test, on the test engine and busybox image (see engine.py).

``engine_host`` is the engine's ``DOCKER_HOST``: docker's, and in the modules that set
``ENGINES = ["docker", "podman"]`` also that of the session's Podman service (podman.py), so the
same tests run on both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from container_mcp.providers.docker import DockerProvider

from .engine import DOCKER_HOST, docker_provider


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine_host" in metafunc.fixturenames:
        metafunc.parametrize("engine_host", getattr(metafunc.module, "ENGINES", ["docker"]), indirect=True)


@pytest.fixture
def engine_host(request: pytest.FixtureRequest) -> str:
    if request.param == "podman":
        host: str = request.getfixturevalue("podman_host")
        return host
    return DOCKER_HOST


@pytest.fixture
async def docker(tmp_path: Path, engine_host: str) -> AsyncIterator[DockerProvider]:
    async with docker_provider(tmp_path / "docker", host=engine_host) as provider:
        yield provider
