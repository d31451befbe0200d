"""The console script as an operator starts it: options before the subcommand take effect, and every
HTTP entry point says where it listens at the default log level."""

from __future__ import annotations

import subprocess
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from openai import AsyncOpenAI

from ..calls import call as structured
from ..envs import clean_env
from ..processes import LISTENING, console_script, started

pytestmark = pytest.mark.anyio


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
    async with started(command, clean_env(HOME=str(home))) as server:
        url = server.url
        assert server.path == path and server.port != 0
        if path == "/v1":
            async with AsyncOpenAI(base_url=url, api_key="unused-on-loopback", max_retries=0) as sdk:
                assert (await sdk.containers.create(name="cli")).status == "running"
        else:
            async with Client(sse_client(url)) if path == "/sse" else Client(url, mode="legacy") as client:
                assert (await structured(client, "container_create", name="cli"))["status"] == "running"
        err = await server.stop()
    assert len(LISTENING.findall(err)) == 1
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


@pytest.mark.parametrize("argv", [["api"], ["--transport", "streamable-http"]], ids=["api", "streamable-http"])
async def test_a_sigterm_right_after_the_listening_line_is_a_clean_stop(tmp_path: Path, argv: list[str]) -> None:
    """The line was logged before the signal handler was installed: a script that stopped the server as
    soon as it saw the line killed it (exit -15, nothing closed)."""
    command = [console_script(), *argv, "--port", "0", "--data-dir", str(tmp_path / "data")]
    async with started(command, clean_env(HOME=str(tmp_path))) as server:
        await server.stop()  # asserts exit status 0
