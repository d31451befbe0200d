"""Who on the host can reach a running command: only processes of the sandbox's host uid.

As root, commands run as ``sandbox_uid`` (65534, ``nobody``, by default). Any host process with
that uid can read a running command's ``/proc/<pid>/environ`` and files and use its egress
proxy's socket, so the operator must be able to give sandboxes a uid of their own
(``CONTAINER_MCP_SANDBOX_UID``) — which the server did not let them do.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from container_mcp.clock import ManualClock
from container_mcp.models import NetworkPolicy
from container_mcp.providers.local import LocalProvider
from container_mcp.providers.registry import create_provider
from container_mcp.sandbox import Sandbox, SandboxConfig, SandboxJob
from container_mcp.settings import Settings

from .conftest import OPEN_LOOPBACK
from .helpers import PYTHON

pytestmark = pytest.mark.anyio

DEDICATED = 61_337
SECRET = "caller-secret-9c1e"
MARK = "host-uid-test-marker"

# Ask the proxy for a name: the test's resolver runs on the host while the command waits.
ASK = """
import socket, sys
s = socket.create_connection(("127.0.0.1", 3128), timeout=30)
s.sendall(b"CONNECT peek.test:443 HTTP/1.1\\r\\n\\r\\n")
print(s.recv(200).decode("latin-1").split("\\r\\n")[0])
"""

PEEK = """
import sys
try:
    print(open(f"/proc/{sys.argv[1]}/environ", "rb").read().decode("latin-1"))
except OSError as exc:
    print(type(exc).__name__)
"""


def _command_pids(marker: str, uid: int) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            # The command itself (bubblewrap's processes have the same argv behind their options).
            if (
                argv[:2] == [PYTHON.encode(), b"-c"]
                and marker.encode() in argv
                and os.stat(f"/proc/{pid}").st_uid == uid
            ):
                found.append(pid)
        except OSError:
            continue
    return found


async def _peek_as(uid: int, pid: str) -> str:
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", PYTHON, "-I", "-c", PEEK, pid]
    done = await anyio.run_process(argv, check=True)
    return done.stdout.decode().strip()


def test_the_operator_sets_the_sandbox_uid(tmp_path: Path) -> None:
    settings = Settings.isolated(data_dir=tmp_path, sandbox_uid=DEDICATED, sandbox_gid=DEDICATED)
    provider = create_provider(settings, ManualClock())
    assert isinstance(provider, LocalProvider)
    config = provider._sandbox.config
    assert (config.sandbox_uid, config.sandbox_gid) == (DEDICATED, DEDICATED)
    assert (Settings.isolated(data_dir=tmp_path).sandbox_uid, Settings.isolated(data_dir=tmp_path).sandbox_gid) == (
        65534,
        65534,
    )
    with pytest.raises(ValueError, match="sandbox_uid"):
        Settings.isolated(data_dir=tmp_path, sandbox_uid=0)


@pytest.mark.sandbox
@pytest.mark.skipif(os.geteuid() != 0, reason="commands run as a separate host uid only when the server is root")
async def test_only_the_sandbox_uid_reaches_a_running_command(tmp_path: Path) -> None:
    seen: dict[str, str] = {}

    async def resolver(host: str, port: int) -> list[str]:
        pids = _command_pids(MARK, DEDICATED)
        assert pids, "the running command was not found"
        seen["other uid"] = await _peek_as(65533, pids[0])
        seen["sandbox uid"] = await _peek_as(DEDICATED, pids[0])
        raise OSError(f"{host}: name does not resolve")

    config = SandboxConfig(resolver=resolver, egress=OPEN_LOOPBACK, sandbox_uid=DEDICATED, sandbox_gid=DEDICATED)
    data = tmp_path / "containers" / "c" / "files"
    data.mkdir(parents=True)
    async with Sandbox(config) as box:
        probe = await box.probe()
        if not probe.available or probe.python is None:
            pytest.skip(f"sandbox allowlist unavailable: {probe.reason or probe.allowlist_unavailable}")
        job = SandboxJob(
            data_dir=data,
            argv=[PYTHON, "-c", ASK, MARK],
            env={"TOKEN": SECRET},
            network=NetworkPolicy(type="allowlist", allowed_domains=["peek.test"]),
        )
        async with await box.run(job) as run:
            assert run.exit_code == 0, run.stderr_text
            assert run.stdout_text.startswith("HTTP/1.1 502"), run.stdout_text
    assert seen["other uid"] == "PermissionError"
    assert SECRET in seen["sandbox uid"]  # the uid is what decides: hence a dedicated one
