"""Replay real recorded OpenAI traffic through the provider.

For every recorded entry the provider is driven with the call that entry records; the request it
sends must match the recording (method, path, query, JSON keys and values, or a multipart ``file``
part), and the recorded response must parse into our models with the recorded values.
"""

from __future__ import annotations

import json
import re
import tracemalloc
from collections.abc import AsyncIterator, MutableMapping
from contextlib import aclosing
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx2
import pytest
from pydantic import SecretStr

from container_mcp.errors import FileTooLarge, QuotaExceeded, Unsupported
from container_mcp.models import ContainerSpec, ExpiresAfter, FileDeleted, ListParams, NetworkPolicy
from container_mcp.providers.base import ExecRequest, FileChanges
from container_mcp.providers.openai import OpenAIProvider
from container_mcp.settings import Settings
from container_mcp.uploads import BytesUpload, StreamUpload
from tests.providers.openai_fakes import (
    API_KEY,
    BASE_URL,
    CONTAINER_ID,
    FILE_ID,
    container_body,
    file_body,
    host_file,
    load_recordings,
    multipart_parts,
    provider_over,
)

pytestmark = pytest.mark.anyio

RECORDINGS = load_recordings()
UPSTREAM_DEFAULT_QUERY = {"limit": "20", "order": "desc"}
_ROUTES = [
    (re.compile(r"^/v1/containers$"), "/containers"),
    (re.compile(r"^/v1/containers/[^/]+$"), "/containers/{id}"),
    (re.compile(r"^/v1/containers/[^/]+/files$"), "/containers/{id}/files"),
    (re.compile(r"^/v1/containers/[^/]+/files/[^/]+$"), "/containers/{id}/files/{file_id}"),
    (re.compile(r"^/v1/containers/[^/]+/files/[^/]+/content$"), "/containers/{id}/files/{file_id}/content"),
]


def _route(entry: dict[str, Any]) -> tuple[str, str]:
    path = urlsplit(entry["RequestUri"]).path
    for pattern, name in _ROUTES:
        if pattern.match(path):
            return entry["RequestMethod"], name
    raise AssertionError(f"unknown route {path}")


def _segments(entry: dict[str, Any]) -> list[str]:
    uri: str = entry["RequestUri"]
    return urlsplit(uri).path.split("/")[2:]  # after /v1


def _response_for(entry: dict[str, Any]) -> httpx2.Response:
    headers: list[tuple[str, str]] = []
    for name, value in entry["ResponseHeaders"].items():
        if name.lower() in ("content-length", "content-encoding", "transfer-encoding"):
            continue
        for item in value if isinstance(value, list) else [value]:
            headers.append((name, item))
    body = entry["ResponseBody"]
    content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return httpx2.Response(entry["StatusCode"], headers=headers, content=content)


class Replay:
    """A MockTransport handler that checks each request against the next recorded entry."""

    def __init__(self, entries: list[dict[str, Any]]) -> None:
        self.entries = entries
        self.index = 0
        self.requests: list[httpx2.Request] = []

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        entry = self.entries[self.index]
        self.index += 1
        body = await request.aread()
        self.requests.append(request)
        recorded = urlsplit(entry["RequestUri"])
        assert request.method == entry["RequestMethod"]
        assert request.url.path == recorded.path
        sent_query = dict(request.url.params)
        recorded_query = dict(parse_qsl(recorded.query))
        for name, value in sent_query.items():
            # A parameter the recording omits must be sent at its upstream default.
            assert recorded_query.get(name, UPSTREAM_DEFAULT_QUERY.get(name)) == value, (name, value)
        assert set(recorded_query) <= set(sent_query)
        content_type = request.headers.get("content-type", "")
        recorded_type = next((v for k, v in entry["RequestHeaders"].items() if k.lower() == "content-type"), None)
        if recorded_type is None:
            assert body == b""
        elif recorded_type.startswith("application/json"):
            assert content_type == "application/json"
            assert json.loads(body) == entry["RequestBody"]
        else:
            assert recorded_type.startswith("multipart/form-data")
            assert content_type.startswith("multipart/form-data")
            parts = multipart_parts(content_type, body)
            assert [p["name"] for p, _ in parts] == ["file"]
            params, payload = parts[0]
            assert entry["ResponseBody"]["path"].endswith("-" + params["filename"])
            assert len(payload) == entry["ResponseBody"]["bytes"]
        assert request.headers["authorization"].startswith("Bearer ")
        return _response_for(entry)


