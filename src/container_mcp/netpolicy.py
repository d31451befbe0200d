"""Network policy: what a caller may list, what the operator opens, and the one validation of both.

A caller's ``network_policy.allowed_domains`` entries are host names (``pypi.org`` — it and its
subdomains; ``*.pypi.org`` means the same) or public IP literals (reached exactly). Nothing
else: no URL, path, port, user info, inner or trailing wildcard, no single-label name (``com``,
``*.com``: a whole top-level domain), and no address a sandbox must
never reach (loopback, private, link-local, metadata, ...: see ``addresses.forbidden_reason``),
in whatever spelling. ``check_network_policy`` enforces this at ``container_create`` — the MCP
tool and ``POST /v1/containers`` both go through it — before anything is created.

Only the operator (``EgressRules``, from ``CONTAINER_MCP_EGRESS_ALLOW_NETWORKS`` and
``CONTAINER_MCP_EGRESS_PORTS``) can open more: networks (CIDRs) whose addresses may then be
reached, host names that may resolve to *private* addresses (a company package mirror), and the
destination ports (80 and 443 by default). Callers still have to list a destination; the
operator's rules only lift the address filter for it.

The egress proxy (``sandbox/egress.py``) applies the same rules to every connection, to the
address it is about to connect to — after resolving a name — so a name that resolves to a
forbidden address is refused as a literal would be.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .addresses import InvalidAddress, IPAddress, forbidden_reason, is_internal, parse_ip, unwrap
from .errors import InvalidRequest
from .models import NetworkPolicy

__all__ = [
    "DEFAULT_PORTS",
    "MAX_ENTRIES",
    "Allowlist",
    "EgressRules",
    "Entry",
    "InvalidHost",
    "check_network_policy",
    "normalize_host",
    "parse_entry",
    "parse_host",
]

DEFAULT_PORTS = ("80", "443")
MAX_ENTRIES = 256
MAX_ENTRY_CHARS = 253

_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_OPENING = "an operator can open a trusted internal service with CONTAINER_MCP_EGRESS_ALLOW_NETWORKS"


class InvalidHost(ValueError):
    """A host that is neither a valid DNS name nor an IP literal; the message says why."""


def parse_host(host: str) -> tuple[str, IPAddress | None]:
    """``host``'s canonical text and, for an IP literal in any spelling, its address.

    Names become lower-case ASCII (IDNA) without trailing dot; IP literals their canonical text
    (IPv4-mapped ones their IPv4 address). Raises ``InvalidHost`` for anything else (empty
    labels, ports, user info...).
    """
    ip = _ip(host)
    if ip is None:
        name = _dns_name(host)
        # IDNA maps full-width digits and dots to ASCII: "１２７。０。０。１" is an address too.
        ip = _ip(name)
        if ip is None:
            return name, None
    return ip.compressed, ip


def normalize_host(host: str) -> str:
    """The canonical text of ``host`` (see ``parse_host``); raises ``InvalidHost``."""
    return parse_host(host)[0]


def _ip(host: str) -> IPAddress | None:
    try:
        ip = parse_ip(host)
    except InvalidAddress as exc:
        raise InvalidHost(str(exc)) from None
    return unwrap(ip) if ip is not None else None


def _dns_name(host: str) -> str:
    h = host.strip().rstrip(".").lower()
    if not h:
        raise InvalidHost("empty host name")
    try:
        h = h.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidHost(f"{host[:100]!r} is not a valid host name") from None
    if len(h) > MAX_ENTRY_CHARS or not all(_LABEL.match(label) for label in h.split(".")):
        raise InvalidHost(
            f"{host[:100]!r} is not a valid host name (letters, digits, '-' and '_' in dot-separated labels "
            "of at most 63 characters)"
        )
    return h


@dataclass(frozen=True)
class Entry:
    """One parsed allowlist entry: a DNS name (with its subdomains) or an exact address."""

    name: str | None = None
    address: IPAddress | None = None


def parse_entry(entry: str) -> Entry:
    """Parse one ``allowed_domains`` entry; raises ``InvalidHost`` saying what is wrong and what to write.

    Only the form is checked here (an address literal is parsed, not judged).
    """
    if not isinstance(entry, str) or not entry.strip():
        raise InvalidHost("an entry must be a non-empty host name, e.g. 'pypi.org'")
    e = entry.strip()
    if len(e) > MAX_ENTRY_CHARS:
        raise InvalidHost(f"an entry is at most {MAX_ENTRY_CHARS} characters (a host name)")
    if "://" in e:
        raise InvalidHost("a URL is not an entry; give the host name only, e.g. 'pypi.org' for https://pypi.org/simple")
    if "/" in e or "\\" in e:
        raise InvalidHost("an entry is a host name, without a path, e.g. 'pypi.org'")
    if "@" in e:
        raise InvalidHost("an entry is a host name, without user info")
    if any(c.isspace() for c in e):
        raise InvalidHost("a host name has no spaces")
    wildcard = e.startswith("*.")
    body = e[2:] if wildcard else e
    if "*" in body:
        raise InvalidHost("a wildcard may only be a leading '*.' label, e.g. '*.pythonhosted.org'")
    if _has_port(body):
        raise InvalidHost(
            "an entry has no port; ports are set by the operator (CONTAINER_MCP_EGRESS_PORTS, 80 and 443 by default)"
        )
    name, ip = parse_host(body)
    if ip is not None:
        if wildcard:
            raise InvalidHost("a wildcard applies to host names, not IP addresses")
        return Entry(address=ip)
    return Entry(name=name)


def _has_port(body: str) -> bool:
    if body.startswith("["):
        return not body.endswith("]")
    # One colon is host:port; an IPv6 literal has at least two.
    return body.count(":") == 1


@dataclass(frozen=True)
class Allowlist:
    """A caller's normalised allowlist: names (matching themselves and their subdomains) and exact IPs."""

    domains: frozenset[str]
    addresses: frozenset[str]

    @classmethod
    def from_domains(cls, entries: Iterable[str]) -> Allowlist:
        """Build from ``network_policy.allowed_domains``; raises ``InvalidHost`` for a malformed entry."""
        domains: set[str] = set()
        addresses: set[str] = set()
        for entry in entries:
            parsed = parse_entry(entry)
            if parsed.address is not None:
                addresses.add(parsed.address.compressed)
            elif parsed.name is not None:
                domains.add(parsed.name)
        return cls(frozenset(domains), frozenset(addresses))

    def allows(self, host: str) -> bool:
        """Whether ``host`` (any spelling) is listed. Invalid hosts are not."""
        try:
            h = normalize_host(host)
        except InvalidHost:
            return False
        if h in self.addresses:
            return True
        return any(h == d or h.endswith("." + d) for d in self.domains)

    def describe(self) -> str:
        return ", ".join(sorted(self.domains | self.addresses))


