"""API keys on the MCP HTTP transports: each token its own owner in both protocol eras and on SSE,
sessions bound to the token that opened them, 401 for the rest, tokens never logged, and the SDK's
DNS-rebinding protection on even when the server is configured for a public interface."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from container_mcp.auth import BearerVerifier, owner_for_key
from container_mcp.server.app import create_server
from container_mcp.server.http import HttpTransport, http_app
from container_mcp.service import ContainerService
from container_mcp.settings import Settings
from tests.calls import call as structured
from tests.live import serve

from .bearer import Seen, http_client, sse
from .test_transports import assert_isolated

pytestmark = pytest.mark.anyio

KEY_A = "mcp-key-alpha-0f1e2d3c4b5a"
KEY_B = "mcp-key-bravo-a5b4c3d2e1f0"
WRONG = "mcp-key-wrong-000000000000"

_ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
_INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "mallory", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


def _list_call(id_: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "method": "tools/call", "params": {"name": "container_list", "arguments": {}}}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.isolated(
        data_dir=tmp_path / "data",
        api_keys=[KEY_A, KEY_B],
        allowed_hosts=["mcp.example.com"],
        allowed_origins=["https://app.example.com"],
    )


@pytest.fixture(autouse=True)
def no_token_in_logs(caplog: pytest.LogCaptureFixture) -> Any:
    """Every test here runs with DEBUG logs captured; none may contain a token, good or bad."""
    caplog.set_level(logging.DEBUG)
    yield
    for token in (KEY_A, KEY_B, WRONG):
        assert token not in caplog.text


async def _served(service: ContainerService, settings: Settings, transport: HttpTransport, host: str) -> Any:
    mcp = create_server(service, settings, verifier=BearerVerifier.from_keys(settings))
    return http_app(mcp, settings, transport, host)


@pytest.fixture
async def mcp_url(service: ContainerService, settings: Settings) -> AsyncIterator[str]:
    async with serve(await _served(service, settings, "streamable-http", "127.0.0.1")) as url:
        yield url + "/mcp"


@pytest.fixture
async def sse_url(service: ContainerService, settings: Settings) -> AsyncIterator[str]:
    async with serve(await _served(service, settings, "sse", "127.0.0.1")) as url:
        yield url + "/sse"


@pytest.mark.parametrize(("mode", "era"), [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
async def test_each_token_is_its_own_owner_over_streamable_http(
    mcp_url: str, service: ContainerService, mode: str, era: str
) -> None:
    """Before: no auth at all, and two 2026-07-28 clients shared one anonymous session."""
    async with http_client(mcp_url, KEY_A, mode) as a, http_client(mcp_url, KEY_B, mode) as b:
        assert a.session.protocol_version == era
        await assert_isolated(a, b)
        cid = (await structured(a, "container_list"))["data"][0]["id"]
    # The owner is the key's digest, the same one the REST API uses: never the key itself.
    assert await service.ledger.owns(owner_for_key(KEY_A), cid)


async def test_a_token_is_the_same_owner_in_every_session_and_era(mcp_url: str) -> None:
    async with http_client(mcp_url, KEY_A, "legacy") as a:
        cid = (await structured(a, "container_create", name="kept"))["id"]
    async with http_client(mcp_url, KEY_A, "auto") as again, http_client(mcp_url, KEY_B, "auto") as b:
        assert [c["id"] for c in (await structured(again, "container_list"))["data"]] == [cid]
        assert (await structured(b, "container_list"))["data"] == []


async def test_each_token_is_its_own_owner_over_sse(sse_url: str) -> None:
    async with sse(sse_url, KEY_A) as a, sse(sse_url, KEY_B) as b:
        await assert_isolated(a, b)


async def test_another_token_cannot_use_a_handshake_era_session(mcp_url: str) -> None:
    """Mcp-Session-Id replay: B presents A's live session id, with B's own token and with none."""
    seen = Seen()
    async with http_client(mcp_url, KEY_A, "legacy", seen) as a:
        cid = (await structured(a, "container_create", name="victim"))["id"]
        sid = seen.header("mcp-session-id")
        assert sid
        call = _list_call(2)
        legacy = {**_ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2025-11-25"}
        modern = {**_ACCEPT, "mcp-session-id": sid, "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call",
                  "mcp-name": "container_list"}  # fmt: skip
        async with httpx2.AsyncClient() as http:
            as_b = await http.post(mcp_url, json=call, headers={**legacy, "authorization": f"Bearer {KEY_B}"})
            anonymous = await http.post(mcp_url, json=call, headers=legacy)
            modern_b = await http.post(
                mcp_url,
                json={**call, "params": {**call["params"], "_meta": _META}},
                headers={**modern, "authorization": f"Bearer {KEY_B}"},
            )
        assert as_b.status_code == 404 and cid not in as_b.text
        assert anonymous.status_code == 401 and cid not in anonymous.text
        # a 2026-07-28 request is B's own, whatever session id it carries
        assert modern_b.status_code == 200 and cid not in modern_b.text
        # A's session is still A's
        assert [c["id"] for c in (await structured(a, "container_list"))["data"]] == [cid]


async def test_another_token_cannot_post_into_an_sse_session(sse_url: str) -> None:
    sessions: list[str] = []
    async with sse(sse_url, KEY_A, on_session=sessions.append) as a:
        await structured(a, "container_create", name="victim")
        (sid,) = sessions
        call = _list_call(9)
        messages = sse_url.removesuffix("/sse") + f"/messages/?session_id={sid}"
        async with httpx2.AsyncClient() as http:
            as_b = await http.post(messages, json=call, headers={"authorization": f"Bearer {KEY_B}"})
            anonymous = await http.post(messages, json=call)
        assert as_b.status_code == 404
        assert anonymous.status_code == 401


@pytest.mark.parametrize("token", [None, WRONG, f"{KEY_A}x"])
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_no_token_or_a_wrong_one_is_refused_with_401(mcp_url: str, token: str | None, mode: str) -> None:
    seen = Seen()
    with pytest.raises(Exception):  # noqa: B017 - the client surfaces the 401 as an MCPError group
        async with http_client(mcp_url, token, mode, seen) as client:
            await client.call_tool("container_create", {"name": "nope"})
    assert seen.statuses and set(seen.statuses) == {401}
    challenge = seen.header("www-authenticate")
    assert challenge is not None and challenge.startswith("Bearer ")


async def test_sse_without_a_token_is_401(sse_url: str) -> None:
    async with httpx2.AsyncClient() as http:
        r = await http.get(sse_url)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer ")


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_dns_rebinding_is_refused_on_a_server_configured_for_every_interface(
    service: ContainerService, settings: Settings, transport: HttpTransport
) -> None:
    """Configured as for ``--host 0.0.0.0`` (bound here to 127.0.0.1). Before: the SDK turned the
    protection off for any host but loopback, so every Host and Origin passed."""
    app = await _served(service, settings, transport, "0.0.0.0")
    path = "/mcp" if transport == "streamable-http" else "/sse"
    auth = {"authorization": f"Bearer {KEY_A}"}

    async with serve(app) as url:
        port = url.rsplit(":", 1)[1]

        async def status(**headers: str) -> int:
            async with httpx2.AsyncClient() as http:
                if transport == "streamable-http":
                    r = await http.post(url + path, json=_INITIALIZE, headers={**_ACCEPT, **auth, **headers})
                    return r.status_code
                # SSE: only the status line matters; the stream itself would stay open
                async with http.stream("GET", url + path, headers={**auth, **headers}) as r:
                    return r.status_code

        assert await status(host="rebind.evil.example") == 421
        assert await status(host=f"rebind.evil.example:{port}") == 421
        assert await status(origin="https://evil.example") == 403
        assert await status(origin=f"http://rebind.evil.example:{port}") == 403
        assert await status() == 200
        assert await status(host="mcp.example.com") == 200
        assert await status(host=f"mcp.example.com:{port}") == 200
        assert await status(origin="https://app.example.com") == 200
        assert await status(host=f"localhost:{port}", origin=f"http://localhost:{port}") == 200


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
async def test_the_cli_server_takes_keys_from_the_environment(tmp_path: Path, transport: str) -> None:
    from ..envs import clean_env
    from ..processes import console_script, started

    env = clean_env(CONTAINER_MCP_API_KEYS=f"{KEY_A},{KEY_B}", CONTAINER_MCP_DATA_DIR=str(tmp_path))
    argv = [console_script(), "--transport", transport, "--port", "0", "--log-level", "DEBUG"]
    async with started(argv, env) as server:
        origin = server.origin
        if transport == "sse":
            async with sse(origin + "/sse", KEY_A) as a:
                await structured(a, "container_create", name="over-sse")
        else:
            async with http_client(origin + "/mcp", KEY_A, "auto") as a:
                await structured(a, "container_create", name="over-http")
        async with httpx2.AsyncClient() as http:
            if transport == "sse":
                refused = await http.get(origin + "/sse")
            else:
                refused = await http.post(origin + "/mcp", json=_INITIALIZE, headers=_ACCEPT)
        assert refused.status_code == 401
        log = (await server.stop()).decode()
    assert "no API keys configured" not in log
    assert KEY_A not in log and KEY_B not in log


async def test_a_key_is_the_same_owner_over_mcp_and_the_rest_api(
    service: ContainerService, settings: Settings, mcp_url: str
) -> None:
    from openai import AsyncOpenAI

    from container_mcp.api.app import create_app

    async with serve(create_app(service, settings)) as origin:
        async with AsyncOpenAI(api_key=KEY_A, base_url=origin + "/v1", max_retries=0) as rest:
            cid = (await rest.containers.create(name="made over REST")).id
    async with http_client(mcp_url, KEY_A, "auto") as a, http_client(mcp_url, KEY_B, "auto") as b:
        assert [c["id"] for c in (await structured(a, "container_list"))["data"]] == [cid]
        assert (await structured(b, "container_list"))["data"] == []
