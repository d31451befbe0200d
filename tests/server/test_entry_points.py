"""The console script as an operator starts it: options before the subcommand take effect, and every
HTTP entry point says where it listens at the default log level."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from mcp import Client
from mcp.client.sse import sse_client
from openai import AsyncOpenAI

from ..envs import clean_env
from .test_transports import console_script, structured

pytestmark = pytest.mark.anyio

LISTENING = re.compile(rb"listening on (http://127\.0\.0\.1:(\d+)(/\S*))")


async def _listening(proc: Process) -> tuple[str, bytes]:
    """The URL of the one ``listening on`` line, and the stderr read up to it."""
    assert proc.stderr is not None
    seen = b""
    with anyio.fail_after(30):
        while not (match := LISTENING.search(seen)):
            chunk = await proc.stderr.receive()
            seen += chunk
    return match[1].decode(), seen


async def _stop(proc: Process) -> bytes:
    assert proc.stderr is not None
    proc.send_signal(signal.SIGTERM)
    rest = b""
    with anyio.fail_after(20):
        async for chunk in proc.stderr:
            rest += chunk
        assert await proc.wait() == 0
    return rest


@pytest.mark.parametrize(
    ("argv", "path"),
    [
        (["--data-dir", "{data}", "--port", "0", "api"], "/v1"),
        (["--data-dir", "{data}", "--transport", "sse", "--port", "0", "serve"], "/sse"),
        (["--data-dir", "{data}", "--port", "0", "--transport", "streamable-http"], "/mcp"),
    ],
    ids=["api", "sse", "streamable-http"],
)
async def test_http_entry_points_say_where_they_listen_and_honour_options_before_the_command(
    tmp_path: Path, argv: list[str], path: str
) -> None:
    data, home = tmp_path / "data", tmp_path / "home"
    home.mkdir()
    command = [console_script(), *(a.format(data=data) for a in argv)]  # no --log-level: the default
    proc = await anyio.open_process(command, stderr=subprocess.PIPE, env=clean_env(HOME=str(home)))
    try:
        url, seen = await _listening(proc)
        assert url.endswith(path) and not url.endswith(":0" + path)
        if path == "/v1":
            async with AsyncOpenAI(base_url=url, api_key="unused-on-loopback", max_retries=0) as sdk:
                assert (await sdk.containers.create(name="cli")).status == "running"
        else:
            async with Client(sse_client(url)) if path == "/sse" else Client(url, mode="legacy") as client:
                assert (await structured(client, "container_create", name="cli"))["status"] == "running"
        rest = await _stop(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert len(LISTENING.findall(seen + rest)) == 1
    # --data-dir, written before the subcommand, took effect: the state is there, not in $HOME.
    assert list(data.glob("sessions-*.sqlite3")) and (data / "local").is_dir()
    assert not any(home.rglob("*container-mcp*"))


async def test_an_mcp_option_given_to_api_stops_the_start(tmp_path: Path) -> None:
    command = [console_script(), "--data-dir", str(tmp_path / "data"), "--transport", "sse", "api"]
    proc = await anyio.open_process(command, stderr=subprocess.PIPE, env=clean_env(HOME=str(tmp_path)))
    assert proc.stderr is not None
    with anyio.fail_after(20):
        err = b"".join([chunk async for chunk in proc.stderr])
        assert await proc.wait() == 2
    assert b"--transport applies to the MCP server (serve), not to api" in err
    assert not (tmp_path / "data").exists()
