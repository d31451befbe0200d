"""The published tool surface and the MCP boundary's error table, through the official client."""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agents.mcp import MCPServerStdio, MCPUtil
from jsonschema import Draft202012Validator
from mcp import Client, MCPError
from mcp.types import INVALID_PARAMS, INVALID_REQUEST

from container_mcp import errors as error_tree
from container_mcp.clock import ManualClock
from container_mcp.errors import ContainerMCPError
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.providers.local import LocalProvider
from container_mcp.providers.local_exec import ExecLimits
from container_mcp.runtime import limits_from
from container_mcp.server.app import create_server
from container_mcp.server.errors import ERROR_TABLE
from container_mcp.service import ContainerService
from container_mcp.settings import Settings

pytestmark = pytest.mark.anyio

TOOLS_LIST_LIMIT = 12 * 1024


@pytest.fixture
async def full_client(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Client]:
    """Every tool of the product, container_exec included."""
    settings = Settings.isolated(data_dir=tmp_path / "data")
    limits = ExecLimits(max_file_bytes=settings.max_file_bytes, max_output_bytes=settings.exec_max_output_bytes)
    async with LocalProvider(tmp_path / "local", clock=clock, exec_limits=limits) as provider:
        if not provider.capabilities.exec:
            pytest.skip(f"sandbox unavailable: {provider.capabilities.exec_unavailable_reason}")
        store = SqliteLedger()
        try:
            service = ContainerService(provider, store, limits_from(settings), clock=clock)
            async with Client(create_server(service, settings)) as client:
                yield client
        finally:
            store.close()


async def listed(client: Client) -> list[dict[str, Any]]:
    return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in (await client.list_tools()).tools]


async def test_tools_list_is_at_most_12_kb_with_every_tool(full_client: Client) -> None:
    tools = await listed(full_client)
    assert {"container_exec", "container_process"} <= {t["name"] for t in tools} and len(tools) == 12
    size = len(json.dumps(tools, separators=(",", ":")))
    assert size <= TOOLS_LIST_LIMIT, f"tools/list is {size} bytes of compact JSON"
    for tool in tools:
        assert "$defs" not in json.dumps(tool), tool["name"]
        assert "\n " not in tool["description"], tool["name"]  # dedented
        assert tool["outputSchema"]["type"] == "object", tool["name"]  # structured output kept


async def test_every_input_schema_is_closed_and_valid_2020_12(full_client: Client) -> None:
    def objects(node: Any) -> list[dict[str, Any]]:
        if isinstance(node, dict):
            found = [node] if node.get("type") == "object" else []
            return found + [o for v in node.values() for o in objects(v)]
        if isinstance(node, list):
            return [o for v in node for o in objects(v)]
        return []

    for tool in await listed(full_client):
        Draft202012Validator.check_schema(tool["inputSchema"])
        for obj in objects(tool["inputSchema"]):
            assert obj.get("additionalProperties") is False, (tool["name"], obj)


async def test_every_tool_converts_under_the_agents_sdks_strict_rules(full_client: Client) -> None:
    # The Agents SDK's own MCP conversion: it falls back to a non-strict tool when strict fails.
    server = MCPServerStdio(params={"command": "true"})
    for tool in (await full_client.list_tools()).tools:
        converted = MCPUtil.to_function_tool(tool, server, convert_schemas_to_strict=True)
        assert converted.strict_json_schema is True, tool.name


def test_the_readme_raises_the_agents_sdks_client_timeout_above_the_exec_default() -> None:
    # Found with the real Agents SDK: its MCP servers time a call out after 5 s by default, so any
    # container_exec longer than that failed although our own default timeout is 45 s.
    sdk_default = inspect.signature(MCPServerStdio.__init__).parameters["client_session_timeout_seconds"].default
    exec_default = Settings.isolated(data_dir=Path("/nonexistent")).exec_default_timeout_s
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    recommended = re.search(r"client_session_timeout_seconds=(\d+)", readme)
    if sdk_default is not None and sdk_default < exec_default:
        assert recommended is not None, "README must tell Agents SDK users to raise client_session_timeout_seconds"
        assert float(recommended.group(1)) > exec_default


async def test_calls_shaped_like_a_strict_mode_model_makes_them_succeed(full_client: Client) -> None:
    # Under the Agents SDK's strict mode every property is required and the optional ones are
    # sent as null (a nested network_policy included), never left out.
    async def call(name: str, args: dict[str, Any]) -> dict[str, Any]:
        result = await full_client.call_tool(name, args)
        assert result.is_error is False, (name, result.content)
        assert result.structured_content is not None
        return result.structured_content

    policy = {"type": "disabled", "allowed_domains": None}
    created = await call(
        "container_create",
        {"name": "s", "expires_after_minutes": 20, "memory_limit": "1g", "network_policy": policy, "file_ids": None},
    )
    cid = created["id"]
    assert created["network_policy"] == {"type": "disabled"}
    file = await call(
        "file_create", {"container_id": cid, "path": "a.txt", "text": "hi", "base64": None, "source_path": None}
    )
    read = await call("file_read", {"container_id": cid, "file_id": file["id"], "offset": 0, "max_bytes": 65536})
    assert read["content"] == "hi"
    listed_page = await call("container_list", {"limit": 20, "order": "desc", "after": None, "name": None})
    assert [c["id"] for c in listed_page["data"]] == [cid]
    assert (await call("file_list", {"container_id": cid, "limit": 20, "order": "asc", "after": None}))["data"]
    ran = await call(
        "container_exec",
        {
            "container_id": cid,
            "command": "cat a.txt",
            "timeout_s": 45,
            "stdin": None,
            "env": None,
            "workdir": "/mnt/data",
        },
    )
    assert ran["stdout"] == "hi"


