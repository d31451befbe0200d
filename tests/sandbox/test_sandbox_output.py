"""Output capture in real runs: caps, totals, binary and invalid UTF-8, stdin; Python inside."""

from __future__ import annotations

from pathlib import Path

import pytest

from container_mcp.sandbox import Sandbox, SandboxJob, SandboxProbe, decode_output

from .helpers import PYTHON, py, sh

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]


async def test_binary_and_invalid_utf8_are_kept_as_bytes(sandbox: Sandbox, data_dir: Path) -> None:
    async with await sh(
        sandbox, data_dir, r"printf 'ok \377\376\000\001 caf\303\251 \303'; printf '\200err' >&2"
    ) as run:
        assert run.exit_code == 0
        assert run.stdout == b"ok \xff\xfe\x00\x01 caf\xc3\xa9 \xc3"
        assert run.stderr == b"\x80err"
        assert run.stdout_text == "ok \ufffd\ufffd\x00\x01 café \ufffd"
        assert decode_output(run.stderr) == "\ufffderr"
        assert not run.stdout_truncated


async def test_output_is_capped_with_totals_in_one_shared_budget(sandbox: Sandbox, data_dir: Path) -> None:
    script = "head -c 1000000 /dev/zero | tr '\\0' a; echo END; head -c 5000 /dev/urandom >&2"
    async with await sh(sandbox, data_dir, script, max_output_bytes=1000) as run:
        assert run.exit_code == 0
        # both streams overflow: each gets half of the 1000 bytes
        assert run.stdout_total == 1_000_004 and run.stdout_truncated
        assert run.stdout.startswith(b"a" * 250)
        assert run.stdout.endswith(b"a" * 246 + b"END\n")
        assert b"[... 999504 bytes omitted ...]" in run.stdout
        assert run.stderr_total == 5000 and run.stderr_truncated
        assert b"[... 4500 bytes omitted ...]" in run.stderr and len(run.stderr) < 600


async def test_a_quiet_stream_leaves_its_share_to_the_other(sandbox: Sandbox, data_dir: Path) -> None:
    async with await sh(
        sandbox, data_dir, "head -c 5000 /dev/zero | tr '\\0' a; echo err >&2", max_output_bytes=1000
    ) as run:
        assert run.stderr == b"err\n" and not run.stderr_truncated
        assert b"[... 4004 bytes omitted ...]" in run.stdout and run.stdout.startswith(b"a" * 498)


async def test_default_cap_is_32_kib(sandbox: Sandbox, data_dir: Path) -> None:
    async with await sh(sandbox, data_dir, "head -c 32768 /dev/zero") as run:
        assert run.stdout_total == 32768 and not run.stdout_truncated and len(run.stdout) == 32768
    async with await sh(sandbox, data_dir, "head -c 32769 /dev/zero") as run:
        assert run.stdout_truncated and run.stdout_total == 32769


async def test_stdin_reaches_the_command(sandbox: Sandbox, data_dir: Path) -> None:
    payload = bytes(range(256)) * 1000
    job = SandboxJob(data_dir=data_dir, argv=["sha256sum"], stdin=payload)
    async with await sandbox.run(job) as run:
        import hashlib

        assert run.stdout_text.split()[0] == hashlib.sha256(payload).hexdigest()
    async with await sh(sandbox, data_dir, "cat; echo eof") as run:
        assert run.stdout_text == "eof\n"


async def test_exit_codes_and_missing_commands(sandbox: Sandbox, data_dir: Path) -> None:
    async with await sh(sandbox, data_dir, "exit 3") as run:
        assert (run.exit_code, run.signal, run.timed_out) == (3, None, False)
    async with await sh(sandbox, data_dir, "kill -TERM $$") as run:
        assert run.signal == 15
    async with await sandbox.run(SandboxJob(data_dir=data_dir, argv=["no-such-command"])) as run:
        assert run.exit_code == 127


async def test_system_python_works(sandbox: Sandbox, probe: SandboxProbe, data_dir: Path) -> None:
    assert probe.python == PYTHON
    code = "import sys, ssl, json, sqlite3, csv; print(sys.executable, sys.version_info[:2] >= (3, 7))"
    async with await py(sandbox, data_dir, code) as run:
        assert run.exit_code == 0, run.stderr_text
        assert run.stdout_text == f"{PYTHON} True\n"
