"""Fault injection: retries, retry-after, timeouts, dropped connections, and the error table.

Status faults come from ``FaultApp`` over ``httpx2.ASGITransport``; timeouts and dropped
connections from a raw TCP server on 127.0.0.1. The injected sleep records delays and never waits.
"""

from __future__ import annotations

import email.utils
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from container_mcp.errors import (
    ContainerExpired,
    ContainerMCPError,
    ContainerNotFound,
    FileNotFound,
    InvalidRequest,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
    render,
)
from container_mcp.models import ContainerSpec, ListParams
from container_mcp.uploads import BytesUpload
from tests.providers.openai_fakes import (
    API_KEY,
    CONTAINER_ID,
    DROP,
    FILE_ID,
    HANG,
    FaultApp,
    Reply,
    SleepRecorder,
    asgi_provider,
    closed_port,
    container_body,
    error_body,
    file_body,
    host_file,
    multipart_parts,
    provider_over,
    tcp_fault_server,
    tcp_provider,
)

pytestmark = pytest.mark.anyio

OK_LIST = Reply(200, {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False})
SPEC = ContainerSpec(name="c")


# --- retries and retry-after -----------------------------------------------------------------


async def test_429_retry_after_seconds_is_honoured() -> None:
    app = FaultApp(Reply(429, error_body("Rate limit reached"), {"retry-after": "2"}), OK_LIST)
    sleep = SleepRecorder()
    async with asgi_provider(app, sleep=sleep) as provider:
        await provider.list_containers(ListParams())
    assert len(app.seen) == 2
    assert sleep.calls == [2.0]


async def test_retry_after_ms_wins_over_retry_after() -> None:
    app = FaultApp(Reply(429, error_body("slow down"), {"retry-after-ms": "150", "retry-after": "9"}), OK_LIST)
    sleep = SleepRecorder()
    async with asgi_provider(app, sleep=sleep) as provider:
        await provider.list_containers(ListParams())
    assert sleep.calls == [0.15]


async def test_retry_after_http_date_uses_the_injected_clock() -> None:
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 7, usegmt=True)
    app = FaultApp(Reply(503, error_body("busy"), {"retry-after": date}), OK_LIST)
    sleep = SleepRecorder()
    async with asgi_provider(app, sleep=sleep, clock=lambda: now) as provider:
        await provider.list_containers(ListParams())
    assert sleep.calls == [7.0]


async def test_retry_after_over_60_s_falls_back_to_backoff() -> None:
    app = FaultApp(Reply(429, error_body("later"), {"retry-after": "3600"}), OK_LIST)
    sleep = SleepRecorder()
    async with asgi_provider(app, sleep=sleep) as provider:
        await provider.list_containers(ListParams())
    assert sleep.calls == [0.5]


@pytest.mark.parametrize(("jitter", "expected"), [(0.0, [0.5, 1.0]), (1.0, [0.375, 0.75])])
async def test_500_is_retried_with_bounded_backoff(jitter: float, expected: list[float]) -> None:
    app = FaultApp(Reply(500, error_body("The server had an error")))
    sleep = SleepRecorder()
    async with asgi_provider(app, sleep=sleep, random=lambda: jitter) as provider:
        with pytest.raises(ProviderUnavailable) as info:
            await provider.get_container(CONTAINER_ID)
    assert len(app.seen) == 3  # max_retries=2
    assert sleep.calls == expected
    assert info.value.status == 500 and info.value.request_id == "req_3"
    assert render(info.value, "mcp") == (
        "The backend failed: The server had an error (HTTP 500, request id req_3) after 3 attempts. Try again later."
    )


async def test_backoff_is_capped_at_8_seconds() -> None:
    app = FaultApp(Reply(502, error_body("bad gateway")))
    sleep = SleepRecorder()
    async with asgi_provider(app, sleep=sleep, max_retries=6) as provider:
        with pytest.raises(ProviderUnavailable):
            await provider.list_files(CONTAINER_ID, ListParams())
    assert sleep.calls == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert len(app.seen) == 7


async def test_max_retries_zero_makes_one_attempt() -> None:
    app = FaultApp(Reply(503, error_body("down")))
    sleep = SleepRecorder()
    async with asgi_provider(app, sleep=sleep, max_retries=0) as provider:
        with pytest.raises(ProviderUnavailable, match="after 1 attempt"):
            await provider.list_containers(ListParams())
    assert len(app.seen) == 1 and sleep.calls == []


