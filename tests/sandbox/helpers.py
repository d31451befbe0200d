"""Shorthands for the sandbox tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from container_mcp.sandbox import Sandbox, SandboxJob, SandboxRun

PYTHON = "/usr/bin/python3"


async def sh(sandbox: Sandbox, data_dir: Path, script: str, **job: Any) -> SandboxRun:
    """Run ``sh -c script`` in ``data_dir``'s sandbox; the caller commits or discards."""
    return await sandbox.run(SandboxJob(data_dir=data_dir, argv=["/bin/sh", "-c", script], **job))


async def py(sandbox: Sandbox, data_dir: Path, code: str, **job: Any) -> SandboxRun:
    """Run ``python3 -c code`` in ``data_dir``'s sandbox; the caller commits or discards."""
    return await sandbox.run(SandboxJob(data_dir=data_dir, argv=[PYTHON, "-c", code], **job))
