"""The docker provider's seccomp profile, read as data (no engine): the engine's default with every rule
kept, and the signal-sending syscalls allowed for every signal but the stop signals, whatever the high bits."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from container_mcp.providers import docker_seccomp
from container_mcp.providers.docker import is_podman
from container_mcp.providers.docker_seccomp import (
    F_SETSIG,
    FCNTL_COMMANDS,
    MOBY_VERSION,
    SIGNAL_ARG,
    STOP_SIGNALS,
    blocks,
    default_profile,
    profile,
    security_opt,
)

NARROWED = {*SIGNAL_ARG, "fcntl", "fcntl64"}
PINNED_SHA256 = "e5e91f884647e7332b3f89280777752f563df4f1372a186f14ddb7bf2f55cf61"
"""Moby v20.10.24's profiles/seccomp/default.json as Debian ships it: the carried file is never edited."""


def _key(rule: dict[str, Any]) -> str:
    return json.dumps(rule, sort_keys=True)


def _allows(rules: list[dict[str, Any]], name: str, args: dict[int, int]) -> bool:
    """Whether the profile lets ``name`` run with these argument values (a rule matches when all its
    conditions hold; the syscall runs when any of its allow rules matches)."""
    for rule in rules:
        if name not in rule["names"] or rule["action"] != "SCMP_ACT_ALLOW" or rule.get("includes"):
            continue
        conditions = rule.get("args") or []
        if all(args[a["index"]] & a["value"] == a["valueTwo"] for a in conditions):
            return True
    return False


def test_the_carried_default_is_moby_v20_10_24_unchanged() -> None:
    data = docker_seccomp._DATA.read_bytes()
    assert MOBY_VERSION == "v20.10.24" and hashlib.sha256(data).hexdigest() == PINNED_SHA256
    assert (docker_seccomp._DATA.parent / "NOTICE").read_text().count("Apache License, Version 2.0") == 1


def test_the_profile_keeps_every_rule_of_the_engines_default() -> None:
    base, ours = default_profile(), profile()
    assert {k: v for k, v in ours.items() if k != "syscalls"} == {k: v for k, v in base.items() if k != "syscalls"}
    kept = {_key(r) for r in ours["syscalls"]}
    for rule in base["syscalls"]:
        names = [n for n in rule["names"] if n not in NARROWED]
        if names:
            assert _key({**rule, "names": names}) in kept, rule["names"][:3]
    base_keys = {_key({**r, "names": [n for n in r["names"] if n not in NARROWED]}) for r in base["syscalls"]}
    added = [r for r in ours["syscalls"] if _key(r) not in base_keys]
    # What is added only allows the narrowed syscalls, on conditions that ignore the arguments' high 32 bits.
    assert added and all(r["action"] == "SCMP_ACT_ALLOW" and set(r["names"]) <= NARROWED for r in added)
    assert all(a["op"] == "SCMP_CMP_MASKED_EQ" and a["value"] >> 32 == 0 for r in added for a in r["args"])
    # Each rule names every argument once (runc would split two conditions on one argument into two rules).
    assert all(len({a["index"] for a in r["args"]}) == len(r["args"]) for r in added)
    assert security_opt() == "seccomp=" + json.dumps(ours, separators=(",", ":"))


def test_every_signal_but_the_stop_signals_is_allowed_whatever_the_high_bits() -> None:
    rules = profile()["syscalls"]
    for name, index in SIGNAL_ARG.items():
        for low in range(130):
            for high in (0, 1, 0xFFFF_FFFF):
                allowed = _allows(rules, name, {index: high << 32 | low})
                assert allowed == (low <= 64 and low not in STOP_SIGNALS), (name, hex(high << 32 | low))


def test_f_setsig_refuses_the_stop_signals_and_every_command_linux_defines_runs() -> None:
    rules = profile()["syscalls"]
    defined = [*range(18), 36, 37, 38, *range(1024, 1040)]  # include/uapi/linux/fcntl.h, asm-generic/fcntl.h
    undefined = [18, 35, 39, 1023, 1040, 1 << 20]
    assert FCNTL_COMMANDS | {F_SETSIG} == set(defined)
    high = [F_SETSIG | 1 << 32, 1 << 32, 0xFFFF_FFFF_0000_0004, 0xFFFF_FFFF_0000_0000 | 1030]
    for name in ("fcntl", "fcntl64"):
        for cmd in [*defined, *undefined, *high]:
            for sig in (0, 10, 18, 19, 22, 23, 64, 1 << 32 | 19):
                low = cmd & 0xFFFF_FFFF
                refused = low not in defined or (low == F_SETSIG and sig & 0xFFFF_FFFF in STOP_SIGNALS)
                assert _allows(rules, name, {1: cmd, 2: sig}) != refused, (name, hex(cmd), hex(sig))


def test_blocks_match_exactly_their_set() -> None:
    for allowed in (FCNTL_COMMANDS, frozenset(range(65)) - STOP_SIGNALS, frozenset({0, 3, 5, 6, 7, 64}), frozenset()):
        found = blocks(allowed)
        assert frozenset(v for v in range(1 << 11) if any(v & m == x for m, x in found)) == allowed


def test_podman_is_told_from_its_ping_and_docker_is_not() -> None:
    # The headers as Podman 4.3.1 and Docker 20.10.24 answer /_ping (Podman: the profile is left off).
    assert is_podman({"api-version": "1.41", "libpod-api-version": "4.3.1", "server": "Libpod/4.3.1 (linux)"})
    assert not is_podman({"api-version": "1.41", "server": "Docker/20.10.24+dfsg1 (linux)", "ostype": "linux"})
    assert not is_podman({})
