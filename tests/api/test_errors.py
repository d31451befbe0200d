"""The error mapping: the table is complete, and each error reaches the SDK as OpenAI's would."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx2
import pytest
from openai import (
    APIStatusError,
    AsyncOpenAI,
    BadRequestError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
)

import container_mcp.errors as errors_module
from container_mcp.api.errors import ERROR_TABLE, error_response, spec_for
from container_mcp.auth import owner_for_key
from container_mcp.clock import ManualClock
from container_mcp.errors import (
    ContainerExpired,
    ContainerMCPError,
    ContainerNotFound,
    ExecError,
    FileTooLarge,
    InvalidId,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    SandboxUnavailable,
    Unsupported,
)

from .live import KEY_A, LiveApi, start_api

pytestmark = pytest.mark.anyio


def _subclasses(cls: type[ContainerMCPError]) -> set[type[ContainerMCPError]]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out


# --- the table -----------------------------------------------------------------------------


def test_every_error_class_has_its_own_row() -> None:
    tree = {ContainerMCPError} | _subclasses(ContainerMCPError)
    exported = {
        value
        for value in (getattr(errors_module, name) for name in errors_module.__all__)
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    assert exported <= tree
    assert tree - set(ERROR_TABLE) == set(), "map the new error class in api/errors.py ERROR_TABLE"


def _quota(limit_name: str) -> QuotaExceeded:
    return QuotaExceeded("over", limit_name=limit_name, limit=1, used=1)


@pytest.mark.parametrize(
    ("exc", "status", "type_", "should_retry"),
    [
        (InvalidId("bad id", param="container_id"), 400, "invalid_request_error", None),
        (ContainerNotFound("cntr_x"), 404, "invalid_request_error", None),
        (ContainerExpired("cntr_x"), 400, "invalid_request_error", None),
        (_quota("CONTAINER_MCP_MAX_CONTAINERS"), 403, "invalid_request_error", None),
        (_quota("CONTAINER_MCP_MAX_FILES_PER_CONTAINER"), 403, "invalid_request_error", None),
        (_quota("CONTAINER_MCP_MAX_SESSION_BYTES"), 413, "invalid_request_error", None),
        (
            FileTooLarge("big", limit_name="CONTAINER_MCP_MAX_FILE_BYTES", limit=1, used=2),
            413,
            "invalid_request_error",
            None,
        ),
        (
            RateLimited("slow down", limit_name="CONTAINER_MCP_MAX_CALLS_PER_MINUTE", limit=1, used=1, retry_after=1.2),
            429,
            "requests",
            None,
        ),
        (Unsupported("no"), 400, "invalid_request_error", None),
        (ExecError("no"), 500, "server_error", "false"),
        (SandboxUnavailable("no"), 503, "server_error", "false"),
        (ProviderError("upstream conflict", status=409), 409, "invalid_request_error", None),
        (ProviderError("upstream odd", status=302), 502, "server_error", None),
        (ProviderError("upstream broke", status=None), 502, "server_error", None),
        (ProviderAuthError("upstream key", status=401), 502, "server_error", "false"),
        (ProviderRateLimited("upstream busy", status=429, retry_after=1.5), 429, "requests", None),
        (ProviderUnavailable("upstream down", status=503), 502, "server_error", None),
    ],
)
def test_error_response(exc: ContainerMCPError, status: int, type_: str, should_retry: str | None) -> None:
    response = error_response(exc)
    assert response.status_code == status == spec_for(exc).status
    body = json.loads(bytes(response.body))
    assert list(body) == ["error"]
    assert list(body["error"]) == ["message", "type", "param", "code"]
    assert body["error"]["type"] == type_
    assert body["error"]["param"] == exc.param
    assert response.headers.get("x-should-retry") == should_retry
    if status == 429:
        assert body["error"]["code"] == "rate_limit_exceeded"
    if isinstance(exc, RateLimited | ProviderRateLimited):
        assert response.headers["retry-after"] == "2"


# --- through the SDK -----------------------------------------------------------------------


async def test_not_found_errors_as_the_sdk_raises_them(client: AsyncOpenAI) -> None:
    missing = "cntr_" + "ab" * 24
    with pytest.raises(NotFoundError) as info:
        await client.containers.retrieve(missing)
    err = info.value
    assert str(err) == f"Error code: 404 - Container with id '{missing}' not found."
    assert (err.status_code, err.type, err.param, err.code) == (
        404,
        "invalid_request_error",
        "container_id",
        "not_found",
    )
    assert err.request_id is not None and err.request_id.startswith("req_")

    cid = (await client.containers.create(name="x")).id
    missing_file = "cfile_" + "cd" * 16
    with pytest.raises(NotFoundError, match=f"File {missing_file} not found on container {cid}."):
        await client.containers.files.content.retrieve(missing_file, container_id=cid)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: client.containers.files.retrieve(missing_file, container_id=cid),
        lambda: client.containers.files.delete(missing_file, container_id=cid),
        lambda: client.containers.delete(missing),
        lambda: client.containers.files.list(missing),
    ]
    for call in calls:
        with pytest.raises(NotFoundError):
            await call()


async def test_malformed_ids_are_bad_requests(client: AsyncOpenAI) -> None:
    with pytest.raises(BadRequestError) as info:
        await client.containers.retrieve("not-an-id")
    assert info.value.param == "container_id"


async def test_expired_container_file_operations_answer_400(api: LiveApi, client: AsyncOpenAI) -> None:
    cid = (await client.containers.create(name="short", expires_after={"anchor": "last_active_at", "minutes": 1})).id
    fid = (await client.containers.files.create(cid, file=("a.txt", b"a"))).id
    api.clock.advance(61)

    # Metadata stays readable, as on OpenAI.
    assert (await client.containers.retrieve(cid)).status == "expired"
    assert [c.status for c in (await client.containers.list()).data] == ["expired"]

    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: client.containers.files.create(cid, file=("b.txt", b"b" * 100_000)),
        lambda: client.containers.files.list(cid),
        lambda: client.containers.files.retrieve(fid, container_id=cid),
        lambda: client.containers.files.content.retrieve(fid, container_id=cid),
        lambda: client.containers.files.delete(fid, container_id=cid),
    ]
    for call in calls:
        with pytest.raises(BadRequestError) as info:
            await call()
        assert isinstance(info.value.body, dict)
        assert info.value.body["message"].startswith("Container is expired. ")
        assert str(info.value).startswith("Error code: 400 - Container is expired. ")
        assert "POST /v1/containers" in info.value.message
        assert info.value.code == "container_expired"
    await client.containers.delete(cid)  # an expired container can still be deleted


async def test_upload_over_the_file_limit_is_413_and_stores_nothing(tmp_path: Path, clock: ManualClock) -> None:
    async with start_api(tmp_path / "data", clock, max_file_bytes=100_000) as api, api.client() as client:
        cid = (await client.containers.create(name="q")).id
        with pytest.raises(APIStatusError) as info:
            await client.containers.files.create(cid, file=("big.bin", b"x" * 300_000))  # refused by Content-Length
        assert info.value.status_code == 413
        assert info.value.code == "file_too_large"
        assert "CONTAINER_MCP_MAX_FILE_BYTES" in info.value.message

        # No Content-Length: refused mid-stream, after the limit, still with nothing stored.
        async def body() -> object:
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="s.bin"\r\n\r\n'
            for _ in range(20):
                yield b"y" * 65536
            yield b"\r\n--b--\r\n"

        async with httpx2.AsyncClient(base_url=api.base_url, headers={"Authorization": f"Bearer {KEY_A}"}) as http:
            r = await http.post(
                f"/containers/{cid}/files",
                content=body(),  # type: ignore[arg-type]
                headers={"Content-Type": "multipart/form-data; boundary=b"},
            )
        assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"
        assert r.headers["x-request-id"].startswith("req_")

        assert (await client.containers.files.list(cid)).data == []
        container_dir = api.provider.data_dir / "containers" / cid
        assert [p for p in container_dir.rglob("*") if p.is_file()] == []
        assert (await api.service.usage(owner_for_key(KEY_A))).stored_bytes.used == 0


async def test_upload_over_the_session_bytes_is_413(tmp_path: Path, clock: ManualClock) -> None:
    async with start_api(tmp_path / "data", clock, max_session_bytes=150_000) as api, api.client() as client:
        cid = (await client.containers.create(name="q")).id
        await client.containers.files.create(cid, file=("one.bin", b"1" * 100_000))
        with pytest.raises(APIStatusError) as info:
            await client.containers.files.create(cid, file=("two.bin", b"2" * 100_000))
        assert info.value.status_code == 413
        assert "CONTAINER_MCP_MAX_SESSION_BYTES" in info.value.message
        assert [f.path for f in (await client.containers.files.list(cid)).data] == ["/mnt/data/one.bin"]


async def test_container_quota_is_403_and_not_retried(tmp_path: Path, clock: ManualClock) -> None:
    async with start_api(tmp_path / "data", clock, max_containers=1) as api, api.client(max_retries=2) as client:
        await client.containers.create(name="one")
        with pytest.raises(PermissionDeniedError) as info:
            await client.containers.create(name="two")
        assert info.value.code == "quota_exceeded"
        assert "CONTAINER_MCP_MAX_CONTAINERS" in info.value.message
        assert info.value.response.request.headers.get("x-stainless-retry-count") == "0"


async def test_rate_limit_is_429_with_retry_after(tmp_path: Path, clock: ManualClock) -> None:
    async with start_api(tmp_path / "data", clock, max_calls_per_minute=2) as api, api.client() as client:
        await client.containers.list()
        await client.containers.list()
        with pytest.raises(RateLimitError) as info:
            await client.containers.list()
        headers = info.value.response.headers
        assert 1 <= int(headers["retry-after"]) <= 60
        assert info.value.code == "rate_limit_exceeded"
        assert info.value.type == "requests"


async def test_unknown_route_and_method(api: LiveApi) -> None:
    async with httpx2.AsyncClient(base_url=api.base_url, headers={"Authorization": f"Bearer {KEY_A}"}) as http:
        r = await http.get("/nothing-here")
        assert r.status_code == 404
        assert r.json() == {
            "error": {
                "message": "Invalid URL (GET /v1/nothing-here)",
                "type": "invalid_request_error",
                "param": None,
                "code": None,
            }
        }
        assert r.headers["x-request-id"].startswith("req_")
        r = await http.patch("/containers")
        assert r.status_code == 405
        assert set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


@pytest.mark.parametrize(
    "body",
    [
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="t.txt"\r\n\r\nno closing boundary',
        b"garbage without any boundary at all",
        b'--b\r\nContent-Disposition: form-data; filename="t.txt"\r\n\r\nx\r\n--b--\r\n',
    ],
)
async def test_malformed_multipart_is_400(api: LiveApi, client: AsyncOpenAI, body: bytes) -> None:
    cid = (await client.containers.create(name="m")).id
    async with httpx2.AsyncClient(base_url=api.base_url, headers={"Authorization": f"Bearer {KEY_A}"}) as http:
        r = await http.post(
            f"/containers/{cid}/files", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"}
        )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert (await client.containers.files.list(cid)).data == []


async def test_an_unexpected_error_is_a_500_envelope(api: LiveApi, client: AsyncOpenAI) -> None:
    cid = (await client.containers.create(name="x")).id
    api.provider.registry.close()  # the backend breaks underneath the service
    with pytest.raises(InternalServerError) as info:
        await client.containers.retrieve(cid)
    assert info.value.status_code == 500
    assert info.value.type == "server_error"
    assert info.value.response.headers["x-should-retry"] == "false"
    assert info.value.request_id is not None and info.value.request_id in info.value.message
