"""The official MCP client over real HTTP with a bearer token, recording every response it receives."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client


@dataclass
class Seen:
    """Status and headers of each response the client got, in order."""

    responses: list[tuple[int, dict[str, str]]] = field(default_factory=list)

    async def record(self, response: httpx2.Response) -> None:
        self.responses.append((response.status_code, dict(response.headers)))

    @property
    def statuses(self) -> list[int]:
        return [status for status, _ in self.responses]

    def header(self, name: str) -> str | None:
        """The header ``name`` of the last response that had it."""
        return next((h[name] for _, h in reversed(self.responses) if name in h), None)


def _headers(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token is not None else {}


@asynccontextmanager
async def http_client(url: str, token: str | None, mode: str, seen: Seen | None = None) -> AsyncIterator[Client]:
    """``Client`` on streamable HTTP at ``url`` (the /mcp endpoint) in ``mode``, sending ``token``."""
    seen = seen if seen is not None else Seen()
    async with httpx2.AsyncClient(
        headers=_headers(token), timeout=httpx2.Timeout(30.0), event_hooks={"response": [seen.record]}
    ) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            yield client


def sse(url: str, token: str | None, *, on_session: Callable[[str], None] | None = None, **kwargs: Any) -> Client:
    """``Client`` on SSE at ``url`` (the /sse endpoint), sending ``token``; ``on_session`` gets the session id."""
    return Client(sse_client(url, headers=_headers(token), on_session_created=on_session), **kwargs)
