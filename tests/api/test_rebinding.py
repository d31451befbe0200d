"""DNS rebinding and cross-site requests against a live ``container-mcp api`` on 127.0.0.1.

The attack from the issue: a web page whose name was rebound to 127.0.0.1 (or any page, by a
cross-site "simple" request) POSTs ``text/plain`` JSON; the browser names the page's site in
``Host`` and ``Origin``. Anonymous mode (no keys, loopback only) is where it bites: no secret
stands in the way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from container_mcp.clock import ManualClock
from container_mcp.hosts import OriginPolicy
from container_mcp.models import ListParams

from .live import KEY_A, LiveApi, start_api

pytestmark = pytest.mark.anyio

ATTACK_BODY = b'{"name": "pwned"}'


@pytest.fixture
async def open_api(tmp_path: Path, clock: ManualClock) -> AsyncIterator[LiveApi]:
    """The api in anonymous mode, as `container-mcp api` runs on 127.0.0.1 without keys."""
    async with start_api(tmp_path / "data", clock, api_keys=[]) as live:
        yield live


async def post(api: LiveApi, path: str, body: bytes, **headers: str) -> httpx2.Response:
    async with httpx2.AsyncClient(base_url=api.origin) as http:
        return await http.post(path, content=body, headers={k.replace("_", "-"): v for k, v in headers.items()})


async def stored_containers(api: LiveApi, owner: str = "apikey:anonymous") -> list[Any]:
    return list((await api.service.list_containers(owner, ListParams())).data)


def error(response: httpx2.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


async def test_the_rebinding_csrf_post_from_the_issue_creates_nothing(open_api: LiveApi) -> None:
    response = await post(
        open_api,
        "/v1/containers",
        ATTACK_BODY,
        host="rebind.evil.example",
        origin="http://rebind.evil.example",
        content_type="text/plain",
    )
    assert response.status_code == 421
    err = error(response)
    assert err["code"] == "invalid_host"
    assert "rebind.evil.example" in err["message"] and "CONTAINER_MCP_ALLOWED_HOSTS" in err["message"]
    assert response.headers["x-request-id"].startswith("req_")
    assert await stored_containers(open_api) == []


async def test_a_foreign_origin_is_refused_even_with_a_loopback_host(open_api: LiveApi) -> None:
    for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.example", "file://"):
        response = await post(open_api, "/v1/containers", ATTACK_BODY, origin=origin, content_type="application/json")
        assert response.status_code == 403, origin
        assert error(response)["code"] == "invalid_origin"
        assert "CONTAINER_MCP_ALLOWED_ORIGINS" in error(response)["message"]
    assert await stored_containers(open_api) == []


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/x", None])
async def test_a_json_body_needs_a_json_content_type(open_api: LiveApi, content_type: str | None) -> None:
    async with httpx2.AsyncClient(base_url=open_api.origin) as http:
        request = http.build_request("POST", "/v1/containers", content=ATTACK_BODY)
        if content_type is None:
            request.headers.pop("content-type", None)
        else:
            request.headers["content-type"] = content_type
        response = await http.send(request)
    assert response.status_code == 415
    err = error(response)
    assert err["code"] == "unsupported_media_type"
    assert "Content-Type: application/json" in err["message"]
    assert await stored_containers(open_api) == []


async def test_the_file_copy_json_body_needs_a_json_content_type(open_api: LiveApi) -> None:
    ok = await post(open_api, "/v1/containers", b'{"name": "c"}', content_type="application/json")
    assert ok.status_code == 200
    cid = ok.json()["id"]
    response = await post(open_api, f"/v1/containers/{cid}/files", b'{"file_id": "cfile_x"}', content_type="text/plain")
    assert response.status_code == 415
    assert (await open_api.service.list_files("apikey:anonymous", cid, ListParams())).data == []


async def test_loopback_names_any_port_and_json_types_pass(open_api: LiveApi) -> None:
    for host in ("localhost", "localhost:1", "127.0.0.1:65000", "[::1]:8000", "LOCALHOST"):
        response = await post(
            open_api,
            "/v1/containers",
            b'{"name": "fine"}',
            host=host,
            origin=f"http://{host.lower()}",
            content_type="application/json; charset=utf-8",
        )
        assert response.status_code == 200, (host, response.text)
    response = await post(open_api, "/v1/containers", b'{"name": "vnd"}', content_type="application/vnd.x+json")
    assert response.status_code == 200
    assert len(await stored_containers(open_api)) == 6


async def test_configured_names_and_origins_are_served(tmp_path: Path, clock: ManualClock) -> None:
    async with start_api(
        tmp_path / "data",
        clock,
        allowed_hosts=["containers.example.com", "api.example.com:8443"],
        allowed_origins=["https://app.example.com", "http://dev.example.com:*"],
    ) as api:
        auth = {"authorization": f"Bearer {KEY_A}", "content_type": "application/json"}
        cases = [
            ({"host": "containers.example.com"}, 200),
            ({"host": "containers.example.com:443", "origin": "https://containers.example.com"}, 200),
            ({"host": "api.example.com:8443"}, 200),
            ({"host": "api.example.com:9000"}, 421),  # only the named port
            ({"host": "containers.example.com", "origin": "https://app.example.com"}, 200),
            ({"host": "containers.example.com", "origin": "http://dev.example.com:5173"}, 200),
            ({"host": "containers.example.com", "origin": "https://app.example.com.evil.example"}, 403),
            ({"host": "evil.example", "origin": "https://app.example.com"}, 421),
        ]
        for headers, status in cases:
            response = await post(api, "/v1/containers", b'{"name": "n"}', **auth, **headers)
            assert response.status_code == status, (headers, response.text)


async def test_the_openai_sdk_is_unaffected(api: LiveApi) -> None:
    async with api.client() as client:
        created = await client.containers.create(name="sdk")
        assert [c.id for c in (await client.containers.list()).data] == [created.id]


@pytest.mark.parametrize(
    ("bound", "host", "allowed"),
    [
        ("127.0.0.1", "127.0.0.1:8000", True),
        ("0.0.0.0", "0.0.0.0:8000", False),  # an unspecified bind names no host
        ("::", "[::]:8000", False),
        ("192.0.2.10", "192.0.2.10:8000", True),
        ("192.0.2.10", "192.0.2.10", True),
        ("2001:db8::1", "[2001:db8::1]:8000", True),
        ("127.0.0.1", "localhost.evil.example", False),
        ("127.0.0.1", "127.0.0.1:*", False),
        ("127.0.0.1", "127.0.0.1:80x", False),
        ("127.0.0.1", "[::1", False),
        ("127.0.0.1", "", False),
    ],
)
def test_host_policy(bound: str, host: str, allowed: bool) -> None:
    assert OriginPolicy(bound).host_allowed(host) is allowed


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://localhost:3000", True),
        ("https://[::1]", True),
        ("http://127.0.0.1:99999", False),  # not a port: refused, not a server error
        ("http://127.0.0.1:x", False),
        ("http://user@127.0.0.1", False),
        ("http://127.0.0.1/path", False),
        ("ws://127.0.0.1", False),
        ("https://app.example.com", True),
        ("https://app.example.com:8443", False),
        ("http://dev.example.com:5173", True),
        ("http://dev.example.com", False),
    ],
)
def test_origin_policy(origin: str, allowed: bool) -> None:
    policy = OriginPolicy("127.0.0.1", origins=["https://app.example.com/", "http://dev.example.com:*"])
    assert policy.origin_allowed(origin) is allowed


def test_a_malformed_allowed_host_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="CONTAINER_MCP_ALLOWED_HOSTS entry 'a:b'"):
        OriginPolicy("127.0.0.1", ["a:b"])
