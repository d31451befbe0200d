"""Run an ASGI app on a real uvicorn server on 127.0.0.1, port 0, for the duration of a test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import uvicorn


@asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Yield the base URL (``http://127.0.0.1:<port>``) of ``app`` served by uvicorn."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            # uvicorn exposes no "started" event to wait on
            while not server.started:  # noqa: ASYNC110
                await anyio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
