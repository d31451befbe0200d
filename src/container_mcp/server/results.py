"""Keeping a command's result small enough for a model's context.

The sandbox already caps output bytes (stdout and stderr share ``exec_max_output_bytes``) and the
provider lists a bounded number of changed files. Neither bounds the JSON: escaping can make a
byte of output six (a control character becomes ``\\u0001``). ``fit_result`` is the last step
before a result leaves: whatever it was, its JSON is at most ``MAX_RESULT_BYTES``, output cut to
its head and tail first, the file lists dropped only if that is not enough.
"""

from __future__ import annotations

import json

from ..providers.base import ExecResult

__all__ = ["MAX_RESULT_BYTES", "fit_result"]

MAX_RESULT_BYTES = 64 * 1024
"""Largest structured result of container_exec (its JSON, UTF-8); the SDK echoes it once as text."""

_SLACK = 256
"""Bytes left for the omission markers and rounding while cutting."""


def _size(result: ExecResult) -> int:
    return len(result.model_dump_json().encode())


def _encoded(text: str) -> int:
    return len(json.dumps(text, ensure_ascii=False).encode()) - 2


def _cut(text: str, chars: int) -> str:
    """``text`` as its first and last ``chars`` characters (half each) around an omission line."""
    if len(text) <= chars:
        return text
    tail = chars // 2
    head = chars - tail
    return f"{text[:head]}\n[... {len(text) - chars} characters omitted ...]\n{text[len(text) - tail :]}"


def _shrink(text: str, budget: int) -> str:
    """``text`` cut until its JSON-encoded size is at most ``budget`` bytes."""
    size = _encoded(text)
    if size <= budget:
        return text
    chars = int(len(text) * budget / size)
    while chars > 0 and _encoded(_cut(text, chars)) > budget:
        chars = int(chars * 0.9)
    return _cut(text, max(chars, 0))


def fit_result(result: ExecResult, limit: int) -> ExecResult:
    """``result`` with its JSON at most ``limit`` bytes (see the module docstring)."""
    for _ in range(8):
        size = _size(result)
        if size <= limit:
            return result
        out, err = _encoded(result.stdout), _encoded(result.stderr)
        if out + err == 0:
            break
        target = max(0, out + err - (size - limit) - _SLACK)
        half = target // 2
        a = out if out <= half else (target - err if err <= target - half else half)
        stdout, stderr = _shrink(result.stdout, a), _shrink(result.stderr, target - a)
        result = result.model_copy(
            update={
                "stdout": stdout,
                "stderr": stderr,
                "stdout_truncated": result.stdout_truncated or stdout != result.stdout,
                "stderr_truncated": result.stderr_truncated or stderr != result.stderr,
            }
        )
    # Only a result whose every other field is huge gets here: keep the counts, drop the lists.
    return result.model_copy(
        update={
            "stdout": "",
            "stderr": "",
            "stdout_truncated": result.stdout_truncated or bool(result.stdout),
            "stderr_truncated": result.stderr_truncated or bool(result.stderr),
            "files_created": [],
            "files_changed": [],
            "files_deleted": [],
            "files_truncated": True,
        }
    )
