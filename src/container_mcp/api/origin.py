"""DNS-rebinding and cross-site request defence: ``Host`` and ``Origin`` checked against allowlists.

A web page can make a browser send requests to ``127.0.0.1`` (a rebound DNS name, or a plain
cross-site POST); the browser then names the page's site in ``Host`` (rebinding) or ``Origin``
(cross-site). So:

* ``Host`` must name this server: ``localhost``, ``127.0.0.1``, ``[::1]``, the bound address, or a
  name in ``CONTAINER_MCP_ALLOWED_HOSTS``. A name without a port matches any port; ``name:port``
  only that port (``name:*``, the SDK's spelling, also means any port). Otherwise: 421.
* ``Origin``, when present, must be one in ``CONTAINER_MCP_ALLOWED_ORIGINS`` (exact, or
  ``scheme://name:*`` for any port), or name an allowed host (a page this server's own names
  serve). ``Origin: null`` (sandboxed frames, files) is refused. Otherwise: 403.

Both answer in OpenAI's error envelope. Non-browser clients (SDKs, curl) send the ``Host`` they
connected to and no ``Origin``, so they pass untouched.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import api_error_response

__all__ = ["HostOriginCheck", "OriginPolicy"]

log = logging.getLogger("container_mcp.api")

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def _split_host(value: str) -> tuple[str, str | None] | None:
    """``name[:port]`` -> (lower-case name, port or None); IPv6 stays bracketed. None if malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[: end + 1], value[end + 1 :]
        if rest and not rest.startswith(":"):
            return None
        port = rest[1:] if rest else None
    else:
        name, sep, port_text = value.partition(":")
        port = port_text if sep else None
    if not name or (port is not None and port != "*" and not port.isdigit()):
        return None
    return name, port


def _host_name(address: str) -> str | None:
    """The ``Host`` spelling of a bound address, or None for an unspecified one (0.0.0.0, ::)."""
    bare = address.strip("[]").lower()
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        return bare or None
    if ip.is_unspecified:
        return None
    return f"[{ip.compressed}]" if ip.version == 6 else ip.compressed


class OriginPolicy:
    """The allowed hosts and origins of one server."""

    def __init__(self, bound_host: str, hosts: Iterable[str] = (), origins: Iterable[str] = ()) -> None:
        self._any_port: set[str] = set(LOOPBACK_NAMES)
        bound = _host_name(bound_host)
        if bound is not None:
            self._any_port.add(bound)
        self._exact: set[tuple[str, str]] = set()
        for entry in hosts:
            split = _split_host(entry)
            if split is None:
                raise ValueError(f"CONTAINER_MCP_ALLOWED_HOSTS entry {entry!r} is not a host name or name:port")
            name, port = split
            if port is None or port == "*":
                self._any_port.add(name)
            else:
                self._exact.add((name, port))
        self._origins: set[str] = set()
        self._origin_any_port: set[str] = set()
        for entry in origins:
            origin = entry.strip().lower().rstrip("/")
            if origin.endswith(":*"):
                self._origin_any_port.add(origin[:-2])
            else:
                self._origins.add(origin)

    @property
    def host_names(self) -> list[str]:
        """The allowed hosts, for messages."""
        return sorted(self._any_port) + sorted(f"{n}:{p}" for n, p in self._exact)

    def host_allowed(self, host: str) -> bool:
        split = _split_host(host)
        if split is None or split[1] == "*":
            return False
        name, port = split
        return name in self._any_port or (port is not None and (name, port) in self._exact)

    def origin_allowed(self, origin: str) -> bool:
        origin = origin.strip().lower().rstrip("/")
        if origin in self._origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
            return False
        try:
            port = parts.port
        except ValueError:  # a port out of range or not a number
            return False
        if port is not None and f"{parts.scheme}://{parts.hostname}" in self._origin_any_port:
            return True
        return self.host_allowed(parts.netloc)


class HostOriginCheck:
    """ASGI middleware: 421 for a ``Host`` not served here, 403 for a foreign ``Origin``."""

    def __init__(self, app: ASGIApp, policy: OriginPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = origin = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value.decode("latin-1")
            elif name == b"origin":
                origin = value.decode("latin-1")
        if host is None or not self.policy.host_allowed(host):
            log.warning("refused a request for Host %r (not an allowed host)", (host or "")[:200])
            shown = f"'{host[:200]}'" if host else "(none)"
            response = api_error_response(
                421,
                f"Host {shown} is not served here. This server answers to {', '.join(self.policy.host_names)}; "
                "to reach it under another name, the operator adds that name to CONTAINER_MCP_ALLOWED_HOSTS.",
                code="invalid_host",
            )
        elif origin is not None and not self.policy.origin_allowed(origin):
            log.warning("refused a request from Origin %r (not an allowed origin)", origin[:200])
            response = api_error_response(
                403,
                f"Origin '{origin[:200]}' is not allowed: web pages of other sites may not call this API. If this "
                "page should, the operator adds its origin to CONTAINER_MCP_ALLOWED_ORIGINS.",
                code="invalid_origin",
            )
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)
