"""Attacks on the hardened HTTP edges, the inline budget and the bounded stdio reader (issue 7, items 4 and 7).

Each test is an attack that got through the first version of ``http_guard.py``/``inline.py``/``stdio.py``/
``api/origin.py``, now contained. Real uvicorn servers on 127.0.0.1 port 0, small limits for speed.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from anyio.abc import SocketStream
from mcp import Client, MCPError
from mcp.shared.message import SessionMessage
from mcp_types import INVALID_PARAMS
from starlette.types import Receive, Scope, Send

from container_mcp.auth import BearerVerifier
from container_mcp.clock import ManualClock
from container_mcp.http_guard import RATE_GRACE_S, ConnectionLimits
from container_mcp.server.app import create_server
from container_mcp.server.http import http_app
from container_mcp.service import ContainerService
from container_mcp.serving import server_config
from container_mcp.settings import MiB, Settings
from container_mcp.stdio import BoundedLines

from ..api.live import KEY_A, start_api
from ..calls import call as structured
from ..envs import clean_env
from ..live import serve
from ..processes import console_script, started
from ..server.bearer import http_client
from ..server.test_slow_clients import get, guarded, hello, read_all

pytestmark = pytest.mark.anyio


async def test_bodies_trickled_just_under_the_idle_timeout_cannot_lock_a_client_out() -> None:
    """A byte per 0.1 s never stalls for the idle timeout: the whole cap was "busy", everyone else got 503."""
    limits = ConnectionLimits(header_timeout_s=5, body_idle_timeout_s=0.5, max_connections=10)
    async with guarded(hello, limits) as (host, port):
        attackers = []
        for _ in range(10):  # the whole cap, each sending a body a byte at a time
            s = await anyio.connect_tcp(host, port)
            await s.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            attackers.append(s)

        async def trickle() -> None:
            while True:
                for s in attackers:
                    await s.send(b"x")
                await anyio.sleep(0.1)  # well inside the idle timeout: never "stalled"

        async with anyio.create_task_group() as tg:
            tg.start_soon(trickle)
            await anyio.sleep(RATE_GRACE_S + 0.3)  # long enough for their rate to be judged
            with anyio.fail_after(10):
                replies = [await get(host, port) for _ in range(3)]
            tg.cancel_scope.cancel()
        assert all(r.startswith(b"HTTP/1.1 200") for r in replies), [r[:40] for r in replies]
        for s in attackers:
            await s.aclose()


async def test_at_the_cap_a_steady_upload_is_not_displaced_for_a_new_connection() -> None:
    limits = ConnectionLimits(header_timeout_s=5, body_idle_timeout_s=5, max_connections=2, min_body_rate=1000)
    async with guarded(hello, limits) as (host, port):
        uploads = [await anyio.connect_tcp(host, port) for _ in range(2)]
        for s in uploads:
            await s.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n")
        for _ in range(int(RATE_GRACE_S / 0.05) + 6):
            for s in uploads:
                await s.send(b"y" * 500)  # 10,000 bytes/s: over the floor
            await anyio.sleep(0.05)
        with anyio.fail_after(10):
            assert (await get(host, port)).startswith(b"HTTP/1.1 503")
        for s in uploads:
            await s.send(b"y" * (1000000 - 500 * (int(RATE_GRACE_S / 0.05) + 6)))
            with anyio.fail_after(10):
                assert (await read_all(s)).endswith(b"\r\n\r\n1000000")
            await s.aclose()


# --- JSON bodies ------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"])
async def test_a_deeply_nested_json_body_is_a_clear_400_on_the_api(
    tmp_path: Path, clock: ManualClock, body: bytes
) -> None:
    async with start_api(tmp_path / "data", clock) as api:
        async with httpx2.AsyncClient(base_url=api.origin) as http:
            response = await http.post(
                "/v1/containers",
                content=body,
                headers={"Authorization": f"Bearer {KEY_A}", "Content-Type": "application/json"},
            )
        assert response.status_code == 400, response.text
        assert "JSON" in response.json()["error"]["message"]  # not a 500 with a traceback in the log
        async with api.client() as sdk:
            assert (await sdk.containers.list()).data == []


async def test_a_deeply_nested_resources_cursor_is_a_clear_invalid_params(client: Client) -> None:
    cursor = base64.urlsafe_b64encode(b"[" * 100_000).decode()
    with pytest.raises(MCPError) as caught:
        await client.list_resources(cursor=cursor)
    assert caught.value.error.code == INVALID_PARAMS, caught.value.error
    assert "nextCursor" in caught.value.error.message


# --- the server's log under a flood of bad requests -----------------------------------------


async def test_a_flood_of_bad_requests_does_not_flood_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """uvicorn logged a warning (two for an Upgrade) per bad request: cheap for a client, and a stderr
    nobody drains stalls the whole server."""
    upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    async with guarded(hello, ConnectionLimits()) as (host, port):
        with caplog.at_level(logging.WARNING):
            async with await anyio.connect_tcp(host, port) as s:
                await s.send(upgrade * 100 + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                with anyio.fail_after(10):
                    assert (await read_all(s)).count(b"HTTP/1.1 200") == 101  # all served, as plain requests
            for _ in range(50):
                async with await anyio.connect_tcp(host, port) as s:
                    await s.send(b"\x16\x03\x01 not http\r\n\r\n")  # e.g. TLS to a plain-HTTP port
                    with anyio.fail_after(10):
                        assert (await read_all(s)).startswith(b"HTTP/1.1 400")
    # Warnings only: uvicorn's INFO start/stop lines reach the capture when an earlier test raised its level.
    noise = [r for r in caplog.records if r.name.startswith("uvicorn") and r.levelno >= logging.WARNING]
    assert len(noise) <= 4, [r.getMessage()[:60] for r in noise]


# --- long-lived responses (SSE streams) ------------------------------------------------------


async def streams(scope: Scope, receive: Receive, send: Send) -> None:
    """``/stream`` answers with a stream that never ends (as an SSE GET does); anything else is ``hello``."""
    if scope["path"] != "/stream":
        await hello(scope, receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    await send({"type": "http.response.body", "body": b": open\n\n", "more_body": True})
    await anyio.sleep_forever()


async def open_stream(host: str, port: int, key: str) -> SocketStream:
    s = await anyio.connect_tcp(host, port)
    await s.send(f"GET /stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\r\n".encode())
    with anyio.fail_after(5):
        assert (await s.receive()).startswith(b"HTTP/1.1 200")
    return s


async def test_one_key_holding_every_connection_with_streams_cannot_lock_others_out() -> None:
    """Streams are busy for ever: one caller opening the whole cap of them got everyone else a 503."""
    limits = ConnectionLimits(max_connections=10)
    async with guarded(streams, limits) as (host, port):
        greedy = [await open_stream(host, port, "sk-greedy") for _ in range(10)]
        with anyio.fail_after(10):
            other = await open_stream(host, port, "sk-other")  # another caller still gets in
            assert (await get(host, port)).startswith(b"HTTP/1.1 200")
            closed = [s for s in greedy if await read_all_now(s) == b""]
        assert closed == greedy[: len(closed)] and 1 <= len(closed) <= 5  # the greedy caller's oldest went
        for s in [*greedy, other]:
            await s.aclose()


async def test_at_the_cap_callers_within_their_share_keep_their_streams() -> None:
    limits = ConnectionLimits(max_connections=6)
    async with guarded(streams, limits) as (host, port):
        held = [await open_stream(host, port, key) for key in ("a", "a", "a", "b", "b", "b")]
        with anyio.fail_after(10):
            assert (await get(host, port)).startswith(b"HTTP/1.1 503")  # no one holds more than half
        for s in held:
            await s.aclose()


async def read_all_now(stream: SocketStream) -> bytes | None:
    """What is left to read if ``stream`` was closed; None if it is still open after a moment."""
    with anyio.move_on_after(0.2):
        return await read_all(stream)
    return None


# --- the bounded stdio reader ------------------------------------------------------------------


async def stdio_lines(
    chunks: list[bytes], limit: int, *, blocking: bool = True
) -> tuple[list[str], list[SessionMessage]]:
    """The lines ``BoundedLines`` yields for ``chunks`` written to a pipe, and the refusals it sends."""
    r, w = os.pipe()
    os.set_blocking(r, blocking)
    lines: list[str] = []
    refusals: list[SessionMessage] = []
    reader = BoundedLines(r, limit)

    async def reply(message: SessionMessage) -> None:
        refusals.append(message)

    async def write() -> None:
        for chunk in chunks:
            await anyio.to_thread.run_sync(os.write, w, chunk)
        os.close(w)

    reader.reply = reply
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(write)
            async for line in reader:
                lines.append(line)
    finally:
        os.close(r)
    return lines, refusals


async def test_a_non_blocking_stdin_is_read_whole() -> None:
    """A host may hand stdin over non-blocking: every line arrives, split across writes or not."""
    chunks = [b'{"a": 1}\n{"b"', b": 2}\n", b'{"c": 3}\n']
    lines, refusals = await stdio_lines(chunks, limit=1000, blocking=False)
    assert lines == ['{"a": 1}', '{"b": 2}', '{"c": 3}']
    assert refusals == []


@pytest.mark.parametrize(
    "message",
    [
        # the TypeScript SDK (most stdio hosts) writes {...request, jsonrpc, id}: the id comes last
        b'{"method":"tools/call","params":{"arguments":{"base64":"' + b"A" * 10_000 + b'"}},"jsonrpc":"2.0","id":42}',
        b'{"method":"tools/call","params":{"x":"' + b"A" * 10_000 + b'"},"id": 42 }\r',
    ],
)
async def test_an_over_large_stdio_request_with_its_id_last_is_answered(message: bytes) -> None:
    """A refused request nobody answers leaves the client waiting for ever."""
    lines, refusals = await stdio_lines([message[:5000], message[5000:] + b"\n", b'{"ok": 1}\n'], limit=1000)
    assert lines == ['{"ok": 1}']
    assert [r.message.id for r in refusals] == [42]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "message",
    [
        b'{"method":"tools/call","params":{"x":"' + b"A" * 10_000 + b'","id":42}}',  # nested: not the request's
        b'{"method":"notifications/progress","params":{"x":"' + b"A" * 10_000 + b'"}}',
    ],
)
async def test_an_over_large_stdio_message_without_a_top_level_id_is_not_answered(message: bytes) -> None:
    lines, refusals = await stdio_lines([message + b"\n"], limit=1000)
    assert (lines, refusals) == ([], [])


# --- Host, Origin and Content-Type spellings on the api (these held) --------------------------


async def raw_post(origin: str, head: str, body: bytes = b'{"name": "pwned"}') -> bytes:
    host, port = origin.removeprefix("http://").rsplit(":", 1)
    async with await anyio.connect_tcp(host, int(port)) as s:
        await s.send(f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1") + body)
        with anyio.fail_after(10):
            return await read_all(s)


async def test_spellings_of_a_foreign_host_origin_or_content_type_create_nothing(
    tmp_path: Path, clock: ManualClock
) -> None:
    async with start_api(tmp_path / "data", clock, api_keys=[]) as api:  # anonymous: no key in the way
        post = "POST /v1/containers HTTP/1.1\r\n"
        json_ = "Content-Type: application/json\r\n"
        for host in (
            "127.0.0.1.evil.com",
            "localhost:80@evil",
            "localhost.",
            "[::1]evil",
            "localhost:",
            "localhost:*",
            "127.1",
            "0x7f000001",
            "[::ffff:127.0.0.1]",
            "[fe80::1%25lo]",
            "127.0.0.1:80/evil",
        ):
            assert (await raw_post(api.origin, f"{post}Host: {host}\r\n{json_}")).startswith(b"HTTP/1.1 421"), host
        reply = await raw_post(api.origin, f"POST /v1/containers HTTP/1.0\r\n{json_}")  # no Host at all
        assert reply.startswith(b"HTTP/1.1 421"), reply[:60]
        for origin in (
            "null",
            "NULL",
            "file://",
            "FILE:///etc/passwd",
            "http://localhost.",
            "http://localhost@evil.com",
            "http://evil.com@localhost",
            "http://localhost:80@evil.com",
            "http://localhost:*",
            "http://localhost:99999",
            "ws://localhost",
            "chrome-extension://abcdef",
        ):
            reply = await raw_post(api.origin, f"{post}Host: 127.0.0.1\r\nOrigin: {origin}\r\n{json_}")
            assert reply.startswith(b"HTTP/1.1 403"), origin
        for ctype in ("text/json", "application/jsonx", "text/plain; application/json", "application/json-seq"):
            reply = await raw_post(api.origin, f"{post}Host: 127.0.0.1\r\nContent-Type: {ctype}\r\n")
            assert reply.startswith(b"HTTP/1.1 415"), ctype
        async with api.client() as sdk:
            assert (await sdk.containers.list()).data == []


def test_no_server_upgrades_to_websocket_past_the_guard() -> None:
    """uvicorn hands an upgraded socket to its WebSocket protocol (unguarded, its slot never returned)
    whenever a WebSocket library happens to be installed; no server here serves WebSocket."""
    config = server_config(hello, "127.0.0.1", 0, ConnectionLimits())
    config.load()
    assert config.ws == "none" and config.ws_protocol_class is None


# --- the inline gate in front of authentication ------------------------------------------------


@asynccontextmanager
async def mcp_process(tmp_path: Path, **env: str) -> AsyncIterator[tuple[str, int]]:
    """``container-mcp --transport streamable-http`` with key ``sk-edge`` and ``env`` (CONTAINER_MCP_*)."""
    full = clean_env(CONTAINER_MCP_DATA_DIR=str(tmp_path), CONTAINER_MCP_API_KEYS="sk-edge", **env)
    command = [console_script(), "--transport", "streamable-http", "--port", "0", "--log-level", "INFO"]
    async with started(command, full) as server:
        yield "127.0.0.1", server.port


async def test_unauthenticated_requests_cannot_queue_at_the_inline_gate_and_fill_the_cap(tmp_path: Path) -> None:
    """The gate sat in front of authentication: while an upload held the budget, keyless requests
    declaring a large body (Expect: 100-continue, so the wait was "the server's") each held a
    connection for the gate's 30 s wait, and a handful of them got every other caller a 503."""
    limits = {"CONTAINER_MCP_MAX_INLINE_BYTES_IN_FLIGHT": str(4 * MiB), "CONTAINER_MCP_HTTP_MAX_CONNECTIONS": "16"}
    async with mcp_process(tmp_path, **limits) as (host, port):
        head = "POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        head += "Accept: application/json, text/event-stream\r\n"
        upload = await anyio.connect_tcp(host, port)  # a caller's upload, holding the whole budget
        await upload.send(f"{head}Authorization: Bearer sk-edge\r\nContent-Length: {4 * MiB}\r\n\r\n".encode())

        async def steady() -> None:  # well above the minimum body rate: never displaced
            for _ in range(4 * MiB // 8192 - 1):
                await upload.send(b" " * 8192)
                await anyio.sleep(0.02)

        async with anyio.create_task_group() as tg:
            tg.start_soon(steady)
            await anyio.sleep(0.3)  # the upload's reservation is taken
            attackers = []
            for _ in range(15):  # with the upload: the whole cap
                s = await anyio.connect_tcp(host, port)
                await s.send(f"{head}Content-Length: {2 * MiB}\r\nExpect: 100-continue\r\n\r\n".encode())
                attackers.append(s)
            with anyio.fail_after(10):
                replies = [await s.receive() for s in attackers]  # answered at once, not queued
            assert all(r.startswith(b"HTTP/1.1 401") for r in replies), {r[:40] for r in replies}
            for s in attackers:
                await s.aclose()
            with anyio.fail_after(20):
                async with http_client(f"http://{host}:{port}/mcp", "sk-edge", "legacy") as client:
                    await structured(client, "container_create", name="served")
            tg.cancel_scope.cancel()
        await upload.aclose()


# --- streamable HTTP sessions --------------------------------------------------------------------

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


async def open_session(http: httpx2.AsyncClient, url: str, key: str) -> int:
    headers = {"authorization": f"Bearer {key}", "accept": "application/json, text/event-stream"}
    response = await http.post(url, json=INITIALIZE, headers=headers)
    return response.status_code


async def test_one_key_cannot_take_every_streamable_http_session(tmp_path: Path, service: ContainerService) -> None:
    """Sessions outlive connections (30 min idle) and the SDK holds 10,000 at most, for everyone: one
    key opened them all in ~25 s (2,000 in 4.8 s measured) and every other caller got 503 for 30 min."""
    settings = Settings.isolated(
        data_dir=tmp_path / "data", api_keys=["sk-greedy", "sk-other"], http_max_sessions=4, max_sessions_per_owner=2
    )
    mcp = create_server(service, settings, verifier=BearerVerifier.from_keys(settings))
    async with serve(http_app(mcp, settings, "streamable-http", "127.0.0.1")) as base:
        async with httpx2.AsyncClient(timeout=10) as http:
            greedy = [await open_session(http, base + "/mcp", "sk-greedy") for _ in range(4)]
            assert greedy == [200, 200, 429, 429]  # its own share, at most
            assert await open_session(http, base + "/mcp", "sk-other") == 200


async def test_headers_trickled_a_byte_at_a_time_meet_one_total_deadline() -> None:
    """The header deadline counts from the request's first byte, not from the last read (this held)."""
    limits = ConnectionLimits(header_timeout_s=0.5)
    async with guarded(hello, limits) as (host, port):
        async with await anyio.connect_tcp(host, port) as s:
            start = anyio.current_time()
            reply = b""
            with anyio.fail_after(5):
                for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
                    try:
                        await s.send(bytes([byte]))
                    except (anyio.BrokenResourceError, ConnectionResetError):
                        break
                    with anyio.move_on_after(0.1):  # the pace: far inside the deadline per byte
                        reply += await s.receive()
                    if reply:
                        break
            assert reply.startswith(b"HTTP/1.1 408") and anyio.current_time() - start < 2