async def test_x_should_retry_false_stops_retries() -> None:
    app = FaultApp(Reply(500, error_body("no"), {"x-should-retry": "false"}))
    async with asgi_provider(app) as provider:
        with pytest.raises(ProviderUnavailable):
            await provider.get_container(CONTAINER_ID)
    assert len(app.seen) == 1


async def test_x_should_retry_true_retries_a_get_on_any_status() -> None:
    app = FaultApp(Reply(400, error_body("flaky"), {"x-should-retry": "true"}), Reply(200, container_body()))
    async with asgi_provider(app) as provider:
        container = await provider.get_container(CONTAINER_ID)
    assert container.id == CONTAINER_ID and len(app.seen) == 2


async def test_409_is_retried_then_reported() -> None:
    app = FaultApp(Reply(409, error_body("Conflict, try again")))
    async with asgi_provider(app) as provider:
        with pytest.raises(ProviderError) as info:
            await provider.delete_container(CONTAINER_ID)
    assert len(app.seen) == 3 and info.value.status == 409
    assert "conflict" in render(info.value, "mcp")


# --- no duplicate containers or files ---------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_create_is_not_retried_after_5xx(status: int) -> None:
    app = FaultApp(Reply(status, error_body("The server had an error while processing your request.")))
    sleep = SleepRecorder()
    async with asgi_provider(app, sleep=sleep) as provider:
        with pytest.raises(ProviderUnavailable) as info:
            await provider.create_container(SPEC)
    assert len(app.posts()) == 1 and sleep.calls == []
    assert info.value.status == status
    assert render(info.value, "mcp") == (
        "The backend failed while trying to create the container: The server had an error while processing "
        f"your request. (HTTP {status}, request id req_1). The request may or may not have taken effect. "
        "List your containers with container_list before trying again."
    )


@pytest.mark.parametrize("status", [408, 429])
async def test_create_is_retried_when_the_server_did_nothing(status: int) -> None:
    app = FaultApp(Reply(status, error_body("not now")), Reply(200, container_body()))
    async with asgi_provider(app) as provider:
        container = await provider.create_container(SPEC)
    assert container.id == CONTAINER_ID
    assert len(app.posts()) == 2


async def test_create_is_retried_on_503_with_x_should_retry_true() -> None:
    app = FaultApp(Reply(503, error_body("overloaded"), {"x-should-retry": "true"}), Reply(200, container_body()))
    async with asgi_provider(app) as provider:
        await provider.create_container(SPEC)
    assert len(app.posts()) == 2


async def test_create_429_with_x_should_retry_false_is_not_retried() -> None:
    app = FaultApp(Reply(429, error_body("quota"), {"x-should-retry": "false"}))
    async with asgi_provider(app) as provider:
        with pytest.raises(ProviderRateLimited):
            await provider.create_container(SPEC)
    assert len(app.posts()) == 1


async def test_upload_is_not_retried_after_5xx() -> None:
    app = FaultApp(Reply(500, error_body("boom")))
    async with asgi_provider(app) as provider:
        with pytest.raises(ProviderUnavailable) as info:
            await provider.create_file(CONTAINER_ID, "/mnt/data/a.txt", BytesUpload(b"abc"))
    assert len(app.posts()) == 1
    assert "may or may not have taken effect. List the container's files with file_list" in render(info.value, "mcp")


async def test_upload_retry_after_429_resends_the_whole_host_file(tmp_path: Path) -> None:
    host = tmp_path / "big.bin"
    host.write_bytes(bytes(range(256)) * 1024)  # 256 KiB: several multipart chunks
    app = FaultApp(Reply(429, error_body("slow down"), {"retry-after": "1"}), Reply(200, file_body()))
    async with asgi_provider(app) as provider:
        await provider.create_file(CONTAINER_ID, "/mnt/data/x/big.bin", host_file(host))
    first, second = app.posts()
    for seen in (first, second):
        [(params, payload)] = multipart_parts(seen.headers["content-type"], seen.body)
        assert params == {"name": "file", "filename": "big.bin"}
        assert payload == host.read_bytes()


# --- timeouts and dropped connections, over the network on 127.0.0.1 ---------------------------