def _assert_matches(dumped: Any, recorded: Any, where: str = "") -> None:
    """Every recorded value is in the model's dump (the model may add fields)."""
    if isinstance(recorded, dict):
        assert isinstance(dumped, dict), where
        for key, value in recorded.items():
            _assert_matches(dumped.get(key), value, f"{where}.{key}")
    elif isinstance(recorded, list):
        assert isinstance(dumped, list) and len(dumped) == len(recorded), where
        for i, (a, b) in enumerate(zip(dumped, recorded, strict=True)):
            _assert_matches(a, b, f"{where}[{i}]")
    else:
        assert dumped == recorded, where


def _content_of(entries: list[dict[str, Any]], file_id: str, size: int) -> bytes:
    for entry in entries:
        if entry["RequestUri"].endswith(f"/files/{file_id}/content"):
            return str(entry["ResponseBody"]).encode()
    return b"x" * size


async def _drive(provider: OpenAIProvider, entry: dict[str, Any], entries: list[dict[str, Any]]) -> None:
    """Make the provider call this entry records, then check the parsed result."""
    method, route = _route(entry)
    seg = _segments(entry)
    query = dict(parse_qsl(urlsplit(entry["RequestUri"]).query))
    params = ListParams(**query) if query else ListParams()
    recorded = entry["ResponseBody"]
    result: Any
    match method, route:
        case "POST", "/containers":
            result = await provider.create_container(ContainerSpec(**entry["RequestBody"]))
        case "GET", "/containers":
            result = await provider.list_containers(params)
        case "GET", "/containers/{id}":
            result = await provider.get_container(seg[1])
        case "DELETE", "/containers/{id}":
            result = await provider.delete_container(seg[1])
        case "POST", "/containers/{id}/files":
            name = recorded["path"].rsplit("/", 1)[1].split("-", 1)[1]
            data = _content_of(entries, recorded["id"], recorded["bytes"])
            result = await provider.create_file(seg[1], f"/mnt/data/some/dir/{name}", BytesUpload(data))
        case "GET", "/containers/{id}/files":
            result = await provider.list_files(seg[1], params)
        case "GET", "/containers/{id}/files/{file_id}":
            result = await provider.get_file(seg[1], seg[3])
        case "DELETE", "/containers/{id}/files/{file_id}":
            result = await provider.delete_file(seg[1], seg[3])
        case "GET", "/containers/{id}/files/{file_id}/content":
            async with aclosing(provider.read_file(seg[1], seg[3])) as chunks:
                content = b"".join([chunk async for chunk in chunks])
            assert content == recorded.encode()
            return
        case _:
            raise AssertionError((method, route))
    _assert_matches(result.model_dump(mode="json"), recorded, route)


def test_recordings_cover_all_nine_endpoints() -> None:
    routes = {_route(entry) for entries in RECORDINGS.values() for entry in entries}
    assert routes == {
        ("POST", "/containers"),
        ("GET", "/containers"),
        ("GET", "/containers/{id}"),
        ("DELETE", "/containers/{id}"),
        ("POST", "/containers/{id}/files"),
        ("GET", "/containers/{id}/files"),
        ("GET", "/containers/{id}/files/{file_id}"),
        ("DELETE", "/containers/{id}/files/{file_id}"),
        ("GET", "/containers/{id}/files/{file_id}/content"),
    }


