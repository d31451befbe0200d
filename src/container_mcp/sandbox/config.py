"""Sandbox configuration (per server) and the probe result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..netpolicy import EgressRules
from .egress import Resolver

__all__ = ["MemoryEnforcement", "PidsEnforcement", "SandboxConfig", "SandboxProbe"]

MemoryEnforcement = Literal["cgroup-v2", "cgroup-v1", "rlimit-as"]
PidsEnforcement = Literal["cgroup-v2", "cgroup-v1", "rlimit-nproc"]


@dataclass(frozen=True)
class SandboxConfig:
    """How the sandbox is built on this host. The defaults suit a Debian/Ubuntu host.

    Tools are looked up on a fixed system PATH (``/usr/local/sbin:...:/bin``), never on the
    server's own PATH.
    """

    bwrap: str = "bwrap"
    """bubblewrap executable (Debian package ``bubblewrap``)."""
    unshare: str = "unshare"
    """util-linux ``unshare``: creates the private mount namespace the overlay is mounted in, and
    (``--setuid/--setgid``) drops to ``sandbox_uid`` before bubblewrap when the server is root."""
    mount: str = "mount"
    """util-linux ``mount``."""
    shell: str = "/bin/sh"
    """POSIX shell running the few setup steps between ``unshare`` and bubblewrap."""
    python: str = "/usr/bin/python3"
    """Interpreter that runs the in-sandbox forwarder of allowlist runs (must live under /usr or /bin)."""
    sandbox_uid: int = 65534
    """Host uid commands run as when the server runs as root (never uid 0; see the package docs)."""
    sandbox_gid: int = 65534
    """Host gid commands run as when the server runs as root."""
    inner_uid: int = 1000
    """uid/gid commands see inside the sandbox (user ``sandbox``)."""
    overlay_mountpoint: str = "/mnt"
    """Existing host directory the overlay is mounted over, inside the private mount namespace only."""
    cgroup_name: str = "container-mcp"
    """Name of the parent cgroup the per-run cgroups are created in."""
    use_cgroups: bool = True
    """Use cgroups for memory and pids limits when the host allows it (else rlimits)."""
    seccomp: bool = True
    """Install the seccomp deny list (see ``seccomp.py``)."""
    resolver: Resolver | None = None
    """DNS for the allowlist proxy (tests map a name to 127.0.0.1); None: the host's resolver."""
    egress: EgressRules = EgressRules()
    """The operator's egress rules for the allowlist proxy (networks and hosts it opens, ports)."""
    warm_launchers: int = 1
    """Launchers kept ready while the ``Sandbox`` is entered as a context manager (0: always cold)."""
    cleanup_timeout_s: float = 5.0
    """How long to wait for a killed run's processes to disappear before reporting an error."""


@dataclass(frozen=True)
class SandboxProbe:
    """What ``probe_sandbox`` found. ``available`` is False with a ``reason`` when commands cannot run.

    There is no unsandboxed fallback: when unavailable, ``run_sandboxed`` raises
    ``SandboxUnavailable`` with the same reason.
    """

    available: bool
    reason: str | None
    mode: Literal["root", "user"]
    """``root``: the server is root and commands run as ``sandbox_uid``; ``user``: as the server's uid."""
    memory_enforcement: MemoryEnforcement
    pids_enforcement: PidsEnforcement
    network_enforcement: str
    """Human-readable summary of how ``network_policy`` is enforced."""
    seccomp: bool
    """Whether the seccomp deny list is installed."""
    bwrap_version: str | None
    python: str | None
    """Interpreter that runs the allowlist forwarder inside the sandbox; None: allowlist is unavailable."""
    host_uid: int | None
    """Host uid of sandboxed processes (``sandbox_uid`` as root, the server's uid otherwise)."""
    allowlist_unavailable: str | None = None
    """Why ``network_policy: allowlist`` cannot be enforced here (None when it can)."""
    notes: tuple[str, ...] = ()
    """Non-fatal findings (e.g. why cgroups are not used)."""
