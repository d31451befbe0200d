"""Environments for the processes tests start: built from a clean base, never the caller's.

A test must pass whatever the developer's shell exports (``CONTAINER_MCP_*``, ``OPENAI_*``, ...),
so a child process gets only what it needs to run, plus what the test sets.
"""

from __future__ import annotations

import os

__all__ = ["BASE_VARIABLES", "clean_env"]

BASE_VARIABLES = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "LOGNAME")
"""Taken from the test run's environment when set: what a Python process needs to start."""


def clean_env(**values: str) -> dict[str, str]:
    """``BASE_VARIABLES`` from this process, plus ``values``; nothing else."""
    env = {name: os.environ[name] for name in BASE_VARIABLES if name in os.environ}
    env.update(values)
    return env
