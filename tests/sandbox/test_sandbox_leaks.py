"""What a command can learn about the host from inside: no host path of its data, no bwrap options.

Regression for issue 7 item 8: bubblewrap's PID 1 (a fork of bubblewrap) showed the stage's host
path in ``/proc/1/environ`` (``OLDPWD``, left by the setup shell's ``cd``) and bubblewrap's whole
command line, with every host path it binds, in ``/proc/1/cmdline``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from container_mcp.models import NetworkPolicy
from container_mcp.sandbox import Sandbox

from .conftest import TEST_DOMAIN
from .helpers import py

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]

SECRET = "caller-env-value-7f3a"

LOOK = r"""
import json, os
seen = {"env": dict(os.environ), "proc": {}}
for pid in sorted(p for p in os.listdir("/proc") if p.isdigit()):
    info = {}
    for name in ("cmdline", "environ"):
        try:
            info[name] = open(f"/proc/{pid}/{name}", "rb").read().decode("utf-8", "replace")
        except OSError as exc:
            info[name] = "unreadable: " + type(exc).__name__
    for name in ("cwd", "root", "exe"):
        try:
            info[name] = os.readlink(f"/proc/{pid}/{name}")
        except OSError as exc:
            info[name] = "unreadable: " + type(exc).__name__
    seen["proc"][pid] = info
seen["mountinfo"] = open("/proc/self/mountinfo").read()
print(json.dumps(seen))
"""


@pytest.mark.parametrize("network", ["disabled", "allowlist"])
async def test_no_host_path_of_the_data_dir_is_visible_inside(
    sandbox: Sandbox, data_dir: Path, tmp_path: Path, network: str
) -> None:
    policy = (
        NetworkPolicy(type="allowlist", allowed_domains=[TEST_DOMAIN]) if network == "allowlist" else NetworkPolicy()
    )
    async with await py(sandbox, data_dir, LOOK, network=policy, env={"TOKEN": SECRET}) as run:
        assert run.exit_code == 0, run.stderr_text
        seen = json.loads(run.stdout_text)
    host_paths = {str(data_dir), str(data_dir.parent), str(tmp_path)}
    assert "1" in seen["proc"] and len(seen["proc"]) >= 2  # bubblewrap's PID 1 and the command at least
    every_value = [*seen["env"].values(), seen["mountinfo"]]
    for info in seen["proc"].values():
        every_value += info.values()
    for value in every_value:
        for path in host_paths:
            assert path not in value, (path, value[:300])
        assert "container-mcp-egress" not in value or value is seen["mountinfo"], value[:300]
    pid1 = seen["proc"]["1"]
    assert pid1["environ"] == ""  # bubblewrap itself runs with an empty environment
    # Its options (binds, setenv values) went through --args, not its command line.
    options = pid1["cmdline"].split("\0--\0", 1)[0].split("\0")
    assert options[1:] and options[1] == "--args" and len(options) == 3, pid1["cmdline"][:300]
    assert not any(SECRET in info["cmdline"] for info in seen["proc"].values())
    assert seen["env"]["TOKEN"] == SECRET  # the caller's env still reaches the command itself
