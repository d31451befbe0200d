"""OAuth 2.1 resource-server mode: JWT access tokens checked against the issuer's published keys.

A token is accepted only when all of these hold, else it is refused (``None``) and the reason is
logged at INFO without the token:

* its header names an algorithm from the operator's allowlist, which holds asymmetric algorithms
  only (``Settings.oauth_algorithms``): never ``none``, never HMAC, so a published RSA key cannot
  be used as an HMAC secret;
* its ``kid`` is a key of the issuer's JWKS whose type fits that algorithm (RSA for RS*/PS*, EC for
  ES*, OKP for EdDSA), whose own ``alg`` (if it has one) is that algorithm and whose ``use`` (if it
  has one) is ``sig``; the signature verifies with that key;
* ``iss`` is the configured issuer, ``aud`` names this server's resource URL (RFC 8707/9068),
  ``sub`` is present, ``exp`` has not passed and ``nbf`` has, both within ``oauth_leeway_s`` of the
  injected clock.

Scopes are not checked here: the MCP transports (the SDK's ``RequireAuthMiddleware``) and the REST
API answer a valid token without a required scope with 403 ``insufficient_scope``, not 401.

The JWKS is fetched with httpx2 when first needed, cached for ``oauth_jwks_cache_s``, and fetched
again early when a token names an unknown ``kid`` (the issuer rotated its keys), at most once per
``REFETCH_INTERVAL_S`` so that tokens with made-up key ids cannot turn this server into a flood
against the issuer. A failed fetch keeps the keys already known. One fetch runs at a time and gives
up after ``FETCH_DEADLINE_S`` in all (httpx's own timeouts bound each read, not a body that trickles
in); while it runs, requests whose key is already known go on with it rather than queue behind a
slow issuer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import anyio
import httpx2
import jwt

from ..clock import Clock
from ..serving import is_loopback
from .access import Access

__all__ = ["FETCH_DEADLINE_S", "REFETCH_INTERVAL_S", "Jwks", "JwtVerifier", "check_jwks_url", "oauth_owner"]

log = logging.getLogger("container_mcp.auth")

REFETCH_INTERVAL_S = 30.0
"""Least time between two JWKS fetches caused by unknown key ids."""

FETCH_DEADLINE_S = 10.0
"""Longest a JWKS fetch may take, start to end of the body."""

_MAX_JWKS_BYTES = 1 << 20

_VERIFIED_MAX = 4096
"""Verified tokens remembered (by SHA-256), oldest forgotten first."""

_KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}


def oauth_owner(issuer: str, subject: str) -> str:
    """``oauth:<issuer>:<subject>`` with the issuer's ``:`` and ``%`` percent-encoded, so that the first ``:``
    after the prefix ends it: one owner per (issuer, subject) pair, whatever a subject contains. The
    session store is shared by every server process on the host, whichever issuer each trusts."""
    return f"oauth:{quote(issuer, safe='/')}:{subject}"


def check_jwks_url(url: str) -> None:
    """Refuse (``ValueError``) a JWKS URL that an attacker on the path could answer: not https, and not
    plain http to a loopback address either."""
    parts = urlsplit(url)
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback(parts.hostname or "")):
        return
    raise ValueError(
        f"oauth_jwks_url must be an https URL (or http on a loopback address); got {url!r}. "
        "Give the issuer's https JWKS address (its metadata names it jwks_uri)."
    )


class Jwks:
    """The issuer's signing keys by ``kid``, fetched with ``http`` and cached (see the module docstring)."""

    def __init__(
        self,
        url: str,
        http: httpx2.AsyncClient,
        clock: Clock,
        *,
        max_age_s: float,
        deadline_s: float = FETCH_DEADLINE_S,
    ) -> None:
        check_jwks_url(url)
        self._url = url
        self._http = http
        self._clock = clock
        self._max_age_s = max_age_s
        self._deadline_s = deadline_s
        self._keys: list[dict[str, Any]] = []
        self._prepared: dict[tuple[str | None, str], Any] = {}
        self._fetched_at = -math.inf
        self._refetched_at = -math.inf
        self._lock = anyio.Lock()

    async def key(self, kid: str | None) -> dict[str, Any] | None:
        """The JWK named ``kid`` (with no ``kid``: the only key, if there is exactly one), or None."""
        if self._clock() - self._fetched_at >= self._max_age_s and not (self._lock.locked() and self._find(kid)):
            await self._fetch(self._fetched_at)
        found = self._find(kid)
        if found is None and self._clock() - self._refetched_at >= REFETCH_INTERVAL_S:
            self._refetched_at = self._clock()
            await self._fetch(self._fetched_at)
            found = self._find(kid)
        return found

    def public_key(self, jwk: dict[str, Any], alg: str) -> Any:
        """The key object of ``jwk`` for ``alg`` (``jwt.PyJWTError`` if it is not one), built once per fetch:
        building an RSA key from its JWK costs more than checking a signature with it."""
        slot = (jwk.get("kid"), alg)
        if slot not in self._prepared:
            self._prepared[slot] = jwt.PyJWK(jwk, algorithm=alg).key
        return self._prepared[slot]

    async def _download(self) -> bytes:
        with anyio.fail_after(self._deadline_s):
            async with self._http.stream("GET", self._url, headers={"accept": "application/json"}) as response:
                response.raise_for_status()
                return await _read_capped(response, _MAX_JWKS_BYTES)

    def _find(self, kid: str | None) -> dict[str, Any] | None:
        if kid is None:
            return self._keys[0] if len(self._keys) == 1 else None
        return next((k for k in self._keys if k.get("kid") == kid), None)

    async def _fetch(self, seen: float) -> None:
        async with self._lock:
            if self._fetched_at != seen:
                return  # another request fetched while this one waited
            try:
                body = json.loads(await self._download())
                keys = body.get("keys") if isinstance(body, dict) else None
                if not isinstance(keys, list):
                    raise ValueError("the document has no 'keys' list")
            # RecursionError: json.loads on a document nested too deep (it is not a ValueError).
            except (httpx2.HTTPError, ValueError, RecursionError, TimeoutError) as exc:
                reason = exc if str(exc) else f"no complete answer within {self._deadline_s:g} s"
                log.warning("could not fetch the OAuth issuer's keys from %s: %s", self._url, reason)
                # Keep what was known; try again after the normal refetch interval, not on every request.
                self._fetched_at = self._clock() - self._max_age_s + REFETCH_INTERVAL_S
                return
            # A key id that is not a string names no key a token can ask for (and cannot key the cache).
            self._keys = [k for k in keys if isinstance(k, dict) and isinstance(k.get("kid", ""), str)]
            self._prepared = {}
            self._fetched_at = self._clock()
            log.info("fetched %d OAuth signing key(s) from %s", len(self._keys), self._url)