@pytest.mark.parametrize("name", sorted(RECORDINGS))
async def test_replay_recording(name: str) -> None:
    entries = RECORDINGS[name]
    replay = Replay(entries)
    async with provider_over(httpx2.MockTransport(replay), base_url="https://api.openai.com/v1") as provider:
        for entry in entries:
            await _drive(provider, entry, entries)
    assert replay.index == len(entries)


async def test_create_container_forwards_every_field() -> None:
    entry = RECORDINGS["CanCreateContainer"][0]
    replay = Replay([entry])
    async with provider_over(httpx2.MockTransport(replay)) as provider:
        container = await provider.create_container(
            ContainerSpec(
                name="test-container",
                memory_limit="4g",
                expires_after=ExpiresAfter(minutes=20),
                network_policy=NetworkPolicy(type="disabled"),
            )
        )
    assert container.memory_limit == "4g"
    assert container.network_policy is not None and container.network_policy.type == "disabled"
    assert container.expires_at == 1782324240 + 20 * 60


async def test_create_container_sends_file_ids_and_allowlist() -> None:
    sent: list[Any] = []

    async def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(json.loads(await request.aread()))
        return httpx2.Response(200, json=RECORDINGS["CanCreateContainer"][0]["ResponseBody"])

    async with provider_over(httpx2.MockTransport(handler)) as provider:
        await provider.create_container(
            ContainerSpec(
                name="n",
                file_ids=["file-abc"],
                memory_limit="16g",
                expires_after=ExpiresAfter(minutes=5),
                network_policy=NetworkPolicy(type="allowlist", allowed_domains=["pypi.org"]),
            )
        )
    assert sent == [
        {
            "name": "n",
            "expires_after": {"anchor": "last_active_at", "minutes": 5},
            "memory_limit": "16g",
            "network_policy": {"type": "allowlist", "allowed_domains": ["pypi.org"]},
            "file_ids": ["file-abc"],
        }
    ]


async def test_empty_lists_have_null_ids() -> None:
    entry = RECORDINGS["CanEnumerateContainerFiles"][0]
    async with provider_over(httpx2.MockTransport(Replay([entry]))) as provider:
        page = await provider.list_files(_segments(entry)[1], ListParams(limit=10))
    assert page.data == [] and page.first_id is None and page.last_id is None and not page.has_more


async def test_old_responses_without_memory_limit_parse() -> None:
    entry = RECORDINGS["ContainerCollectionOptionsCanBeConfigured"][0]
    async with provider_over(httpx2.MockTransport(Replay([entry]))) as provider:
        page = await provider.list_containers(ListParams(limit=5, order="asc"))
    assert "memory_limit" not in entry["ResponseBody"]["data"][0]
    assert page.has_more and page.last_id == page.data[-1].id
    assert {c.status for c in page.data} == {"expired"}
    assert all(c.expires_at is None for c in page.data)


async def test_list_paging_sends_after_and_name() -> None:
    seen: list[httpx2.URL] = []

    async def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.url)
        return httpx2.Response(200, json={"object": "list", "data": [], "first_id": None, "last_id": None})

    async with provider_over(httpx2.MockTransport(handler)) as provider:
        await provider.list_containers(ListParams(limit=2, order="asc", after="cntr_2", name="c"))
        await provider.list_files("cntr_1", ListParams(limit=3, after="cfile_9", name="ignored"))
    assert dict(seen[0].params) == {"limit": "2", "order": "asc", "after": "cntr_2", "name": "c"}
    assert dict(seen[1].params) == {"limit": "3", "order": "desc", "after": "cfile_9"}
    assert str(seen[0]).startswith(f"{BASE_URL}/containers?")


# --- wire behaviour beyond the recordings --------------------------------------------------------