async def test_an_unknown_argument_is_refused_naming_the_accepted_ones(client: Client) -> None:
    result = await client.call_tool("container_create", {"name": "x", "expires_after": 5})
    assert result.is_error is True
    text = result.content[0].text  # type: ignore[union-attr]
    assert text == (
        "Error executing tool container_create: Unknown argument expires_after; container_create accepts: name, "
        "expires_after_minutes, memory_limit, network_policy, file_ids."
    )
    assert (await client.call_tool("container_list", {})).structured_content["data"] == []


async def test_an_unknown_nested_field_is_refused(client: Client) -> None:
    result = await client.call_tool(
        "container_create", {"name": "x", "network_policy": {"type": "disabled", "domains": ["a.example"]}}
    )
    assert result.is_error is True
    text = result.content[0].text  # type: ignore[union-attr]
    assert "domains" in text and "allowed_domains" in text


@pytest.mark.parametrize(
    ("tool", "args", "sentence"),
    [
        ("file_read", {"max_bytes": 2_000_000}, "max_bytes must be at most 1048576 (got 2000000)"),
        ("file_read", {"offset": -1}, "offset must be at least 0 (got -1)"),
        ("container_list", {"limit": 0}, "limit must be at least 1 (got 0)"),
        ("container_list", {"order": "up"}, "order must be one of 'asc', 'desc' (got 'up')"),
        ("container_create", {"expires_after_minutes": 5000}, "expires_after_minutes must be at most 1440"),
        ("container_create", {"name": ""}, "name must be at least 1 characters long (got 0)"),
        ("file_read", {"file_id": 7}, "file_id must be of type string (got 7)"),
    ],
)
async def test_a_schema_violation_is_one_sentence_naming_the_argument(
    client: Client, tool: str, args: dict[str, Any], sentence: str
) -> None:
    base: dict[str, Any] = {
        "file_read": {"container_id": "cntr_x", "file_id": "cfile_x"},
        "container_list": {},
        "container_create": {"name": "n"},
    }[tool]
    result = await client.call_tool(tool, {**base, **args})
    assert result.is_error is True
    text = result.content[0].text  # type: ignore[union-attr]
    assert sentence in text
    assert "pydantic" not in text and "validation error" not in text and "\n" not in text


@pytest.mark.parametrize(
    ("policy", "sentence"),
    [
        ({"type": "allowlist"}, "network_policy of type 'allowlist' needs at least one allowed domain"),
        ({"type": "disabled", "allowed_domains": ["a.example"]}, "'disabled' takes no allowed_domains"),
    ],
)
async def test_a_cross_field_rule_is_one_sentence(client: Client, policy: dict[str, Any], sentence: str) -> None:
    result = await client.call_tool("container_create", {"name": "x", "network_policy": policy})
    assert result.is_error is True
    text = result.content[0].text  # type: ignore[union-attr]
    assert sentence in text and "pydantic" not in text and "\n" not in text
    assert (await client.call_tool("container_list", {})).structured_content["data"] == []


async def test_a_missing_argument_is_named(client: Client) -> None:
    result = await client.call_tool("file_read", {"container_id": "cntr_x"})
    assert result.is_error is True
    assert "file_id is required" in result.content[0].text  # type: ignore[union-attr]


def test_every_error_class_has_a_row() -> None:
    classes = [
        cls
        for _, cls in inspect.getmembers(error_tree, inspect.isclass)
        if issubclass(cls, ContainerMCPError) and cls.__module__ == error_tree.__name__
    ]
    missing = [cls.__name__ for cls in classes if cls not in ERROR_TABLE]
    assert not missing, f"no row in server/errors.py's ERROR_TABLE: {missing}"


async def test_resource_errors_are_the_callers_when_they_are(client: Client) -> None:
    with pytest.raises(MCPError) as bad_id:
        await client.read_resource("container://nope/files/also-nope")
    assert bad_id.value.error.code == INVALID_PARAMS
    assert "Internal error" not in bad_id.value.error.message
    cid = (await client.call_tool("container_create", {"name": "r"})).structured_content["id"]
    with pytest.raises(MCPError) as missing:
        await client.read_resource(f"container://{cid}/files/cfile_{'0' * 32}")
    assert missing.value.error.code == INVALID_PARAMS
    assert missing.value.error.data["uri"] == f"container://{cid}/files/cfile_{'0' * 32}"


async def test_a_rate_limited_resource_read_says_when_to_retry(tmp_path: Path, clock: ManualClock) -> None:
    settings = Settings.isolated(data_dir=tmp_path / "data", max_calls_per_minute=1)
    async with LocalProvider(tmp_path / "local", clock=clock) as provider:
        store = SqliteLedger()
        try:
            service = ContainerService(provider, store, limits_from(settings), clock=clock)
            async with Client(create_server(service, settings)) as client:
                await client.read_resource("container://usage")
                with pytest.raises(MCPError) as limited:
                    await client.read_resource("container://usage")
        finally:
            store.close()
    assert limited.value.error.code == INVALID_REQUEST
    assert limited.value.error.data["retryAfterSeconds"] >= 1
    assert "retry" in limited.value.error.message


async def test_a_handshake_era_client_gets_no_2026_fields(server: Any) -> None:
    async with Client(server, mode="legacy") as client:
        page = await client.list_resources()
        read = await client.read_resource("container://capabilities")
    assert page.model_fields_set <= {"resources", "next_cursor"}, page.model_fields_set
    assert "result_type" not in read.model_fields_set and "ttl_ms" not in read.model_fields_set
