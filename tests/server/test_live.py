"""Live resources: change notifications reach the session whose files changed, and no other."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.types import INVALID_PARAMS, ResourceListChangedNotification, ResourceUpdatedNotification

from container_mcp.clock import ManualClock
from container_mcp.providers.local import LocalProvider
from container_mcp.runtime import limits_from
from container_mcp.server.app import create_server
from container_mcp.service import ContainerService
from container_mcp.settings import Settings
from container_mcp.store import SqliteSessionStore

pytestmark = pytest.mark.anyio


class Inbox:
    """The notifications a client received, in order."""

    def __init__(self) -> None:
        self.send, self.recv = anyio.create_memory_object_stream[Any](100)

    async def __call__(self, message: Any) -> None:
        root = getattr(message, "root", message)
        if isinstance(root, ResourceListChangedNotification | ResourceUpdatedNotification):
            await self.send.send(root)

    def close(self) -> None:
        self.send.close()
        self.recv.close()

    async def next(self) -> Any:
        with anyio.fail_after(5):
            return await self.recv.receive()


@pytest.fixture
async def two_sessions(
    tmp_path: Path, clock: ManualClock
) -> AsyncIterator[tuple[Settings, Settings, ContainerService]]:
    a = Settings(data_dir=tmp_path / "data", stdio_session_key="alice")
    b = Settings(data_dir=tmp_path / "data", stdio_session_key="bob")
    store = SqliteSessionStore()
    try:
        async with LocalProvider(tmp_path / "local", clock=clock) as provider:
            yield a, b, ContainerService(provider, store, limits_from(a), clock=clock)
    finally:
        store.close()


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, args)
    assert result.is_error is False, result.content
    assert result.structured_content is not None
    return result.structured_content


async def test_handshake_era_sessions_hear_only_their_own_changes(two_sessions: Any) -> None:
    a, b, service = two_sessions
    inbox_a, inbox_b = Inbox(), Inbox()
    async with (
        Client(create_server(service, a), mode="legacy", message_handler=inbox_a) as alice,
        Client(create_server(service, b), mode="legacy", message_handler=inbox_b) as bob,
    ):
        caps = alice.server_capabilities
        assert caps is not None and caps.resources is not None
        assert caps.resources.list_changed is True and caps.resources.subscribe is True
        cid = (await call(alice, "container_create", name="a"))["id"]
        f = await call(alice, "file_create", container_id=cid, path="x.txt", text="1")
        assert isinstance(await inbox_a.next(), ResourceListChangedNotification)
        uri = f"container://{cid}/files/{f['id']}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)  # resources/subscribe is the handshake era's
            await alice.subscribe_resource(uri)
            with pytest.raises(MCPError) as refused:
                await bob.subscribe_resource(uri)
        assert refused.value.error.code == INVALID_PARAMS and "not found" in refused.value.error.message
        await call(alice, "file_delete", container_id=cid, file_id=f["id"])
        assert isinstance(await inbox_a.next(), ResourceListChangedNotification)
        updated = await inbox_a.next()
        assert isinstance(updated, ResourceUpdatedNotification) and str(updated.params.uri) == uri

        # Bob's own change reaches Bob, and is the first thing Bob hears: none of Alice's did.
        bid = (await call(bob, "container_create", name="b"))["id"]
        await call(bob, "file_create", container_id=bid, path="y.txt", text="2")
        assert isinstance(await inbox_b.next(), ResourceListChangedNotification)
        await call(alice, "container_delete", container_id=cid)
        assert isinstance(await inbox_a.next(), ResourceListChangedNotification)
        assert inbox_b.recv.statistics().current_buffer_used == 0
    inbox_a.close()
    inbox_b.close()


async def test_2026_listen_streams_hear_only_their_owners_changes(two_sessions: Any) -> None:
    a, b, service = two_sessions
    async with Client(create_server(service, a)) as alice, Client(create_server(service, b)) as bob:
        cid = (await call(alice, "container_create", name="a"))["id"]
        f = await call(alice, "file_create", container_id=cid, path="x.txt", text="1")
        uri = f"container://{cid}/files/{f['id']}"
        with pytest.raises(MCPError) as refused:
            async with bob.listen(resource_subscriptions=[uri]):
                pass
        assert refused.value.error.code == INVALID_PARAMS
        bid = (await call(bob, "container_create", name="b"))["id"]
        async with (
            alice.listen(resources_list_changed=True, resource_subscriptions=[uri]) as events_a,
            bob.listen(resources_list_changed=True) as events_b,
        ):
            await call(alice, "file_create", container_id=cid, path="x.txt", text="2")
            await call(bob, "file_create", container_id=bid, path="y.txt", text="3")
            with anyio.fail_after(5):
                first_a = await events_a.__anext__()
                first_b = await events_b.__anext__()
        # Alice hears her own change first; Bob's stream hears his, none of Alice's before it.
        assert type(first_a).__name__ in {"ResourcesListChanged", "ResourceUpdated"}
        assert type(first_b).__name__ == "ResourcesListChanged"
