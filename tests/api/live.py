"""A live ``container-mcp api`` for tests: uvicorn on 127.0.0.1, an OS-chosen port, real parts.

The app runs over a ``LocalProvider`` and an in-memory session store that share one injected
``ManualClock`` (so expiry is driven by the test, never by sleeping), exactly as ``runtime.py``
assembles them. The server's socket is bound before it starts, so it accepts at once: there is no
readiness wait.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import uvicorn
from openai import AsyncOpenAI

from container_mcp.api.app import create_app
from container_mcp.clock import ManualClock
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.providers.local import LocalProvider
from container_mcp.runtime import limits_from
from container_mcp.service import ContainerService
from container_mcp.serving import listen
from container_mcp.settings import Settings

KEY_A = "sk-test-alpha-0123456789"
KEY_B = "sk-test-bravo-9876543210"


@dataclass
class LiveApi:
    origin: str
    """``http://127.0.0.1:<port>`` (no /v1)."""
    service: ContainerService
    provider: LocalProvider
    clock: ManualClock
    settings: Settings

    @property
    def base_url(self) -> str:
        return self.origin + "/v1"

    def client(self, key: str = KEY_A, **kwargs: Any) -> AsyncOpenAI:
        """The official SDK pointed at this server; no retries, so errors surface at once."""
        kwargs.setdefault("max_retries", 0)
        return AsyncOpenAI(api_key=key, base_url=self.base_url, **kwargs)


@asynccontextmanager
async def serve_app(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1 (an OS-chosen port) until the block ends; yields the origin."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    sock = listen("127.0.0.1", 0)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            try:
                yield f"http://127.0.0.1:{sock.getsockname()[1]}"
            finally:
                server.should_exit = True
    finally:
        sock.close()


@asynccontextmanager
async def start_api(data_dir: Path, clock: ManualClock, **overrides: Any) -> AsyncIterator[LiveApi]:
    """A live API over fresh state in ``data_dir``; ``overrides`` are Settings fields."""
    overrides.setdefault("api_keys", [KEY_A, KEY_B])
    settings = Settings.isolated(data_dir=data_dir, **overrides)
    store = SqliteLedger()
    try:
        async with LocalProvider(data_dir / "local", clock=clock) as provider:
            service = ContainerService(provider, store, limits_from(settings), clock=clock)
            async with serve_app(create_app(service, settings)) as origin:
                yield LiveApi(origin, service, provider, clock, settings)
    finally:
        store.close()
