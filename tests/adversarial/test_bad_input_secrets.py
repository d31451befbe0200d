"""Bad input gets a clear error and changes nothing; secrets never reach output, errors or logs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from container_mcp.errors import ContainerMCPError
from tests.api.live import KEY_A, KEY_B, start_api
from tests.calls import call as ok
from tests.providers.openai_fakes import API_KEY, FaultApp, Reply, asgi_provider, error_body

from .conftest import BARE, EnvFactory, err

pytestmark = pytest.mark.anyio

CID = "cntr_" + "0" * 48
FID = "cfile_" + "0" * 32


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("container_retrieve", {"container_id": "../../etc"}),
        ("container_retrieve", {"container_id": "cntr_" + "a" * 100000}),
        ("container_create", {"name": "x", "memory_limit": "1t"}),
        ("container_create", {"name": "x", "expires_after_minutes": 0}),
        ("container_create", {"name": "x", "network_policy": {"type": "disabled", "allowed_domains": ["a.b"]}}),
        ("container_create", {"name": "x", "file_ids": ["cfile_../../x"]}),
        ("container_list", {"limit": 0}),
        ("container_list", {"order": "sideways"}),
        ("file_create", {"container_id": "{cid}", "path": "a", "base64": "not base64!"}),
        ("file_create", {"container_id": "{cid}", "path": "a", "base64": "QQ"}),
        ("file_create", {"container_id": "{cid}", "path": "a"}),
        ("file_create", {"container_id": "{cid}", "path": "a", "text": "x", "base64": "eA=="}),
        ("file_create", {"container_id": "{cid}", "path": "a", "source_path": "/etc/passwd"}),
        ("file_read", {"container_id": "{cid}", "file_id": FID, "offset": -5}),
        ("file_read", {"container_id": "{cid}", "file_id": FID, "max_bytes": 1 << 30}),
        ("file_read", {"container_id": "{cid}", "file_id": "cfile_x"}),
        ("file_delete", {"container_id": "{cid}", "file_id": FID}),
        ("file_list", {"container_id": "{cid}", "after": "x" * 10000}),
    ],
)
async def test_bad_input_is_clear_and_changes_nothing(env_factory: EnvFactory, tool: str, args: dict[str, Any]) -> None:
    async with env_factory() as env, env.session("s") as c:
        cid = (await ok(c, "container_create", name="x"))["id"]
        args = {k: (v.format(cid=cid) if isinstance(v, str) and "{cid}" in v else v) for k, v in args.items()}
        text = await err(c, tool, **args)
        assert text.startswith(BARE) and len(text) < 2000
        u = await ok(c, "session_usage")
        assert (u["containers"]["used"], u["files"]) == (1, 0)


async def test_huge_text_over_file_limit_is_refused_before_storing(env_factory: EnvFactory) -> None:
    async with env_factory(max_file_bytes=1000) as env, env.session("s") as c:
        cid = (await ok(c, "container_create", name="x"))["id"]
        assert "CONTAINER_MCP_MAX_FILE_BYTES" in await err(
            c, "file_create", container_id=cid, path="a", text="x" * 5000
        )
        assert list((env.provider.data_dir / "containers" / cid / "tmp").iterdir()) == []


async def test_non_utf8_binary_reads_back_as_base64(env_factory: EnvFactory) -> None:
    async with env_factory() as env, env.session("s") as c:
        cid = (await ok(c, "container_create", name="x"))["id"]
        f = await ok(c, "file_create", container_id=cid, path="t.txt", base64="//79AA==")
        chunk = await ok(c, "file_read", container_id=cid, file_id=f["id"])
        assert chunk["encoding"] == "base64" and chunk["content"] == "//79AA=="


@pytest.mark.parametrize(
    ("tool", "field"),
    [("file_create", "text"), ("container_exec", "stdin")],
)
async def test_unencodable_text_is_an_input_error_not_an_internal_error(
    env_factory: EnvFactory, tool: str, field: str
) -> None:
    """BUG (low): a lone surrogate in file_create ``text`` (tools.py: ``text.encode("utf-8")``) or
    container_exec ``stdin`` raises UnicodeEncodeError outside any check: the caller gets "Internal
    error ... (UnicodeEncodeError)" and a traceback is logged. JSON transports reject such strings
    already, so only in-process (in-memory) clients reach it."""
    async with env_factory(exec_=(tool == "container_exec")) as env, env.session("s") as c:
        cid = (await ok(c, "container_create", name="x"))["id"]
        args: dict[str, Any] = {"container_id": cid, field: "bad \ud800"}
        args.update({"path": "a.txt"} if tool == "file_create" else {"command": "cat"})
        await err(c, tool, **args)


async def test_rest_api_keys_never_appear_in_answers_or_logs(tmp_path: Path, clock: Any, caplog: Any) -> None:
    import httpx2

    caplog.set_level(logging.DEBUG)
    async with start_api(tmp_path / "data", clock) as api:
        async with httpx2.AsyncClient(base_url=api.base_url) as http:
            answers = [
                await http.get("/containers", headers={"authorization": f"Bearer {KEY_A}x"}),
                await http.get("/containers", headers={"authorization": f"Basic {KEY_A}"}),
                await http.get("/containers/cntr_x", headers={"authorization": f"Bearer {KEY_B}"}),
                await http.post("/containers", headers={"authorization": f"Bearer {KEY_B}"}, content=b"{bad json"),
                await http.post(
                    "/containers", headers={"authorization": f"Bearer {KEY_B}"}, json={"name": KEY_A[:3], "x": 1}
                ),
            ]
    for r in answers:
        assert KEY_A not in r.text and KEY_B not in r.text, r.text
        assert KEY_A not in str(r.headers) and KEY_B not in str(r.headers)
    assert KEY_A not in caplog.text and KEY_B not in caplog.text


def _every_field(exc: ContainerMCPError) -> str:
    return " ".join(str(v) for v in (exc.message, exc.param, exc.code, exc.request_id, repr(exc), exc.args))


@pytest.mark.parametrize(
    "reply",
    [
        Reply(401, error_body(f"Incorrect API key provided: {API_KEY}")),
        Reply(400, error_body(f"bad key {API_KEY}", param=API_KEY)),
        Reply(500, {"detail": f"proxy saw Authorization: Bearer {API_KEY}"}),
        Reply(404, error_body("not found", param=None), headers={"x-request-id": API_KEY}),
        Reply(502, f"<html>upstream {API_KEY}</html>".encode()),
    ],
)
async def test_openai_key_never_in_any_error_field(reply: Reply, caplog: Any) -> None:
    """BUG (low-medium) for the ``param`` and ``x-request-id`` cases: ``ErrorMap.for_status``
    scrubs only the upstream *message*; ``param`` and the request id are copied verbatim
    (_openai_wire.py ``fields`` / ``where``), and ``container-mcp api`` returns ``param`` in its
    error envelope, so an upstream (a proxy) that echoes the key leaks it to callers."""
    caplog.set_level(logging.DEBUG)
    app = FaultApp(reply)
    async with asgi_provider(app, max_retries=0) as provider:
        with pytest.raises(ContainerMCPError) as info:
            await provider.get_container("cntr_68c9dde6b288819096a5f7d5f57f33d80d62739fdf52061b")
    assert API_KEY not in _every_field(info.value), _every_field(info.value)
    assert API_KEY not in caplog.text
