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
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from openai import AsyncOpenAI, AuthenticationError

from container_mcp.api.app import create_app
from container_mcp.auth import BearerVerifier, open_verifier
from container_mcp.server.app import create_server
from container_mcp.server.http import HttpTransport, http_app
from container_mcp.service import ContainerService
from container_mcp.settings import Settings
from tests.server.bearer import Seen, http_client, sse
from tests.server.test_http_auth import _ACCEPT, _list_call
from tests.server.test_oauth import METADATA, _jwk, oauth_server
from tests.server.test_transports import structured

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
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on", access_log=True)
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
