"""Shared fixtures: a fake clock, settings in a temp dir, the local provider, the service, the MCP server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client
from mcp.server import MCPServer

from container_mcp.clock import ManualClock
from container_mcp.providers.local import LocalProvider
from container_mcp.runtime import limits_from
from container_mcp.server.app import create_server
from container_mcp.service import ContainerService
from container_mcp.settings import Settings
from container_mcp.store import SqliteSessionStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
async def local_provider(settings: Settings, clock: ManualClock) -> AsyncIterator[LocalProvider]:
    async with LocalProvider(settings.data_dir / "local", clock=clock) as provider:
        yield provider


@pytest.fixture
async def service(
    local_provider: LocalProvider, settings: Settings, clock: ManualClock
) -> AsyncIterator[ContainerService]:
    store = SqliteSessionStore()
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
