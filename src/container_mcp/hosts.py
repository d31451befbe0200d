"""Which ``Host`` and ``Origin`` header values an HTTP entry point accepts (DNS-rebinding protection).

A web page can make a browser send requests to a server on the user's machine or network, by
pointing a name it controls at that address (DNS rebinding) or by posting across origins. Such a
request names the attacker's host in ``Host`` or its page in ``Origin``; refusing every value not on
these lists stops it. The lists are the loopback names, the specific address the server is bound to
(not ``0.0.0.0``/``::``, which no real client names), and what the operator configured
(``Settings.allowed_hosts`` / ``allowed_origins``, e.g. the public name behind a reverse proxy).

Entries use the SDK's ``TransportSecuritySettings`` forms: an exact value, or ``value:*`` for any
port. A configured entry without a port is accepted bare and on any port.
"""

from __future__ import annotations

import ipaddress

from .settings import Settings

__all__ = ["allowed_hosts", "allowed_origins"]

_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def _host_literal(host: str) -> str | None:
    """``host`` as it appears in a Host header, or None for an unspecified (wildcard) address."""
    bare = host.strip("[]")
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        return host.lower()
    if address.is_unspecified:
        return None
    return f"[{address}]" if address.version == 6 else str(address)


def _has_port(value: str) -> bool:
    tail = value.rpartition(":")[2]
    return ":" in value.rpartition("]")[2] and (tail == "*" or tail.isdigit())


def _any_port(values: list[str]) -> list[str]:
    out: list[str] = []
    for value in values:
        out += [value] if _has_port(value) else [value, f"{value}:*"]
    return list(dict.fromkeys(out))


def allowed_hosts(settings: Settings, bound_host: str) -> list[str]:
    """Host header values accepted by a server bound to ``bound_host``."""
    names = [*_LOOPBACK_HOSTS]
    if (bound := _host_literal(bound_host)) is not None:
        names.append(bound)
    return _any_port([*names, *(h.strip().lower() for h in settings.allowed_hosts)])


def allowed_origins(settings: Settings, bound_host: str) -> list[str]:
    """Origin header values accepted by a server bound to ``bound_host`` (a request without one passes):
    the origins of every allowed host (http and https), and the configured ones."""
    names = [*_LOOPBACK_HOSTS]
    if (bound := _host_literal(bound_host)) is not None:
        names.append(bound)
    names += [h.strip().lower() for h in settings.allowed_hosts]
    origins = [f"{scheme}://{name}" for name in names for scheme in ("http", "https")]
    return _any_port([*origins, *(o.strip().rstrip("/").lower() for o in settings.allowed_origins)])
