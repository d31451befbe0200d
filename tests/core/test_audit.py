"""The audit log's target: where records go, the file's privacy, and the labels that stand for callers."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from container_mcp.audit import AuditLog, AuditRecord, open_audit_log, principal_label
from container_mcp.auth import owner_for_key
from container_mcp.errors import UnsafeConfiguration
from container_mcp.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _record() -> AuditRecord:
    return AuditRecord(surface="rest", operation="GET /v1/containers", time=1_800_000_000.25)


async def test_a_new_audit_file_is_created_0600_and_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    old = os.umask(0)  # the loosest umask: the mode must still be 0600
    try:
        async with open_audit_log(str(path)) as log:
            log.write(_record())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    async with open_audit_log(str(path)) as log:
        log.write(_record())
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[0])["time"] == "2027-01-15T08:00:00.250Z"


async def test_an_audit_file_others_can_read_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("earlier\n")
    path.chmod(0o644)
    with pytest.raises(UnsafeConfiguration, match="other users may access it.*chmod 600"):
        async with open_audit_log(str(path)):
            pass
    assert path.read_text() == "earlier\n" and stat.S_IMODE(path.stat().st_mode) == 0o644


async def test_a_symlinked_audit_file_is_refused(tmp_path: Path) -> None:
    """A link planted where the log goes would send records (and appends) to the file it names."""
    target = tmp_path / "elsewhere"
    target.write_text("")
    target.chmod(0o600)
    link = tmp_path / "audit.jsonl"
    link.symlink_to(target)
    with pytest.raises(UnsafeConfiguration, match="cannot open the audit file"):
        async with open_audit_log(str(link)):
            pass
    assert target.read_text() == ""


async def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UnsafeConfiguration, match="Create its directory"):
        async with open_audit_log(str(tmp_path / "nope" / "audit.jsonl")):
            pass


async def test_stderr_and_off(capsys: pytest.CaptureFixture[str]) -> None:
    async with open_audit_log("stderr") as log:
        log.write(_record())
    async with open_audit_log("off") as off:
        off.write(_record())
        assert not off.enabled
    captured = capsys.readouterr()
    assert captured.out == ""
    assert json.loads(captured.err)["operation"] == "GET /v1/containers"


def test_a_failed_write_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    class Full:
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

        def flush(self) -> None: ...

    log = AuditLog(Full())  # type: ignore[arg-type]
    log.write(_record())
    log.write(_record())
    assert caplog.text.count("could not write an audit record") == 1


@pytest.mark.parametrize("value", ["audit.jsonl", "./logs/a.jsonl", "on", ""])
def test_the_setting_takes_off_stderr_or_an_absolute_path(tmp_path: Path, value: str) -> None:
    with pytest.raises(ValidationError, match="audit must be 'off', 'stderr' or an absolute file path"):
        Settings.isolated(data_dir=tmp_path / "data", audit=value)


def test_the_audit_file_may_not_live_in_the_data_dir(tmp_path: Path) -> None:
    """The data dir holds only the server's entries: the next start would refuse it."""
    with pytest.raises(ValidationError, match="inside the data dir"):
        Settings.isolated(data_dir=tmp_path / "data", audit=str(tmp_path / "data" / "audit.jsonl"))
    assert Settings.isolated(data_dir=tmp_path / "data", audit=str(tmp_path / "audit.jsonl")).audit.endswith(
        "audit.jsonl"
    )


def test_principal_labels_never_carry_a_token_or_a_session_id() -> None:
    owner = owner_for_key("sk-some-secret-key")
    assert principal_label(owner) == "apikey:" + owner.removeprefix("apikey:")[:8]
    assert principal_label("apikey:anonymous") == "anonymous"
    assert principal_label("oauth:https://issuer.example:user-1") == "oauth:https://issuer.example:user-1"
    assert principal_label("stdio:local") == "stdio"
    assert principal_label("http:3f2a-live-session-id") == "anonymous"
    assert principal_label("sse:0f9e-live-session-id") == "anonymous"
    assert principal_label(None) == "unauthenticated"
