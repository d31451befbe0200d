"""Live resources: change notifications reach the session whose files changed, and no other."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, MCPError
from mcp.client.sse import sse_client
from mcp.server.subscriptions import ResourceUpdated
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.types import INVALID_PARAMS, ResourceListChangedNotification, ResourceUpdatedNotification

from container_mcp.auth import BearerVerifier
from container_mcp.changes import FilesChanged
from container_mcp.clock import ManualClock
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.providers.local import LocalProvider
from container_mcp.providers.local_exec import ExecLimits
from container_mcp.runtime import limits_from
from container_mcp.server.app import create_server
from container_mcp.server.http import http_app
from container_mcp.server.live import Live
from container_mcp.service import ContainerService
from container_mcp.settings import Settings
from tests.live import serve

from ..calls import call
from .bearer import http_client
from .test_http_auth import KEY_A, KEY_B

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
    """Two stdio users (session keys alice and bob) of one service, each with its own server."""
    a = Settings.isolated(data_dir=tmp_path / "data", stdio_session_key="alice")
    b = Settings.isolated(data_dir=tmp_path / "data", stdio_session_key="bob")
    store = SqliteLedger()
    limits = ExecLimits(max_file_bytes=a.max_file_bytes, max_output_bytes=a.exec_max_output_bytes)
    try:
        async with LocalProvider(tmp_path / "local", clock=clock, exec_limits=limits) as provider:
            yield a, b, ContainerService(provider, store, limits_from(a), clock=clock)
    finally:
        store.close()


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
        # Replacing the file (a new id at the same path) is an update of the URI that was watched.
        f = await call(alice, "file_create", container_id=cid, path="x.txt", text="replaced")
        assert isinstance(await inbox_a.next(), ResourceListChangedNotification)
        updated = await inbox_a.next()
        assert isinstance(updated, ResourceUpdatedNotification) and str(updated.params.uri) == uri
        uri = f"container://{cid}/files/{f['id']}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await alice.subscribe_resource(uri)
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


async def test_expiry_by_the_sweep_is_told_to_its_owner_only(two_sessions: Any, clock: ManualClock) -> None:
    a, b, service = two_sessions
    inbox_a, inbox_b = Inbox(), Inbox()
    async with (
        Client(create_server(service, a), mode="legacy", message_handler=inbox_a) as alice,
        Client(create_server(service, b), mode="legacy", message_handler=inbox_b) as bob,
    ):
        cid = (await call(alice, "container_create", name="a", expires_after_minutes=1))["id"]
        f = await call(alice, "file_create", container_id=cid, path="x.txt", text="1")
        assert isinstance(await inbox_a.next(), ResourceListChangedNotification)
        uri = f"container://{cid}/files/{f['id']}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            await alice.subscribe_resource(uri)
        await bob.list_tools()  # bob's connection is known before the expiry
        clock.advance(120)
        assert await service.provider.sweep() == [cid]  # what the reaper runs
        assert isinstance(await inbox_a.next(), ResourceListChangedNotification)
        updated = await inbox_a.next()
        assert isinstance(updated, ResourceUpdatedNotification) and str(updated.params.uri) == uri
        assert inbox_b.recv.statistics().current_buffer_used == 0
    inbox_a.close()
    inbox_b.close()


async def test_a_commands_changes_are_told(two_sessions: Any) -> None:
    a, _, service = two_sessions
    if not service.capabilities.exec:
        pytest.skip(f"sandbox unavailable: {service.capabilities.exec_unavailable_reason}")
    inbox = Inbox()
    async with Client(create_server(service, a), mode="legacy", message_handler=inbox) as alice:
        cid = (await call(alice, "container_create", name="a"))["id"]
        await call(alice, "container_exec", container_id=cid, command="echo hi > out.txt")
        assert isinstance(await inbox.next(), ResourceListChangedNotification)
        await call(alice, "container_exec", container_id=cid, command="true")  # changes nothing: tells nothing
        await call(alice, "container_exec", container_id=cid, command="rm out.txt")
        assert isinstance(await inbox.next(), ResourceListChangedNotification)
        assert inbox.recv.statistics().current_buffer_used == 0
    inbox.close()


async def test_streamable_http_sessions_hear_only_their_own_changes(two_sessions: Any) -> None:
    a, _, service = two_sessions
    inbox_a, inbox_b = Inbox(), Inbox()
    async with serve(create_server(service, a).streamable_http_app()) as url:
        async with (
            Client(f"{url}/mcp", mode="legacy", message_handler=inbox_a) as one,
            Client(f"{url}/mcp", mode="legacy", message_handler=inbox_b) as two,
        ):
            assert one.server_capabilities.resources is not None
            assert one.server_capabilities.resources.list_changed is True
            cid = (await call(one, "container_create", name="a"))["id"]
            await call(one, "file_create", container_id=cid, path="x.txt", text="1")
            assert isinstance(await inbox_a.next(), ResourceListChangedNotification)
            bid = (await call(two, "container_create", name="b"))["id"]
            await call(two, "file_create", container_id=bid, path="y.txt", text="2")
            assert isinstance(await inbox_b.next(), ResourceListChangedNotification)
            assert inbox_b.recv.statistics().current_buffer_used == 0
            assert inbox_a.recv.statistics().current_buffer_used == 0
    inbox_a.close()
    inbox_b.close()


async def test_streamable_http_2026_listen_hears_the_change(two_sessions: Any) -> None:
    a, _, service = two_sessions
    async with serve(create_server(service, a).streamable_http_app()) as url:
        async with Client(f"{url}/mcp") as client:
            cid = (await call(client, "container_create", name="a"))["id"]
            async with client.listen(resources_list_changed=True) as events:
                await call(client, "file_create", container_id=cid, path="x.txt", text="1")
                with anyio.fail_after(5):
                    event = await events.__anext__()
    assert type(event).__name__ == "ResourcesListChanged"


async def test_capabilities_say_exactly_what_works(client: Client) -> None:
    caps = client.server_capabilities
    assert caps.resources is not None
    assert caps.resources.list_changed is True and caps.resources.subscribe is True
    # The tools and prompts never change while the server runs: no notification would come.
    assert caps.tools is not None and caps.tools.list_changed is False
    assert caps.prompts is None or caps.prompts.list_changed is False


async def test_sse_sessions_hear_only_their_own_changes(two_sessions: Any) -> None:
    a, _, service = two_sessions
    inbox_a, inbox_b = Inbox(), Inbox()
    async with serve(create_server(service, a).sse_app()) as url:
        async with (
            Client(sse_client(f"{url}/sse"), mode="legacy", message_handler=inbox_a) as one,
            Client(sse_client(f"{url}/sse"), mode="legacy", message_handler=inbox_b) as two,
        ):
            bid = (await call(two, "container_create", name="b"))["id"]
            cid = (await call(one, "container_create", name="a"))["id"]
            await call(one, "file_create", container_id=cid, path="x.txt", text="1")
            assert isinstance(await inbox_a.next(), ResourceListChangedNotification)
            await call(two, "file_create", container_id=bid, path="y.txt", text="2")
            assert isinstance(await inbox_b.next(), ResourceListChangedNotification)
            assert inbox_a.recv.statistics().current_buffer_used == 0
            assert inbox_b.recv.statistics().current_buffer_used == 0
    inbox_a.close()
    inbox_b.close()


async def test_a_change_reaches_only_its_owners_listen_bus() -> None:
    owners = {"cntr_a": "http:alice", "cntr_b": "http:bob"}

    async def owns(owner: str, container_id: str) -> bool:
        return owners.get(container_id) == owner

    live = Live(owns=owns)
    heard: dict[str, list[Any]] = {"http:alice": [], "http:bob": []}
    for owner, events in heard.items():
        live.listener(owner)
        live._buses[owner].subscribe(events.append)
    await live.on_change(FilesChanged("cntr_a", "http:alice", ("cfile_1",)))
    await live.on_change(FilesChanged("cntr_b", None, whole_container=True))  # an expiry: owner looked up
    assert [type(e).__name__ for e in heard["http:alice"]] == ["ResourcesListChanged", "ResourceUpdated"]
    assert [type(e).__name__ for e in heard["http:bob"]] == ["ResourcesListChanged"]


async def test_2026_over_http_a_token_cannot_listen_to_anothers_file(tmp_path: Path, clock: ManualClock) -> None:
    settings = Settings.isolated(data_dir=tmp_path / "data", api_keys=[KEY_A, KEY_B])
    store = SqliteLedger()
    try:
        async with LocalProvider(tmp_path / "local", clock=clock) as provider:
            service = ContainerService(provider, store, limits_from(settings), clock=clock)
            mcp = create_server(service, settings, verifier=BearerVerifier.from_keys(settings))
            async with serve(http_app(mcp, settings, "streamable-http", "127.0.0.1")) as url:
                async with http_client(f"{url}/mcp", KEY_A, "auto") as a, http_client(f"{url}/mcp", KEY_B, "auto") as b:
                    cid = (await call(a, "container_create", name="a"))["id"]
                    f = await call(a, "file_create", container_id=cid, path="x.txt", text="1")
                    uri = f"container://{cid}/files/{f['id']}"
                    with pytest.raises(MCPError) as refused:
                        async with b.listen(resource_subscriptions=[uri]):
                            pass
                    assert refused.value.error.code == INVALID_PARAMS
                    async with a.listen(resource_subscriptions=[uri]) as events:
                        await call(a, "file_create", container_id=cid, path="x.txt", text="2")
                        with anyio.fail_after(5):
                            event = await events.__anext__()
                    assert isinstance(event, ResourceUpdated) and event.uri == uri
    finally:
        store.close()
