"""The one bearer-token verifier of every HTTP entry point: MCP streamable HTTP, SSE and the REST API.

The REST API calls it from its own middleware; the MCP transports get it through the SDK's
``TokenVerifier`` seam (``server/bearer.py``). A token is accepted when it is one of the static API
keys or, in OAuth mode, a valid JWT access token (``oauth.py``, loaded only in OAuth mode: it
imports PyJWT). The returned ``Access.client_id`` is the caller's owner key —
``apikey:<digest>`` or ``oauth:<issuer, %-encoded>:<subject>`` — the session key the ``ContainerService``
sees, so each token (each subject, for JWTs) is its own owner on every transport and in both
protocol eras.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from ..clock import Clock, system_clock
from ..settings import Settings
from .access import Access
from .keys import ApiKeys

if TYPE_CHECKING:
    from .oauth import JwtVerifier

__all__ = ["BearerVerifier", "open_verifier"]

_JWKS_TIMEOUT_S = 5.0


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

    @property
    def oauth(self) -> JwtVerifier | None:
        """The JWT verifier in OAuth mode (its ``issuer`` and ``audience``), else None."""
        return self._jwt

    async def verify_token(self, token: str) -> Access | None:
        """The caller's ``Access``, or None for a token that is not accepted."""
        token = token.strip()
        if not token:
            return None
        owner = self._keys.owner(token)
        if owner is not None:
            # A static key is issued by the operator for this server: it holds every required scope.
            resource = self._jwt.audience if self._jwt is not None else None
            return Access(token=token, client_id=owner, scopes=self.required_scopes, resource=resource)
        if self._jwt is not None:
            return await self._jwt.verify(token)
        return None


@asynccontextmanager
async def open_verifier(settings: Settings, *, clock: Clock = system_clock) -> AsyncIterator[BearerVerifier]:
    """The verifier ``settings`` describe; in OAuth mode it owns the HTTP client that fetches the JWKS."""
    keys = ApiKeys(settings.all_api_keys())
    # Settings holds all three OAuth URLs or none of them.
    issuer, resource, jwks_url = settings.oauth_issuer_url, settings.oauth_resource_url, settings.oauth_jwks_url
    if issuer is None or resource is None or jwks_url is None:
        yield BearerVerifier(keys, None, [])
        return
    # Imported here: OAuth mode alone needs an HTTP client and PyJWT, and the keys-only start stays fast.
    import httpx2

    from .oauth import Jwks, JwtVerifier

    async with httpx2.AsyncClient(timeout=httpx2.Timeout(_JWKS_TIMEOUT_S), follow_redirects=False) as http:
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