async def test_read_timeout_on_get_is_retried_and_reported() -> None:
    async with tcp_fault_server(HANG) as server, tcp_provider(server.base_url, read_timeout_s=0.05) as provider:
        with pytest.raises(ProviderUnavailable) as info:
            await provider.get_container(CONTAINER_ID)
    assert len(server.seen) == 3
    assert info.value.status is None
    assert render(info.value, "mcp") == (
        f"The backend at {server.base_url} did not answer within 0.05 s (3 attempts). Try again later."
    )


async def test_read_timeout_on_create_never_makes_a_second_container() -> None:
    async with tcp_fault_server(HANG) as server, tcp_provider(server.base_url, read_timeout_s=0.05) as provider:
        with pytest.raises(ProviderUnavailable) as info:
            await provider.create_container(SPEC)
    assert server.posts() == 1
    assert render(info.value, "mcp") == (
        "The connection to the backend failed while trying to create the container (ReadTimeout). The request "
        "may or may not have taken effect. List your containers with container_list before trying again."
    )


async def test_dropped_connection_on_get_is_retried() -> None:
    script = (DROP, DROP, Reply(200, container_body()))
    async with tcp_fault_server(*script) as server, tcp_provider(server.base_url) as provider:
        container = await provider.get_container(CONTAINER_ID)
    assert container.id == CONTAINER_ID and len(server.seen) == 3


async def test_dropped_connection_on_create_is_not_retried() -> None:
    async with tcp_fault_server(DROP, Reply(200, container_body())) as server, tcp_provider(server.base_url) as p:
        with pytest.raises(ProviderUnavailable, match="may or may not have taken effect") as info:
            await p.create_container(SPEC)
    assert server.posts() == 1
    assert "RemoteProtocolError" in render(info.value, "mcp")


async def test_dropped_connection_on_upload_is_not_retried() -> None:
    async with tcp_fault_server(DROP, Reply(200, file_body())) as server, tcp_provider(server.base_url) as p:
        with pytest.raises(ProviderUnavailable, match="may or may not have taken effect") as info:
            await p.create_file(CONTAINER_ID, "/mnt/data/a.txt", BytesUpload(b"abc"))
    assert "file_list" in render(info.value, "mcp")
    assert f"GET /v1/containers/{CONTAINER_ID}/files" in render(info.value, "rest")
    assert server.posts() == 1


async def test_connection_refused_retries_even_a_create_since_nothing_was_sent() -> None:
    base_url = f"http://127.0.0.1:{closed_port()}/v1"
    sleep = SleepRecorder()
    async with tcp_provider(base_url, sleep=sleep) as provider:
        with pytest.raises(ProviderUnavailable) as info:
            await provider.create_container(SPEC)
    assert len(sleep.calls) == 2  # three attempts
    message = render(info.value, "mcp")
    assert message.startswith(f"Could not connect to the backend at {base_url} (ConnectError")
    assert "after 3 attempts; nothing was sent. Check the network and CONTAINER_MCP_OPENAI_BASE_URL" in message


# --- the error table -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        (400, "Invalid value for 'limit'", InvalidRequest),
        (401, f"Incorrect API key provided: {API_KEY}", ProviderAuthError),
        (403, "You are not allowed to access this project", ProviderAuthError),
        (404, f"Container with id '{CONTAINER_ID}' not found.", ContainerNotFound),
        (408, "Request timed out", ProviderUnavailable),
        (409, "Conflict", ProviderError),
        (410, "Gone", InvalidRequest),
        (413, "Payload too large", InvalidRequest),
        (418, "I'm a teapot", InvalidRequest),
        (422, "Unprocessable", InvalidRequest),
        (429, "Rate limit reached", ProviderRateLimited),
        (500, "Internal error", ProviderUnavailable),
        (502, "Bad gateway", ProviderUnavailable),
        (503, "Service unavailable", ProviderUnavailable),
        (504, "Gateway timeout", ProviderUnavailable),
        (302, "Moved", ProviderError),
    ],
)
async def test_error_table(status: int, message: str, expected: type[ContainerMCPError]) -> None:
    app = FaultApp(Reply(status, error_body(message, param="limit"), {"x-request-id": "req_abc123"}))
    async with asgi_provider(app, max_retries=0) as provider:
        with pytest.raises(ContainerMCPError) as info:
            await provider.get_container(CONTAINER_ID)
    error = info.value
    assert type(error) is expected
    assert (error.status, error.request_id) == (status, "req_abc123")
    assert error.__cause__ is None
    assert f"HTTP {status}, request id req_abc123" in str(error)
    assert API_KEY not in str(error) and API_KEY not in repr(error)
    assert message.replace(API_KEY, "***") in str(error)
    if isinstance(error, InvalidRequest):
        assert error.param == "limit"


