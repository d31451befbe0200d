"""Attacks on authentication of the HTTP entry points (MCP streamable HTTP, SSE, the REST API), each
against a real uvicorn server on 127.0.0.1: a JWKS served there, tokens forged here, the official MCP
client where a client is needed and raw httpx2 requests where the attack is a malformed one."""

from __future__ import annotations

import base64
import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import jwt
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from openai import AsyncOpenAI, AuthenticationError
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from container_mcp.api.app import create_app
from container_mcp.auth import BearerVerifier, open_verifier
from container_mcp.auth.oauth import Jwks
from container_mcp.clock import ManualClock
from container_mcp.server.app import create_server
from container_mcp.server.http import HttpTransport, http_app
from container_mcp.service import ContainerService
from container_mcp.settings import Settings
from tests.calls import call as structured
from tests.server.bearer import Seen, http_client, sse
from tests.server.test_http_auth import _ACCEPT, _list_call
from tests.server.test_oauth import ISSUER, METADATA, RESOURCE, SCOPE, _jwk, oauth_server, oauth_settings

pytestmark = pytest.mark.anyio

KEY_A = "adv-key-alpha-6b1f0c9e2d7a"
KEY_B = "adv-key-bravo-0e3a9d2c7b1f"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged(header: dict[str, Any]) -> str:
    """A JWT-shaped token with ``header``; its claims and signature never get looked at."""
    return f"{_b64(json.dumps(header).encode())}.{_b64(b'{}')}.{_b64(b'sig')}"


@asynccontextmanager
async def _served(app: Any) -> AsyncIterator[str]:
    """``app`` on uvicorn at 127.0.0.1, port 0, configured as ``serving.serve_asgi`` does it (no
    logging config of uvicorn's own; access log on), so its log records reach ``caplog``."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_config=None, log_level="info", lifespan="on", access_log=True
    )
    server = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn has no "started" event
                await anyio.sleep(0.005)
        try:
            yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
        finally:
            server.should_exit = True


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# --- A JWT header whose "alg" is not a string ---------------------------------------------------
# Before: `alg not in frozenset(...)` raised TypeError (unhashable list/dict) inside the verifier: an
# unauthenticated request got a bare 500 with no WWW-Authenticate challenge (so a client cannot
# discover how to authenticate), and every such request wrote an ERROR traceback to the logs.

_ODD_ALGS = [["RS256"], {"alg": "RS256"}]


@pytest.mark.parametrize("alg", _ODD_ALGS, ids=["list", "object"])
async def test_a_jwt_whose_alg_is_not_a_string_is_a_401_on_mcp(
    tmp_path: Path, service: ContainerService, rsa_key: rsa.RSAPrivateKey, alg: Any
) -> None:
    async with oauth_server(tmp_path, service, rsa_key, [_jwk(rsa_key, "k1")]) as server:
        async with httpx2.AsyncClient() as http:
            r = await http.post(
                server.mcp_url,
                json=_list_call(1),
                headers={**_ACCEPT, "authorization": f"Bearer {_forged({'alg': alg, 'kid': 'k1'})}"},
            )
    assert r.status_code == 401, r.text
    assert f'resource_metadata="{METADATA}"' in r.headers["www-authenticate"]


@pytest.mark.parametrize("alg", _ODD_ALGS, ids=["list", "object"])
async def test_a_jwt_whose_alg_is_not_a_string_is_a_401_on_the_rest_api(
    tmp_path: Path, service: ContainerService, rsa_key: rsa.RSAPrivateKey, alg: Any
) -> None:
    async with oauth_server(tmp_path, service, rsa_key, [_jwk(rsa_key, "k1")]) as server:
        async with open_verifier(server.settings, clock=server.clock) as verifier:
            async with _served(create_app(service, server.settings, verifier=verifier)) as origin:
                token = _forged({"alg": alg, "kid": "k1"})
                async with AsyncOpenAI(api_key=token, base_url=origin + "/v1", max_retries=0) as client:
                    with pytest.raises(AuthenticationError) as info:
                        await client.containers.list()
    assert info.value.code == "invalid_api_key"


# --- Session ids in the logs ----------------------------------------------------------------------
# Before: the SDK logged every Mcp-Session-Id and SSE session id in full (INFO on creation, WARNING
# when another token replays one), and uvicorn's access log printed each SSE POST's
# ?session_id=... query. Without auth a session id is the caller's only credential (session key
# http:<id> / sse:<id>); with auth it still names a live session. Anyone who can read the logs
# (a journal, a log shipper) could take it.


def _spellings(sid: str) -> list[str]:
    """The ways a session id can be written that the SDK would take as that id."""
    hex_ = sid.replace("-", "").lower()
    dashed = f"{hex_[:8]}-{hex_[8:12]}-{hex_[12:16]}-{hex_[16:20]}-{hex_[20:]}"
    return [hex_, dashed]


_CLIENT_LOGGERS = ("mcp.client", "httpx2", "httpcore2")
"""The test's own client side, which knows its session id anyway."""


