"""What an accepted bearer token grants: the caller's owner key and its scopes.

Our own type, not the SDK's ``AccessToken``: the REST API checks tokens too, and importing the
``mcp`` package costs it ~0.4 s of start-up. The MCP transports convert it (``server/bearer.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Access"]


@dataclass(frozen=True)
class Access:
    """An accepted token. ``client_id`` is the owner key (the session key the ``ContainerService``
    sees), ``resource`` the audience it was issued for (None for static keys without OAuth)."""

    token: str
    client_id: str
    scopes: list[str]
    resource: str | None = None
    subject: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