async def test_auth_error_tells_the_operator_which_setting_to_check() -> None:
    app = FaultApp(Reply(401, error_body(f"Incorrect API key provided: {API_KEY}.", type_="invalid_api_key")))
    async with asgi_provider(app) as provider:
        with pytest.raises(ProviderAuthError) as info:
            await provider.list_containers(ListParams())
    assert len(app.seen) == 1
    assert render(info.value, "mcp") == (
        "The backend refused the credentials: Incorrect API key provided: ***. (HTTP 401, request id req_1). "
        "Check OPENAI_API_KEY / CONTAINER_MCP_OPENAI_API_KEY; this is an operator setting, and retrying will "
        "not help."
    )


async def test_rate_limited_after_retries_says_how_long_to_wait() -> None:
    app = FaultApp(Reply(429, error_body("Rate limit reached for requests"), {"retry-after": "20"}))
    sleep = SleepRecorder()
    async with asgi_provider(app, sleep=sleep) as provider:
        with pytest.raises(ProviderRateLimited) as info:
            await provider.list_containers(ListParams())
    assert sleep.calls == [20.0, 20.0]
    assert info.value.retry_after == 20.0
    assert (info.value.status, info.value.request_id) == (429, "req_3")
    assert render(info.value, "mcp") == (
        "The backend is rate limiting requests: Rate limit reached for requests (HTTP 429, request id req_3); "
        "gave up after 3 attempts. Wait 20 s and try again."
    )


@pytest.mark.parametrize(
    ("headers", "retry_after", "wait"),
    [
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5, "1.5 s"),
        ({"retry-after": "Fri, 15 Jan 2027 08:00:30 GMT"}, 30.0, "30 s"),
        ({"retry-after": "3600"}, 3600.0, "3600 s"),  # too long to wait for in a retry; still the advice
        ({"retry-after": "soon"}, None, "a minute"),
        ({"retry-after": "0"}, None, "a minute"),
        ({}, None, "a minute"),
    ],
)
async def test_rate_limited_carries_the_servers_retry_after(
    headers: dict[str, str], retry_after: float | None, wait: str
) -> None:
    app = FaultApp(Reply(429, error_body("Rate limit reached"), headers))
    now = email.utils.parsedate_to_datetime("Fri, 15 Jan 2027 08:00:00 GMT").timestamp()
    async with asgi_provider(app, max_retries=0, clock=lambda: now) as provider:
        with pytest.raises(ProviderRateLimited) as info:
            await provider.create_container(SPEC)
    assert info.value.retry_after == retry_after
    assert (info.value.status, info.value.request_id) == (429, "req_1")
    assert f"Wait {wait} and try again." in render(info.value, "mcp")


async def test_download_broken_mid_stream_keeps_the_request_id() -> None:
    class BrokenStream(httpx2.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"abc"
            raise httpx2.ReadError("connection reset")

    async def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, stream=BrokenStream(), headers={"x-request-id": "req_dl"})

    async with provider_over(httpx2.MockTransport(handler)) as provider:
        with pytest.raises(ProviderUnavailable, match="broke off") as info:
            async for _ in provider.read_file(CONTAINER_ID, FILE_ID):
                pass
    assert (info.value.status, info.value.request_id) == (None, "req_dl")


async def test_expired_container_is_distinct_from_not_found() -> None:
    app = FaultApp(Reply(400, error_body("Container is expired.")))
    async with asgi_provider(app) as provider:
        with pytest.raises(ContainerExpired) as info:
            await provider.create_file(CONTAINER_ID, "/mnt/data/a.txt", BytesUpload(b"abc"))
    error = info.value
    assert error.container_id == CONTAINER_ID
    assert (error.status, error.request_id, error.__cause__) == (400, "req_1", None)
    assert str(error).startswith(f"Container is expired: {CONTAINER_ID} was inactive")
    # The fixed text already says what upstream said, so only the status and request id follow it.
    assert str(error).endswith("cannot be reactivated. (HTTP 400, request id req_1)")
    assert render(error, "mcp").endswith(
        "(HTTP 400, request id req_1) Create a new one with container_create and upload the files again."
    )
    assert repr(error) == f"ContainerExpired({str(error)!r})" and error.args == (str(error),)


