"""Containers through the official SDK against a live server: CRUD, paging, validation, shapes."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import pytest
from openai import AsyncOpenAI, BadRequestError, NotFoundError

from container_mcp.clock import ManualClock

from .live import KEY_A, LiveApi, start_api
from .recordings import header, recorded, same_shape

pytestmark = pytest.mark.anyio


def auth(key: str = KEY_A) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_create_retrieve_list_delete(client: AsyncOpenAI) -> None:
    created = await client.containers.create(
        name="test-container",
        expires_after={"anchor": "last_active_at", "minutes": 20},
        memory_limit="4g",
        network_policy={"type": "disabled"},
    )
    assert created.id.startswith("cntr_") and len(created.id) == 53
    assert (created.object, created.name, created.status) == ("container", "test-container", "running")
    assert created.memory_limit == "4g"
    assert created.expires_after is not None and created.expires_after.minutes == 20
    assert created.network_policy is not None and created.network_policy.type == "disabled"

    got = await client.containers.retrieve(created.id)
    assert got.id == created.id and got.name == "test-container"

    page = await client.containers.list()
    assert [c.id for c in page.data] == [created.id]
    assert page.model_dump()["first_id"] == page.model_dump()["last_id"] == created.id
    assert page.has_more is False

    await client.containers.delete(created.id)  # the SDK drops the body (shape: test_shapes_...)
    with pytest.raises(NotFoundError, match=f"Container with id '{created.id}' not found."):
        await client.containers.retrieve(created.id)
    assert (await client.containers.list()).data == []


async def test_shapes_match_the_recordings(api: LiveApi) -> None:
    rec_create = recorded("CanCreateContainer", "POST")
    async with httpx2.AsyncClient(base_url=api.base_url, headers=auth()) as http:
        # The SDK's headers, and a Content-Type on bodiless requests, are accepted and ignored.
        sdk_headers = {
            "X-Stainless-Lang": "python",
            "X-Stainless-Retry-Count": "0",
            "OpenAI-Organization": "org-x",
            "OpenAI-Project": "proj-x",
        }
        r = await http.post("/containers", json=rec_create["RequestBody"], headers=sdk_headers)
        assert r.status_code == 200
        assert r.headers["content-type"] == header(rec_create, "Content-Type") == "application/json"
        body = r.json()
        assert list(body) == list(rec_create["ResponseBody"])
        assert same_shape(body, rec_create["ResponseBody"])
        assert r.text == json.dumps(body, indent=2)  # OpenAI's layout, byte for byte
        assert {k: body[k] for k in ("object", "status", "memory_limit", "name", "network_policy")} == {
            k: rec_create["ResponseBody"][k] for k in ("object", "status", "memory_limit", "name", "network_policy")
        }
        cid = body["id"]

        json_ct = {"Content-Type": "application/json"}
        got = await http.get(f"/containers/{cid}", headers=json_ct)
        assert got.status_code == 200 and list(got.json()) == list(rec_create["ResponseBody"])

        listed = await http.get("/containers", params={"limit": 10, "order": "desc"}, headers=json_ct)
        rec_list = recorded("CanEnumerateContainers", "GET")
        assert list(listed.json()) == list(rec_list["ResponseBody"])
        assert same_shape(listed.json()["data"][0], rec_create["ResponseBody"])

        empty = await http.get(f"/containers/{cid}/files")
        assert empty.json() == recorded("CanEnumerateContainerFiles", "GET")["ResponseBody"]
        assert empty.text == json.dumps(empty.json(), indent=2)

        deleted = await http.delete(f"/containers/{cid}", headers=json_ct)
        assert deleted.status_code == 200
        assert deleted.json() == {**recorded("CanCreateContainer", "DELETE")["ResponseBody"], "id": cid}
        assert deleted.text == json.dumps(deleted.json(), indent=2)

        nothing = await http.get("/containers")
        assert nothing.json() == {"object": "list", "data": [], "first_id": None, "has_more": False, "last_id": None}


async def test_routes_also_answer_without_the_v1_prefix(api: LiveApi) -> None:
    async with httpx2.AsyncClient(base_url=api.origin, headers=auth()) as http:
        created = (await http.post("/containers", json={"name": "plain"})).json()
        assert (await http.get(f"/containers/{created['id']}")).json()["name"] == "plain"
        assert (await http.get(f"/v1/containers/{created['id']}")).json()["name"] == "plain"


async def test_defaults_and_name_filter(client: AsyncOpenAI) -> None:
    a = await client.containers.create(name="alpha")
    assert a.memory_limit == "1g"
    assert a.expires_after is not None and (a.expires_after.anchor, a.expires_after.minutes) == ("last_active_at", 20)
    await client.containers.create(name="beta")
    named = await client.containers.list(name="alpha")
    assert [c.id for c in named.data] == [a.id]


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({}, "name", "Missing required parameter: 'name'."),
        ({"name": 5}, "name", "Invalid 'name'"),
        ({"name": "x", "memory_limit": "2g"}, "memory_limit", "Invalid 'memory_limit'"),
        ({"name": "x", "expires_after": {"anchor": "last_active_at", "minutes": 0}}, "expires_after.minutes", None),
        ({"name": "x", "expires_after": {"anchor": "created_at", "minutes": 5}}, "expires_after.anchor", None),
        ({"name": "x", "network_policy": {"type": "allowlist"}}, "network_policy", "allowed domain"),
        ({"name": "x", "file_ids": ["file-abc"]}, "file_ids", "not a container file id"),
    ],
)
async def test_create_validation_errors_name_the_param(
    client: AsyncOpenAI, body: dict[str, object], param: str, message: str | None
) -> None:
    with pytest.raises(BadRequestError) as info:
        await client.post("/containers", body=body, cast_to=object)
    assert info.value.status_code == 400
    assert info.value.param == param
    assert info.value.type == "invalid_request_error"
    if message:
        assert message in info.value.message


async def test_create_rejects_a_body_that_is_not_json(api: LiveApi) -> None:
    async with httpx2.AsyncClient(base_url=api.base_url, headers=auth()) as http:
        r = await http.post("/containers", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("We could not parse the JSON body of your request.")


@pytest.mark.parametrize(
    ("query", "param"), [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"order": "up"}, "order")]
)
async def test_list_validation_errors(client: AsyncOpenAI, query: dict[str, object], param: str) -> None:
    with pytest.raises(BadRequestError) as info:
        await client.containers.list(**query)  # type: ignore[arg-type]
    assert info.value.param == param


async def test_list_after_an_unknown_id_is_a_400(client: AsyncOpenAI) -> None:
    with pytest.raises(BadRequestError) as info:
        await client.containers.list(after="cntr_" + "0" * 48)
    assert info.value.param == "after"


async def test_auto_paging_through_250_containers_both_orders(tmp_path: Path, clock: ManualClock) -> None:
    async with start_api(tmp_path / "data", clock, max_containers=300, max_calls_per_minute=10_000) as api:
        async with api.client() as client:
            made: list[str] = []
            for i in range(250):
                made.append((await client.containers.create(name=f"c{i:03d}")).id)
                clock.advance(1)  # distinct created_at: a total order to check against
            asc = [c.id async for c in client.containers.list(limit=37, order="asc")]
            desc = [c.id async for c in client.containers.list(limit=100)]
    assert asc == made
    assert desc == made[::-1]
    assert len(set(asc)) == 250
