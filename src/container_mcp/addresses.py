"""IP addresses as the egress rules see them: every spelling parsed, every forbidden range named.

``parse_ip`` turns any text a C library, a browser or ``curl`` would take for an IP address into
an ``ipaddress`` object: dotted quads, but also the legacy ``inet_aton`` forms (decimal
``2130706433``, octal ``0177.0.0.1``, hex ``0x7f.1``, short ``127.1``), with or without brackets,
a trailing dot or an IPv6 zone id (``fe80::1%eth0``: the zone is dropped, the address is judged).

``forbidden_reason`` says why an address must not be reached from a sandbox, or None for a
public unicast address. It relies on the standard ``ipaddress`` tables (``is_global``,
``is_private``, ``is_reserved``, ...) and adds only what they lack: the rest of 192.0.0.0/24 and
the 6to4 relay 192.88.99.0/24 (IPv4), deprecated site-local fec0::/10 (IPv6), and forms that
*embed* an IPv4 address, which are judged by that address: IPv4-mapped ``::ffff:a.b.c.d``,
NAT64 ``64:ff9b::/96`` and 6to4 ``2002::/16``. Forms that are never a legitimate destination are
refused whatever they embed: IPv4-compatible ``::a.b.c.d`` (deprecated), local-use NAT64
``64:ff9b:1::/48`` and Teredo ``2001::/32``.
"""

from __future__ import annotations

import ipaddress
import re
import socket

__all__ = ["IPAddress", "InvalidAddress", "forbidden_reason", "is_internal", "parse_ip", "unwrap"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LEGACY_IPV4 = re.compile(r"^[0-9a-fx.]+$")
_NUMBER = re.compile(r"^(?:[0-9]+|0x[0-9a-f]*)$")

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network
# What the 3.11 tables lack (later Pythons have some of it).
_V4_SPECIAL = (_V4("192.0.0.0/24"), _V4("192.88.99.0/24"))
_V4_SHARED = _V4("100.64.0.0/10")
_V6_COMPATIBLE = _V6("::/96")
_V6_NAT64 = _V6("64:ff9b::/96")
_V6_NAT64_LOCAL = _V6("64:ff9b:1::/48")
# RFC 1918 and ULA: a subset of ``is_private`` that an operator may open by host name.
_PRIVATE = (_V4("10.0.0.0/8"), _V4("172.16.0.0/12"), _V4("192.168.0.0/16"), _V6("fc00::/7"))
_METADATA = ipaddress.IPv4Address("169.254.169.254")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class InvalidAddress(ValueError):
    """Text that looks like an IP address (it ends in a number) but is not a valid one."""


def parse_ip(text: str) -> IPAddress | None:
    """The address ``text`` denotes in any accepted spelling, or None when it is not an IP literal.

    Raises ``InvalidAddress`` for text that can only have been meant as an address but is not
    one (``1.2.3.4.5``, ``999.1.1.1``, ``::ffff:0177.0.0.1``): clients disagree on such input,
    so it is refused rather than guessed.
    """
    h = text.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
        bracketed = True
    else:
        bracketed = False
    if ":" in h:
        h = h.partition("%")[0]  # an IPv6 zone id names an interface, not a destination
        try:
            return ipaddress.IPv6Address(h)
        except ValueError:
            raise InvalidAddress(f"{text!r} is not a valid IPv6 address") from None
    if bracketed:
        raise InvalidAddress(f"{text!r}: only IPv6 addresses are written in brackets")
    h = h.rstrip(".")
    try:
        return ipaddress.IPv4Address(h)
    except ValueError:
        pass
    if _LEGACY_IPV4.match(h):
        try:
            # inet_aton is exactly the legacy grammar: 1-4 parts, each decimal, 0-octal or 0x-hex.
            return ipaddress.IPv4Address(socket.inet_aton(h))
        except OSError:
            pass
    labels = h.split(".")
    if labels and _NUMBER.match(labels[-1]):
        raise InvalidAddress(f"{text!r} ends in a number but is not a valid IPv4 address")
    return None


def unwrap(ip: IPAddress) -> IPAddress:
    """The IPv4 address behind an IPv4-mapped IPv6 address (what a dual-stack socket reaches)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_internal(ip: IPAddress) -> bool:
    """Whether ``ip`` is a private (RFC 1918, ULA) or shared (CGNAT) unicast address: an internal host."""
    ip = unwrap(ip)
    if isinstance(ip, ipaddress.IPv4Address) and ip in _V4_SHARED:
        return True
    return any(ip.version == net.version and ip in net for net in _PRIVATE)


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why a sandbox must not reach ``ip`` ("a loopback address", ...), or None when it may."""
    ip = unwrap(ip)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded: ipaddress.IPv4Address | None = None
        if ip in _V6_COMPATIBLE and not (ip.is_unspecified or ip.is_loopback):
            return "an IPv4-compatible IPv6 address (deprecated; write the IPv4 address itself)"
        if ip.teredo is not None:
            return "a Teredo tunnel address"
        if ip in _V6_NAT64_LOCAL:
            return "a local-use NAT64 address"
        if ip in _V6_NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        elif ip.sixtofour is not None:
            embedded = ip.sixtofour
        if embedded is not None:
            inner = forbidden_reason(embedded)
            return f"an IPv6 address embedding {embedded}, {inner}" if inner else None
    if ip.is_unspecified:
        return "the unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip == _METADATA:
        return "the cloud metadata address (link-local)"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip == _BROADCAST:
        return "the broadcast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in _V4_SHARED:
        return "a shared (carrier-grade NAT) address"
    if any(ip.version == net.version and ip in net for net in _PRIVATE):
        return "a private address"
    if (
        not ip.is_global
        or ip.is_reserved
        or (isinstance(ip, ipaddress.IPv4Address) and any(ip in net for net in _V4_SPECIAL))
        or (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)
    ):
        return "a reserved or special-purpose address (not publicly routable)"
    return None
