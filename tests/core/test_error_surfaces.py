"""One source of error messages, rendered per surface: REST speaks routes, MCP speaks tools.

Three checks: every construction of an error (and every ``Hint``) in the source keeps each
surface's words on its own side; every error class renders cleanly on both surfaces; and the
live boundaries (the SDK against the REST API, the MCP client against the server) show each
caller its own surface's hint.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from mcp import Client
from mcp.server import MCPServer
from openai import PermissionDeniedError

import container_mcp
import container_mcp.errors as errors_module
from container_mcp.clock import ManualClock
from container_mcp.errors import (
    SURFACES,
    ContainerExpired,
    ContainerMCPError,
    ContainerNotFound,
    FileNotFound,
    FileTooLarge,
    Hint,
    InvalidId,
    ProviderRateLimited,
    ProviderUnavailable,
    render,
)
from container_mcp.ids import check_container_id, check_file_id
from container_mcp.ledger.base import Limits, over_bytes, over_containers, over_files, rate_limited
from container_mcp.providers._openai_wire import CREATE_CONTAINER, upload_call

from ..api.live import start_api

pytestmark = pytest.mark.anyio

SRC = Path(container_mcp.__file__).parent
TOOLS = (
    "container_create",
    "container_list",
    "container_retrieve",
    "container_delete",
    "container_exec",
    "file_create",
    "file_list",
    "file_retrieve",
    "file_delete",
    "file_read",
    "session_usage",
)
TOOL_WORD = re.compile(r"\b(" + "|".join(TOOLS) + r")\b")
ROUTE = re.compile(r"/v1/containers|\b(GET|POST|DELETE) /v1\b|/openapi\.json")
"""Our REST API's routes. The upstream's own paths ("the backend answered GET /containers") are
diagnostics about the backend, not instructions to the caller, and may appear on both surfaces."""

CID = "cntr_" + "a" * 48
FID = "cfile_" + "b" * 32
LIMITS = Limits(
    max_containers=1, max_files_per_container=1, max_file_bytes=10, max_session_bytes=10, max_calls_per_minute=1
)


def _tree() -> set[type[ContainerMCPError]]:
    out: set[type[ContainerMCPError]] = set()
    todo: list[type[ContainerMCPError]] = [ContainerMCPError]
    while todo:
        cls = todo.pop()
        out.add(cls)
        todo.extend(cls.__subclasses__())
    return out


ERROR_NAMES = {cls.__name__ for cls in _tree()} | {"cls", "error_cls"}


def _words(node: ast.AST | None) -> str:
    """The literal text of a message expression (f-string pieces, concatenations)."""
    if node is None:
        return ""
    return " ".join(n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str))


def _callee(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def test_every_message_in_the_source_keeps_to_its_surface() -> None:
    problems: list[str] = []
    for path in sorted(SRC.rglob("*.py")):
        part = path.relative_to(SRC).parts[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
            where = f"{path.relative_to(SRC)}:{call.lineno}"
            name = _callee(call)
            if name == "Hint":
                given = {kw.arg: _words(kw.value) for kw in call.keywords}
                if ROUTE.search(given.get("mcp", "")):
                    problems.append(f"{where}: the MCP hint names a REST route")
                if TOOL_WORD.search(given.get("rest", "")):
                    problems.append(f"{where}: the REST hint names a tool")
            elif name in ERROR_NAMES:
                message = " ".join(
                    [_words(call.args[0]) if call.args else ""]
                    + [_words(kw.value) for kw in call.keywords if kw.arg == "message"]
                )
                # server/ speaks only MCP and api/ only REST; everything else is shared by both.
                if part != "server" and TOOL_WORD.search(message):
                    problems.append(f"{where}: a shared message names a tool; move it into a Hint")
                if part != "api" and ROUTE.search(message):
                    problems.append(f"{where}: a shared message names a REST route; move it into a Hint")
    assert problems == []


def _samples() -> list[ContainerMCPError]:
    """At least one instance of every class, from the code that really builds them where it hints."""
    out: list[ContainerMCPError] = [
        ContainerNotFound(CID),
        FileNotFound(CID, FID),
        ContainerExpired(CID),
        FileTooLarge.over(10, 11),
        ProviderRateLimited("The backend is rate limiting requests.", retry_after=1.0),
        ProviderUnavailable("The backend failed.", hint=CREATE_CONTAINER.check),
        ProviderUnavailable("The backend failed.", hint=upload_call(CID, "a.txt").check),
    ]
    for check in (check_container_id, check_file_id):
        with pytest.raises(InvalidId) as info:
            check("x")
        out.append(info.value)
    # The ledgers raise the quota and rate-limit errors these build.
    out += [over_containers(1, LIMITS), over_files(CID, 1, 2, LIMITS), over_bytes(0, 20, LIMITS)]
    out.append(rate_limited(2, 0.0, LIMITS))
    seen = {type(e) for e in out}
    out += [cls("A sample message.") for cls in _tree() - seen if cls.__init__ is ContainerMCPError.__init__]
    return out


def test_every_error_class_renders_on_both_surfaces() -> None:
    samples = _samples()
    assert _tree() <= {type(e) for e in samples}, "add a sample of the new error class here"
    for exc in samples:
        assert not TOOL_WORD.search(render(exc, "rest")), render(exc, "rest")
        assert not ROUTE.search(render(exc, "mcp")), render(exc, "mcp")
        for surface in SURFACES:
            assert render(exc, surface).startswith(exc.message)
    hinted = [e for e in samples if e.hint is not None]
    assert all(TOOL_WORD.search(render(e, "mcp")) and ROUTE.search(render(e, "rest")) for e in hinted)
    assert len(hinted) >= 9


def test_the_hint_types_are_exported() -> None:
    assert {"Hint", "render", "SURFACES"} <= set(errors_module.__all__)
    assert Hint(mcp="a", rest="b").on("rest") == "b"


async def test_rest_callers_read_routes(tmp_path: Path) -> None:
    async with start_api(tmp_path / "data", ManualClock(), max_containers=1) as api, api.client() as client:
        await client.containers.create(name="one")
        with pytest.raises(PermissionDeniedError) as info:
            await client.containers.create(name="two")
    message = info.value.message
    assert "Delete one with DELETE /v1/containers/{container_id}" in message
    assert not TOOL_WORD.search(message)


async def test_mcp_callers_read_tools(client: Client) -> None:
    result = await client.call_tool("container_retrieve", {"container_id": "not-an-id"})
    assert result.is_error
    text = " ".join(getattr(c, "text", "") for c in result.content)
    assert "container_list" in text and not ROUTE.search(text)


async def test_capabilities_resource_names_the_unsupported_fields(server: MCPServer, client: Client) -> None:
    read = await client.read_resource("container://capabilities")
    text = getattr(read.contents[0], "text", "")
    assert '"skills"' in text and '"network_policy.domain_secrets"' in text
