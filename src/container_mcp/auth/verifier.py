"""The one bearer-token verifier of every HTTP entry point: MCP streamable HTTP, SSE and the REST API.

It implements the SDK's ``TokenVerifier``: the MCP transports get it through
``MCPServer(token_verifier=..., auth=AuthSettings(...))``, the REST API calls it from its own
middleware. A token is accepted when it is one of the static API keys or, in OAuth mode, a valid JWT
access token (``oauth.py``). The returned ``AccessToken.client_id`` is the caller's owner key —
``apikey:<digest>`` or ``oauth:<issuer, %-encoded>:<subject>`` — the session key the ``ContainerService``
sees, so each token (each subject, for JWTs) is its own owner on every transport and in both
protocol eras.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings

from ..clock import Clock, system_clock
from ..settings import Settings
from .keys import ApiKeys
from .oauth import Jwks, JwtVerifier

__all__ = ["BearerVerifier", "open_verifier"]

_JWKS_TIMEOUT = httpx2.Timeout(5.0)


class BearerVerifier:
    """API keys and, optionally, JWT access tokens (see the module docstring)."""

    def __init__(self, keys: ApiKeys, jwt: JwtVerifier | None, required_scopes: list[str]) -> None:
        self._keys = keys
        self._jwt = jwt
        self.required_scopes = list(required_scopes)

    @classmethod
    def from_keys(cls, settings: Settings) -> BearerVerifier:
        """A verifier of the static keys alone; OAuth mode needs ``open_verifier`` (it fetches keys)."""
        if settings.oauth_enabled:
            raise ValueError("OAuth mode needs a verifier from open_verifier(settings)")
        return cls(ApiKeys(settings.all_api_keys()), None, [])

    @property
    def enabled(self) -> bool:
        """Whether any token can be accepted at all (without keys or OAuth, callers are anonymous)."""
        return bool(self._keys) or self._jwt is not None

    async def verify_token(self, token: str) -> AccessToken | None:
        """``TokenVerifier``: the caller's ``AccessToken``, or None for a token that is not accepted."""
        token = token.strip()
        if not token:
            return None
        owner = self._keys.owner(token)
        if owner is not None:
            # A static key is issued by the operator for this server: it holds every required scope.
            resource = self._jwt.audience if self._jwt is not None else None
            return AccessToken(token=token, client_id=owner, scopes=self.required_scopes, resource=resource)
        if self._jwt is not None:
            return await self._jwt.verify(token)
        return None

    def auth_settings(self, own_url: str) -> AuthSettings:
        """The SDK's ``AuthSettings`` for this verifier; ``own_url`` is this server's base URL.

        In OAuth mode the SDK publishes RFC 9728 metadata for the resource URL, names it in the 401's
        ``WWW-Authenticate`` header and refuses tokens whose resource is another server's. With static
        keys only, no authorization server exists to point clients to: this server is the keys' issuer
        and no metadata is published.
        """
        if self._jwt is None:
            return AuthSettings.model_validate({"issuer_url": own_url, "resource_server_url": None})
        # As strings, so that AuthSettings keeps them exactly as configured (no added "/"): clients compare
        # the published issuer with the authorization server's own metadata character by character.
        return AuthSettings.model_validate(
            {
                "issuer_url": self._jwt.issuer,
                "resource_server_url": self._jwt.audience,
                "required_scopes": self.required_scopes or None,
                "validate_token_resource": True,
            }
        )


@asynccontextmanager
async def open_verifier(settings: Settings, *, clock: Clock = system_clock) -> AsyncIterator[BearerVerifier]:
    """The verifier ``settings`` describe; in OAuth mode it owns the HTTP client that fetches the JWKS."""
    keys = ApiKeys(settings.all_api_keys())
    # Settings holds all three OAuth URLs or none of them.
    issuer, resource, jwks_url = settings.oauth_issuer_url, settings.oauth_resource_url, settings.oauth_jwks_url
    if issuer is None or resource is None or jwks_url is None:
        yield BearerVerifier(keys, None, [])
        return
    async with httpx2.AsyncClient(timeout=_JWKS_TIMEOUT, follow_redirects=False) as http:
        jwks = Jwks(jwks_url, http, clock, max_age_s=settings.oauth_jwks_cache_s)
        jwt = JwtVerifier(
            issuer=issuer,
            audience=resource,
            jwks=jwks,
            algorithms=settings.oauth_algorithms,
            leeway_s=settings.oauth_leeway_s,
            clock=clock,
        )
        yield BearerVerifier(keys, jwt, settings.oauth_required_scopes)
