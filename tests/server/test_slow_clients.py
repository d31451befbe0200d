"""Slow and greedy clients against real uvicorn servers on 127.0.0.1 (``http_guard.py``).

The attack from the issue: ~1,100 half-sent requests (slowloris) locked a normal client out of
streamable HTTP and ``container-mcp api``: the server ran out of file descriptors and nothing
ever dropped them. The process tests run the console script under an open-files limit lower
than the attack (as on a default ``ulimit -n 1024`` host facing 1,100 connections), so they fail
on a server without the guard. The in-process tests inject small timeouts instead of waiting.
"""

from __future__ import annotations

import re
import resource
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import uvicorn
from anyio.abc import SocketStream
from openai import AsyncOpenAI
from starlette.types import Receive, Scope, Send

from container_mcp.http_guard import ConnectionLimits, connection_limits, raise_open_files_limit
from container_mcp.serving import listen, server_config

from ..calls import call as structured
from ..envs import clean_env
from ..processes import console_script, started
from .bearer import http_client

pytestmark = pytest.mark.anyio

HALF_SENT = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
SERVER_FILES = 256
"""The open-files limit (soft = hard) of the server processes: below the attack's connections."""
ATTACK = 400


@asynccontextmanager
async def guarded(app: Any, limits: ConnectionLimits) -> AsyncIterator[tuple[str, int]]:
    """``app`` on uvicorn with the guard, as ``serve_asgi`` builds it; yields (host, port)."""
    config = server_config(app, "127.0.0.1", 0, limits, lifespan="off", access_log=False)
    server = uvicorn.Server(config)
    with listen("127.0.0.1", 0) as sock:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            try:
                yield "127.0.0.1", sock.getsockname()[1]
            finally:
                server.should_exit = True
                server.force_exit = True