async def test_expired_container_keeps_an_upstream_message_that_says_more() -> None:
    app = FaultApp(Reply(400, error_body(f"Container {CONTAINER_ID} has expired and cannot be used")))
    async with asgi_provider(app) as provider:
        with pytest.raises(ContainerExpired) as info:
            await provider.get_container(CONTAINER_ID)
    assert str(info.value).endswith(
        f"The backend said: Container {CONTAINER_ID} has expired and cannot be used (HTTP 400, request id req_1)"
    )


async def test_404_on_a_file_names_the_file_or_the_container() -> None:
    app = FaultApp(
        Reply(404, error_body(f"File {FILE_ID} not found on container {CONTAINER_ID}")),
        Reply(404, error_body(f"Container with id '{CONTAINER_ID}' not found.")),
    )
    async with asgi_provider(app) as provider:
        with pytest.raises(FileNotFound) as file_info:
            await provider.get_file(CONTAINER_ID, FILE_ID)
        with pytest.raises(ContainerNotFound) as container_info:
            await provider.delete_file(CONTAINER_ID, FILE_ID)
    assert file_info.value.file_id == FILE_ID
    assert (file_info.value.status, file_info.value.request_id) == (404, "req_1")
    assert str(file_info.value) == (
        f"File {FILE_ID} not found on container {CONTAINER_ID}. (HTTP 404, request id req_1)"
    )
    assert (container_info.value.status, container_info.value.request_id) == (404, "req_2")
    assert render(container_info.value, "mcp").endswith(
        "(HTTP 404, request id req_2) List your containers with container_list, or create one with container_create."
    )


async def test_404_on_the_collection_points_at_the_base_url() -> None:
    app = FaultApp(Reply(404, {"detail": "Not Found"}))
    async with asgi_provider(app) as provider:
        with pytest.raises(ProviderError, match="check CONTAINER_MCP_OPENAI_BASE_URL") as info:
            await provider.list_containers(ListParams())
    assert type(info.value) is ProviderError and info.value.status == 404
    assert "Not Found" in render(info.value, "mcp")


async def test_read_file_raises_on_first_iteration() -> None:
    app = FaultApp(Reply(404, error_body(f"File {FILE_ID} not found on container {CONTAINER_ID}")))
    async with asgi_provider(app) as provider:
        chunks = provider.read_file(CONTAINER_ID, FILE_ID)
        assert app.seen == []
        with pytest.raises(FileNotFound):
            await chunks.__anext__()


async def test_non_json_success_body_is_a_provider_error() -> None:
    app = FaultApp(Reply(200, b"<html>login page</html>"))
    async with asgi_provider(app) as provider:
        with pytest.raises(ProviderError, match="not the expected object") as info:
            await provider.get_container(CONTAINER_ID)
    assert info.value.status == 200 and info.value.request_id == "req_1"


async def test_plain_text_error_bodies_are_kept() -> None:
    async def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(502, text="upstream connect error", headers={"x-request-id": "r1"})

    async with provider_over(httpx2.MockTransport(handler), max_retries=0) as provider:
        with pytest.raises(ProviderUnavailable, match="upstream connect error"):
            await provider.list_containers(ListParams())


async def test_undecodable_body_is_reported_not_retried() -> None:
    calls = 0

    async def handler(request: httpx2.Request) -> httpx2.Response:
        nonlocal calls
        calls += 1
        return httpx2.Response(200, content=b"not gzip", headers={"content-encoding": "gzip"})

    async with provider_over(httpx2.MockTransport(handler)) as provider:
        with pytest.raises(ProviderUnavailable, match="DecodingError"):
            await provider.get_container(CONTAINER_ID)
    assert calls == 1


async def test_base_url_without_http_scheme_is_a_clear_configuration_error() -> None:
    sleep = SleepRecorder()
    async with tcp_provider("ftp://files.example/v1", sleep=sleep) as provider:
        with pytest.raises(ProviderError, match=r"CONTAINER_MCP_OPENAI_BASE_URL \(ftp://files.example/v1\) is not"):
            await provider.list_containers(ListParams())
    assert sleep.calls == []
