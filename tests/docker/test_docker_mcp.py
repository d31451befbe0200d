"""The MCP surface on the docker provider: the image argument, capabilities, a command through the tool."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from mcp import Client

from container_mcp.clock import ManualClock
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.providers.docker import DockerProvider
from container_mcp.runtime import limits_from
from container_mcp.server.app import create_server
from container_mcp.service import ContainerService
from container_mcp.settings import Settings

from ..calls import call
from .engine import DOCKER_HOST, docker_provider

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[Client, DockerProvider]]:
    settings = Settings.isolated(data_dir=tmp_path / "data", provider="docker", docker_host=DOCKER_HOST)
    store = SqliteLedger()
    try:
        async with docker_provider(tmp_path / "data" / "docker", clock=ManualClock()) as docker:
            service = ContainerService(docker, store, limits_from(settings))
            async with Client(create_server(service, settings)) as c:
                yield c, docker
    finally:
        store.close()


async def test_image_is_chosen_from_the_allowed_ones_only(client: tuple[Client, DockerProvider]) -> None:
    mcp, docker = client
    tools = {t.name: t for t in (await mcp.list_tools()).tools}
    assert "image" in tools["container_create"].input_schema["properties"]
    caps = json.loads((await mcp.read_resource("container://capabilities")).contents[0].text)  # type: ignore[union-attr]
    assert caps["images"] == docker.images and caps["provider"] == "docker" and caps["exec"] is True
    assert caps["network_policies"] == ["disabled"] and "allowlist" in caps["network_unavailable_reason"]

    refused = await mcp.call_tool("container_create", {"name": "x", "image": "evil/miner:latest"})
    assert refused.is_error is True
    text = refused.content[0].text  # type: ignore[union-attr]
    assert "evil/miner:latest" in text and docker.images[0] in text and "Nothing was created" in text
    assert (await call(mcp, "container_list"))["data"] == []

    made = await call(mcp, "container_create", name="ok", image=docker.images[0])
    ran = await call(mcp, "container_exec", container_id=made["id"], command="echo hi > a.txt; cat a.txt")
    assert ran["stdout"] == "hi\n" and [f["path"] for f in ran["files_created"]] == ["/mnt/data/a.txt"]


async def test_allowlist_is_refused_not_opened(client: tuple[Client, DockerProvider]) -> None:
    mcp, _ = client
    refused = await mcp.call_tool(
        "container_create",
        {"name": "net", "network_policy": {"type": "allowlist", "allowed_domains": ["pypi.org"]}},
    )
    assert refused.is_error is True
    assert "allowlist" in refused.content[0].text  # type: ignore[union-attr]
    assert (await call(mcp, "container_list"))["data"] == []
