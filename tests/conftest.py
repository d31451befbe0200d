"""Shared fixtures: a fake clock, settings in a temp dir, the local provider, the service, the MCP server."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from mcp import Client
from mcp.server import MCPServer

from container_mcp.clock import ManualClock
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.providers.local import LocalProvider
from container_mcp.runtime import limits_from
from container_mcp.server.app import create_server
from container_mcp.service import ContainerService
from container_mcp.settings import Settings

from .docker.podman import podman_host  # noqa: F401  (one session Podman service, shared by tests/docker and tests/contract)

HOSTILE_ENVIRONMENT = {
    "CONTAINER_MCP_MAX_CALLS_PER_MINUTE": "2",
    "CONTAINER_MCP_MAX_CONTAINERS": "1",
    "CONTAINER_MCP_API_KEYS": "sk-hostile-exported-key",
    "CONTAINER_MCP_DATA_DIR": "/nonexistent/container-mcp-tests",
    "CONTAINER_MCP_PROVIDER": "openai",
    "CONTAINER_MCP_ALLOWED_HOSTS": "hostile.invalid",
    "CONTAINER_MCP_MAX_FILE_BYTES": "1",
    "CONTAINER_MCP_LOG_LEVEL": "CRITICAL",
    "OPENAI_API_KEY": "sk-hostile-exported-openai-key",
    "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
}
"""Exported for the whole run, over whatever the developer's shell has: the suite must not read
the real environment (tests build ``Settings.isolated(...)``; processes get ``envs.clean_env``).
A test that does read it meets these values and fails, on every machine, instead of passing by
luck where nothing is exported."""


def pytest_configure(config: pytest.Config) -> None:
    os.environ.update(HOSTILE_ENVIRONMENT)


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """For tests of the CLI's own reading of the environment: ``exported(NAME=value, ...)`` clears
    every ``CONTAINER_MCP_*``/``OPENAI_*`` variable, then exports exactly those given."""

    def export(**values: str) -> None:
        for name in [n for n in os.environ if n.startswith(("CONTAINER_MCP_", "OPENAI_"))]:
            monkeypatch.delenv(name)
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return export


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.isolated(data_dir=tmp_path / "data")


@pytest.fixture
async def local_provider(settings: Settings, clock: ManualClock) -> AsyncIterator[LocalProvider]:
    async with LocalProvider(settings.data_dir / "local", clock=clock) as provider:
        yield provider


@pytest.fixture
async def service(
    local_provider: LocalProvider, settings: Settings, clock: ManualClock
) -> AsyncIterator[ContainerService]:
    store = SqliteLedger()
    try:
        yield ContainerService(local_provider, store, limits_from(settings), clock=clock)
    finally:
        store.close()


@pytest.fixture
def server(service: ContainerService, settings: Settings) -> MCPServer:
    return create_server(service, settings)


@pytest.fixture(params=["auto", "legacy"])
async def client(request: pytest.FixtureRequest, server: MCPServer) -> AsyncIterator[Client]:
    """The official client in memory, in both protocol eras (2026-07-28 and 2025-11-25)."""
    async with Client(server, mode=request.param) as c:
        yield c
