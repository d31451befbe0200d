"""Who may call the HTTP entry points: static API keys and OAuth 2.1 JWT access tokens, one verifier."""

from __future__ import annotations

from .access import Access
from .keys import ApiKeys, owner_for_key
from .verifier import BearerVerifier, open_verifier

__all__ = ["Access", "ApiKeys", "BearerVerifier", "open_verifier", "owner_for_key"]
