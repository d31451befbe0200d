"""Addresses and network-policy entries on their own: spellings, forbidden ranges, operator rules."""

from __future__ import annotations

import ipaddress

import pytest

from container_mcp.addresses import InvalidAddress, forbidden_reason, parse_ip
from container_mcp.errors import InvalidRequest
from container_mcp.models import NetworkPolicy
from container_mcp.netpolicy import MAX_ENTRIES, EgressRules, check_network_policy
from container_mcp.settings import Settings

LOOPBACK_SPELLINGS = [
    "127.0.0.1",
    "127.1",
    "127.0.1",
    "2130706433",
    "0177.0.0.1",
    "0177.1",
    "0x7f.0.0.1",
    "0x7f.1",
    "0x7f000001",
    "0X7F.0.0.1",
    "127.000.000.001",
    "127.0.0.1.",
    "127.255.255.254",
    "::1",
    "[::1]",
    "0:0:0:0:0:0:0:1",
    "::ffff:127.0.0.1",
    "[::ffff:127.0.0.1]",
    "::ffff:7f00:1",
    "::127.0.0.1",
    "64:ff9b::127.0.0.1",
    "64:ff9b::7f00:1",
    "2002:7f00:1::",
    "2002:7f00:1::1",
]
UNICODE_SPELLINGS = ["１２７.０.０.１", "127。0。0。1", "１６９.２５４.１６９.２５４"]
"""Not addresses to the address parser, but IDNA maps them to one: a host entry must not hide it."""
METADATA_SPELLINGS = [
    "169.254.169.254",
    "2852039166",
    "0xa9fea9fe",
    "0251.0376.0251.0376",
    "169.254.43518",
    "0xa9.0xfe.0xa9.0xfe",
    "::ffff:169.254.169.254",
    "::ffff:a9fe:a9fe",
    "64:ff9b::a9fe:a9fe",
    "2002:a9fe:a9fe::",
]
OTHER_FORBIDDEN = [
    "0.0.0.0",
    "0",
    "0.1.2.3",
    "::",
    "[::]",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",
    "169.254.1.1",
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "240.0.0.1",
    "192.0.0.8",
    "192.0.2.1",
    "198.51.100.1",
    "203.0.113.1",
    "198.18.0.1",
    "192.88.99.1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fe80::1%eth0",
    "[fe80::1%25eth0]",
    "fec0::1",
    "ff02::1",
    "2001:db8::1",
    "2001::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "64:ff9b:1::1",
    "::ffff:10.0.0.1",
    "::ffff:192.168.0.1",
    "64:ff9b::10.0.0.1",
    "2002:0a00:0001::",
    "100::1",
]
PUBLIC = ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:1.1.1.1", "64:ff9b::1.1.1.1", "2002:101:101::"]


@pytest.mark.parametrize("text", LOOPBACK_SPELLINGS)
def test_every_loopback_spelling_is_loopback(text: str) -> None:
    ip = parse_ip(text)
    assert ip is not None
    reason = forbidden_reason(ip)
    assert reason is not None and ("loopback" in reason or "IPv4-compatible" in reason), (text, reason)


@pytest.mark.parametrize("text", METADATA_SPELLINGS)
def test_every_metadata_spelling_is_refused(text: str) -> None:
    ip = parse_ip(text)
    assert ip is not None
    reason = forbidden_reason(ip)
    assert reason is not None and "metadata" in reason, (text, reason)


@pytest.mark.parametrize("text", OTHER_FORBIDDEN)
def test_special_purpose_addresses_are_refused(text: str) -> None:
    ip = parse_ip(text)
    assert ip is not None
    assert forbidden_reason(ip) is not None, text


@pytest.mark.parametrize("text", PUBLIC)
def test_public_addresses_are_allowed(text: str) -> None:
    ip = parse_ip(text)
    assert ip is not None
    assert forbidden_reason(ip) is None, text


@pytest.mark.parametrize("text", ["pypi.org", "deadbeef", "cafe.example", "xn--bcher-kva.example", "a-1.b"])
def test_names_are_not_addresses(text: str) -> None:
    assert parse_ip(text) is None


@pytest.mark.parametrize("text", ["1.2.3.4.5", "999.1.1.1", "example.123", "a.0x1", "::ffff:0177.0.0.1", "[1.2.3.4]"])
def test_ambiguous_numbers_are_invalid(text: str) -> None:
    with pytest.raises(InvalidAddress):
        parse_ip(text)


def test_operator_networks_open_exactly_what_they_name() -> None:
    rules = EgressRules.parse(["10.20.0.0/16", "127.0.0.1", "fd00:1::/32"])
    assert rules.refusal(ipaddress.ip_address("10.20.3.4")) is None
    assert rules.refusal(ipaddress.ip_address("::ffff:10.20.3.4")) is None
    assert rules.refusal(ipaddress.ip_address("10.21.0.1")) is not None
    assert rules.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert rules.refusal(ipaddress.ip_address("127.0.0.2")) is not None
    assert rules.refusal(ipaddress.ip_address("fd00:1::5")) is None
    # Never destinations, whatever the operator wrote.
    wide = EgressRules.parse(["0.0.0.0/0", "::/0"])
    for never in ("0.0.0.0", "::", "224.0.0.1", "255.255.255.255", "ff02::1"):
        assert wide.refusal(ipaddress.ip_address(never)) is not None, never


