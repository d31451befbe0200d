"""Bearer-token authentication of the REST API: each accepted token is an owner.

* Tokens are checked by the process's one ``BearerVerifier`` (``container_mcp.auth``), the same
  the MCP HTTP transports use: static API keys (hashed, compared in constant time) and, in OAuth
  mode, JWT access tokens. The owner given to the ``ContainerService`` is the token's owner key
  (``apikey:<digest>`` or ``oauth:<issuer, %-encoded>:<subject>``), never the token.
* A missing or refused token answers 401 in OpenAI's envelope (OpenAI's own wording and codes, minus
  any echo of the token); a valid JWT without a required scope answers 403 ``insufficient_scope``.
* **No keys and no OAuth** means anonymous mode: any bearer, or none, is the one owner
  ``apikey:anonymous``. ``serve_api`` allows that only on a loopback host
  (``serving.refuse_unauthenticated_exposure``).
* ``/openapi.json`` is public: it describes the API, not anyone's data.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from ..auth import BearerVerifier
from .errors import api_error_response

__all__ = ["ANONYMOUS_OWNER", "PUBLIC_PATHS", "BearerAuth"]

ANONYMOUS_OWNER = "apikey:anonymous"
PUBLIC_PATHS = frozenset({"/openapi.json", "/v1/openapi.json"})

_MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_WRONG = (
    "Incorrect API key provided. Use one of the keys this server was started with (CONTAINER_MCP_API_KEYS "
    "or --api-keys-file), or a valid access token from its OAuth issuer."
)
_CHALLENGE = {"www-authenticate": 'Bearer realm="container-mcp"'}


def _bearer(scope: Scope) -> str | None:
    """The bearer token of the request, or None when there is no ``Authorization: Bearer <token>``."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("utf-8", "surrogateescape").strip().partition(" ")
            if scheme.lower() != "bearer":
                return None
            return token.strip() or None
    return None


class BearerAuth:
    """ASGI middleware: sets ``scope["state"]["owner"]`` or answers 401/403."""

    def __init__(self, app: ASGIApp, verifier: BearerVerifier) -> None:
        self.app = app
        self.verifier = verifier

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        if not self.verifier.enabled:
            scope.setdefault("state", {})["owner"] = ANONYMOUS_OWNER
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        access = await self.verifier.verify_token(token) if token is not None else None
        if access is None:
            response = api_error_response(
                401, _MISSING if token is None else _WRONG, code=None if token is None else "invalid_api_key",
                headers=_CHALLENGE,
            )  # fmt: skip
            await response(scope, receive, send)
            return
        missing = [s for s in self.verifier.required_scopes if s not in access.scopes]
        if missing:
            response = api_error_response(
                403,
                f"This access token lacks the scope(s) {', '.join(missing)} that this server requires. Request a "
                "token with them from the authorization server.",
                code="insufficient_scope",
                headers={"www-authenticate": f'Bearer error="insufficient_scope", scope="{" ".join(missing)}"'},
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["owner"] = access.client_id
        await self.app(scope, receive, send)
