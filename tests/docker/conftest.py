"""A docker provider per test, on the test engine and busybox image (see engine.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from container_mcp.providers.docker import DockerProvider

from .engine import docker_provider


@pytest.fixture
async def docker(tmp_path: Path) -> AsyncIterator[DockerProvider]:
    async with docker_provider(tmp_path / "docker") as provider:
        yield provider
