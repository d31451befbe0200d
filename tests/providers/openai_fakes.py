"""Fakes for the OpenAI provider's tests: recorded traffic, a scripted ASGI app, a raw TCP server.

Nothing here patches a library: the provider gets a real ``httpx2.AsyncClient`` whose transport is
``httpx2.MockTransport`` (recordings), ``httpx2.ASGITransport`` (``FaultApp``) or the network on
127.0.0.1 (``tcp_fault_server``, for timeouts and dropped connections).
"""

from __future__ import annotations

import json
import os
import re
import socket
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import anyio
import anyio.abc
import httpx2
from pydantic import SecretStr

from container_mcp.providers.openai import OpenAIProvider
from container_mcp.uploads import HostFileUpload

RECORDINGS_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "openai-recordings"
API_KEY = "sk-test-SECRET-0123456789abcdef"
BASE_URL = "https://api.test/v1"

CONTAINER_ID = "cntr_68c9dde6b288819096a5f7d5f57f33d80d62739fdf52061b"
FILE_ID = "cfile_68c9ddf564c48191be678656a5e878e4"


def host_file(path: Path) -> HostFileUpload:
    """An upload of the host file ``path``, opened the way ``file_create``'s source_path opens it."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return HostFileUpload(fd, os.fstat(fd).st_size)


def load_recordings() -> dict[str, list[dict[str, Any]]]:
    """Every recording file's entries, by file stem (fails loudly when the fixtures are missing)."""
    found = {
        path.stem: json.loads(path.read_text(encoding="utf-8"))["Entries"]
        for path in sorted(RECORDINGS_DIR.glob("*.json"))
    }
    assert len(found) >= 12, f"OpenAI recordings missing under {RECORDINGS_DIR}"
    return found


