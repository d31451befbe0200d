"""Isolation: one session never sees, reads, writes or deletes another's containers or files."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx2
import pytest
from mcp import Client, MCPError

from tests.api.live import KEY_A, KEY_B, start_api
from tests.calls import call as ok
from tests.live import serve

from .conftest import EnvFactory, err

pytestmark = pytest.mark.anyio


async def _victim(a: Client) -> tuple[str, str]:
    cid = (await ok(a, "container_create", name="victim"))["id"]
    fid = (await ok(a, "file_create", container_id=cid, path="secret/key.txt", text="TOP-SECRET"))["id"]
    return cid, fid


async def _unchanged(a: Client, cid: str, fid: str) -> None:
    files = (await ok(a, "file_list", container_id=cid))["data"]
    assert [(f["id"], f["path"]) for f in files] == [(fid, "/mnt/data/secret/key.txt")]
    chunk = await ok(a, "file_read", container_id=cid, file_id=fid)
    assert chunk["content"] == "TOP-SECRET"


async def test_every_tool_answers_not_found_for_another_sessions_ids(env_factory: EnvFactory) -> None:
    async with env_factory() as env, env.session("alice") as a, env.session("mallory") as m:
        cid, fid = await _victim(a)
        own = (await ok(m, "container_create", name="mine"))["id"]
        attempts: list[tuple[str, dict[str, Any]]] = [
            ("container_retrieve", {"container_id": cid}),
            ("container_delete", {"container_id": cid}),
            ("file_list", {"container_id": cid}),
            ("file_retrieve", {"container_id": cid, "file_id": fid}),
            ("file_read", {"container_id": cid, "file_id": fid}),
            ("file_delete", {"container_id": cid, "file_id": fid}),
            ("file_create", {"container_id": cid, "path": "secret/key.txt", "text": "pwned"}),
            # the victim's file id against the attacker's own container
            ("file_retrieve", {"container_id": own, "file_id": fid}),
            ("file_read", {"container_id": own, "file_id": fid}),
            ("file_delete", {"container_id": own, "file_id": fid}),
            # paging cursors naming the victim's objects
            ("container_list", {"after": cid}),
            ("file_list", {"container_id": own, "after": fid}),
        ]
        for tool, args in attempts:
            text = await err(m, tool, **args)
            assert "TOP-SECRET" not in text and "secret/key.txt" not in text, (tool, text)
            assert "not found" in text or "not one of your" in text or "not a file of this" in text, (tool, text)
        # the filter by name does not leak either
        assert (await ok(m, "container_list", name="victim"))["data"] == []
        await _unchanged(a, cid, fid)


async def test_file_ids_cannot_copy_another_sessions_file(env_factory: EnvFactory) -> None:
    async with env_factory() as env, env.session("alice") as a, env.session("mallory") as m:
        cid, fid = await _victim(a)
        await ok(m, "container_create", name="mine")  # so the lookup has a live container to scan
        text = await err(m, "container_create", name="thief", file_ids=[fid])
        assert "not a file in any of your live containers" in text
        # nothing left behind: still exactly one container, no pending reservation counted
        assert [c["name"] for c in (await ok(m, "container_list"))["data"]] == ["mine"]
        usage = await ok(m, "session_usage")
        assert usage["containers"]["used"] == 1 and usage["files"] == 0
        await _unchanged(a, cid, fid)


@pytest.mark.parametrize(
    "uri",
    [
        "container://{cid}/files/{fid}",
        "container://{cid}/files/{fid}/",
        "container://{cid}/files/{fid}/..",
        "container://{cid}/files/../files/{fid}",
        "container://{cid}%2Ffiles%2F{fid}",
        "container://{cid}/files/{fid}%00",
        "container://{cid_upper}/files/{fid}",
        "container://{own}/files/{fid}",
        "container://{own}/files/../../{cid}/files/{fid}",
        "container:///{cid}/files/{fid}",
        "CONTAINER://{cid}/files/{fid}",
    ],
)
async def test_resources_read_with_crafted_uris_reveals_nothing(env_factory: EnvFactory, uri: str) -> None:
    async with env_factory() as env, env.session("alice") as a, env.session("mallory") as m:
        cid, fid = await _victim(a)
        own = (await ok(m, "container_create", name="mine"))["id"]
        crafted = uri.format(cid=cid, fid=fid, own=own, cid_upper=cid.upper().replace("CNTR_", "cntr_"))
        with pytest.raises(MCPError) as info:
            await m.read_resource(crafted)
        assert "TOP-SECRET" not in str(info.value)
        assert "Traceback" not in str(info.value)
        # the owner still reads it
        contents = (await a.read_resource(f"container://{cid}/files/{fid}")).contents
        assert contents[0].text == "TOP-SECRET"  # type: ignore[union-attr]


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


@pytest.mark.parametrize(
    "forge",
    [
        lambda cid, fid, own: [cid, fid],
        lambda cid, fid, own: [cid, "cfile_" + "0" * 32],
        lambda cid, fid, own: [own, fid],
        lambda cid, fid, own: [cid, ""],
        # the three-part position the server hands out: another session's container and file in it
        lambda cid, fid, own: [0, cid, fid],
        lambda cid, fid, own: [0, cid, ""],
        lambda cid, fid, own: [0, own, fid],
        lambda cid, fid, own: [-1, "", ""],
    ],
)
async def test_resources_list_forged_cursor_reveals_nothing(env_factory: EnvFactory, forge: Any) -> None:
    async with env_factory() as env, env.session("alice") as a, env.session("mallory") as m:
        cid, fid = await _victim(a)
        own = (await ok(m, "container_create", name="mine"))["id"]
        await ok(m, "file_create", container_id=own, path="mine.txt", text="mine")
        cursor = _cursor(forge(cid, fid, own))
        try:
            listed = await m.list_resources(cursor=cursor)
        except MCPError as exc:
            assert "TOP-SECRET" not in str(exc) and cid not in str(exc)
            return
        uris = [str(r.uri) for r in listed.resources]
        assert not any(cid in u or fid in u for u in uris), uris


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",
        _cursor({"a": 1}),
        _cursor([1, 2, 3]),
        _cursor(None),
        "e30",
        # a created_at no ledger can compare (SQLite integers are 64-bit)
        _cursor([2**63, "cntr_a", "cfile_a"]),
        _cursor([-(2**63) - 1, "cntr_a", "cfile_a"]),
        _cursor([10**300, "cntr_a", "cfile_a"]),
        _cursor([0, "cntr_a" * 10_000, "cfile_a"]),
    ],
)
async def test_resources_list_garbage_cursor_is_invalid_params(env_factory: EnvFactory, cursor: str) -> None:
    async with env_factory() as env, env.session("mallory") as m:
        try:
            listed = await m.list_resources(cursor=cursor)
        except MCPError as exc:
            assert "cursor" in str(exc).lower() or "after" in str(exc).lower(), str(exc)
            assert "Traceback" not in str(exc)
        else:
            assert [str(r.uri) for r in listed.resources if "files" in str(r.uri)] == []


async def test_rest_api_other_key_cannot_touch_or_copy(tmp_path: Any, clock: Any) -> None:
    async with start_api(tmp_path / "data", clock) as api:
        async with api.client(KEY_A) as a, api.client(KEY_B) as b:
            cid = (await a.containers.create(name="a")).id
            fid = (await a.containers.files.create(cid, file=("secret.txt", b"TOP-SECRET"))).id
            mine = (await b.containers.create(name="b")).id
            async with httpx2.AsyncClient(base_url=api.base_url, headers={"authorization": f"Bearer {KEY_B}"}) as http:
                probes = [
                    ("GET", f"/containers/{cid}", None),
                    ("GET", f"/containers/{cid}/files", None),
                    ("GET", f"/containers/{cid}/files/{fid}", None),
                    ("GET", f"/containers/{cid}/files/{fid}/content", None),
                    ("GET", f"/containers/{mine}/files/{fid}/content", None),
                    ("DELETE", f"/containers/{cid}/files/{fid}", None),
                    ("DELETE", f"/containers/{cid}", None),
                    ("POST", f"/containers/{mine}/files", {"file_id": fid}),
                    ("POST", f"/containers/{cid}/files", {"file_id": fid}),
                    ("POST", "/containers", {"name": "thief", "file_ids": [fid]}),
                    ("GET", f"/containers?after={cid}", None),
                    ("GET", f"/containers/%2E%2E/containers/{cid}", None),
                ]
                for method, path, body in probes:
                    r = await http.request(method, path, json=body)
                    assert r.status_code in (400, 404), (method, path, r.status_code, r.text)
                    assert b"TOP-SECRET" not in r.content
                    assert KEY_A not in r.text and KEY_B not in r.text
            assert [c.id for c in (await b.containers.list()).data] == [mine]
            content = await a.containers.files.content.retrieve(fid, container_id=cid)
            assert content.read() == b"TOP-SECRET"


async def _legacy_session_id(url: str, captured: list[dict[str, str]]) -> tuple[str, str]:
    async with Client(f"{url}/mcp", mode="legacy") as a:
        cid = (await ok(a, "container_create", name="victim"))["id"]
        await ok(a, "file_create", container_id=cid, path="k.txt", text="TOP-SECRET")
    sids = [h["mcp-session-id"] for h in captured if "mcp-session-id" in h]
    assert sids
    return sids[0], cid


def _recording(app: Any, captured: list[dict[str, str]]) -> Any:
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            captured.append({k.decode(): v.decode() for k, v in scope["headers"]})
        await app(scope, receive, send)

    return wrapped


_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "mallory", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


async def _modern_call(url: str, tool: str, args: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": tool, "arguments": args, "_meta": _META},
    }
    async with httpx2.AsyncClient() as http:
        r = await http.post(
            f"{url}/mcp",
            json=body,
            headers={
                "accept": "application/json, text/event-stream",
                "mcp-protocol-version": "2026-07-28",
                "mcp-method": "tools/call",
                "mcp-name": tool,
                **headers,
            },
        )
    return {"status": r.status_code, "text": r.text}


async def test_two_real_streamable_http_sessions_stay_isolated(env_factory: EnvFactory) -> None:
    from container_mcp.server.app import create_server

    async with env_factory() as env:
        captured: list[dict[str, str]] = []
        app = create_server(env.service, env.settings).streamable_http_app()
        async with serve(_recording(app, captured)) as url:
            async with Client(f"{url}/mcp", mode="legacy") as a, Client(f"{url}/mcp", mode="legacy") as b:
                cid = (await ok(a, "container_create", name="victim"))["id"]
                assert (await ok(b, "container_list"))["data"] == []
                assert "not found" in await err(b, "container_delete", container_id=cid)
            # a legacy request with a forged (unknown) session id is refused by the transport
            forged = await _modern_call(url, "container_list", {}, {})
            assert cid not in forged["text"]


async def test_modern_request_cannot_borrow_a_legacy_session_id(env_factory: EnvFactory) -> None:
    """BUG: a 2026-07-28 request is never checked against the session manager, yet
    ``session_key`` trusts its ``Mcp-Session-Id`` header: anyone holding (or guessing from a log) a
    legacy session's id becomes that session and sees, reads and deletes its containers."""
    from container_mcp.server.app import create_server

    async with env_factory() as env:
        captured: list[dict[str, str]] = []
        app = create_server(env.service, env.settings).streamable_http_app()
        async with serve(_recording(app, captured)) as url:
            sid, cid = await _legacy_session_id(url, captured)
            stolen = await _modern_call(url, "container_list", {}, {"mcp-session-id": sid})
    assert stolen["status"] == 200
    assert cid not in stolen["text"], "a modern request borrowed a legacy session's identity"


