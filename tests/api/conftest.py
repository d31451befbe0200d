"""Fixtures for the REST API tests: a live server (see ``live.py``) and SDK clients for two keys."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from openai import AsyncOpenAI

from container_mcp.clock import ManualClock

from .live import KEY_B, LiveApi, start_api


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def api(tmp_path: Path, clock: ManualClock) -> AsyncIterator[LiveApi]:
    async with start_api(tmp_path / "data", clock) as live:
        yield live


@pytest.fixture
async def client(api: LiveApi) -> AsyncIterator[AsyncOpenAI]:
    """The official SDK with key A."""
    async with api.client() as c:
        yield c


@pytest.fixture
async def client_b(api: LiveApi) -> AsyncIterator[AsyncOpenAI]:
    """The official SDK with key B (another owner)."""
    async with api.client(KEY_B) as c:
        yield c
