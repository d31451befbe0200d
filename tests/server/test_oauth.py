"""OAuth 2.1 resource-server mode, for real: an issuer's JWKS served on 127.0.0.1, access tokens signed
here with PyJWT, the official MCP client sending them over streamable HTTP, the official OpenAI SDK
sending them to the REST API. Refused tokens answer 401 with the RFC 9728 ``resource_metadata``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from openai import AsyncOpenAI, AuthenticationError, PermissionDeniedError
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from container_mcp.api.app import create_app
from container_mcp.auth import open_verifier
from container_mcp.auth.oauth import REFETCH_INTERVAL_S, oauth_owner
from container_mcp.clock import ManualClock
from container_mcp.server.app import create_server
from container_mcp.server.http import http_app
from container_mcp.service import ContainerService
from container_mcp.settings import Settings
from tests.calls import call as structured
from tests.live import serve

from .bearer import Seen, http_client
from .test_transports import assert_isolated

pytestmark = pytest.mark.anyio

ISSUER = "https://issuer.example.com"  # compared with each token's iss, never contacted
RESOURCE = "https://mcp.example.com/mcp"
METADATA = "https://mcp.example.com/.well-known/oauth-protected-resource/mcp"
SCOPE = "containers"
API_KEY = "static-key-for-the-ci-bot-01"
LEEWAY = 30.0


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        data = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        data = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**data, "kid": kid, "use": "sig"}


@dataclass
class Issuer:
    """The authorization server's JWKS endpoint, on a real loopback HTTP server."""

    keys: list[dict[str, Any]]
    fetches: int = 0
    url: str = ""
    status: int = 200

    def app(self) -> Starlette:
        async def jwks(request: Request) -> JSONResponse:
            self.fetches += 1
            return JSONResponse({"keys": self.keys}, status_code=self.status)

        return Starlette(routes=[Route("/jwks", jwks)])


@dataclass
class OAuthServer:
    issuer: Issuer
    clock: ManualClock
    settings: Settings
    service: ContainerService
    mcp_url: str
    origin: str
    signer: rsa.RSAPrivateKey
    minted: list[str] = field(default_factory=list)

    def mint(
        self, *, key: Any = None, kid: str | None = "k1", alg: str = "RS256", **claims: Any
    ) -> str:  # claims given as None are left out
        now = self.clock.now
        body = {"iss": ISSUER, "aud": RESOURCE, "sub": "alice", "iat": now, "exp": now + 300, "scope": SCOPE, **claims}
        headers = {"kid": kid} if kid is not None else {}
        token = jwt.encode(
            {k: v for k, v in body.items() if v is not None}, key or self.signer, algorithm=alg, headers=headers
        )
        self.minted.append(token)
        return token


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def oauth_settings(tmp_path: Path, jwks_url: str, **overrides: Any) -> Settings:
    return Settings.isolated(
        data_dir=tmp_path / "data",
        oauth_issuer_url=ISSUER,
        oauth_resource_url=RESOURCE,
        oauth_jwks_url=jwks_url,
        oauth_required_scopes=[SCOPE],
        oauth_leeway_s=LEEWAY,
        **overrides,
    )


@asynccontextmanager
async def oauth_server(
    tmp_path: Path, service: ContainerService, signer: rsa.RSAPrivateKey, keys: list[dict[str, Any]], **overrides: Any
) -> AsyncIterator[OAuthServer]:
    issuer = Issuer(keys)
    clock = ManualClock()
    async with serve(issuer.app()) as issuer_origin:
        issuer.url = issuer_origin + "/jwks"
        settings = oauth_settings(tmp_path, issuer.url, **overrides)
        async with open_verifier(settings, clock=clock) as verifier:
            mcp = create_server(service, settings, verifier=verifier)
            async with serve(http_app(mcp, settings, "streamable-http", "127.0.0.1")) as origin:
                yield OAuthServer(issuer, clock, settings, service, origin + "/mcp", origin, signer)


@pytest.fixture
async def server(
    tmp_path: Path, service: ContainerService, rsa_key: rsa.RSAPrivateKey, ec_key: ec.EllipticCurvePrivateKey,
    caplog: pytest.LogCaptureFixture,
) -> AsyncIterator[OAuthServer]:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    keys = [_jwk(rsa_key, "k1"), _jwk(ec_key, "e1")]
    async with oauth_server(tmp_path, service, rsa_key, keys, api_keys=[API_KEY]) as s:
        yield s
    for token in [*s.minted, API_KEY]:
        assert token not in caplog.text, "a token reached the logs"


