"""Fixtures for the adversarial suite: two in-memory sessions over one service, an exec-capable
service, and small call helpers that fail loudly on the wrong outcome."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from container_mcp.clock import ManualClock
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.providers.local import LocalProvider
from container_mcp.providers.local_exec import ExecLimits
from container_mcp.runtime import limits_from
from container_mcp.server.app import create_server
from container_mcp.service import ContainerService
from container_mcp.settings import Settings

BARE = "Error executing tool"

INSIDE = b"inside the allowed directory\n"
OUTSIDE = b"OUTSIDE-SECRET host bytes\n"


async def err(client: Client, tool: str, **args: Any) -> str:
    result = await client.call_tool(tool, args)
    assert result.is_error is True, result.structured_content
    text = result.content[0].text  # type: ignore[union-attr]
    # Never a traceback, never an internal error for a caller's mistake.
    assert "Traceback" not in text and "Internal error" not in text, text
    # The SDK prefixes "Error executing tool X: "; there must be a real message after it.
    assert len(text.split(":", 1)[-1].strip()) > 20, text
    return text


@dataclass
class Env:
    service: ContainerService
    provider: LocalProvider
    settings: Settings
    clock: ManualClock

    def session(self, key: str) -> AbstractAsyncContextManager[Client]:
        """An in-memory client whose session key is ``stdio:<key>`` (one server per key, one service)."""
        settings = self.settings.model_copy(update={"stdio_session_key": key})
        return Client(create_server(self.service, settings))


@asynccontextmanager
async def make_env(tmp_path: Path, clock: ManualClock, *, exec_: bool = False, **overrides: Any) -> AsyncIterator[Env]:
    settings = Settings.isolated(data_dir=tmp_path / "data", **overrides)
    limits = (
        ExecLimits(
            max_file_bytes=settings.max_file_bytes,
            max_output_bytes=settings.exec_max_output_bytes,
            pids_limit=settings.exec_pids_limit,
        )
        if exec_
        else None
    )
    store = SqliteLedger()
    try:
        async with LocalProvider(settings.data_dir / "local", clock=clock, exec_limits=limits) as provider:
            if exec_ and not provider.capabilities.exec:
                pytest.skip(f"sandbox unavailable: {provider.capabilities.exec_unavailable_reason}")
            service = ContainerService(
                provider, store, limits_from(settings), egress=settings.egress_rules(), clock=clock
            )
            yield Env(service, provider, settings, clock)
    finally:
        store.close()


EnvFactory = Callable[..., AbstractAsyncContextManager[Env]]


@pytest.fixture
def env_factory(tmp_path: Path, clock: ManualClock) -> EnvFactory:
    def factory(**overrides: Any) -> AbstractAsyncContextManager[Env]:
        return make_env(tmp_path, clock, **overrides)

    return factory


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """``allowed/`` (what the operator allows) next to ``outside/`` (what it does not)."""
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    (allowed / "sub" / "data.txt").write_bytes(INSIDE)
    (allowed / "top.txt").write_bytes(INSIDE)
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "sub" / "data.txt").write_bytes(OUTSIDE)
    (outside / "secret.txt").write_bytes(OUTSIDE)
    return tmp_path
