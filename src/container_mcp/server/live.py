"""Live resources: change notifications to the session whose files changed, and to no other.

Each protocol era has its own channel, both keyed by the session key (``session.py``):

* **Handshake era** (stdio, streamable HTTP with ``Mcp-Session-Id``, SSE): a connection is
  remembered from its ``notifications/initialized`` (once per connection) until it closes, and gets
  ``notifications/resources/list_changed`` on the connection's standalone stream after any
  change of its owner's files. ``resources/subscribe`` adds a file URI, after checking the file
  is the caller's (another's is refused as not found), and ``notifications/resources/updated``
  follows each change of that file.
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
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from mcp import MCPError
from mcp.server import MCPServer
from mcp.server.context import ServerRequestContext
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ResourcesListChanged, ResourceUpdated
from mcp.types import (
    INVALID_PARAMS,
    EmptyResult,
    SubscribeRequestParams,
    SubscriptionsListenRequestParams,
    UnsubscribeRequestParams,
)
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

from ..changes import FilesChanged
from .errors import resource_boundary

__all__ = ["Live", "install_live"]

log = logging.getLogger("container_mcp.server")

_FILE_URI = re.compile(r"container://([^/]+)/files/([^/]+)")

MAX_LISTEN_URIS = 100
"""File URIs one ``subscriptions/listen`` stream may name (each is checked against the store)."""

MAX_SUBSCRIBED_URIS = 1000
"""File URIs one handshake-era connection may be subscribed to (a deleted file's stays until unsubscribed)."""

MAX_LISTEN_STREAMS = 64
"""``subscriptions/listen`` streams one owner may hold open at once."""

SEND_TIMEOUT_S = 5.0
"""How long a connection may take to accept one change's notifications before it is forgotten."""

CheckFile = Callable[[str, str, str], Awaitable[object]]
"""(owner, container_id, file_id) -> anything; raises ``NotFound`` when the file is not the owner's."""


@dataclass(eq=False)
class _Connection:
    session: Any
    """The ``ServerSession`` of the request that introduced the connection; its unscoped
    notifications go to the connection's standalone stream, which outlives the request."""
    uris: set[str] = field(default_factory=set)


def _channel(session: Any) -> Any:
    # The connection behind the per-request session proxies (PRIVATE in mcp 2.3, mcp-sdk-2.md
    # §2.2): the one stable identity of a handshake-era connection, and the owner of its exit
    # stack, which is unwound (shielded) when the connection closes.
    return getattr(session, "_connection", None)


class Live:
    """Who listens to which owner's changes; ``on_change`` tells them."""

    def __init__(self, owns: Callable[[str, str], Awaitable[bool]]) -> None:
        """``owns(owner, container_id)``: whether ``owner`` owns the container (the ledger's answer)."""
        self._owns = owns
        self._connections: dict[str, dict[Any, _Connection]] = {}
        self._buses: dict[str, InMemorySubscriptionBus] = {}
        self._listeners: dict[str, ListenHandler] = {}
        self._listened: dict[str, Counter[str]] = {}
        """Per owner, the file URIs its open listen streams asked for (with how many streams)."""
        self._streams: dict[str, int] = {}
        """Per owner, its open listen streams."""

    def listener(self, owner: str) -> ListenHandler:
        """The ``subscriptions/listen`` handler of ``owner``'s streams, on a bus of their own."""
        if owner not in self._listeners:
            self._buses[owner] = InMemorySubscriptionBus()
            # Our own count (``listen``) refuses first: the SDK's refusal is an internal error.
            self._listeners[owner] = ListenHandler(self._buses[owner], max_subscriptions=MAX_LISTEN_STREAMS + 1)
        return self._listeners[owner]

    async def listen(
        self, owner: str, ctx: ServerRequestContext[Any, Any], params: SubscriptionsListenRequestParams
    ) -> Any:
        """Serve one ``subscriptions/listen`` stream of ``owner``'s (URIs already checked as theirs).

        Too many open streams is the caller's mistake (INVALID_PARAMS). When an owner's last stream
        closes, its bus goes too: owners come and go, and each would otherwise keep one for ever.
        """
        if self._streams.get(owner, 0) >= MAX_LISTEN_STREAMS:
            raise MCPError(
                INVALID_PARAMS,
                f"At most {MAX_LISTEN_STREAMS} subscriptions/listen streams can be open at once for one "
                "session; close one (or watch more URIs on one stream) before opening another.",
            )
        uris = list(params.notifications.resource_subscriptions or ())
        self._streams[owner] = self._streams.get(owner, 0) + 1
        listened = self._listened.setdefault(owner, Counter())
        listened.update(uris)
        try:
            return await self.listener(owner)(ctx, params)
        finally:
            listened.subtract(uris)
            for uri in uris:
                if listened[uri] <= 0:
                    del listened[uri]
            self._streams[owner] -= 1
            if self._streams[owner] <= 0:
                for table in (self._streams, self._listened, self._listeners, self._buses):
                    table.pop(owner, None)

    def connection(self, owner: str, session: Any) -> _Connection | None:
        """The remembered handshake-era connection ``session`` belongs to, if any."""
        return self._connections.get(owner, {}).get(_channel(session))

    def connect(self, owner: str, session: Any) -> _Connection:
        """Remember ``session``'s connection as ``owner``'s until it closes."""
        channel = _channel(session)
        known = self._connections.setdefault(owner, {})
        if channel in known:
            return known[channel]
        conn = known[channel] = _Connection(session)
        exit_stack = getattr(channel, "exit_stack", None)
        if exit_stack is not None:
            exit_stack.callback(self._forget, owner, channel)
        return conn

    def _forget(self, owner: str, channel: Any) -> None:
        known = self._connections.get(owner, {})
        known.pop(channel, None)
        if not known:
            self._connections.pop(owner, None)

    async def on_change(self, change: FilesChanged) -> None:
        """Tell the listeners of whoever owns ``change.container_id`` (a ``ChangeFeed`` listener)."""
        if change.owner is not None:
            owners = [change.owner]
        else:  # an expiry: no caller, so find the owner among those listening
            listening = self._connections.keys() | self._buses.keys()
            owners = [o for o in listening if await self._owns(o, change.container_id)]
        prefix = f"container://{change.container_id}/files/"
        touched = {prefix + file_id for file_id in change.file_ids}
        for owner in owners:
            await self._tell(owner, touched, prefix if change.whole_container else None)

    async def _tell(self, owner: str, touched: set[str], prefix: str | None) -> None:
        bus = self._buses.get(owner)
        if bus is not None:
            await bus.publish(ResourcesListChanged())
            listened = self._listened.get(owner, Counter())
            also = {uri for uri in listened if prefix is not None and uri.startswith(prefix)}
            for uri in sorted(touched | also):
                await bus.publish(ResourceUpdated(uri))
        for channel, conn in list(self._connections.get(owner, {}).items()):
            # The change is made; telling is best effort, and a client that stops reading must not
            # hold up its owner's next operation or the expiry sweep.
            with anyio.move_on_after(SEND_TIMEOUT_S) as waited:
                try:
                    await conn.session.send_resource_list_changed()
                    for uri in sorted(conn.uris):
                        if uri in touched or (prefix is not None and uri.startswith(prefix)):
                            await conn.session.send_resource_updated(uri)
                except Exception as exc:  # closing as we speak: nobody is listening any more
                    # Not the owner: a session key is a credential (an Mcp-Session-Id, say).
                    log.debug("forgetting a closed connection: %s", type(exc).__name__)
                    self._forget(owner, channel)
            if waited.cancelled_caught:
                log.info("a connection of a session did not take a change notification in time; forgetting it")
                self._forget(owner, channel)


def _advertise(capabilities: Any) -> None:
    """Capabilities that say exactly what this server sends, in either era.

    Resources: list changes and file subscriptions work (handshake era: the SDK derives
    ``listChanged`` only from options its transports never pass). Tools and prompts never change
    while the server runs, so no list-changed notification for them ever comes (2026-07-28: the
    SDK advertises one for every kind whenever ``subscriptions/listen`` is served).
    """
    if not isinstance(capabilities, dict):
        return
    if isinstance(resources := capabilities.get("resources"), dict):
        resources["listChanged"] = True
        resources["subscribe"] = True
    for kind in ("tools", "prompts"):
        if isinstance(entry := capabilities.get(kind), dict):
            entry["listChanged"] = False


def install_live(
    mcp: MCPServer, live: Live, owner_of: Callable[[ServerRequestContext[Any, Any]], str], check: CheckFile
) -> None:
    """Serve subscriptions on ``mcp`` and remember handshake-era connections (see the module docstring)."""

    async def own(owner: str, uri: str) -> None:
        match = _FILE_URI.fullmatch(uri)
        with resource_boundary(uri):
            if match is None:
                raise MCPError(
                    INVALID_PARAMS,
                    f"Only file resources ({uri[:200]!r} is not one) can be subscribed to.",
                    {"uri": uri},
                )
            await check(owner, match[1], match[2])

    async def subscribe(ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        owner = owner_of(ctx)
        uri = str(params.uri)
        await own(owner, uri)
        conn = live.connect(owner, ctx.session)
        if uri not in conn.uris and len(conn.uris) >= MAX_SUBSCRIBED_URIS:
            raise MCPError(
                INVALID_PARAMS,
                f"This connection is subscribed to {len(conn.uris)} file URIs, the most it may be; "
                "unsubscribe from some (resources/unsubscribe) before subscribing to more.",
                {"uri": uri},
            )
        conn.uris.add(uri)
        return EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
        conn = live.connection(owner_of(ctx), ctx.session)
        if conn is not None:
            conn.uris.discard(str(params.uri))
        return EmptyResult()

    async def listen(ctx: ServerRequestContext[Any, Any], params: SubscriptionsListenRequestParams) -> Any:
        owner = owner_of(ctx)
        uris = params.notifications.resource_subscriptions or ()
        if len(uris) > MAX_LISTEN_URIS:
            raise MCPError(
                INVALID_PARAMS,
                f"A listen stream can watch at most {MAX_LISTEN_URIS} file URIs (got {len(uris)}); open another "
                "stream for the rest, or watch resources_list_changed.",
            )
        for uri in uris:
            await own(owner, uri)
        return await live.listen(owner, ctx, params)

    async def remember(ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        result = await call_next(ctx)
        if ctx.method == "notifications/initialized" and ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
            live.connect(owner_of(ctx), ctx.session)
        if ctx.method in ("initialize", "server/discover") and isinstance(result, dict):
            _advertise(result.get("capabilities"))
        return result

    # MCPServer (mcp 2.3) has no public way to add a request handler; its low-level Server's
    # add_request_handler is public API, reached through the one private attribute.
    low = mcp._lowlevel_server
    low.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    low.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)
    low.add_request_handler("subscriptions/listen", SubscriptionsListenRequestParams, listen)
    mcp.middleware.append(remember)
