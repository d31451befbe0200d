"""The providers the contract suite runs against.

``local``: the embedded provider. ``docker``: the docker provider on the test engine and its busybox
image (tests/docker/engine.py); ``podman``: the same provider on the session's Podman service
(tests/docker/podman.py). ``openai-api``: the OpenAI provider talking to a live
``container-mcp api`` on 127.0.0.1 that serves the local provider (the whole OpenAI-compatible
chain). Each yields a fresh, empty backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from container_mcp.clock import ManualClock
from container_mcp.providers.base import Provider
from container_mcp.providers.local import LocalProvider

PROVIDERS = ["local", "docker", "podman", "openai-api"]


@pytest.fixture(params=PROVIDERS)
async def provider(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Provider]:
    if request.param == "local":
        async with LocalProvider(tmp_path / "local", clock=ManualClock()) as local:
            yield local
    elif request.param in ("docker", "podman"):
        from tests.docker.engine import DOCKER_HOST, docker_provider

        host = request.getfixturevalue("podman_host") if request.param == "podman" else DOCKER_HOST
        async with docker_provider(tmp_path / "docker", host=host) as docker:
            yield docker
    else:
        from tests.contract.chain import openai_over_api

        async with openai_over_api(tmp_path) as remote:
            yield remote