async def test_modern_request_cannot_pick_its_session_key_by_query(env_factory: EnvFactory) -> None:
    """BUG (same cause): ``?session_id=`` on the streamable-HTTP endpoint makes a 2026-07-28 request
    the ``sse:<value>`` session, so a caller chooses its own (or an SSE victim's) session key."""
    from container_mcp.server.app import create_server

    async with env_factory() as env:
        app = create_server(env.service, env.settings).streamable_http_app()
        async with serve(app) as url:
            made = await _modern_call(url, "container_create", {"name": "x"}, {})
            assert made["status"] == 200, made
            async with httpx2.AsyncClient() as http:
                body = {"jsonrpc": "2.0", "id": 8, "method": "tools/call",
                        "params": {"name": "container_list", "arguments": {}, "_meta": _META}}  # fmt: skip
                q = await http.post(
                    f"{url}/mcp?session_id=victim-sse-session",
                    json=body,
                    headers={
                        "accept": "application/json, text/event-stream",
                        "mcp-protocol-version": "2026-07-28",
                        "mcp-method": "tools/call",
                        "mcp-name": "container_list",
                    },
                )
    # Documented: unauthenticated 2026-07-28 clients share one anonymous session; a query
    # string must not move the caller into another session.
    assert '"name":"x"' in q.text.replace(" ", ""), "query string moved the request to another session"
