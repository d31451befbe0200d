"""What a command did to a container's files, as an ``ExecResult`` reports it: bounded lists.

A command may touch 100,000 files; its result lists at most ``listed`` of each kind (created,
changed, deleted), shallowest paths first so that ``report.csv`` is not lost among
``venv/lib/...``, with the totals and a ``files_truncated`` flag. The whole change set still
travels with the result, unserialized (``ExecResult.with_all_files``), for the ledger's file index.
Shared by every provider that runs commands, so all of them bound results the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..paths import MOUNT
from .base import ExecResult
from .local_registry import FileRow

__all__ = ["ending", "exec_result"]


def _path_relevance(rel: str) -> tuple[int, str]:
    """Shallow paths first, then by path."""
    return rel.count("/"), rel


def exec_result(
    created: Sequence[FileRow],
    changed: Sequence[FileRow],
    deleted: Sequence[str],
    *,
    listed: int,
    **fields: Any,
) -> ExecResult:
    """The result of a command with output ``fields`` that created and changed the files of
    ``created`` and ``changed`` and deleted the relative paths ``deleted`` (see the module docstring)."""
    made = sorted(created, key=lambda r: _path_relevance(r.path))
    edited = sorted(changed, key=lambda r: _path_relevance(r.path))
    gone = sorted(deleted, key=_path_relevance)
    kept = [r.model() for r in (*made, *edited)]
    return ExecResult(
        **fields,
        files_created=kept[: min(listed, len(made))],
        files_changed=kept[len(made) : len(made) + listed],
        files_deleted=[f"{MOUNT}/{p}" for p in gone[:listed]],
        files_created_total=len(made),
        files_changed_total=len(edited),
        files_deleted_total=len(gone),
        files_truncated=max(len(made), len(edited), len(gone)) > listed,
    ).with_all_files(kept, [f"{MOUNT}/{p}" for p in gone])


def ending(exit_code: int | None, signal: int | None, killed_reason: str | None) -> str:
    """How a command ended, as the end of "The command ...": never "exit code None"."""
    if killed_reason == "timeout":
        return "was killed at its timeout"
    if killed_reason == "memory_limit":
        return "was killed for going over the container's memory_limit"
    if killed_reason == "disk_limit":
        return "was killed for writing more files or bytes (under /mnt/data or in $HOME) than the quotas allow"
    if exit_code is None:
        return f"was killed by signal {signal}" if signal is not None else "was killed"
    return f"finished (exit code {exit_code})"
