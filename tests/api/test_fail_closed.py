"""The REST API fails closed: what it cannot honour is a 400 naming the field, and nothing changes.

Every request goes through the official SDK (``extra_body`` / ``extra_query``) to a live server;
each refusal is checked to have created nothing.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import pytest
from openai import AsyncOpenAI, BadRequestError

from container_mcp.models import UNSUPPORTED_CREATE_FIELDS

from .live import KEY_A, LiveApi

pytestmark = pytest.mark.anyio

SECRET = "sk-domain-secret-value-that-must-not-be-dropped"

REFUSED_BODIES: list[tuple[dict[str, Any], str, str]] = [
    ({"skills": [{"type": "skill_reference", "skill_id": "openai-spreadsheets"}]}, "skills", "unsupported_parameter"),
    (
        {
            "network_policy": {
                "type": "allowlist",
                "allowed_domains": ["pypi.org"],
                "domain_secrets": [{"domain": "pypi.org", "name": "TOKEN", "value": SECRET}],
            }
        },
        "network_policy.domain_secrets",
        "unsupported_parameter",
    ),
    ({"expires_after_minutes": 5}, "expires_after_minutes", "unknown_parameter"),
    ({"future_field": 1}, "future_field", "unknown_parameter"),
    (
        {"expires_after": {"anchor": "last_active_at", "minutes": 5, "seconds": 3}},
        "expires_after.seconds",
        "unknown_parameter",
    ),
]


@pytest.mark.parametrize(("extra", "param", "code"), REFUSED_BODIES, ids=[p for _, p, _ in REFUSED_BODIES])
async def test_create_refuses_what_it_cannot_honour(
    api: LiveApi, client: AsyncOpenAI, extra: dict[str, Any], param: str, code: str
) -> None:
    with pytest.raises(BadRequestError) as info:
        await client.containers.create(name="refused", extra_body=extra)
    error = info.value
    assert error.status_code == 400
    assert error.type == "invalid_request_error"
    assert error.param == param and error.code == code
    assert param.rpartition(".")[2] in error.message and "nothing was created" in error.message.lower()
    assert SECRET not in error.message  # a refused secret is not echoed back
    assert (await client.containers.list()).data == []


async def test_unsupported_fields_say_why(client: AsyncOpenAI) -> None:
    with pytest.raises(BadRequestError) as info:
        await client.containers.create(name="x", extra_body={"skills": []})
    assert "not supported: this server cannot attach skills" in info.value.message
    assert "GET /openapi.json" in info.value.message


async def test_unknown_field_names_the_accepted_ones(client: AsyncOpenAI) -> None:
    with pytest.raises(BadRequestError) as info:
        await client.containers.create(name="x", extra_body={"ttl": 5})
    assert isinstance(info.value.body, dict)
    assert info.value.body["message"].startswith("Unrecognized request argument supplied: 'ttl'.")
    assert "name, expires_after, memory_limit, network_policy and file_ids" in info.value.message


async def test_a_supported_create_still_works(client: AsyncOpenAI) -> None:
    created = await client.containers.create(
        name="ok", expires_after={"anchor": "last_active_at", "minutes": 5}, memory_limit="1g"
    )
    assert created.expires_after is not None and created.expires_after.minutes == 5


async def test_unknown_query_parameters_are_refused(api: LiveApi, client: AsyncOpenAI) -> None:
    cid = (await client.containers.create(name="q")).id
    fid = (await client.containers.files.create(cid, file=("a.txt", b"a"))).id
    calls: list[tuple[str, Any]] = [
        ("before", lambda: client.containers.list(extra_query={"before": cid})),
        ("name", lambda: client.containers.files.list(cid, extra_query={"name": "a.txt"})),
        ("expand", lambda: client.containers.retrieve(cid, extra_query={"expand": "files"})),
        ("force", lambda: client.containers.delete(cid, extra_query={"force": "true"})),
        ("force", lambda: client.containers.files.delete(fid, container_id=cid, extra_query={"force": "1"})),
        ("range", lambda: client.containers.files.content.retrieve(fid, container_id=cid, extra_query={"range": "0"})),
    ]
    for param, call in calls:
        with pytest.raises(BadRequestError) as info:
            await call()
        assert info.value.param == param and info.value.code == "unknown_parameter"
        assert info.value.type == "invalid_request_error"
    # Nothing was deleted, and the supported parameters still work.
    assert [f.id for f in (await client.containers.files.list(cid, limit=5, order="asc")).data] == [fid]
    assert [c.id for c in (await client.containers.list(limit=1, order="desc", extra_query={"name": "q"})).data] == [
        cid
    ]


async def test_file_copy_body_refuses_unknown_fields(client: AsyncOpenAI, api: LiveApi) -> None:
    cid = (await client.containers.create(name="src")).id
    fid = (await client.containers.files.create(cid, file=("a.txt", b"a"))).id
    other = (await client.containers.create(name="dst")).id
    async with httpx2.AsyncClient(base_url=api.base_url, headers={"authorization": f"Bearer {KEY_A}"}) as http:
        r = await http.post(f"/containers/{other}/files", json={"file_id": fid, "path": "/mnt/data/b.txt"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "path"
    assert (await client.containers.files.list(other)).data == []


async def test_upload_refuses_unknown_fields(client: AsyncOpenAI) -> None:
    cid = (await client.containers.create(name="up")).id
    with pytest.raises(BadRequestError) as info:
        await client.containers.files.create(cid, file=("a.txt", b"a"), extra_body={"path": "/mnt/data/b/a.txt"})
    assert info.value.param == "path" and info.value.code == "unknown_parameter"
    assert (await client.containers.files.list(cid)).data == []


async def test_the_documents_say_what_is_supported(api: LiveApi) -> None:
    async with httpx2.AsyncClient(base_url=api.origin) as http:
        document = (await http.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    body = schemas["CreateContainerBody"]
    assert body["additionalProperties"] is False and "skills" not in body["properties"]
    assert body["x-unsupported-fields"] == list(UNSUPPORTED_CREATE_FIELDS)
    assert schemas["NetworkPolicy"]["additionalProperties"] is False
    assert "domain_secrets" not in schemas["NetworkPolicy"]["properties"]
    capabilities = json.loads(api.service.capabilities.model_dump_json())
    assert capabilities["unsupported_create_fields"] == ["skills", "network_policy.domain_secrets"]
