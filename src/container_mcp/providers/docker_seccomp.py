"""The seccomp profile of the docker provider's containers: the engine's default, minus stop signals.

**Why.** Every exec starts as runc's ``runc init``, which joins the container, takes the
container user's uid (1000) and only then runs the command. A process of that user that keeps
sending SIGSTOP to every process it may signal (``while :; do kill -STOP -1; done``) catches
each new ``runc init`` in that window. Measured on Docker 20.10 / containerd 1.6 / runc 1.1: the
stopped ``runc init`` holds its ``runc exec``, and with it the engine's handling of that
container: every later exec (as root too: no second ``runc exec`` even starts), ``kill``,
``restart``, ``inspect`` and ``rm -f`` wait for it forever. Only the host can end it. So no
helper inside the container can be the fix (it could not start), and the engine offers none:
the stop signal itself must not be sendable.

**What.** The engine's default profile (Moby's ``profiles/seccomp/default.json`` at
``MOBY_VERSION``, carried unchanged in ``seccomp/`` with its Apache-2.0 notice: the Engine API
cannot hand out its built-in one), with every rule kept, except that the syscalls that send a
chosen signal to another process are allowed only for signals other than SIGSTOP, SIGTSTP,
SIGTTIN and SIGTTOU (refused with EPERM, the default's errno):

* ``kill``, ``tkill``, ``tgkill``, ``rt_sigqueueinfo``, ``rt_tgsigqueueinfo``, ``pidfd_send_signal``;
* ``fcntl``/``fcntl64`` ``F_SETSIG``, which picks the signal the kernel sends a file's owner
  (``F_SETOWN``: any process of the same uid) when I/O is ready: a stop signal there stops another
  process without any kill syscall. Every other command Linux defines is allowed
  (``FCNTL_COMMANDS``).

The kernel reads these arguments as 32-bit ints, while seccomp compares all 64 bits of the
register; so every comparison is a masked equality on the low 32 bits (``0x1_0000_0013`` is
SIGSTOP to the kernel, and must be refused as one). Stop signals from the kernel's own job
control need a terminal in the victim's session, which ``runc init`` never has; ptrace's stop
needs a dumpable target (``runc init`` is not, and the default profile is unchanged there).
SIGKILL and the rest stay allowed: a command that kills every process it may (``kill -9 -1``)
ends the container's main process and so the container, which fails clearly (the engine says it
is not running) and never hangs. The numbers are those of x86, arm, ppc, s390 and riscv
(SIGSTOP = 19); MIPS numbers its signals differently and is not covered.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

__all__ = [
    "FCNTL_COMMANDS",
    "F_SETSIG",
    "MOBY_VERSION",
    "SIGNAL_ARG",
    "STOP_SIGNALS",
    "blocks",
    "default_profile",
    "profile",
    "profile_json",
    "security_opt",
    "signal_blocks",
]

MOBY_VERSION = "v20.10.24"
"""The Moby release whose default profile is the base (Debian bookworm's docker.io)."""

_DATA = Path(__file__).with_name("seccomp") / f"moby-default-{MOBY_VERSION}.json"

STOP_SIGNALS = frozenset({19, 20, 21, 22})
"""SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU."""

MAX_SIGNAL = 64
"""The kernel's highest signal; above it a signal is invalid (refused here instead of EINVAL)."""

SIGNAL_ARG = {
    "kill": 1,
    "tkill": 1,
    "tgkill": 2,
    "rt_sigqueueinfo": 1,
    "rt_tgsigqueueinfo": 2,
    "pidfd_send_signal": 1,
}
"""Each signal-sending syscall and the index of its signal argument."""

_FCNTL = ("fcntl", "fcntl64")
F_SETSIG = 10

FCNTL_COMMANDS = frozenset({*range(10), *range(11, 18), *range(36, 39), *range(1024, 1040)})
"""Every ``fcntl`` command Linux defines (``include/uapi/linux/fcntl.h``, ``asm-generic/fcntl.h``)
but F_SETSIG: 0..9 (F_DUPFD..F_GETOWN), 11..17 (F_GETSIG, the 32-bit lock commands, F_*OWN_EX,
F_GETOWNER_UIDS), 36..38 (F_OFD_*LK*) and 1024..1039 (F_LINUX_SPECIFIC_BASE: leases, F_NOTIFY,
F_DUPFD_CLOEXEC, pipe sizes, seals, write hints). Any other command is one the kernel refuses
anyway (EINVAL); here it gets EPERM. An allowlist of commands, not "anything but F_SETSIG" bit by
bit: that took 32 rules per syscall, and compiling them cost every exec ~10 ms."""
_LOW32 = 0xFFFFFFFF


def blocks(allowed: frozenset[int]) -> list[tuple[int, int]]:
    """(mask, value) pairs whose masked equalities on an argument's low 32 bits match exactly the
    ``allowed`` values: aligned power-of-two blocks, largest first."""
    found: list[tuple[int, int]] = []
    start, last = 0, max(allowed, default=-1)
    while start <= last:
        if start not in allowed:
            start += 1
            continue
        size = 1
        while start % (size * 2) == 0 and all(v in allowed for v in range(start, start + size * 2)):
            size *= 2
        found.append((_LOW32 & ~(size - 1), start))
        start += size
    return found


def signal_blocks() -> list[tuple[int, int]]:
    """``blocks`` of the allowed signals: 0..64 without the stop signals."""
    return blocks(frozenset(range(MAX_SIGNAL + 1)) - STOP_SIGNALS)


def _arg(index: int, mask: int, value: int) -> dict[str, Any]:
    return {"index": index, "value": mask, "valueTwo": value, "op": "SCMP_CMP_MASKED_EQ"}


def _allow(name: str, *args: dict[str, Any]) -> dict[str, Any]:
    return {"names": [name], "action": "SCMP_ACT_ALLOW", "args": list(args)}


def _unconditional_allow(rule: dict[str, Any]) -> bool:
    return (
        rule.get("action") == "SCMP_ACT_ALLOW"
        and not rule.get("args")
        and not rule.get("includes")
        and not rule.get("excludes")
    )


def default_profile() -> dict[str, Any]:
    """The engine's default profile (``MOBY_VERSION``), as carried."""
    profile: dict[str, Any] = json.loads(_DATA.read_text())
    return profile


def narrowed_rules() -> list[dict[str, Any]]:
    """The rules that replace the signal-sending syscalls' unconditional allow (see the module docstring).

    A syscall with several rules is allowed when any of them matches; the conditions of one rule
    must all hold. runc splits a rule with two conditions on one argument into two rules, so each
    rule here has at most one condition per argument."""
    signals = signal_blocks()
    rules = [_allow(name, _arg(index, mask, value)) for name, index in SIGNAL_ARG.items() for mask, value in signals]
    for name in _FCNTL:
        rules += [_allow(name, _arg(1, mask, value)) for mask, value in blocks(FCNTL_COMMANDS)]
        rules += [_allow(name, _arg(1, _LOW32, F_SETSIG), _arg(2, mask, value)) for mask, value in signals]
    return rules


@cache
def profile() -> dict[str, Any]:
    """The default profile with every rule kept, the signal-sending syscalls narrowed (module docstring)."""
    base = default_profile()
    narrowed = {*SIGNAL_ARG, *_FCNTL}
    rules: list[dict[str, Any]] = []
    for rule in base["syscalls"]:
        names = list(rule.get("names") or [rule["name"]])
        if not narrowed & set(names):
            rules.append(rule)
            continue
        if not _unconditional_allow(rule):
            raise ValueError(f"the default seccomp profile has a conditional rule for {sorted(narrowed & set(names))}")
        rest = [n for n in names if n not in narrowed]
        if rest:
            rules.append({**rule, "names": rest})
    return {**base, "syscalls": [*rules, *narrowed_rules()]}


@cache
def profile_json() -> str:
    """The profile as compact JSON."""
    return json.dumps(profile(), separators=(",", ":"))


def security_opt() -> str:
    """The ``HostConfig.SecurityOpt`` entry carrying the profile (Docker takes the JSON inline)."""
    return "seccomp=" + profile_json()