class Upstream:
    """A MockTransport handler for uploads, downloads and metadata, recording what it was sent."""

    def __init__(self, content: bytes = b"", chunk: int = 4) -> None:
        self.content = content
        self.chunk = chunk
        self.requests: list[tuple[httpx2.Request, bytes]] = []

    async def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = await request.aread()
        self.requests.append((request, body))
        path = request.url.path
        if request.method == "POST":
            [(params, payload)] = multipart_parts(request.headers["content-type"], body)
            return httpx2.Response(
                200, json=file_body(path=f"/mnt/data/{'f' * 32}-{params['filename']}", bytes=len(payload))
            )
        if path.endswith("/content"):
            data = self.content

            async def chunks() -> AsyncIterator[bytes]:
                for start in range(0, len(data), self.chunk):
                    yield data[start : start + self.chunk]

            return httpx2.Response(200, content=chunks())
        return httpx2.Response(200, json=file_body(bytes=len(self.content)))


class Approvals:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[FileChanges] = []
        self.error = error

    async def __call__(self, changes: FileChanges) -> None:
        self.calls.append(changes)
        if self.error is not None:
            raise self.error


async def _stream(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def test_upload_uses_the_basename_and_approves_before_sending() -> None:
    upstream = Upstream()
    approve = Approvals()
    async with provider_over(httpx2.MockTransport(upstream)) as provider:
        created = await provider.create_file(
            CONTAINER_ID, "/mnt/data/reports/q1.csv", BytesUpload(b"a,b\n1,2\n"), max_bytes=100, approve=approve
        )
    [(request, body)] = upstream.requests
    [(params, payload)] = multipart_parts(request.headers["content-type"], body)
    assert params == {"name": "file", "filename": "q1.csv"} and payload == b"a,b\n1,2\n"
    assert b"Content-Type: text/csv" in body
    assert approve.calls == [
        FileChanges(created=["/mnt/data/reports/q1.csv"], files_delta=1, bytes_delta=8, largest_file_bytes=8)
    ]
    assert created.path == f"/mnt/data/{'f' * 32}-q1.csv" and created.mime_type == "text/csv"


async def test_stream_upload_is_spooled_and_sent_whole() -> None:
    upstream = Upstream()
    approve = Approvals()
    async with provider_over(httpx2.MockTransport(upstream)) as provider:
        await provider.create_file(
            CONTAINER_ID, "/mnt/data/s.bin", StreamUpload(_stream(b"ab", b"", b"cde")), max_bytes=5, approve=approve
        )
    [(request, body)] = upstream.requests
    assert multipart_parts(request.headers["content-type"], body)[0][1] == b"abcde"
    assert request.headers["content-length"] == str(len(body))
    assert approve.calls[0].bytes_delta == 5


@pytest.mark.parametrize(
    "make_upload",
    [
        lambda: BytesUpload(b"123456"),
        lambda: StreamUpload(_stream(b"1234", b"56")),
        lambda: StreamUpload(_stream(b"1"), size=6),
    ],
)
async def test_too_large_uploads_send_nothing(make_upload: Any) -> None:
    upstream = Upstream()
    approve = Approvals()
    async with provider_over(httpx2.MockTransport(upstream)) as provider:
        with pytest.raises(FileTooLarge) as info:
            await provider.create_file(CONTAINER_ID, "/mnt/data/a", make_upload(), max_bytes=5, approve=approve)
    assert upstream.requests == [] and approve.calls == []
    assert info.value.limit == 5 and info.value.limit_name == "CONTAINER_MCP_MAX_FILE_BYTES"


async def test_too_large_host_file_sends_nothing(tmp_path: Path) -> None:
    host = tmp_path / "a.bin"
    host.write_bytes(b"x" * 10)
    upstream = Upstream()
    async with provider_over(httpx2.MockTransport(upstream)) as provider:
        with pytest.raises(FileTooLarge, match="File too large: 10 bytes; the limit is 9 bytes"):
            await provider.create_file(CONTAINER_ID, "/mnt/data/a.bin", host_file(host), max_bytes=9)
    assert upstream.requests == []


async def test_refused_approval_sends_nothing() -> None:
    upstream = Upstream()
    refusal = QuotaExceeded("over quota", limit_name="X", limit=1, used=2)
    async with provider_over(httpx2.MockTransport(upstream)) as provider:
        with pytest.raises(QuotaExceeded):
            await provider.create_file(CONTAINER_ID, "/mnt/data/a", BytesUpload(b"1"), approve=Approvals(refusal))
    assert upstream.requests == []


async def test_host_file_upload_streams_with_flat_memory(tmp_path: Path) -> None:
    # MockTransport reads whole bodies, so this goes through ASGITransport to an app that discards.
    size = 64 << 20
    host = tmp_path / "sparse.bin"
    with host.open("wb") as f:
        f.truncate(size)
    received = 0

    async def sink(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        nonlocal received
        while True:
            message = await receive()
            received += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        payload = json.dumps(file_body(bytes=size)).encode()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": payload})

    async with provider_over(httpx2.ASGITransport(app=sink)) as provider:
        tracemalloc.start()
        try:
            await provider.create_file(CONTAINER_ID, "/mnt/data/sparse.bin", host_file(host))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert received > size
    assert peak < 4 << 20, f"peak {peak} bytes while uploading {size}"


async def test_copy_file_downloads_and_reuploads() -> None:
    upstream = Upstream(content=b"hello world, copied")
    approve = Approvals()
    async with provider_over(httpx2.MockTransport(upstream)) as provider:
        copied = await provider.copy_file(CONTAINER_ID, FILE_ID, "cntr_dst", approve=approve)
    methods = [(r.method, r.url.path) for r, _ in upstream.requests]
    assert methods == [
        ("GET", f"/v1/containers/{CONTAINER_ID}/files/{FILE_ID}"),
        ("GET", f"/v1/containers/{CONTAINER_ID}/files/{FILE_ID}/content"),
        ("POST", "/v1/containers/cntr_dst/files"),
    ]
    request, body = upstream.requests[-1]
    [(params, payload)] = multipart_parts(request.headers["content-type"], body)
    assert params["filename"] == "a.txt"  # the upstream '<32 hex>-' prefix is not doubled
    assert payload == b"hello world, copied"
    assert approve.calls[0].bytes_delta == len(payload) and approve.calls[0].files_delta == 1
    assert copied.path.endswith("-a.txt")


@pytest.mark.parametrize(
    ("offset", "length", "expected"),
    [(0, None, b"0123456789"), (3, None, b"3456789"), (2, 5, b"23456"), (4, 0, b""), (9, 10, b"9"), (12, 3, b"")],
)
async def test_read_file_offset_and_length(offset: int, length: int | None, expected: bytes) -> None:
    upstream = Upstream(content=b"0123456789", chunk=3)
    async with (
        provider_over(httpx2.MockTransport(upstream)) as provider,
        aclosing(provider.read_file(CONTAINER_ID, FILE_ID, offset=offset, length=length)) as chunks,
    ):
        data = b"".join([chunk async for chunk in chunks])
    assert data == expected
    assert upstream.requests[0][0].headers["accept"] == "application/octet-stream"


async def test_settings_headers_timeouts_and_base_url() -> None:
    seen: list[httpx2.Request] = []

    async def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, json=container_body())

    settings = Settings.isolated(
        openai_api_key=SecretStr(API_KEY),
        openai_base_url="http://litellm.local:4000/v1/",
        openai_organization="org-1",
        openai_project="proj-1",
        openai_extra_headers={"custom-llm-provider": "openai"},
        openai_connect_timeout_s=2.5,
        openai_read_timeout_s=30.0,
        openai_max_retries=4,
    )
    async with httpx2.AsyncClient(transport=httpx2.MockTransport(handler)) as client:
        provider = OpenAIProvider.from_settings(settings, client=client)
        await provider.get_container(CONTAINER_ID)
        await provider.aclose()
        assert not client.is_closed  # injected: the caller closes it
    [request] = seen
    assert str(request.url) == f"http://litellm.local:4000/v1/containers/{CONTAINER_ID}"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["openai-organization"] == "org-1"
    assert request.headers["openai-project"] == "proj-1"
    assert request.headers["custom-llm-provider"] == "openai"
    assert request.extensions["timeout"] == {"connect": 2.5, "read": 30.0, "write": 30.0, "pool": 30.0}
    assert API_KEY not in repr(provider) and "litellm.local" in repr(provider)


async def test_owned_client_is_closed() -> None:
    async with OpenAIProvider.from_settings(Settings.isolated(openai_api_key=SecretStr(API_KEY))) as provider:
        client = provider._client
    assert client.is_closed


async def test_capabilities_and_exec() -> None:
    async with provider_over(httpx2.MockTransport(Upstream())) as provider:
        caps = provider.capabilities
        assert (caps.provider, caps.exec, caps.file_paths, caps.upstream_file_ids) == (
            "openai",
            False,
            "basename",
            True,
        )
        assert caps.memory_limits == ["1g", "4g", "16g", "64g"]
        assert caps.network_policies == ["disabled", "allowlist"]
        assert caps.expiry_minutes_range == (1, 20) and caps.max_file_bytes is None
        assert caps.exec_unavailable_reason and "no exec endpoint" in caps.exec_unavailable_reason
        with pytest.raises(Unsupported, match="cannot run commands"):
            await provider.exec(CONTAINER_ID, ExecRequest(argv=["ls"]), approve=Approvals())


async def test_tolerant_wire_parsing() -> None:
    bodies = {
        "/v1/containers/c1": container_body(
            "c1", memory_limit="2g", status="active", network_policy=None, future_field={"x": 1}
        ),
        "/v1/containers/c2": container_body("c2", status="expired", expires_after=None),
        "/v1/containers/c1/files/f1": file_body("f1", bytes=None, source="assistant", novel=True),
    }

    async def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, json=bodies[request.url.path])

    async with provider_over(httpx2.MockTransport(handler)) as provider:
        c1 = await provider.get_container("c1")
        c2 = await provider.get_container("c2")
        f1 = await provider.get_file("c1", "f1")
    assert (c1.status, c1.memory_limit, c1.network_policy) == ("running", None, None)
    assert (c2.status, c2.expires_after.minutes, c2.expires_at) == ("expired", 20, None)
    assert (f1.bytes, f1.source) == (None, "assistant")