async def _read_capped(response: httpx2.Response, limit: int) -> bytes:
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > limit:
            raise ValueError(f"the JWKS is larger than {limit} bytes")
    return bytes(data)


def _short(value: object) -> str:
    """A header value for a log line: quoted, escaped, and cut short (the sender chose it)."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _scopes(claims: Mapping[str, Any]) -> list[str]:
    scope = claims.get("scope", claims.get("scp", []))
    if isinstance(scope, str):
        return scope.split()
    return [s for s in scope if isinstance(s, str)] if isinstance(scope, list) else []


class JwtVerifier:
    """Verifies JWT access tokens for one issuer and one resource (see the module docstring)."""

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks: Jwks,
        algorithms: list[str],
        leeway_s: float,
        clock: Clock,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self._jwks = jwks
        self._algorithms = frozenset(algorithms)
        self._leeway_s = leeway_s
        self._clock = clock
        self._verified: dict[bytes, tuple[Access, str | None, dict[str, Any], float]] = {}

    def owner(self, subject: str) -> str:
        """The owner key of the token subject ``subject``: one per person or agent of this issuer."""
        return oauth_owner(self.issuer, subject)

    async def verify(self, token: str) -> Access | None:
        """The token's ``Access`` (``client_id`` is its owner key), or None when it is refused.

        A token verified before is answered from memory while its ``exp`` holds and the key that
        signed it is still the issuer's current one (a refetched JWKS invalidates it), which saves
        the signature check on every request of a session.
        """
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        if (hit := self._verified.get(digest)) is not None:
            access, kid, jwk, exp = hit
            if self._clock() <= exp + self._leeway_s and await self._jwks.key(kid) is jwk:
                return access
            del self._verified[digest]
        try:
            claims, kid, jwk = await self._claims(token)
        except _Refused as exc:
            log.info("bearer token refused: %s", exc)
            return None
        access = self._access_token(token, claims)
        if len(self._verified) >= _VERIFIED_MAX:
            del self._verified[next(iter(self._verified))]  # the oldest
        self._verified[digest] = (access, kid, jwk, claims["exp"])
        return access

    def _access_token(self, token: str, claims: dict[str, Any]) -> Access:
        client = claims.get("client_id", claims.get("azp"))
        return Access(
            token=token,
            client_id=self.owner(claims["sub"]),
            subject=claims["sub"],
            scopes=_scopes(claims),
            resource=self.audience,
            claims={"iss": self.issuer, "client_id": client if isinstance(client, str) else None},
        )

    async def _claims(self, token: str) -> tuple[dict[str, Any], str | None, dict[str, Any]]:
        """The verified claims, the key id and the JWK that signed them; ``_Refused`` otherwise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _Refused(f"not a JWT ({exc})") from None
        alg = header.get("alg")
        # The sender chose the header: a list or object here must be refused, not hashed (TypeError, a 500).
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise _Refused(f"algorithm {_short(alg)} is not one of {sorted(self._algorithms)}")
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        jwk = await self._jwks.key(kid)
        if jwk is None:
            raise _Refused(f"key id {_short(kid)} is not among the issuer's keys")
        fits = jwk.get("kty") == _KEY_TYPES.get(str(alg)[:2]) and jwk.get("alg", alg) == alg
        if not fits or jwk.get("use", "sig") != "sig":
            raise _Refused(f"key {_short(kid)} is not a {alg} signing key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._jwks.public_key(jwk, alg),
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                # Time is checked below against the injected clock.
                options={"require": ["iss", "aud", "sub", "exp"], "verify_exp": False, "verify_nbf": False,
                         "verify_iat": False},
            )  # fmt: skip
        except jwt.PyJWTError as exc:
            raise _Refused(str(exc)) from None
        now = self._clock()
        exp, nbf, sub = claims["exp"], claims.get("nbf", -math.inf), claims["sub"]
        if not isinstance(exp, int | float) or not isinstance(nbf, int | float):
            raise _Refused("exp or nbf is not a number")
        if now > exp + self._leeway_s:
            raise _Refused("the token has expired")
        if now + self._leeway_s < nbf:
            raise _Refused("the token is not valid yet (nbf)")
        if not isinstance(sub, str) or not sub:
            raise _Refused("the token has no subject (sub)")
        return claims, kid, jwk


class _Refused(Exception):
    """Why a token was refused; logged, never shown to the caller (the SDK answers 401)."""