def test_operator_hosts_open_private_resolutions_only() -> None:
    rules = EgressRules.parse(["mirror.corp.example", "*.svc.example"])
    private = ipaddress.ip_address("10.1.2.3")
    assert rules.refusal(private, "mirror.corp.example") is None
    assert rules.refusal(private, "pkg.svc.example") is None
    assert rules.refusal(ipaddress.ip_address("100.64.1.1"), "mirror.corp.example") is None
    assert rules.refusal(private, "other.corp.example") is not None
    assert rules.refusal(private) is not None  # the literal itself is not opened by a host rule
    for never in ("127.0.0.1", "169.254.169.254", "fe80::1", "0.0.0.0"):
        assert rules.refusal(ipaddress.ip_address(never), "mirror.corp.example") is not None, never


def test_ports() -> None:
    rules = EgressRules()
    assert rules.port_allowed(80) and rules.port_allowed(443)
    assert not rules.port_allowed(22) and not rules.port_allowed(8080)
    wider = EgressRules.parse([], ["443", "8000-8100"])
    assert wider.port_allowed(8050) and not wider.port_allowed(80)
    assert wider.describe_ports() == "443, 8000-8100"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"egress_ports": "0"}, "outside 1-65535"),
        ({"egress_ports": "http"}, "not a port number"),
        ({"egress_ports": "9000-8000"}, "reversed"),
        ({"egress_ports": ""}, "at least one egress port"),
        ({"egress_allow_networks": "10.0.0.0/33"}, "not a valid CIDR"),
        ({"egress_allow_networks": "bad host!"}, "egress host"),
    ],
)
def test_bad_operator_settings_stop_the_server(overrides: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.isolated(**overrides)


def test_settings_parse_the_environment_forms() -> None:
    settings = Settings.isolated(
        egress_ports="80, 443,8000-8100", egress_allow_networks="10.0.0.0/8, mirror.corp.example"
    )
    rules = settings.egress_rules()
    assert rules.ports == ((80, 80), (443, 443), (8000, 8100))
    assert rules.networks == (ipaddress.ip_network("10.0.0.0/8"),) and rules.hosts == ("mirror.corp.example",)
    assert Settings.isolated().egress_rules() == EgressRules()


BAD_ENTRIES = [
    ("", "non-empty"),
    ("   ", "non-empty"),
    ("https://pypi.org", "URL"),
    ("http://pypi.org/simple", "URL"),
    ("pypi.org/simple", "path"),
    ("pypi.org:443", "no port"),
    ("[2606:4700::1111]:443", "no port"),
    ("*", "wildcard"),
    ("*.", "host name"),
    ("a.*.example.com", "wildcard"),
    ("*pypi.org", "wildcard"),
    ("pypi.*", "wildcard"),
    ("**.pypi.org", "wildcard"),
    ("*.*.pypi.org", "wildcard"),
    ("*.1.1.1.1", "wildcard applies to host names"),
    ("user@pypi.org", "user info"),
    ("py pi.org", "spaces"),
    ("a..b", "not a valid host name"),
    ("-x.example", "not a valid host name"),
    ("x" * 64 + ".example", "not a valid host name"),
    ("a." * 130 + "com", "at most 253"),
    ("1.2.3.4.5", "ends in a number"),
    ("localhost", "localhost"),
    ("api.localhost", "localhost"),
    ("LOCALHOST.", "localhost"),
]


@pytest.mark.parametrize(("entry", "message"), BAD_ENTRIES)
def test_malformed_entries_are_named(entry: str, message: str) -> None:
    policy = NetworkPolicy(type="allowlist", allowed_domains=["pypi.org", entry])
    with pytest.raises(InvalidRequest) as caught:
        check_network_policy(policy, EgressRules())
    assert caught.value.param == "network_policy.allowed_domains[1]"
    assert message in caught.value.message, caught.value.message
    assert "network_policy.allowed_domains[1]" in caught.value.message


@pytest.mark.parametrize("entry", LOOPBACK_SPELLINGS + METADATA_SPELLINGS + OTHER_FORBIDDEN + UNICODE_SPELLINGS)
def test_forbidden_literals_are_refused_in_any_spelling(entry: str) -> None:
    policy = NetworkPolicy(type="allowlist", allowed_domains=[entry])
    with pytest.raises(InvalidRequest) as caught:
        check_network_policy(policy, EgressRules())
    assert caught.value.param == "network_policy.allowed_domains[0]"
    assert repr(entry) in caught.value.message
    assert "may not reach" in caught.value.message and "CONTAINER_MCP_EGRESS_ALLOW_NETWORKS" in caught.value.message


def test_valid_entries_pass_and_operator_networks_open_literals() -> None:
    good = [
        "pypi.org",
        "*.pythonhosted.org",
        "Files.PythonHosted.org.",
        "bücher.example",
        "93.184.216.34",
        "::ffff:1.1.1.1",
    ]
    check_network_policy(NetworkPolicy(type="allowlist", allowed_domains=good), EgressRules())
    check_network_policy(NetworkPolicy(), EgressRules())
    internal = NetworkPolicy(type="allowlist", allowed_domains=["10.20.1.2"])
    with pytest.raises(InvalidRequest):
        check_network_policy(internal, EgressRules())
    check_network_policy(internal, EgressRules.parse(["10.20.0.0/16"]))


def test_too_many_entries() -> None:
    policy = NetworkPolicy(type="allowlist", allowed_domains=[f"h{i}.example" for i in range(MAX_ENTRIES + 1)])
    with pytest.raises(InvalidRequest) as caught:
        check_network_policy(policy, EgressRules())
    assert caught.value.param == "network_policy.allowed_domains"
