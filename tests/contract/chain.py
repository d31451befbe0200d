"""The whole OpenAI-compatible chain, for tests: OpenAIProvider -> live ``container-mcp api`` -> local."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from container_mcp.api.app import create_app
from container_mcp.clock import ManualClock
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.providers.local import LocalProvider
from container_mcp.providers.openai import OpenAIProvider
from container_mcp.runtime import limits_from
from container_mcp.service import ContainerService
from container_mcp.settings import Settings
from tests.live import serve

API_KEY = "test-key-for-the-chain"


@asynccontextmanager
async def openai_over_api(tmp_path: Path, *, clock: ManualClock | None = None) -> AsyncIterator[OpenAIProvider]:
    """An OpenAIProvider whose backend is a live ``container-mcp api`` on 127.0.0.1 over a local provider."""
    clock = clock or ManualClock()
    server_settings = Settings.isolated(
        data_dir=tmp_path / "api", api_keys=[API_KEY], max_containers=1000, max_calls_per_minute=100_000
    )
    store = SqliteLedger()
    try:
        async with LocalProvider(tmp_path / "api" / "local", clock=clock) as local:
            service = ContainerService(local, store, limits_from(server_settings), clock=clock)
            async with serve(create_app(service, server_settings)) as url:
                client_settings = Settings.isolated(
                    data_dir=tmp_path / "client",
                    provider="openai",
                    openai_api_key=API_KEY,
                    openai_base_url=f"{url}/v1",
                    openai_max_retries=0,
                )
                async with OpenAIProvider.from_settings(client_settings) as remote:
                    yield remote
    finally:
        store.close()