def error_body(message: str, *, type_: str = "invalid_request_error", param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": None}}


def container_body(container_id: str = CONTAINER_ID, **extra: Any) -> dict[str, Any]:
    return {
        "id": container_id,
        "object": "container",
        "created_at": 1758060000,
        "status": "running",
        "expires_after": {"anchor": "last_active_at", "minutes": 20},
        "last_active_at": 1758060000,
        "name": "c",
        **extra,
    }


def file_body(
    file_id: str = FILE_ID, *, path: str = "/mnt/data/0123456789abcdef0123456789abcdef-a.txt", **extra: Any
) -> dict[str, Any]:
    return {
        "id": file_id,
        "object": "container.file",
        "created_at": 1758060021,
        "bytes": 3,
        "container_id": CONTAINER_ID,
        "path": path,
        "source": "user",
        **extra,
    }


def multipart_parts(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/form-data body into (Content-Disposition params, payload) pairs."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match, content_type
    boundary = match.group(1).encode()
    parts = []
    for raw in body.split(b"--" + boundary)[1:]:
        if raw.startswith(b"--"):
            break
        head, _, payload = raw.lstrip(b"\r\n").partition(b"\r\n\r\n")
        disposition = next(
            line.decode() for line in head.split(b"\r\n") if line.lower().startswith(b"content-disposition")
        )
        params = dict(re.findall(r'(\w+)="([^"]*)"', disposition))
        parts.append((params, payload.removesuffix(b"\r\n")))
    return parts


class SleepRecorder:
    """An injected ``sleep`` that records delays and never waits."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await anyio.lowlevel.checkpoint()


@asynccontextmanager
async def provider_over(
    transport: httpx2.AsyncBaseTransport,
    *,
    sleep: SleepRecorder | None = None,
    random: Callable[[], float] = lambda: 0.0,
    clock: Callable[[], float] = lambda: 1_800_000_000.0,
    max_retries: int = 2,
    base_url: str = BASE_URL,
    **kwargs: Any,
) -> AsyncIterator[OpenAIProvider]:
    """A provider over ``transport`` (test key, injected sleep/random/clock); closes the client after."""
    async with (
        httpx2.AsyncClient(transport=transport, trust_env=False) as client,
        OpenAIProvider(
            client,
            base_url=base_url,
            api_key=SecretStr(API_KEY),
            max_retries=max_retries,
            sleep=sleep or SleepRecorder(),
            random=random,
            clock=clock,
            **kwargs,
        ) as provider,
    ):
        yield provider


# --- a scripted ASGI app ------------------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


class FaultApp:
    """A plain ASGI app answering from a script of ``Reply``s (the last one repeats).

    ``x-request-id`` is ``req_<n>`` for the n-th request unless the reply sets it. Every request is
    recorded in ``seen``, body included.
    """

    def __init__(self, *script: Reply) -> None:
        self.script = list(script)
        self.seen: list[Seen] = []

    def posts(self) -> list[Seen]:
        return [s for s in self.seen if s.method == "POST"]

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        query = dict(parse_qsl(scope["query_string"].decode()))
        self.seen.append(Seen(scope["method"], scope["path"], query, headers, body))
        reply = self.script[min(len(self.seen), len(self.script)) - 1]
        if isinstance(reply.body, bytes):
            payload, content_type = reply.body, "application/octet-stream"
        else:
            payload, content_type = json.dumps(reply.body).encode(), "application/json"
        out = {"content-type": content_type, "x-request-id": f"req_{len(self.seen)}", **reply.headers}
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [(k.encode(), v.encode()) for k, v in out.items()],
            }
        )
        await send({"type": "http.response.body", "body": payload})


def asgi_provider(app: FaultApp, **kwargs: Any) -> AbstractAsyncContextManager[OpenAIProvider]:
    """``async with asgi_provider(app) as provider``: the provider over ``app`` via ASGITransport."""
    return provider_over(httpx2.ASGITransport(app=app), **kwargs)


# --- a raw TCP server on 127.0.0.1, for timeouts and dropped connections -------------------


DROP = "drop"
"""Close the connection after reading the request, without answering."""

HANG = "hang"
"""Read the request and never answer."""


class TcpFaultServer:
    """Speaks just enough HTTP/1.1; each connection gets the next scripted behaviour."""

    def __init__(self, script: list[Reply | str]) -> None:
        self.script = script
        self.seen: list[tuple[str, str]] = []
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def posts(self) -> int:
        return sum(1 for method, _ in self.seen if method == "POST")

    async def handle(self, stream: anyio.abc.ByteStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = await stream.receive()
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            while len(body) < length:
                body += await stream.receive()
            self.seen.append((method, target))
            behaviour = self.script[min(len(self.seen), len(self.script)) - 1]
            if behaviour == DROP:
                return
            if behaviour == HANG:
                await anyio.sleep_forever()
            assert isinstance(behaviour, Reply)
            payload = json.dumps(behaviour.body).encode()
            response = (
                f"HTTP/1.1 {behaviour.status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\nx-request-id: req_tcp\r\n\r\n"
            ).encode() + payload
            await stream.send(response)

    async def _serve(self, listener: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
        async with listener:
            await listener.serve(self.handle)


@asynccontextmanager
async def tcp_fault_server(*script: Reply | str) -> AsyncIterator[TcpFaultServer]:
    server = TcpFaultServer(list(script))
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    server.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server._serve, listener)
        try:
            yield server
        finally:
            tg.cancel_scope.cancel()


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@asynccontextmanager
async def tcp_provider(base_url: str, *, read_timeout_s: float = 0.2, **kwargs: Any) -> AsyncIterator[OpenAIProvider]:
    """A provider over the real network (no proxies from the environment), with a short read timeout."""
    async with (
        httpx2.AsyncClient(trust_env=False) as client,
        OpenAIProvider(
            client,
            base_url=base_url,
            api_key=SecretStr(API_KEY),
            read_timeout_s=read_timeout_s,
            connect_timeout_s=1.0,
            sleep=kwargs.pop("sleep", SleepRecorder()),
            random=lambda: 0.0,
            **kwargs,
        ) as provider,
    ):
        yield provider