def _port_ranges(values: Iterable[str]) -> tuple[tuple[int, int], ...]:
    ranges: list[tuple[int, int]] = []
    for value in values:
        text = str(value).strip()
        lo_text, sep, hi_text = text.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if sep else lo
        except ValueError:
            raise ValueError(f"egress port {text!r} is not a port number or a range like 8000-8100") from None
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"egress port {text!r} is outside 1-65535 (or the range is reversed)")
        ranges.append((lo, hi))
    if not ranges:
        raise ValueError("at least one egress port is needed (the default is 80,443)")
    return tuple(sorted(set(ranges)))


def _operator_entry(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | str:
    t = text.strip()
    if "/" in t:
        try:
            return ipaddress.ip_network(t, strict=False)
        except ValueError:
            raise ValueError(f"egress network {t!r} is not a valid CIDR (e.g. 10.20.0.0/16)") from None
    try:
        ip = _ip(t)
    except InvalidHost as exc:
        raise ValueError(f"egress network {t!r}: {exc}") from None
    if ip is not None:
        return ipaddress.ip_network(ip)
    wildcard = t.startswith("*.")
    try:
        name = _dns_name(t[2:] if wildcard else t)
    except InvalidHost as exc:
        raise ValueError(f"egress host {t!r}: {exc}") from None
    return "*." + name if wildcard else name


@dataclass(frozen=True)
class EgressRules:
    """The operator's egress settings; immutable and hashable (part of the sandbox configuration).

    * ``networks``: addresses in these networks may be reached although forbidden by default —
      except the unspecified address, multicast and broadcast, which are never destinations.
    * ``hosts``: these names (``*.corp.example``: its subdomains) may resolve to private or
      shared (CGNAT) addresses; never to loopback, link-local or metadata addresses.
    * ``ports``: destination port ranges (inclusive).
    """

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    hosts: tuple[str, ...] = ()
    ports: tuple[tuple[int, int], ...] = ((80, 80), (443, 443))

    @classmethod
    def parse(cls, allow: Sequence[str] = (), ports: Sequence[str] = DEFAULT_PORTS) -> EgressRules:
        """From the settings' text; raises ``ValueError`` naming the bad value."""
        networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        hosts: list[str] = []
        for text in allow:
            if not text.strip():
                continue
            parsed = _operator_entry(text)
            if isinstance(parsed, str):
                hosts.append(parsed)
            else:
                networks.append(parsed)
        return cls(tuple(networks), tuple(hosts), _port_ranges(ports))

    def port_allowed(self, port: int) -> bool:
        return any(lo <= port <= hi for lo, hi in self.ports)

    def describe_ports(self) -> str:
        return ", ".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ports)

    def refusal(self, ip: IPAddress, name: str | None = None) -> str | None:
        """Why ``ip`` (reached as ``name``, when it was resolved from one) is refused, or None.

        ``ip`` is judged after unwrapping an IPv4-mapped form, so ``::ffff:10.0.0.1`` is
        ``10.0.0.1`` here too.
        """
        ip = unwrap(ip)
        reason = forbidden_reason(ip)
        if reason is None:
            return None
        if ip.is_unspecified or ip.is_multicast or ip == _BROADCAST:
            return reason  # never a destination, whatever the operator wrote
        if any(ip.version == net.version and ip in net for net in self.networks):
            return None
        if name is not None and is_internal(ip) and self._host_opened(name):
            return None
        return reason

    def _host_opened(self, name: str) -> bool:
        for host in self.hosts:
            if host.startswith("*."):
                if name.endswith(host[1:]):
                    return True
            elif name == host:
                return True
        return False


