"""Live resources: change notifications to the session whose files changed, and to no other.

Each protocol era has its own channel, both keyed by the session key (``session.py``):

* **Handshake era** (stdio, streamable HTTP with ``Mcp-Session-Id``, SSE): a connection is
  remembered when it sends ``notifications/initialized`` (once per connection), and gets
  ``notifications/resources/list_changed`` on the connection's standalone stream after any
  change of its owner's files. ``resources/subscribe`` adds a file URI, after checking the file
  is the caller's (another's is refused as not found), and ``notifications/resources/updated``
  follows each change of that file. A connection that can no longer be written is forgotten.
* **2026-07-28**: ``subscriptions/listen`` is served per owner: each owner has its own
  ``SubscriptionBus``, so a stream hears only its owner's events, and requested file URIs are
  checked as above before the stream opens.

Changes come from the service's ``ChangeFeed`` (``changes.py``): whatever changed the files (an
MCP tool, the REST API in the same process, the local provider's expiry sweep). Not seen: changes
made by another process on the same data dir, which a client sees on its next ``resources/list``.
Only the in-memory ``SubscriptionBus`` of one process is used: one server process, one set of
listeners (the SDK's bus is the seam for more).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from mcp import MCPError
from mcp.server import MCPServer
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourcesListChanged, ResourceUpdated
from mcp.types import EmptyResult, SubscribeRequestParams, SubscriptionsListenRequestParams, UnsubscribeRequestParams

from ..changes import FilesChanged
from .errors import resource_boundary

__all__ = ["Live", "install_live"]

log = logging.getLogger("container_mcp.server")

_FILE_URI = re.compile(r"container://([^/]+)/files/([^/]+)")

CheckFile = Callable[[str, str, str], Awaitable[object]]
"""(owner, container_id, file_id) -> anything; raises ``NotFound`` when the file is not the owner's."""


@dataclass(eq=False)
class _Connection:
    session: Any
    """The ``ServerSession`` of the request that introduced the connection; its unscoped
    notifications go to the connection's standalone stream, which outlives the request."""
    uris: set[str] = field(default_factory=set)


class Live:
    """Who listens to which owner's changes; ``changed`` tells them."""

    def __init__(self, owns: Callable[[str, str], bool]) -> None:
        """``owns(owner, container_id)``: whether ``owner`` owns the container (the session store's answer)."""
        self._owns = owns
        self._connections: dict[str, list[_Connection]] = {}
        self._buses: dict[str, InMemorySubscriptionBus] = {}
        self._listeners: dict[str, ListenHandler] = {}

    def listener(self, owner: str) -> ListenHandler:
        if owner not in self._listeners:
            self._buses[owner] = InMemorySubscriptionBus()
            self._listeners[owner] = ListenHandler(self._buses[owner], max_subscriptions=64)
        return self._listeners[owner]

    def connect(self, owner: str, session: Any) -> _Connection:
        conn = _Connection(session)
        self._connections.setdefault(owner, []).append(conn)
        return conn

    def connection(self, owner: str, session: Any) -> _Connection | None:
        # The per-request session proxies share their connection's outbound channel.
        channel = getattr(session, "_connection", None)
        for conn in self._connections.get(owner, []):
            if getattr(conn.session, "_connection", None) is channel:
                return conn
        return None

    async def on_change(self, change: FilesChanged) -> None:
        """Tell the listeners of whoever owns ``change.container_id`` (a ``ChangeFeed`` listener)."""
        if change.owner is not None:
            owners = [change.owner]
        else:  # an expiry: no caller, so find the owner among those listening
            listening = self._connections.keys() | self._buses.keys()
            owners = [o for o in listening if self._owns(o, change.container_id)]
        prefix = f"container://{change.container_id}/files/"
        touched = {prefix + file_id for file_id in change.file_ids}
        for owner in owners:
            await self._tell(owner, touched, prefix if change.whole_container else None)

    async def _tell(self, owner: str, touched: set[str], prefix: str | None) -> None:
        bus = self._buses.get(owner)
        if bus is not None:
            await bus.publish(ResourcesListChanged())
            for uri in sorted(touched):
                await bus.publish(ResourceUpdated(uri))
        for conn in list(self._connections.get(owner, [])):
            try:
                await conn.session.send_resource_list_changed()
                for uri in sorted(conn.uris):
                    if uri in touched or (prefix is not None and uri.startswith(prefix)):
                        await conn.session.send_resource_updated(uri)
            except Exception as exc:  # a closed connection: nobody is listening any more
                log.debug("forgetting a connection of %s: %s", owner, type(exc).__name__)
                self._connections[owner].remove(conn)


def install_live(
    mcp: MCPServer, live: Live, owner_of: Callable[[ServerRequestContext[Any, Any]], str], check: CheckFile
) -> None:
    """Serve subscriptions on ``mcp`` and remember handshake-era connections (see the module docstring)."""

    async def own(owner: str, uri: str) -> None:
        match = _FILE_URI.fullmatch(uri)
        with resource_boundary(uri):
            if match is None:
                raise MCPError(-32602, f"Only file resources ({uri[:200]!r} is not one) can be subscribed to.")
            await check(owner, match[1], match[2])

    async def subscribe(ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        owner = owner_of(ctx)
        uri = str(params.uri)
        await own(owner, uri)
        conn = live.connection(owner, ctx.session) or live.connect(owner, ctx.session)
        conn.uris.add(uri)
        return EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
        conn = live.connection(owner_of(ctx), ctx.session)
        if conn is not None:
            conn.uris.discard(str(params.uri))
        return EmptyResult()

    async def listen(ctx: ServerRequestContext[Any, Any], params: SubscriptionsListenRequestParams) -> Any:
        owner = owner_of(ctx)
        for uri in params.notifications.resource_subscriptions or ():
            await own(owner, uri)
        return await live.listener(owner)(ctx, params)

    async def remember(ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        result = await call_next(ctx)
        if ctx.method == "notifications/initialized":
            owner = owner_of(ctx)
            if live.connection(owner, ctx.session) is None:
                live.connect(owner, ctx.session)
        if ctx.method == "initialize" and isinstance(result, dict):
            # The handshake-era capabilities: the SDK derives listChanged only from options its
            # transports never pass; this server sends it on every transport that can push.
            resources = result.get("capabilities", {}).get("resources")
            if isinstance(resources, dict):
                resources["listChanged"] = True
                resources["subscribe"] = True
        return result

    low = mcp._lowlevel_server  # the SDK's documented seam for handlers MCPServer does not wrap
    low.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    low.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)
    low.add_request_handler("subscriptions/listen", SubscriptionsListenRequestParams, listen)
    mcp.middleware.append(remember)
