"""Attacks on the issue-10 surface: argument checking, live resources, the MCP error table."""

from __future__ import annotations

import json
import subprocess
from contextlib import AsyncExitStack
from pathlib import Path

import httpx2
import pytest
from mcp import Client, MCPError
from mcp.types import INVALID_PARAMS

from container_mcp.server import live as live_module
from container_mcp.server.app import create_server
from container_mcp.server.live import MAX_LISTEN_STREAMS, Live
from tests.api.conftest import api as api  # the REST API over uvicorn
from tests.api.live import KEY_A, LiveApi
from tests.calls import call as ok
from tests.envs import clean_env
from tests.processes import console_script

from .conftest import EnvFactory, err

pytestmark = pytest.mark.anyio


def _stdio(data_dir: Path, *requests: str) -> list[dict[str, object]]:
    """Raw JSON-RPC lines to a real stdio server (the official client cannot write NaN); its answers by id."""
    hello = {
        "jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }  # fmt: skip
    lines = [json.dumps(hello), json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}), *requests]
    done = subprocess.run(
        [console_script(), "--data-dir", str(data_dir), "serve"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    answers = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return [a for a in answers if a.get("id") not in (None, 0)]


@pytest.mark.parametrize("literal", ["NaN"])
def test_a_non_finite_number_is_one_sentence_not_a_pydantic_dump(tmp_path: Path, literal: str) -> None:
    # Python's and pydantic's JSON readers accept NaN; NaN compares false with every bound, so it
    # passed the published schema's exclusiveMinimum and reached pydantic, which dumped its error.
    arguments = '{"container_id":"cntr_x","command":["true"],"timeout_s":' + literal + "}"
    params = '{"name":"container_exec","arguments":' + arguments + "}"
    call = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":' + params + "}"
    (answer,) = _stdio(tmp_path / "data", call)
    result = answer["result"]
    assert isinstance(result, dict) and result["isError"] is True
    text = result["content"][0]["text"]
    assert "pydantic" not in text and "validation error" not in text, text
    assert "timeout_s must be a finite number" in text and "Nothing was changed" in text, text


async def test_too_many_listen_streams_is_the_callers_mistake_not_an_internal_error(env_factory: EnvFactory) -> None:
    async with env_factory() as env, env.session("a") as alice:
        await ok(alice, "session_usage")
        with pytest.raises(MCPError) as refused:
            async with AsyncExitStack() as streams:
                for _ in range(200):
                    await streams.enter_async_context(alice.listen(resources_list_changed=True))
        # Was -32603 "Subscription limit reached" (the SDK's own cap): the caller's doing, as ours.
        assert refused.value.error.code == INVALID_PARAMS, refused.value.error
        assert str(MAX_LISTEN_STREAMS) in refused.value.error.message and "close one" in refused.value.error.message


async def test_an_owner_whose_listen_streams_closed_leaves_no_bus_behind(env_factory: EnvFactory) -> None:
    # Every owner that ever listened kept a bus, a handler and a URI table for the process's life
    # (and the expiry sweep asked the store about each of them): owners come and go.
    async with env_factory() as env:
        for key in ("a", "b", "c"):
            async with env.session(key) as client:
                async with client.listen(resources_list_changed=True):
                    pass
        owners = [getattr(f, "__self__", None) for f in env.service.changes._listeners.values()]
        lives = [o for o in owners if isinstance(o, Live)]
        assert len(lives) == 3  # one server per session here
        for live in lives:
            assert live._buses == {} and live._listeners == {} and live._listened == {}


@pytest.mark.parametrize("query", ["limit=1000&limit=1", "limit=1&limit=2", "order=asc&order=desc"])
async def test_a_repeated_query_parameter_is_refused_not_resolved_by_guess(api: LiveApi, query: str) -> None:
    # ?limit=1000&limit=1 answered 200 with the last value (and limit=1&limit=1000 a 400): the API
    # picked one of the caller's two values without saying so.
    async with httpx2.AsyncClient(base_url=api.base_url, headers={"authorization": f"Bearer {KEY_A}"}) as http:
        cid = (await http.post("/containers", json={"name": "q"})).json()["id"]
        for path in ("/containers", f"/containers/{cid}/files"):
            answer = await http.get(f"{path}?{query}")
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert error["type"] == "invalid_request_error" and error["param"] == query.split("=")[0]
            assert "times; give it once" in error["message"]
        assert (await http.get("/containers?limit=1&order=asc")).status_code == 200


@pytest.mark.parametrize(
    "argv",
    [
        ["--port", "9999", "serve"],
        ["serve", "--host", "0.0.0.0"],
        ["--allowed-origin", "https://app.example.com"],
        ["serve", "--transport", "stdio", "--allowed-host", "mcp.example.com"],
    ],
)
def test_an_http_option_given_to_stdio_is_refused_not_ignored(tmp_path: Path, argv: list[str]) -> None:
    # The stdio server started and ignored them: an operator who wrote --port 9999 got no listener
    # and no word about it.
    done = subprocess.run(
        [console_script(), *argv, "--data-dir", str(tmp_path / "data")],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "applies to the HTTP transports" in done.stderr and done.stdout == ""
    assert not (tmp_path / "data").exists()


# resources/subscribe is the handshake era's (the client warns on every call)
@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_one_connection_cannot_subscribe_to_files_without_bound(
    env_factory: EnvFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each subscribe needs a file of one's own, but deleting it keeps the URI: create, subscribe,
    # delete, repeat, and one connection's set grew for as long as it stayed open.
    monkeypatch.setattr(live_module, "MAX_SUBSCRIBED_URIS", 3, raising=False)
    async with env_factory() as env:
        async with Client(create_server(env.service, env.settings), mode="legacy") as alice:
            cid = (await ok(alice, "container_create", name="x"))["id"]
            gone = []
            for n in range(3):
                f = await ok(alice, "file_create", container_id=cid, path=f"f{n}.txt", text="1")
                gone.append(f"container://{cid}/files/{f['id']}")
                await alice.subscribe_resource(gone[-1])
                await ok(alice, "file_delete", container_id=cid, file_id=f["id"])
            f = await ok(alice, "file_create", container_id=cid, path="last.txt", text="1")
            uri = f"container://{cid}/files/{f['id']}"
            with pytest.raises(MCPError) as refused:
                await alice.subscribe_resource(uri)
            assert refused.value.error.code == INVALID_PARAMS
            assert "unsubscribe from some" in refused.value.error.message
            await alice.unsubscribe_resource(gone[0])
            await alice.subscribe_resource(uri)  # room again


async def test_a_huge_file_offset_is_the_callers_mistake_not_an_internal_error(env_factory: EnvFactory) -> None:
    # offset had no maximum: 10**19 passed the schema and overflowed the OS's file offset
    # ("Internal error in file_read (OverflowError)").
    async with env_factory() as env, env.session("a") as alice:
        cid = (await ok(alice, "container_create", name="x"))["id"]
        f = await ok(alice, "file_create", container_id=cid, path="a.txt", text="hello")
        for offset in (10**19, 10**30):
            text = await err(alice, "file_read", container_id=cid, file_id=f["id"], offset=offset)
            assert "offset must be at most" in text and "Nothing was changed" in text, text
        assert (await ok(alice, "file_read", container_id=cid, file_id=f["id"], offset=2**53 - 1))["eof"] is True