def check_network_policy(policy: NetworkPolicy, rules: EgressRules) -> None:
    """Validate ``policy`` for a new container; raises ``InvalidRequest`` naming the first bad entry.

    The ``param`` is ``network_policy.allowed_domains[i]``; nothing about the entry is guessed
    or rewritten (a container stores the entries exactly as given).
    """
    entries = policy.allowed_domains or []
    if len(entries) > MAX_ENTRIES:
        raise InvalidRequest(
            f"network_policy.allowed_domains has {len(entries)} entries; at most {MAX_ENTRIES} are allowed.",
            param="network_policy.allowed_domains",
        )
    for i, entry in enumerate(entries):
        param = f"network_policy.allowed_domains[{i}]"
        shown = repr(entry[:100]) if isinstance(entry, str) else repr(entry)
        try:
            parsed = parse_entry(entry)
        except InvalidHost as exc:
            raise InvalidRequest(f"Invalid {param} {shown}: {exc}.", param=param) from None
        if parsed.address is not None:
            reason = rules.refusal(parsed.address)
            if reason is not None:
                raise InvalidRequest(
                    f"Invalid {param} {shown}: {parsed.address} is {reason}, which commands may not reach. "
                    f"List public host names or addresses only ({_OPENING}).",
                    param=param,
                )
        elif parsed.name is not None and (parsed.name == "localhost" or parsed.name.endswith(".localhost")):
            raise InvalidRequest(
                f"Invalid {param} {shown}: 'localhost' names always mean a loopback address, which commands may "
                "not reach. List public host names only.",
                param=param,
            )
        elif parsed.name is not None and "." not in parsed.name:
            # 'com' (or '*.com') matches every name under a top-level domain; a host on the
            # search domain of the server's resolver is no business of the caller either.
            raise InvalidRequest(
                f"Invalid {param} {shown}: a single-label name would open a whole top-level domain (or a name "
                "only the server's own resolver completes). List the host names themselves, e.g. 'pypi.org' or "
                "'*.pythonhosted.org'.",
                param=param,
            )
