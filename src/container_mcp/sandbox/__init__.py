"""Run a command "in" a local container: bubblewrap, limits, egress policy, staged file changes.

Placeholder docstring; see below.
"""

from __future__ import annotations

from .changes import ChangeSet, FileChange, SkippedEntry
from .config import SandboxConfig, SandboxProbe
from .egress import Allowlist, EgressProxy, static_resolver
from .job import SandboxJob, SandboxProgress, SandboxRun
from .output import decode_output
from .runner import Sandbox, probe_sandbox, run_sandboxed

__all__ = [
    "Allowlist",
    "ChangeSet",
    "EgressProxy",
    "FileChange",
    "Sandbox",
    "SandboxConfig",
    "SandboxJob",
    "SandboxProbe",
    "SandboxProgress",
    "SandboxRun",
    "SkippedEntry",
    "decode_output",
    "probe_sandbox",
    "run_sandboxed",
    "static_resolver",
]