@pytest.mark.parametrize(("mode", "era"), [("auto", "2026-07-28"), ("legacy", "2025-11-25")])
async def test_valid_tokens_each_subject_its_own_owner(server: OAuthServer, mode: str, era: str) -> None:
    alice, bob = server.mint(sub="alice"), server.mint(sub="bob")
    async with http_client(server.mcp_url, alice, mode) as a, http_client(server.mcp_url, bob, mode) as b:
        assert a.session.protocol_version == era
        await assert_isolated(a, b)
        cid = (await structured(a, "container_list"))["data"][0]["id"]
    assert await server.service.ledger.owns(oauth_owner(ISSUER, "alice"), cid)
    # a fresh token for the same subject is the same owner
    async with http_client(server.mcp_url, server.mint(sub="alice", jti="2"), mode) as again:
        assert [c["id"] for c in (await structured(again, "container_list"))["data"]] == [cid]


async def test_es256_tokens_and_static_keys_work_alongside(server: OAuthServer, ec_key: Any) -> None:
    async with http_client(server.mcp_url, server.mint(key=ec_key, kid="e1", alg="ES256"), "auto") as c:
        await structured(c, "session_usage")
    async with http_client(server.mcp_url, API_KEY, "auto") as c:
        await structured(c, "session_usage")


async def test_expiry_and_not_before_allow_only_the_small_leeway(server: OAuthServer) -> None:
    now = server.clock.now
    async with http_client(server.mcp_url, server.mint(exp=now - LEEWAY + 5, nbf=now + LEEWAY - 5), "auto") as c:
        await structured(c, "session_usage")


def _refused_tokens(s: OAuthServer, other: rsa.RSAPrivateKey) -> dict[str, str]:
    now = s.clock.now
    claims = {"iss": ISSUER, "aud": RESOURCE, "sub": "alice", "exp": now + 300, "scope": SCOPE}
    public_pem = s.signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    tokens = {
        "expired": s.mint(exp=now - LEEWAY - 1),
        "not yet valid": s.mint(nbf=now + LEEWAY + 60),
        "wrong audience": s.mint(aud="https://other.example.com/mcp"),
        "audience list without ours": s.mint(aud=["https://other.example.com/mcp", "https://mcp.example.com"]),
        "wrong issuer": s.mint(iss="https://evil.example.com"),
        "wrong signature": s.mint(key=other),  # kid k1, signed by a key that is not k1
        "unknown kid": s.mint(key=other, kid="k-attacker"),
        "no subject": s.mint(sub=None),
        "no expiry": s.mint(exp=None),
        "alg none": _forge({"alg": "none", "kid": "k1", "typ": "JWT"}, claims, lambda _: b""),
        "HS256 keyed with the public key": _forge(
            {"alg": "HS256", "kid": "k1", "typ": "JWT"}, claims, lambda m: hmac.digest(public_pem, m, hashlib.sha256)
        ),
        "garbage": "not-a-jwt",
    }
    s.minted.extend(tokens.values())
    return tokens


@pytest.mark.parametrize(
    "case",
    ["expired", "not yet valid", "wrong audience", "audience list without ours", "wrong issuer", "wrong signature",
     "unknown kid", "no subject", "no expiry", "alg none", "HS256 keyed with the public key", "garbage"],
)  # fmt: skip
async def test_refused_tokens_get_401_naming_the_resource_metadata(
    server: OAuthServer, other_rsa_key: rsa.RSAPrivateKey, case: str
) -> None:
    token = _refused_tokens(server, other_rsa_key)[case]
    seen = Seen()
    with pytest.raises(Exception):  # noqa: B017 - the client surfaces the 401 as an MCPError group
        async with http_client(server.mcp_url, token, "auto", seen) as client:
            await client.call_tool("container_create", {"name": "nope"})
    assert set(seen.statuses) == {401}
    challenge = seen.header("www-authenticate")
    assert challenge is not None and challenge.startswith("Bearer ")
    assert 'error="invalid_token"' in challenge and f'resource_metadata="{METADATA}"' in challenge


async def test_no_token_gets_401_naming_the_resource_metadata(server: OAuthServer) -> None:
    async with httpx2.AsyncClient() as http:
        r = await http.post(server.mcp_url, json={}, headers={"accept": "application/json, text/event-stream"})
    assert r.status_code == 401
    assert f'resource_metadata="{METADATA}"' in r.headers["www-authenticate"]


async def test_a_token_without_the_required_scope_gets_403(server: OAuthServer) -> None:
    seen = Seen()
    with pytest.raises(Exception):  # noqa: B017
        async with http_client(server.mcp_url, server.mint(scope="profile email"), "auto", seen):
            pass
    assert set(seen.statuses) == {403}
    assert 'error="insufficient_scope"' in (seen.header("www-authenticate") or "")


async def test_protected_resource_metadata_is_published(server: OAuthServer) -> None:
    async with httpx2.AsyncClient() as http:
        r = await http.get(server.origin + "/.well-known/oauth-protected-resource/mcp")
    assert r.status_code == 200
    doc = r.json()
    assert doc["resource"] == RESOURCE
    assert doc["authorization_servers"] == [ISSUER]
    assert doc["scopes_supported"] == [SCOPE]