def _server_log(caplog: pytest.LogCaptureFixture) -> str:
    records = [r for r in caplog.records if not r.name.startswith(_CLIENT_LOGGERS)]
    return "\n".join(caplog.handler.format(r) for r in records).lower()


def _assert_not_logged(sid: str, caplog: pytest.LogCaptureFixture) -> None:
    text = _server_log(caplog)
    for spelling in _spellings(sid):
        assert spelling not in text, f"session id {spelling} reached the server's logs"


@pytest.fixture
def keyed(tmp_path: Path) -> Settings:
    return Settings.isolated(data_dir=tmp_path / "data", api_keys=[KEY_A, KEY_B])


async def _mcp_app(service: ContainerService, settings: Settings, transport: HttpTransport) -> Any:
    mcp = create_server(service, settings, verifier=BearerVerifier.from_keys(settings))
    return http_app(mcp, settings, transport, "127.0.0.1")


async def test_a_replayed_mcp_session_id_is_not_in_the_logs(
    service: ContainerService, keyed: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen = Seen()
    async with _served(await _mcp_app(service, keyed, "streamable-http")) as origin:
        url = origin + "/mcp"
        async with http_client(url, KEY_A, "legacy", seen) as a:
            await structured(a, "container_create", name="victim")
            sid = seen.header("mcp-session-id")
            assert sid
            legacy = {**_ACCEPT, "mcp-protocol-version": "2025-11-25"}
            as_b = {**legacy, "mcp-session-id": sid, "authorization": f"Bearer {KEY_B}"}
            unknown = {**legacy, "mcp-session-id": sid[::-1], "authorization": f"Bearer {KEY_A}"}
            async with httpx2.AsyncClient() as http:
                replay = await http.post(url, json=_list_call(2), headers=as_b)
                gone = await http.post(url, json=_list_call(3), headers=unknown)
    assert replay.status_code == 404 and gone.status_code == 404
    assert "rejecting request for session sid#" in _server_log(caplog)  # the replay was logged, redacted
    _assert_not_logged(sid, caplog)
    _assert_not_logged(sid[::-1], caplog)


async def test_an_sse_session_id_is_not_in_the_logs_nor_the_access_log(
    service: ContainerService, keyed: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sessions: list[str] = []
    async with _served(await _mcp_app(service, keyed, "sse")) as origin:
        async with sse(origin + "/sse", KEY_A, on_session=sessions.append) as a:
            await structured(a, "container_create", name="victim")
            (sid,) = sessions
            async with httpx2.AsyncClient() as http:
                as_b = {"authorization": f"Bearer {KEY_B}"}
                replay = await http.post(origin + f"/messages/?session_id={sid}", json=_list_call(9), headers=as_b)
    assert replay.status_code == 404
    assert "rejecting message for session sid#" in _server_log(caplog)
    assert "post /messages/?session_id=sid#" in _server_log(caplog)  # the access log was on, redacted
    _assert_not_logged(sid, caplog)


# --- A slow issuer -------------------------------------------------------------------------------
# Before: once the cached keys were older than oauth_jwks_cache_s, every request — a remembered token
# included — queued on the one refresh, so an issuer that answers slowly stalled the whole server for
# as long as it took; and the refresh had no overall deadline (httpx's timeouts are per read), so an
# issuer trickling its JWKS a byte at a time held it indefinitely.


@dataclass
class _SlowIssuer:
    """A JWKS endpoint on 127.0.0.1 that answers at once until ``hold`` is set, then waits for ``release``."""

    keys: list[dict[str, Any]]
    fetches: int = 0
    hold: bool = False
    holding: anyio.Event = field(default_factory=anyio.Event)
    release: anyio.Event = field(default_factory=anyio.Event)

    def app(self) -> Starlette:
        async def jwks(request: Request) -> Response:
            self.fetches += 1
            if self.hold:
                self.holding.set()
                await self.release.wait()
            return JSONResponse({"keys": self.keys})

        return Starlette(routes=[Route("/jwks", jwks)])


def _mint(signer: rsa.RSAPrivateKey, now: float, sub: str) -> str:
    claims = {"iss": ISSUER, "aud": RESOURCE, "sub": sub, "exp": now + 3600, "scope": SCOPE}
    return jwt.encode(claims, signer, algorithm="RS256", headers={"kid": "k1"})


async def test_a_slow_jwks_refresh_does_not_stall_requests_whose_key_is_known(
    tmp_path: Path, service: ContainerService, rsa_key: rsa.RSAPrivateKey
) -> None:
    issuer = _SlowIssuer([_jwk(rsa_key, "k1")])
    clock = ManualClock()
    async with _served(issuer.app()) as issuer_origin:
        settings = oauth_settings(tmp_path, issuer_origin + "/jwks")
        async with open_verifier(settings, clock=clock) as verifier:
            mcp = create_server(service, settings, verifier=verifier)
            async with _served(http_app(mcp, settings, "streamable-http", "127.0.0.1")) as origin:
                url = origin + "/mcp"
                remembered = _mint(rsa_key, clock.now, "alice")
                async with http_client(url, remembered, "auto") as c:
                    await structured(c, "session_usage")
                assert issuer.fetches == 1

                # The cached keys age out, and the issuer becomes slow to answer.
                clock.advance(settings.oauth_jwks_cache_s)
                issuer.hold = True
                async with anyio.create_task_group() as tg:

                    async def first() -> None:  # starts the refresh and waits for it
                        async with http_client(url, _mint(rsa_key, clock.now, "bob"), "auto") as c:
                            await structured(c, "session_usage")

                    tg.start_soon(first)
                    with anyio.fail_after(10):
                        await issuer.holding.wait()
                    # Meanwhile a remembered token and a fresh one signed by the known key are served, well
                    # before the refresh's 5 s read timeout would have freed them.
                    with anyio.fail_after(3):
                        for token in (remembered, _mint(rsa_key, clock.now, "carol")):
                            async with http_client(url, token, "auto") as c:
                                await structured(c, "session_usage")
                    assert issuer.fetches == 2  # and they did not start refreshes of their own
                    issuer.release.set()


async def test_a_jwks_that_trickles_in_is_given_up_at_a_deadline(caplog: pytest.LogCaptureFixture) -> None:
    async def trickle(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"keys": [', "more_body": True})
        async with anyio.create_task_group() as tg:

            async def until_disconnected() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(until_disconnected)
            while True:  # a byte well within httpx's per-read timeout, until the client gives up
                await anyio.sleep(0.05)
                await send({"type": "http.response.body", "body": b" ", "more_body": True})

    clock = ManualClock()
    async with _served(trickle) as origin, httpx2.AsyncClient(timeout=httpx2.Timeout(5.0)) as http:
        jwks = Jwks(origin + "/jwks", http, clock, max_age_s=300, deadline_s=0.2)
        with anyio.fail_after(5):
            assert await jwks.key("k1") is None
    assert "could not fetch the OAuth issuer's keys" in caplog.text


# --- One owner holding every session --------------------------------------------------------------
# Before: the SDK caps streamable HTTP sessions for the whole server (10,000, each kept for 30 idle
# minutes) and not per caller, so one key could open them all; every other key's handshake-era
# client then got 503 "Too many open sessions".

_INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "hog", "version": "1"}},
}


async def _open_session(http: httpx2.AsyncClient, url: str, key: str) -> httpx2.Response:
    return await http.post(url, json=_INIT, headers={**_ACCEPT, "authorization": f"Bearer {key}"})


async def test_one_key_cannot_hold_every_session(tmp_path: Path, service: ContainerService) -> None:
    settings = Settings.isolated(data_dir=tmp_path / "data", api_keys=[KEY_A, KEY_B], max_sessions_per_owner=2)
    clock = ManualClock()
    mcp = create_server(service, settings, verifier=BearerVerifier.from_keys(settings))
    async with _served(http_app(mcp, settings, "streamable-http", "127.0.0.1", clock=clock)) as origin:
        url = origin + "/mcp"
        async with httpx2.AsyncClient() as http:
            held = [await _open_session(http, url, KEY_A) for _ in range(2)]
            assert [r.status_code for r in held] == [200, 200]
            refused = await _open_session(http, url, KEY_A)
            assert refused.status_code == 429
            assert "already holds 2 open MCP sessions" in refused.json()["error"]["message"]

            # Another key is not affected, in either era; nor is A's 2026-07-28 client (no session).
            for key, mode in ((KEY_B, "legacy"), (KEY_B, "auto"), (KEY_A, "auto")):
                async with http_client(url, key, mode) as c:
                    await structured(c, "session_usage")

            # Closing one frees its place; so does leaving one idle past the SDK's idle timeout.
            first = held[0].headers["mcp-session-id"]
            closed = await http.delete(
                url, headers={**_ACCEPT, "mcp-session-id": first, "authorization": f"Bearer {KEY_A}"}
            )
            assert closed.status_code < 400
            assert (await _open_session(http, url, KEY_A)).status_code == 200
            assert (await _open_session(http, url, KEY_A)).status_code == 429
            clock.advance(30 * 60)
            assert (await _open_session(http, url, KEY_A)).status_code == 200


async def test_a_repeated_version_header_does_not_slip_past_the_session_cap(
    tmp_path: Path, service: ContainerService
) -> None:
    """The SDK routes by the first MCP-Protocol-Version header; so must the cap."""
    settings = Settings.isolated(data_dir=tmp_path / "data", api_keys=[KEY_A], max_sessions_per_owner=1)
    mcp = create_server(service, settings, verifier=BearerVerifier.from_keys(settings))
    async with _served(http_app(mcp, settings, "streamable-http", "127.0.0.1")) as origin:
        url = origin + "/mcp"
        async with httpx2.AsyncClient() as http:
            assert (await _open_session(http, url, KEY_A)).status_code == 200
            headers = [*_ACCEPT.items(), ("authorization", f"Bearer {KEY_A}")]
            headers += [("mcp-protocol-version", "2025-11-25"), ("mcp-protocol-version", "2026-07-28")]
            sneaky = await http.post(url, json=_INIT, headers=headers)
    assert sneaky.status_code == 429


# --- Keys no client can present -----------------------------------------------------------------
# Before: a key that cannot travel in an Authorization header was accepted without a word: an empty
# `--api-key ""` even counted as "authenticated" for the exposure check, so the server served on
# 0.0.0.0 with a key nobody could use; a key with non-ASCII letters (clients send header bytes that
# the server reads as Latin-1) or with spaces around it (kept from --api-key) could never match.

_UNUSABLE = {"empty": "", "spaces around": "  adv-key-0123456789abcdef ", "non-ascii": "clé-secrète-0123456789"}


@pytest.mark.parametrize("key", list(_UNUSABLE.values()), ids=list(_UNUSABLE))
def test_a_key_no_client_can_send_is_refused_at_start(tmp_path: Path, key: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings.isolated(data_dir=tmp_path, api_keys=[KEY_A, key])
    assert "API key 2" in str(info.value) and "visible ASCII" in str(info.value)
    # Neither key is echoed, not even in part (pydantic prints the input, shortened, unless told not to).
    for secret in (KEY_A, key.strip()):
        assert not secret or secret[-12:] not in str(info.value)


def test_a_keys_file_line_no_client_can_send_is_refused_at_start(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# team\n{KEY_A}\nclé-secrète-0123456789\n")
    with pytest.raises(ValidationError) as info:
        Settings.isolated(data_dir=tmp_path, api_keys_file=keys)
    assert f"{keys} line 3" in str(info.value) and "visible ASCII" in str(info.value)
    assert "secrète" not in str(info.value) and KEY_A[-12:] not in str(info.value)


async def test_one_key_cannot_hold_every_sse_session(tmp_path: Path, service: ContainerService) -> None:
    """The SDK has no cap on SSE sessions at all: one key could hold as many streams as the server takes."""
    settings = Settings.isolated(data_dir=tmp_path / "data", api_keys=[KEY_A, KEY_B], max_sessions_per_owner=1)
    mcp = create_server(service, settings, verifier=BearerVerifier.from_keys(settings))
    async with _served(http_app(mcp, settings, "sse", "127.0.0.1")) as origin:
        url = origin + "/sse"
        async with httpx2.AsyncClient() as http:
            async with sse(url, KEY_A) as a:
                await structured(a, "session_usage")
                refused = await http.get(url, headers={"authorization": f"Bearer {KEY_A}"})
                assert refused.status_code == 429
                assert "already holds 1 open MCP sessions" in refused.json()["error"]["message"]
                async with sse(url, KEY_B) as b:  # another key is not affected
                    await structured(b, "session_usage")
            async with sse(url, KEY_A) as again:  # the stream ended: its place is free
                await structured(again, "session_usage")


async def test_a_session_kept_alive_by_an_open_stream_still_counts(tmp_path: Path, service: ContainerService) -> None:
    """A GET stream in flight keeps the SDK's session alive past its idle timeout; it must keep its place too."""
    settings = Settings.isolated(data_dir=tmp_path / "data", api_keys=[KEY_A], max_sessions_per_owner=1)
    clock = ManualClock()
    mcp = create_server(service, settings, verifier=BearerVerifier.from_keys(settings))
    async with _served(http_app(mcp, settings, "streamable-http", "127.0.0.1", clock=clock)) as origin:
        url = origin + "/mcp"
        async with httpx2.AsyncClient() as http:
            sid = (await _open_session(http, url, KEY_A)).headers["mcp-session-id"]
            stream = {"accept": "text/event-stream", "mcp-session-id": sid, "authorization": f"Bearer {KEY_A}"}
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            await http.post(url, json=initialized, headers={**_ACCEPT, **stream, "accept": _ACCEPT["accept"]})
            async with http.stream("GET", url, headers={**stream, "mcp-protocol-version": "2025-11-25"}) as held:
                assert held.status_code == 200
                clock.advance(30 * 60 + 1)
                assert (await _open_session(http, url, KEY_A)).status_code == 429


# --- The keys that allowed the start are the keys enforced ----------------------------------------
# Before: the exposure rule read the keys file once (settings.auth_enabled()) and the verifier read it
# again after the service had opened. A file emptied in between — an operator's `> keys` rewrite, a
# config tool replacing it — passed the "authenticated" check and then served with no keys at all:
# on 0.0.0.0 that is an open, anonymous server, the thing the rule exists to prevent. Shown here on
# 127.0.0.1 (never a public address in a test): after the same race, no token must still mean 401.


def _emptying_open_service(keys: Path) -> Any:
    from container_mcp.runtime import open_service

    @asynccontextmanager
    async def opening(settings: Settings) -> AsyncIterator[ContainerService]:
        await anyio.Path(keys).write_text("")  # the keys file is rewritten while the service starts
        async with open_service(settings) as service:
            yield service

    return opening


class _Listening(logging.Handler):
    """Catches the ``listening on <url>`` line the server logs once bound (port 0: the OS chose)."""

    def __init__(self) -> None:
        super().__init__()
        self.bound = anyio.Event()
        self.origin = ""

    def emit(self, record: logging.LogRecord) -> None:
        if found := re.search(r"listening on (http://127\.0\.0\.1:\d+)", record.getMessage()):
            self.origin = found[1]
            self.bound.set()


@pytest.mark.parametrize("entry", ["api", "streamable-http"])
async def test_the_keys_that_allowed_the_start_are_the_keys_enforced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, entry: str
) -> None:
    from container_mcp import cli, runtime
    from container_mcp.api import serve as api_serve

    caplog.set_level(logging.INFO)
    listening = _Listening()
    logging.getLogger("container_mcp").addHandler(listening)
    keys = tmp_path / "keys"
    keys.write_text(KEY_A + "\n")
    settings = Settings.isolated(data_dir=tmp_path / "data", api_keys_file=keys)
    monkeypatch.setattr(api_serve, "open_service", _emptying_open_service(keys))
    monkeypatch.setattr(runtime, "open_service", _emptying_open_service(keys))
    async with anyio.create_task_group() as tg:
        if entry == "api":
            tg.start_soon(api_serve.serve_api, settings, "127.0.0.1", 0)
        else:
            tg.start_soon(cli._serve_mcp, settings, entry, "127.0.0.1", 0)
        try:
            with anyio.fail_after(20):
                await listening.bound.wait()
        finally:
            logging.getLogger("container_mcp").removeHandler(listening)
        origin, key = listening.origin, {"authorization": f"Bearer {KEY_A}"}
        async with httpx2.AsyncClient() as http:
            if entry == "api":
                anonymous = await http.get(origin + "/v1/containers")
                keyed = await http.get(origin + "/v1/containers", headers=key)
            else:
                anonymous = await http.post(origin + "/mcp", json=_INIT, headers=_ACCEPT)
                keyed = await http.post(origin + "/mcp", json=_INIT, headers={**_ACCEPT, **key})
        tg.cancel_scope.cancel()
    assert anonymous.status_code == 401
    assert keyed.status_code == 200


# --- Owner keys of two issuers ---------------------------------------------------------------------
# Before: the owner of a JWT was f"oauth:{issuer}:{sub}", which is not one-to-one once a subject may
# hold ':' — subject "8443:alice" of https://idp.example.com and subject "alice" of
# https://idp.example.com:8443 were the same owner. One process trusts one issuer, but every server
# process on a host shares the session store (README), so two deployments with different issuers
# over one data dir let a subject of one act as a subject of the other, containers included.


async def test_subjects_of_two_issuers_never_share_an_owner(
    tmp_path: Path, service: ContainerService, rsa_key: rsa.RSAPrivateKey
) -> None:
    first, second = "https://idp.example.com", "https://idp.example.com:8443"
    clock = ManualClock()
    issuer = _SlowIssuer([_jwk(rsa_key, "k1")])
    async with _served(issuer.app()) as issuer_origin:
        owners = []
        for iss, sub in ((first, "8443:alice"), (second, "alice")):
            settings = Settings.isolated(
                data_dir=tmp_path / "data",
                oauth_issuer_url=iss,
                oauth_resource_url=RESOURCE,
                oauth_jwks_url=issuer_origin + "/jwks",
            )
            token = jwt.encode(
                {"iss": iss, "aud": RESOURCE, "sub": sub, "exp": clock.now + 60}, rsa_key, "RS256", {"kid": "k1"}
            )
            async with open_verifier(settings, clock=clock) as verifier:
                access = await verifier.verify_token(token)
            assert access is not None
            owners.append(access.client_id)
    assert owners[0] != owners[1]
    assert all(owner.startswith("oauth:") for owner in owners)


# --- A JWKS document nested too deep ---------------------------------------------------------------
# Before: json.loads raised RecursionError (not a ValueError) on a deeply nested document: the fetch
# was not treated as failed, the exception escaped into the request, and every request that needed
# the keys got a 500 instead of being served with the keys already known.


async def test_a_jwks_nested_too_deep_keeps_the_known_keys(
    tmp_path: Path, service: ContainerService, rsa_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"document": json.dumps({"keys": [_jwk(rsa_key, "k1")]}).encode()}

    async def jwks(request: Request) -> Response:
        return Response(body["document"], media_type="application/json")

    clock = ManualClock()
    async with _served(Starlette(routes=[Route("/jwks", jwks)])) as issuer_origin:
        settings = oauth_settings(tmp_path, issuer_origin + "/jwks")
        async with open_verifier(settings, clock=clock) as verifier:
            mcp = create_server(service, settings, verifier=verifier)
            async with _served(http_app(mcp, settings, "streamable-http", "127.0.0.1")) as origin:
                async with http_client(origin + "/mcp", _mint(rsa_key, clock.now, "alice"), "auto") as c:
                    await structured(c, "session_usage")
                body["document"] = b"[" * 100_000  # well under the 1 MiB cap
                clock.advance(settings.oauth_jwks_cache_s)
                async with http_client(origin + "/mcp", _mint(rsa_key, clock.now, "bob"), "auto") as c:
                    await structured(c, "session_usage")
    assert "could not fetch the OAuth issuer's keys" in caplog.text


async def test_a_jwks_key_whose_kid_is_not_a_string_is_skipped(
    tmp_path: Path, service: ContainerService, rsa_key: rsa.RSAPrivateKey
) -> None:
    """Before: the one key of such a JWKS matched a token without a kid, and caching its prepared form under
    the unhashable kid raised TypeError: a 500 for any caller who left the kid out."""
    issuer = _SlowIssuer([{**_jwk(rsa_key, "k1"), "kid": ["k1"]}])
    clock = ManualClock()
    async with _served(issuer.app()) as issuer_origin:
        settings = oauth_settings(tmp_path, issuer_origin + "/jwks")
        async with open_verifier(settings, clock=clock) as verifier:
            mcp = create_server(service, settings, verifier=verifier)
            async with _served(http_app(mcp, settings, "streamable-http", "127.0.0.1")) as origin:
                claims = {"iss": ISSUER, "aud": RESOURCE, "sub": "alice", "exp": clock.now + 60, "scope": SCOPE}
                token = jwt.encode(claims, rsa_key, algorithm="RS256")  # no kid
                async with httpx2.AsyncClient() as http:
                    r = await http.post(
                        origin + "/mcp", json=_INIT, headers={**_ACCEPT, "authorization": f"Bearer {token}"}
                    )
    assert r.status_code == 401
