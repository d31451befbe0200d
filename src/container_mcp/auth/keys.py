"""Static API keys: each accepted key is an owner.

* Keys come from ``Settings.all_api_keys()`` (``CONTAINER_MCP_API_KEYS``, ``--api-keys-file``, or
  the discouraged ``--api-key`` flag), read once at start, and are kept only as SHA-256 digests.
* A presented token is hashed and its digest compared with every configured digest using
  ``hmac.compare_digest``, all of them every time, so the time taken says nothing about which key,
  or which prefix of one, was close.
* The owner of a key is ``apikey:`` + the first 32 hex digits of its SHA-256: stable across
  restarts (the session store keeps who owns what), distinct per key, and useless to anyone who
  reads it. The key itself never reaches a log or the session store.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["ApiKeys", "owner_for_key"]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def owner_for_key(key: str) -> str:
    """The owner key of an API key: never the key itself."""
    return "apikey:" + _digest(key).hex()[:32]


class ApiKeys:
    """The accepted keys, kept only as SHA-256 digests."""

    def __init__(self, keys: list[str]) -> None:
        self._digests = [_digest(k) for k in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def owner(self, token: str) -> str | None:
        """The owner of ``token`` (the bare bearer token), or None when it is not an accepted key."""
        digest = _digest(token)
        matched = False
        for known in self._digests:
            matched |= hmac.compare_digest(digest, known)
        return owner_for_key(token) if matched else None
