"""A container is a workspace: its $HOME persists between commands, venvs and pip work offline.

Through the MCP client on the local provider's real sandbox. What a command leaves in $HOME
(/home/sandbox) is there for the next command of the same container, never in another
container, not a container file, counted in stored bytes, bounded, and gone with the container.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from container_mcp.clock import ManualClock
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.providers.local import LocalProvider
from container_mcp.providers.local_exec import ExecLimits
from container_mcp.runtime import limits_from
from container_mcp.server.app import create_server
from container_mcp.service import ContainerService
from container_mcp.settings import Settings

from ..calls import call

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]

MiB = 1 << 20

WHEEL_BUILDER = r"""
import base64, hashlib, sys, zipfile
files = {
    "hello_ws/__init__.py": b"X = 42\n",
    "hello_ws-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: hello-ws\nVersion: 1.0\n",
    "hello_ws-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{name},sha256={digest},{len(data)}")
record.append("hello_ws-1.0.dist-info/RECORD,,")
files["hello_ws-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for name, data in files.items():
        z.writestr(name, data)
"""


@asynccontextmanager
async def workspace(tmp_path: Path, clock: ManualClock, *, home_bytes: int) -> AsyncIterator[tuple[Client, Path]]:
    """An MCP client of a local-provider server whose homes hold ``home_bytes`` (5,000 entries),
    and the directory of its containers."""
    settings = Settings.isolated(data_dir=tmp_path, max_calls_per_minute=100_000)
    limits = ExecLimits(max_home_bytes=home_bytes, max_home_files=5_000)
    async with LocalProvider(tmp_path / "local", clock=clock, exec_limits=limits) as provider:
        store = SqliteLedger()
        provider.attach_usage_sink(store.set_usage)
        service = ContainerService(provider, store, limits_from(settings), clock=clock)
        async with Client(create_server(service, settings)) as client:
            yield client, tmp_path / "local" / "containers"


@pytest.fixture
async def env(tmp_path: Path, clock: ManualClock) -> AsyncIterator[tuple[Client, Path]]:
    async with workspace(tmp_path, clock, home_bytes=64 * MiB) as made:
        yield made


async def run(client: Client, cid: str, command: str, timeout_s: float = 60) -> dict[str, Any]:
    return await call(client, "container_exec", container_id=cid, command=command, timeout_s=timeout_s)


async def test_home_persists_between_commands_and_goes_with_the_container(env: tuple[Client, Path]) -> None:
    client, containers = env
    cid = (await call(client, "container_create", name="home"))["id"]
    first = await run(client, cid, "echo $HOME; echo 'export GREETING=hi' > ~/.profile; mkdir -p ~/.cache/x")
    assert first["stdout"] == "/home/sandbox\n" and first["files_created_total"] == 0
    second = await run(client, cid, ". ~/.profile; echo $GREETING; ls -a ~/.cache")
    assert second["stdout"] == "hi\n.\n..\nx\n"
    # the home's mount names no host path
    mounts = (await run(client, cid, "cat /proc/self/mountinfo"))["stdout"]
    assert " /home/sandbox " in mounts and str(containers) not in mounts and cid not in mounts
    # not a container file
    assert (await call(client, "file_list", container_id=cid))["data"] == []
    # /tmp is per command
    await run(client, cid, "echo t > /tmp/t")
    assert (await run(client, cid, "ls /tmp"))["stdout"] == ""
    caps = json.loads((await client.read_resource("container://capabilities")).contents[0].text)  # type: ignore[union-attr]
    assert "$HOME=/home/sandbox" in caps["persistence"] and "/tmp" in caps["persistence"]
    # another container has its own, empty home
    other = (await call(client, "container_create", name="other"))["id"]
    assert (await run(client, other, "ls -A ~; cat /home/sandbox/.profile"))["exit_code"] != 0
    await call(client, "container_delete", container_id=cid)
    assert not (containers / cid).exists()


async def test_pip_install_user_of_a_local_wheel_is_importable_in_the_next_command(env: tuple[Client, Path]) -> None:
    client, _ = env
    cid = (await call(client, "container_create", name="pip"))["id"]
    await call(client, "file_create", container_id=cid, path="build_wheel.py", text=WHEEL_BUILDER)
    install = await run(
        client,
        cid,
        "python3 build_wheel.py /tmp/hello_ws-1.0-py3-none-any.whl && "
        "python3 -m pip install --user --no-index --break-system-packages /tmp/hello_ws-1.0-py3-none-any.whl",
        timeout_s=120,
    )
    assert install["exit_code"] == 0, install["stderr"]
    used = await run(client, cid, "cd /tmp && python3 -c 'import hello_ws; print(hello_ws.X, hello_ws.__file__)'")
    assert used["exit_code"] == 0, used["stderr"]
    assert used["stdout"].startswith("42 /home/sandbox/.local/lib/python3")


async def test_a_venv_with_pip_in_mnt_data_and_one_in_home_work_in_later_commands(env: tuple[Client, Path]) -> None:
    client, _ = env
    cid = (await call(client, "container_create", name="venv"))["id"]
    made = await run(client, cid, "python3 -m venv --copies /mnt/data/venv && python3 -m venv ~/venv", timeout_s=120)
    assert made["exit_code"] == 0, made["stderr"]
    assert int(made["files_created_total"]) > 1000
    later = await run(client, cid, "/mnt/data/venv/bin/python -m pip --version && ~/venv/bin/pip --version")
    assert later["exit_code"] == 0, later["stderr"]
    assert "/mnt/data/venv/lib/" in later["stdout"] and "/home/sandbox/venv/lib/" in later["stdout"]
    # a venv with symlinks under /mnt/data loses them, and the result says so and what to do
    linked = await run(client, cid, "python3 -m venv --without-pip /mnt/data/linked")
    assert int(linked["files_not_kept"]) >= 1 and "--copies" in str(linked["hint"])


async def test_home_counts_in_stored_bytes(env: tuple[Client, Path]) -> None:
    client, _ = env
    cid = (await call(client, "container_create", name="bytes"))["id"]
    before = (await call(client, "session_usage"))["stored_bytes"]["used"]
    await run(client, cid, "head -c 3000000 /dev/urandom > ~/blob")
    after = (await call(client, "session_usage"))["stored_bytes"]["used"]
    assert after - before >= 3_000_000
    await run(client, cid, "rm ~/blob")
    assert (await call(client, "session_usage"))["stored_bytes"]["used"] < before + 100_000


async def test_a_command_filling_its_home_past_the_bound_is_killed(env: tuple[Client, Path]) -> None:
    client, _ = env
    cid = (await call(client, "container_create", name="fill"))["id"]
    big = await run(client, cid, "head -c 200000000 /dev/zero > ~/fill; sleep 30")
    assert big["killed_reason"] == "disk_limit" and big["exit_code"] is None
    many = await run(client, cid, "rm -f ~/fill; mkdir ~/m && cd ~/m && seq 1 20000 | xargs touch; sleep 30")
    assert many["killed_reason"] == "disk_limit"


async def test_expiry_empties_the_home(env: tuple[Client, Path], clock: ManualClock) -> None:
    client, containers = env
    cid = (await call(client, "container_create", name="short", expires_after_minutes=1))["id"]
    await run(client, cid, "echo kept > ~/note")
    assert (containers / cid / "home" / "note").exists()
    clock.advance(120)
    assert (await call(client, "container_retrieve", container_id=cid))["status"] == "expired"
    assert not (containers / cid / "home").exists() or not any((containers / cid / "home").iterdir())
