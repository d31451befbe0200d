"""Who is calling: the session key every tool passes to the ContainerService.

| transport                         | key                                   |
|-----------------------------------|---------------------------------------|
| stdio, in-memory                  | ``stdio:<settings.stdio_session_key>`` (one local user) |
| streamable HTTP, handshake era    | ``http:<Mcp-Session-Id>``             |
| SSE                               | ``sse:<session_id query parameter>``  |
| authenticated HTTP, any era       | the token's owner: ``apikey:<digest>`` or ``oauth:<issuer %-enc.>:<sub>`` |
| HTTP, 2026-07-28, no auth         | ``http:anonymous`` (the protocol has no session to tell clients apart) |

See ``mcp-sdk-2.md`` §2 for why each transport needs its own source. An authenticated caller's key
is the ``AccessToken.client_id`` our ``BearerVerifier`` set (``auth/verifier.py``): the same owner
as on the REST API, whatever session or protocol era the request uses. The SDK binds a
handshake-era session (``Mcp-Session-Id``, SSE ``session_id``) to the principal that opened it, so
another token presenting that id is refused by the transport before it gets here.
"""

from __future__ import annotations

from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.context import ServerRequestContext
from mcp.types.version import MODERN_PROTOCOL_VERSIONS

__all__ = ["session_key"]


def session_key(rc: ServerRequestContext[Any, Any], stdio_key: str) -> str:
    """The session key of the request ``rc``.

    Only identifiers the transport itself checked count: ``Mcp-Session-Id`` on a handshake-era
    request (the session manager routes it to a live session, or answers 404), and ``session_id``
    on the SSE messages route (the SSE transport routes it to a live stream). A 2026-07-28 request
    reaches the server without either check, so the same header or query on it would let a caller
    pick any session, another's included; it gets the anonymous key instead.
    """
    token = get_access_token()
    if token is not None:
        return token.client_id
    request = rc.request
    if request is None:
        return f"stdio:{stdio_key}"
    url = getattr(request, "url", None)
    path = str(getattr(url, "path", ""))
    query = getattr(request, "query_params", None) or {}
    if path.rstrip("/").endswith("/messages") and (sid := query.get("session_id")):
        return f"sse:{sid}"
    headers = getattr(request, "headers", None) or {}
    if rc.protocol_version not in MODERN_PROTOCOL_VERSIONS and (sid := headers.get("mcp-session-id")):
        return f"http:{sid}"
    return "http:anonymous"
