"""``container-mcp api`` as a process, and ``serve_api``'s refusal to run open to the network."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from openai import AsyncOpenAI

from container_mcp.api.serve import serve_api
from container_mcp.errors import UnsafeConfiguration
from container_mcp.settings import Settings

from ..envs import clean_env
from ..processes import started

pytestmark = pytest.mark.anyio


async def test_serve_api_refuses_a_public_host_without_keys(tmp_path: Path) -> None:
    with pytest.raises(UnsafeConfiguration, match="refusing to serve on 0.0.0.0 without authentication"):
        await serve_api(Settings.isolated(data_dir=tmp_path, api_keys=[]), "0.0.0.0", 0)
    assert not (tmp_path / "sessions-local.sqlite3").exists()  # refused before opening anything


async def test_cli_serves_the_api_until_sigterm(tmp_path: Path) -> None:
    env = clean_env(CONTAINER_MCP_DATA_DIR=str(tmp_path), CONTAINER_MCP_API_KEYS="sk-cli-key")
    command = [sys.executable, "-m", "container_mcp", "api", "--port", "0", "--log-level", "INFO"]
    async with started(command, env) as server:
        async with AsyncOpenAI(api_key="sk-cli-key", base_url=server.url, max_retries=0) as client:
            created = await client.containers.create(name="via-cli")
            assert [c.id for c in (await client.containers.list()).data] == [created.id]
        rest = (await server.stop()).decode()  # a clean exit: the provider and the store were closed
    assert "container-mcp api stopped" in rest
    assert (tmp_path / "sessions-local.sqlite3").exists()


def test_the_api_starts_without_the_mcp_sdk_or_pyjwt() -> None:
    """Importing ``mcp`` alone took ~0.4 s of the api's start (through the token verifier); PyJWT is
    OAuth mode's only."""
    import subprocess

    code = (
        "import sys, container_mcp.cli, container_mcp.api.serve, container_mcp.api.app; "
        "print(sorted(m for m in ('mcp', 'jwt') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
