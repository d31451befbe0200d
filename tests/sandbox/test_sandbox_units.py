"""Pieces that need no sandbox: output capture, allowlist rules, seccomp program, jobs, probe failures."""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import pytest

from container_mcp.errors import InvalidRequest, SandboxUnavailable
from container_mcp.sandbox import (
    Allowlist,
    ChangeSet,
    FileChange,
    Sandbox,
    SandboxConfig,
    SandboxJob,
)
from container_mcp.sandbox.egress import InvalidHost, normalize_host
from container_mcp.sandbox.output import OutputCapture
from container_mcp.sandbox.seccomp import DENIED_SYSCALLS, program_for_machine

pytestmark = pytest.mark.anyio


def test_output_capture_keeps_head_and_tail() -> None:
    cap = OutputCapture(10)
    for chunk in (b"0123", b"4567", b"89ab", b"cdef"):
        cap.feed(chunk)
    assert cap.total == 16 and cap.truncated
    assert cap.getvalue() == b"01234\n[... 6 bytes omitted ...]\nbcdef"


def test_output_capture_exact_fit_and_zero() -> None:
    cap = OutputCapture(4)
    cap.feed(b"ab")
    cap.feed(b"cd")
    assert cap.getvalue() == b"abcd" and not cap.truncated
    none = OutputCapture(0)
    none.feed(b"x")
    assert none.truncated and none.getvalue() == b"\n[... 1 bytes omitted ...]\n"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("Example.COM.", "example.com"),
        ("[::1]", "::1"),
        ("0x7f.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("_srv.example", "_srv.example"),
        ("fe80::1%eth0", "fe80::1"),
        ("[::ffff:127.0.0.1]", "127.0.0.1"),
    ],
)
def test_normalize_host(host: str, expected: str) -> None:
    assert normalize_host(host) == expected


@pytest.mark.parametrize("host", ["", "a..b", "evil.com:443", "user@host", "1.2.3.4.5", "-x.com", "a/b", "[1.2.3.4]"])
def test_normalize_host_rejects(host: str) -> None:
    with pytest.raises(InvalidHost):
        normalize_host(host)


def test_allowlist_matching() -> None:
    allow = Allowlist.from_domains(["Example.com", "*.pypi.org", "10.0.0.5"])
    assert allow.allows("example.com") and allow.allows("API.example.com.")
    assert allow.allows("files.pypi.org") and allow.allows("pypi.org")
    assert not allow.allows("notexample.com")
    assert not allow.allows("example.com.evil.net")
    assert allow.allows("10.0.0.5") and not allow.allows("10.0.0.6")
    # IP literals match as canonical addresses, never as domain names.
    assert allow.allows("167772165")  # 10.0.0.5 spelled as a number
    assert Allowlist.from_domains(["167772165"]).allows("10.0.0.5")
    assert not Allowlist.from_domains(["0.1"]).allows("127.0.0.1")


def test_seccomp_program_is_well_formed() -> None:
    prog = program_for_machine("x86_64")
    assert prog is not None and len(prog) % 8 == 0
    assert len(prog) // 8 < 4096  # BPF_MAXINSNS
    insns = [struct.unpack("=HBBI", prog[i : i + 8]) for i in range(0, len(prog), 8)]
    assert insns[-1] == (0x06, 0, 0, 0x7FFF0000)  # ends in ALLOW
    assert (0x15, 0, 1, 101) in insns  # ptrace is checked
    assert "ptrace" in DENIED_SYSCALLS and "keyctl" in DENIED_SYSCALLS
    assert program_for_machine("aarch64") is not None
    assert program_for_machine("mips") is None


def test_change_set_arithmetic() -> None:
    ch = ChangeSet(
        created=(FileChange("a", 10), FileChange("b", 5)),
        changed=(FileChange("c", 7, previous_size=3),),
        deleted=(FileChange("d", 100),),
    )
    assert ch.files_delta == 1
    assert ch.bytes_delta == 10 + 5 + 4 - 100
    assert ch.largest_file_bytes == 10
    assert not ch.empty and ChangeSet().empty


@pytest.mark.parametrize(
    "bad",
    [
        {"argv": []},
        {"argv": ["a\0b"]},
        {"env": {"A=B": "x"}},
        {"workdir": "relative"},
        {"workdir": "/mnt/data/../etc"},
        {"timeout_s": 0},
        {"timeout_s": float("inf")},
        {"memory_bytes": 1024},
        {"pids_limit": 2},
    ],
)
def test_job_validation(bad: dict[str, object], tmp_path: Path) -> None:
    fields: dict[str, object] = {"data_dir": tmp_path, "argv": ["true"], **bad}
    with pytest.raises(InvalidRequest):
        SandboxJob(**fields)  # type: ignore[arg-type]


async def test_probe_reports_missing_bubblewrap(tmp_path: Path) -> None:
    sandbox = Sandbox(SandboxConfig(bwrap=str(tmp_path / "no-bwrap")))
    probe = await sandbox.probe()
    assert not probe.available
    assert probe.reason is not None and "bubblewrap" in probe.reason
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        await sandbox.run(SandboxJob(data_dir=tmp_path, argv=["true"]))


async def test_probe_reports_a_broken_sandbox() -> None:
    # Outside pytest's private tmp dir: the unprivileged sandbox uid must be able to run it.
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        fake = Path(tmp) / "bwrap"
        fake.write_text(
            "#!/bin/sh\ntest \"$1\" = --version && exec echo 'bubblewrap 0.8.0'\n"
            "echo 'bwrap: Creating new namespace failed: Operation not permitted' >&2\nexit 1\n"
        )
        fake.chmod(0o755)
        probe = await Sandbox(SandboxConfig(bwrap=str(fake))).probe()
    assert not probe.available
    assert probe.reason is not None and "Creating new namespace failed" in probe.reason
