"""Bearer-key authentication and per-key ownership."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx2
import pytest
from openai import AsyncOpenAI, AuthenticationError, NotFoundError

from container_mcp.api.auth import ANONYMOUS_OWNER
from container_mcp.auth import ApiKeys, owner_for_key
from container_mcp.clock import ManualClock
from container_mcp.serving import is_loopback

from .live import KEY_A, KEY_B, LiveApi, start_api

pytestmark = pytest.mark.anyio


async def test_missing_key_is_401(api: LiveApi) -> None:
    async with httpx2.AsyncClient(base_url=api.base_url) as http:
        r = await http.get("/containers")
    assert r.status_code == 401
    assert r.json()["error"]["message"].startswith("You didn't provide an API key.")
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.headers["x-request-id"].startswith("req_")
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_wrong_key_is_401_through_the_sdk(api: LiveApi, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with api.client("sk-wrong-key-123") as client:
        with pytest.raises(AuthenticationError) as info:
            await client.containers.list()
    err = info.value
    assert err.status_code == 401
    assert err.code == "invalid_api_key"
    assert str(err).startswith("Error code: 401 - Incorrect API key provided.")
    assert "sk-wrong-key-123" not in str(err) and "sk-wrong-key-123" not in caplog.text


async def test_a_key_sees_only_its_own_containers(client: AsyncOpenAI, client_b: AsyncOpenAI) -> None:
    cid = (await client.containers.create(name="a's")).id
    fid = (await client.containers.files.create(cid, file=("secret.txt", b"a only"))).id

    assert (await client_b.containers.list()).data == []
    for call in (
        lambda: client_b.containers.retrieve(cid),
        lambda: client_b.containers.delete(cid),
        lambda: client_b.containers.files.list(cid),
        lambda: client_b.containers.files.retrieve(fid, container_id=cid),
        lambda: client_b.containers.files.content.retrieve(fid, container_id=cid),
        lambda: client_b.containers.files.create(cid, file=("x.txt", b"x")),
    ):
        with pytest.raises(NotFoundError, match=f"Container with id '{cid}' not found."):
            await call()

    # B cannot copy A's file into its own container either: to B it does not exist.
    mine = (await client_b.containers.create(name="b's")).id
    with pytest.raises(NotFoundError) as info:
        await client_b.containers.files.create(mine, file_id=fid)
    assert info.value.param == "file_id"
    assert [c.id for c in (await client_b.containers.list()).data] == [mine]
    assert (await client.containers.retrieve(cid)).id == cid


async def test_owner_key_is_a_hash_never_the_key(api: LiveApi, client: AsyncOpenAI) -> None:
    cid = (await client.containers.create(name="x")).id
    owner = owner_for_key(KEY_A)
    assert await api.service.ledger.owns(owner, cid)
    assert owner.startswith("apikey:") and len(owner) == len("apikey:") + 32
    assert KEY_A not in owner
    assert owner_for_key(KEY_A) != owner_for_key(KEY_B)


def test_api_keys_accept_only_configured_tokens() -> None:
    keys = ApiKeys([KEY_A, KEY_B])
    assert keys.owner(KEY_A) == owner_for_key(KEY_A)
    assert keys.owner(KEY_B) == owner_for_key(KEY_B)
    assert keys.owner(f"{KEY_A}x") is None
    assert keys.owner(KEY_A[:-1]) is None
    assert keys.owner("") is None
    assert not ApiKeys([])


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (f"Bearer {KEY_A}", 200),
        (f"bearer   {KEY_B}", 200),
        (f"Basic {KEY_A}", 401),
        (KEY_A, 401),
        (f"Bearer {KEY_A}x", 401),
        ("Bearer", 401),
    ],
)
async def test_only_a_bearer_header_with_a_configured_key_passes(api: LiveApi, authorization: str, status: int) -> None:
    async with httpx2.AsyncClient(base_url=api.base_url) as http:
        r = await http.get("/containers", headers={"authorization": authorization})
    assert r.status_code == status


async def test_keys_file(tmp_path: Path, clock: ManualClock) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("# team keys\nsk-from-file-1\n\nsk-from-file-2\n")
    async with start_api(tmp_path / "data", clock, api_keys=[], api_keys_file=keys_file) as api:
        async with api.client("sk-from-file-2") as client:
            assert (await client.containers.list()).data == []
        async with api.client(KEY_A) as client:
            with pytest.raises(AuthenticationError):
                await client.containers.list()


async def test_no_keys_means_one_anonymous_owner(
    tmp_path: Path, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="container_mcp.api")
    async with start_api(tmp_path / "data", clock, api_keys=[]) as api:
        assert "no API keys configured" in caplog.text
        async with api.client("anything") as client:
            cid = (await client.containers.create(name="anon")).id
        async with httpx2.AsyncClient(base_url=api.base_url) as http:  # no Authorization at all
            r = await http.get(f"/containers/{cid}")
        assert r.status_code == 200
        assert await api.service.ledger.owns(ANONYMOUS_OWNER, cid)


async def test_openapi_document_needs_no_key(api: LiveApi) -> None:
    async with httpx2.AsyncClient(base_url=api.origin) as http:
        for path in ("/openapi.json", "/v1/openapi.json"):
            r = await http.get(path)
            assert r.status_code == 200
            assert r.json()["openapi"].startswith("3.")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