async def test_jwks_is_cached_and_refetched_for_a_rotated_key(
    server: OAuthServer, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    for _ in range(3):
        async with http_client(server.mcp_url, server.mint(), "auto") as c:
            await structured(c, "session_usage")
    assert server.issuer.fetches == 1

    # The issuer rotates to k2: the first k2 token fetches the keys again; k1 is gone.
    server.issuer.keys = [_jwk(other_rsa_key, "k2")]
    async with http_client(server.mcp_url, server.mint(key=other_rsa_key, kid="k2"), "auto") as c:
        await structured(c, "session_usage")
    assert server.issuer.fetches == 2

    # Made-up key ids do not make this server hammer the issuer: one refetch per interval at most.
    for n in range(3):
        with pytest.raises(Exception):  # noqa: B017
            async with http_client(server.mcp_url, server.mint(key=other_rsa_key, kid=f"made-up-{n}"), "auto"):
                pass
    assert server.issuer.fetches == 2
    server.clock.advance(REFETCH_INTERVAL_S)
    with pytest.raises(Exception):  # noqa: B017
        async with http_client(server.mcp_url, server.mint(key=other_rsa_key, kid="made-up-late"), "auto"):
            pass
    assert server.issuer.fetches == 3

    # After the cache age the keys are fetched again even for a known kid.
    server.clock.advance(server.settings.oauth_jwks_cache_s)
    async with http_client(server.mcp_url, server.mint(key=other_rsa_key, kid="k2"), "auto") as c:
        await structured(c, "session_usage")
    assert server.issuer.fetches == 4


async def _accepted(server: OAuthServer, token: str) -> bool:
    seen = Seen()
    try:
        async with http_client(server.mcp_url, token, "auto", seen) as c:
            await structured(c, "session_usage")
    except Exception:
        assert set(seen.statuses) == {401}
        return False
    return True


async def test_a_remembered_token_still_expires_and_dies_with_its_key(
    server: OAuthServer, other_rsa_key: rsa.RSAPrivateKey
) -> None:
    short = server.mint(exp=server.clock.now + 60)
    assert await _accepted(server, short)
    server.clock.advance(60 + LEEWAY + 1)
    assert not await _accepted(server, short)

    long = server.mint(exp=server.clock.now + 3600)
    assert await _accepted(server, long)
    server.issuer.keys = [_jwk(other_rsa_key, "k2")]  # the issuer retires k1
    server.clock.advance(server.settings.oauth_jwks_cache_s)
    assert not await _accepted(server, long)


async def test_an_unreachable_issuer_keeps_the_keys_already_known(
    server: OAuthServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert await _accepted(server, server.mint())
    server.issuer.status = 503
    server.clock.advance(server.settings.oauth_jwks_cache_s)
    assert await _accepted(server, server.mint(jti="after-outage"))
    assert server.issuer.fetches == 2
    assert "could not fetch the OAuth issuer's keys" in caplog.text
    # and it is not asked again on every request, only after the refetch interval
    assert await _accepted(server, server.mint(jti="again"))
    assert server.issuer.fetches == 2


async def test_the_rest_api_shares_the_verifier(server: OAuthServer) -> None:
    async with open_verifier(server.settings, clock=server.clock) as verifier:
        async with serve(create_app(server.service, server.settings, verifier=verifier)) as origin:
            base = origin + "/v1"
            async with AsyncOpenAI(api_key=server.mint(sub="carol"), base_url=base, max_retries=0) as carol:
                cid = (await carol.containers.create(name="carol's")).id
            assert await server.service.ledger.owns(oauth_owner(ISSUER, "carol"), cid)
            async with AsyncOpenAI(api_key=server.mint(exp=server.clock.now - 3600), base_url=base, max_retries=0) as c:
                with pytest.raises(AuthenticationError):
                    await c.containers.list()
            async with AsyncOpenAI(api_key=server.mint(scope="other"), base_url=base, max_retries=0) as c:
                with pytest.raises(PermissionDeniedError) as info:
                    await c.containers.list()
                assert info.value.code == "insufficient_scope"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"oauth_issuer_url": ISSUER}, "missing: oauth_resource_url, oauth_jwks_url"),
        ({"oauth_algorithms": ["RS256", "HS256"]}, "asymmetric JWS algorithms"),
        ({"oauth_algorithms": ["none"]}, "asymmetric JWS algorithms"),
        ({"oauth_jwks_url": "http://issuer.example.com/jwks"}, "https URL"),
    ],
)
def test_bad_oauth_settings_are_refused(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings.isolated(data_dir=tmp_path, **overrides)
