"""Which ``Host`` and ``Origin`` header values an HTTP entry point accepts (DNS-rebinding protection).

A web page can make a browser send requests to a server on the user's machine or network, by
pointing a name it controls at that address (DNS rebinding) or by posting across origins. Such a
request names the attacker's host in ``Host`` or its page in ``Origin``; refusing every value not
allowed here stops it. Non-browser clients (SDKs, curl) send the ``Host`` they connected to and no
``Origin``, so they pass untouched.

* ``Host`` must name this server: ``localhost``, ``127.0.0.1``, ``[::1]``, the bound address (not
  ``0.0.0.0``/``::``, which no client names), or a name in ``Settings.allowed_hosts``. A name
  without a port matches any port; ``name:port`` only that port (``name:*``, the SDK's spelling,
  also means any port).
* ``Origin``, when present, must be the origin (http or https) of an allowed host, or one in
  ``Settings.allowed_origins``: exact, or ``scheme://name:*`` for any port. ``Origin: null``
  (sandboxed frames, files) is refused.

This module is the one statement of that policy. The REST API checks it directly
(``api/origin.py``); the MCP transports hand it to the SDK's own check in the SDK's list form
(``OriginPolicy.sdk_hosts``/``sdk_origins``, used by ``server/http.py``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from .settings import Settings

__all__ = ["OriginPolicy", "split_host"]

_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")

_SCHEMES = ("http", "https")


def split_host(value: str) -> tuple[str, str | None] | None:
    """``name[:port]`` -> (lower-case name, port, ``*`` or None); IPv6 stays bracketed. None if malformed."""
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
    """The allowed hosts and origins of one server bound to ``bound_host``.

    Raises ``ValueError`` naming the entry for a ``hosts`` entry that is not ``name`` or
    ``name:port`` (``Settings`` refuses those already, so ``from_settings`` does not raise).
    """

    def __init__(self, bound_host: str, hosts: Iterable[str] = (), origins: Iterable[str] = ()) -> None:
        self._any_port: dict[str, None] = dict.fromkeys(_LOOPBACK_NAMES)  # ordered sets: stable messages and lists
        bound = _host_name(bound_host)
        if bound is not None:
            self._any_port[bound] = None
        self._exact: dict[tuple[str, str], None] = {}
        for entry in hosts:
            split = split_host(entry)
            if split is None:
                raise ValueError(f"CONTAINER_MCP_ALLOWED_HOSTS entry {entry!r} is not a host name or name:port")
            name, port = split
            if port is None or port == "*":
                self._any_port[name] = None
            else:
                self._exact[name, port] = None
        self._origins: dict[str, None] = {}
        self._origin_any_port: dict[str, None] = {}
        for entry in origins:
            origin = entry.strip().lower().rstrip("/")
            if origin.endswith(":*"):
                self._origin_any_port[origin[:-2]] = None
            else:
                self._origins[origin] = None

    @classmethod
    def from_settings(cls, settings: Settings, bound_host: str) -> OriginPolicy:
        """The policy of a server bound to ``bound_host`` under ``settings``."""
        return cls(bound_host, settings.allowed_hosts, settings.allowed_origins)

    @property
    def host_names(self) -> list[str]:
        """The allowed hosts, for messages."""
        return sorted(self._any_port) + sorted(f"{n}:{p}" for n, p in self._exact)

    def host_allowed(self, host: str) -> bool:
        split = split_host(host)
        if split is None or split[1] == "*":
            return False
        name, port = split
        return name in self._any_port or (port is not None and (name, port) in self._exact)

    def origin_allowed(self, origin: str) -> bool:
        origin = origin.strip().lower().rstrip("/")
        if origin in self._origins:
            return True
        parts = urlsplit(origin)
        if parts.scheme not in _SCHEMES or not parts.netloc or parts.path or parts.query:
            return False
        try:
            port = parts.port
        except ValueError:  # a port out of range or not a number
            return False
        if port is not None and f"{parts.scheme}://{parts.hostname}" in self._origin_any_port:
            return True
        return self.host_allowed(parts.netloc)

    # The SDK's TransportSecuritySettings matches a value exactly or as ``prefix:*`` (any port), so the
    # same policy is spelled out as those two forms.

    def sdk_hosts(self) -> list[str]:
        """The allowed ``Host`` values in the SDK's list form."""
        return [*self._sdk_any_port(self._any_port), *(f"{n}:{p}" for n, p in self._exact)]

    def sdk_origins(self) -> list[str]:
        """The allowed ``Origin`` values in the SDK's list form."""
        own = [f"{s}://{n}" for n in self._any_port for s in _SCHEMES]
        exact = [f"{s}://{n}:{p}" for n, p in self._exact for s in _SCHEMES]
        return [*self._sdk_any_port(own), *exact, *self._origins, *(f"{o}:*" for o in self._origin_any_port)]

    @staticmethod
    def _sdk_any_port(names: Iterable[str]) -> list[str]:
        return [form for name in names for form in (name, f"{name}:*")]