async def test_ids_are_quoted_into_the_path() -> None:
    seen: list[str] = []

    async def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.url.raw_path.decode())
        return httpx2.Response(200, json={"id": "x", "object": "container.deleted", "deleted": True})

    async with provider_over(httpx2.MockTransport(handler)) as provider:
        await provider.delete_container("../files?x")
    assert seen == ["/v1/containers/..%2Ffiles%3Fx"]


async def test_bodiless_delete_is_accepted() -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(204)

    async with provider_over(httpx2.MockTransport(handler)) as provider:
        deleted = await provider.delete_file(CONTAINER_ID, FILE_ID)
    assert deleted == FileDeleted(id=FILE_ID)


async def test_host_file_is_sent_from_the_fd_it_was_checked_with(tmp_path: Path) -> None:
    host = tmp_path / "checked.txt"
    host.write_bytes(b"checked bytes")
    upload = host_file(host)
    host.unlink()  # a path swapped or removed after the check changes nothing: the fd is read
    host.write_bytes(b"swapped in later")
    upstream = Upstream()
    try:
        async with provider_over(httpx2.MockTransport(upstream)) as provider:
            await provider.create_file(CONTAINER_ID, "/mnt/data/checked.txt", upload)
    finally:
        upload.close()
    [(request, body)] = upstream.requests
    [(_, content)] = multipart_parts(request.headers["content-type"], body)
    assert content == b"checked bytes"
