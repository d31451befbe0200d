"""The whole chain: MCP tool -> OpenAIProvider -> live ``container-mcp api`` -> local provider.

An MCP server whose backend is the OpenAI provider pointed at this repository's own REST API: what
the model does through tools lands, through the wire format, in the API's local containers, owned
by the API key the provider uses.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client
from pydantic import SecretStr

from container_mcp.auth import owner_for_key
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.providers.openai import OpenAIProvider
from container_mcp.runtime import limits_from
from container_mcp.server.app import create_server
from container_mcp.service import ContainerService
from container_mcp.settings import Settings

from ..calls import call
from .live import KEY_A, LiveApi

pytestmark = pytest.mark.anyio

ALL_BYTES = bytes(range(256))


@pytest.fixture
async def chain(api: LiveApi, tmp_path: Path) -> AsyncIterator[Client]:
    settings = Settings.isolated(
        data_dir=tmp_path / "mcp",
        provider="openai",
        openai_base_url=api.base_url,
        openai_api_key=SecretStr(KEY_A),
        openai_max_retries=0,
    )
    store = SqliteLedger()
    try:
        async with OpenAIProvider.from_settings(settings) as provider:
            service = ContainerService(provider, store, limits_from(settings))
            async with Client(create_server(service, settings)) as client:
                yield client
    finally:
        store.close()


async def test_tools_drive_the_api_through_the_openai_provider(chain: Client, api: LiveApi) -> None:
    c = await call(chain, "container_create", name="chained", expires_after_minutes=20, memory_limit="4g")
    cid = c["id"]
    assert (c["status"], c["memory_limit"]) == ("running", "4g")
    # It is a real container of the API's local provider, owned by the provider's key.
    assert await api.service.ledger.owns(owner_for_key(KEY_A), cid)
    assert (await api.provider.get_container(cid, touch=False)).name == "chained"

    text = await call(chain, "file_create", container_id=cid, path="notes/hello.txt", text="héllo, chain\n")
    assert text["path"] == "/mnt/data/hello.txt"  # the wire keeps only the basename
    assert text["bytes"] == len("héllo, chain\n".encode())
    binary = await call(
        chain, "file_create", container_id=cid, path="all.bin", base64=base64.b64encode(ALL_BYTES).decode()
    )
    assert (binary["path"], binary["bytes"]) == ("/mnt/data/all.bin", 256)

    listed = await call(chain, "file_list", container_id=cid, order="asc")
    assert [f["id"] for f in listed["data"]] == [text["id"], binary["id"]]

    read_text = await call(chain, "file_read", container_id=cid, file_id=text["id"])
    assert (read_text["encoding"], read_text["content"], read_text["eof"]) == ("text", "héllo, chain\n", True)
    read_binary = await call(chain, "file_read", container_id=cid, file_id=binary["id"])
    assert read_binary["encoding"] == "base64"
    assert base64.b64decode(read_binary["content"]) == ALL_BYTES

    resource = await chain.read_resource(f"container://{cid}/files/{binary['id']}")
    blob = resource.contents[0]
    assert base64.b64decode(blob.blob) == ALL_BYTES  # type: ignore[union-attr]

    assert (await call(chain, "file_delete", container_id=cid, file_id=text["id"]))["deleted"] is True
    remaining = await call(chain, "file_list", container_id=cid)
    assert [f["id"] for f in remaining["data"]] == [binary["id"]]

    assert (await call(chain, "container_delete", container_id=cid))["deleted"] is True
    assert await api.service.ledger.get(cid) is None
    assert (await call(chain, "container_list"))["data"] == []


async def test_api_errors_reach_the_model_as_tool_errors(chain: Client) -> None:
    missing = "cntr_" + "ab" * 24
    result = await chain.call_tool("container_retrieve", {"container_id": missing})
    assert result.is_error is True
    assert f"Container with id '{missing}' not found." in result.content[0].text  # type: ignore[union-attr]
