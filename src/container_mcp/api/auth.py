"""Bearer-token authentication: each accepted API key is an owner.

* Keys come from ``Settings.all_api_keys()`` (``--api-key``, repeatable, ``--api-keys-file``, or
  ``CONTAINER_MCP_API_KEYS``), read once when the app is built.
* A request's key is hashed (SHA-256) and the digest compared with every configured key's digest
  using ``hmac.compare_digest``, all of them every time, so the time taken says nothing about
  which key, or which prefix of one, was close.
* The owner key given to the ``ContainerService`` is ``apikey:`` + the first 32 hex digits of the
  key's SHA-256: stable across restarts (the session store keeps who owns what), distinct per key,
  and useless to anyone who reads it. The key itself never reaches a log or the session store.
* A missing or wrong key answers 401 in OpenAI's envelope (OpenAI's own wording and codes, minus
  any echo of the key).
* **No keys configured** means anonymous mode: any bearer, or none, is the one owner
  ``apikey:anonymous``. ``serve_api`` allows that only on a loopback host (and logs a warning),
  because then only local processes can reach the server; on any other host it refuses to start.
  ``create_app`` itself does not know the host, so the check lives in ``serve_api``.
* ``/openapi.json`` is public: it describes the API, not anyone's data.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import api_error_response

__all__ = ["ANONYMOUS_OWNER", "PUBLIC_PATHS", "ApiKeys", "BearerAuth", "is_loopback", "owner_for_key"]

ANONYMOUS_OWNER = "apikey:anonymous"
PUBLIC_PATHS = frozenset({"/openapi.json", "/v1/openapi.json"})

_MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_WRONG = (
    "Incorrect API key provided. Use one of the keys this server was started with (--api-key, "
    "--api-keys-file or CONTAINER_MCP_API_KEYS)."
)


def owner_for_key(key: str) -> str:
    """The owner key of an API key: never the key itself."""
    return "apikey:" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``): reachable only from this machine."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ApiKeys:
    """The accepted keys, kept only as SHA-256 digests."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = [hashlib.sha256(k.encode("utf-8")).digest() for k in keys]

    @property
    def anonymous(self) -> bool:
        return not self._digests

    def owner(self, authorization: str | None) -> str | None:
        """The owner for an ``Authorization`` header value, or None when it is not accepted."""
        if self.anonymous:
            return ANONYMOUS_OWNER
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        token = token.strip()
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        return owner_for_key(token) if matched else None


class BearerAuth:
    """ASGI middleware: sets ``scope["state"]["owner"]`` or answers 401."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        authorization: str | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value.decode("utf-8", "surrogateescape")
                break
        owner = self.keys.owner(authorization)
        if owner is None:
            missing = not authorization or not authorization.strip().partition(" ")[2].strip()
            response = api_error_response(
                401,
                _MISSING if missing else _WRONG,
                code=None if missing else "invalid_api_key",
                headers={"www-authenticate": 'Bearer realm="container-mcp"'},
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["owner"] = owner
        await self.app(scope, receive, send)
