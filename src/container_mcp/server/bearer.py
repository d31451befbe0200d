"""The ``BearerVerifier`` (``auth/verifier.py``) in the SDK's terms: a ``TokenVerifier`` answering the
SDK's ``AccessToken``, and the ``AuthSettings`` that go with it.

Kept on the MCP side so that the REST API, which checks the same tokens, never imports ``mcp``.
"""

from __future__ import annotations

from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings

from ..auth import BearerVerifier

__all__ = ["SdkTokenVerifier", "auth_settings"]


class SdkTokenVerifier:
    """The SDK's ``TokenVerifier`` over ``verifier``: the same tokens, the same owners."""

    def __init__(self, verifier: BearerVerifier) -> None:
        self.verifier = verifier

    async def verify_token(self, token: str) -> AccessToken | None:
        access = await self.verifier.verify_token(token)
        if access is None:
            return None
        return AccessToken(
            token=access.token,
            client_id=access.client_id,
            scopes=access.scopes,
            resource=access.resource,
            subject=access.subject,
            claims=access.claims,
            # A JWT's exp is enforced by the verifier with the leeway; the SDK's own check would ignore it.
            expires_at=None,
        )


def auth_settings(verifier: BearerVerifier, own_url: str) -> AuthSettings:
    """The SDK's ``AuthSettings`` for ``verifier``; ``own_url`` is this server's base URL.

    In OAuth mode the SDK publishes RFC 9728 metadata for the resource URL, names it in the 401's
    ``WWW-Authenticate`` header and refuses tokens whose resource is another server's. With static
    keys only, no authorization server exists to point clients to: this server is the keys' issuer
    and no metadata is published.
    """
    jwt = verifier.oauth
    if jwt is None:
        return AuthSettings.model_validate({"issuer_url": own_url, "resource_server_url": None})
    # As strings, so that AuthSettings keeps them exactly as configured (no added "/"): clients compare
    # the published issuer with the authorization server's own metadata character by character.
    return AuthSettings.model_validate(
        {
            "issuer_url": jwt.issuer,
            "resource_server_url": jwt.audience,
            "required_scopes": verifier.required_scopes or None,
            "validate_token_resource": True,
        }
    )