async def read_all(stream: SocketStream) -> bytes:
    data = b""
    try:
        while True:
            data += await stream.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
        return data


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """A tiny app that reads the whole body and answers 200 with its length."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def get(host: str, port: int) -> bytes:
    async with await anyio.connect_tcp(host, port) as s:
        await s.send(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return await read_all(s)


async def test_half_sent_requests_are_dropped_after_the_header_timeout() -> None:
    limits = ConnectionLimits(header_timeout_s=0.2, max_connections=1000)
    async with guarded(hello, limits) as (host, port):
        attackers = [await anyio.connect_tcp(host, port) for _ in range(200)]
        for i, s in enumerate(attackers):
            await s.send(HALF_SENT if i % 2 else b"")  # half of them send nothing at all
        assert (await get(host, port)).startswith(b"HTTP/1.1 200")  # served meanwhile
        with anyio.fail_after(10):
            replies = [await read_all(s) for s in attackers]
        assert all(r.startswith(b"HTTP/1.1 408 Request Timeout") for r in replies)
        for s in attackers:
            await s.aclose()


async def test_a_kept_alive_connection_gets_a_fresh_header_deadline_per_request() -> None:
    limits = ConnectionLimits(header_timeout_s=0.3)
    async with guarded(hello, limits) as (host, port):
        async with await anyio.connect_tcp(host, port) as s:
            await s.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await s.receive()).startswith(b"HTTP/1.1 200")
            await s.send(b"GET / HTTP/1.1\r\nHost: x\r\n")  # the second request never completes
            with anyio.fail_after(10):
                assert (await read_all(s)).startswith(b"HTTP/1.1 408")


async def test_a_stalled_body_is_dropped_after_the_idle_timeout() -> None:
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                return

    limits = ConnectionLimits(header_timeout_s=5, body_idle_timeout_s=0.2)
    async with guarded(app, limits) as (host, port):
        async with await anyio.connect_tcp(host, port) as s:
            await s.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
            with anyio.fail_after(10):
                assert await read_all(s) == b""  # closed, no response
    assert seen[-1] == "http.disconnect"


async def test_a_slow_but_steady_body_is_not_dropped() -> None:
    limits = ConnectionLimits(header_timeout_s=5, body_idle_timeout_s=0.5)
    async with guarded(hello, limits) as (host, port):
        async with await anyio.connect_tcp(host, port) as s:
            await s.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\n")
            for byte in b"abcd":
                await anyio.sleep(0.1)  # the client's pace: below the idle timeout
                await s.send(bytes([byte]))
            with anyio.fail_after(10):
                assert (await read_all(s)).endswith(b"\r\n\r\n4")


async def test_at_the_cap_a_new_connection_displaces_the_oldest_half_sent_one() -> None:
    limits = ConnectionLimits(header_timeout_s=60, max_connections=20)
    async with guarded(hello, limits) as (host, port):
        attackers = []
        for _ in range(100):  # five times the cap, each holding its request open
            s = await anyio.connect_tcp(host, port)
            await s.send(HALF_SENT)
            attackers.append(s)
        for _ in range(5):
            with anyio.fail_after(5):
                assert (await get(host, port)).startswith(b"HTTP/1.1 200")
        with anyio.fail_after(10):
            dropped = [await read_all(s) for s in attackers[:50]]
        assert dropped == [b""] * 50  # the oldest were closed to make room
        for s in attackers:
            await s.aclose()


async def test_at_the_cap_with_every_connection_busy_a_new_one_gets_a_fast_503() -> None:
    release = anyio.Event()
    all_in = anyio.Event()
    arrived = 0

    async def busy(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal arrived
        arrived += 1
        if arrived == 3:
            all_in.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limits = ConnectionLimits(max_connections=3)
    async with guarded(busy, limits) as (host, port):
        holders = []
        for _ in range(3):
            s = await anyio.connect_tcp(host, port)
            await s.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            holders.append(s)
        with anyio.fail_after(5):
            await all_in.wait()  # every connection is busy with a request
            reply = await get(host, port)
        assert reply.startswith(b"HTTP/1.1 503 Service Unavailable")
        assert b"retry-after: 1" in reply
        release.set()
        for s in holders:
            with anyio.fail_after(5):
                assert (await s.receive()).startswith(b"HTTP/1.1 204")
            await s.aclose()


def test_the_connection_cap_stays_below_the_open_files_limit() -> None:
    assert connection_limits(ConnectionLimits(max_connections=1000), 20000).max_connections == 1000
    assert connection_limits(ConnectionLimits(max_connections=1000), 1024).max_connections == 1024 - 128
    assert connection_limits(ConnectionLimits(max_connections=1000), 100).max_connections == 16


def test_raising_the_open_files_limit_is_soft_to_hard() -> None:
    soft = raise_open_files_limit()
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


# --- the console script under the attack ------------------------------------------


# exec the server under a lowered RLIMIT_NOFILE (soft, hard) = argv[1:3]
_UNDER_LIMIT = (
    "import os, resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), int(sys.argv[2]))); "
    "os.execv(sys.argv[3], sys.argv[3:])"
)


@asynccontextmanager
async def server_process(args: list[str], tmp_path: Path, soft: int = SERVER_FILES) -> AsyncIterator[tuple[str, int]]:
    env = clean_env(CONTAINER_MCP_DATA_DIR=str(tmp_path), CONTAINER_MCP_API_KEYS="sk-slow")
    command = [sys.executable, "-c", _UNDER_LIMIT, str(soft), str(SERVER_FILES), console_script()]
    async with started([*command, *args, "--port", "0", "--log-level", "INFO"], env) as server:
        limits = await anyio.Path(f"/proc/{server.process.pid}/limits").read_text()
        files = re.search(r"Max open files\s+(\d+)\s+(\d+)", limits)
        assert files is not None and files[1] == files[2] == str(SERVER_FILES)  # soft raised to hard
        yield "127.0.0.1", server.port


async def half_sent(host: str, port: int, n: int) -> list[SocketStream]:
    streams = []
    for _ in range(n):
        s = await anyio.connect_tcp(host, port)
        await s.send(HALF_SENT)
        streams.append(s)
    return streams


async def test_slowloris_does_not_lock_a_client_out_of_streamable_http(tmp_path: Path) -> None:
    async with server_process(["--transport", "streamable-http"], tmp_path, soft=128) as (host, port):
        attackers = await half_sent(host, port, ATTACK)
        try:
            with anyio.fail_after(20):
                async with http_client(f"http://{host}:{port}/mcp", "sk-slow", "legacy") as client:
                    created = await structured(client, "container_create", name="served")
                    listed = await structured(client, "container_list")
            assert [c["id"] for c in listed["data"]] == [created["id"]]
        finally:
            for s in attackers:
                await s.aclose()


async def test_slowloris_does_not_lock_a_client_out_of_the_api(tmp_path: Path) -> None:
    async with server_process(["api"], tmp_path) as (host, port):
        attackers = await half_sent(host, port, ATTACK)
        try:
            with anyio.fail_after(20):
                async with AsyncOpenAI(api_key="sk-slow", base_url=f"http://{host}:{port}/v1", max_retries=0) as sdk:
                    created = await sdk.containers.create(name="served")
                    assert [c.id for c in (await sdk.containers.list()).data] == [created.id]
        finally:
            for s in attackers:
                await s.aclose()


async def test_a_client_waiting_for_100_continue_is_not_timed_out_while_the_app_waits() -> None:
    go = anyio.Event()

    async def late_reader(scope: Scope, receive: Receive, send: Send) -> None:
        await go.wait()  # e.g. the inline gate waiting for room before it reads the body
        await hello(scope, receive, send)

    limits = ConnectionLimits(header_timeout_s=5, body_idle_timeout_s=0.1)
    async with guarded(late_reader, limits) as (host, port):
        async with await anyio.connect_tcp(host, port) as s:
            await s.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
            with anyio.move_on_after(0.5):  # five idle timeouts: the connection must survive them
                assert await s.receive() == b"", "closed while the server held back 100 Continue"
            go.set()
            with anyio.fail_after(5):
                assert (await s.receive()).startswith(b"HTTP/1.1 100 Continue")
            await s.send(b"abc")
            with anyio.fail_after(5):
                reply = await s.receive()
                while not reply.endswith(b"\r\n\r\n3"):
                    reply += await s.receive()
