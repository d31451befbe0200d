"""No unauthenticated network listener: one rule for MCP streamable HTTP, SSE and ``container-mcp api``,
checked at start before anything is opened; ``--api-key`` on argv warns; Host/Origin allowlists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from container_mcp.errors import UnsafeConfiguration
from container_mcp.hosts import OriginPolicy
from container_mcp.serving import refuse_unauthenticated_exposure
from container_mcp.settings import Settings

from ..envs import clean_env
from ..processes import started

pytestmark = pytest.mark.anyio


_clean_env = clean_env


@pytest.mark.parametrize(
    "argv",
    [
        ["--transport", "streamable-http", "--host", "0.0.0.0"],
        ["serve", "--transport", "sse", "--host", "0.0.0.0"],
        ["api", "--host", "0.0.0.0"],
        ["--transport", "streamable-http", "--host", "::"],
        ["api", "--host", "192.0.2.10"],  # TEST-NET: refused before any bind is tried
        ["--transport", "sse", "--host", "mcp.example.com"],
    ],
)
def test_every_http_entry_point_refuses_a_network_host_without_auth(tmp_path: Path, argv: list[str]) -> None:
    """Before: MCP HTTP on 0.0.0.0 served container_exec to the network with no auth and no warning."""
    data = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-m", "container_mcp", *argv, "--port", "0", "--data-dir", str(data)],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    host = argv[argv.index("--host") + 1]
    assert f"refusing to serve on {host} without authentication" in done.stderr
    assert "CONTAINER_MCP_API_KEYS" in done.stderr and "--api-keys-file" in done.stderr
    assert "Traceback" not in done.stderr
    assert not data.exists()  # refused before anything was opened


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_auth(host: str) -> None:
    refuse_unauthenticated_exposure(host, authenticated=False, command="container-mcp api")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "example.com"])
def test_a_network_host_needs_auth(host: str) -> None:
    with pytest.raises(UnsafeConfiguration, match=f"refusing to serve on {re.escape(host)}"):
        refuse_unauthenticated_exposure(host, authenticated=False, command="container-mcp api")
    refuse_unauthenticated_exposure(host, authenticated=True, command="container-mcp api")


def test_auth_is_enabled_by_keys_from_env_or_file_or_by_oauth(tmp_path: Path) -> None:
    assert not Settings.isolated(data_dir=tmp_path).auth_enabled()
    assert Settings.isolated(data_dir=tmp_path, api_keys="k1,k2").auth_enabled()
    keys = tmp_path / "keys"
    keys.write_text("# only comments\n\n")
    assert not Settings.isolated(data_dir=tmp_path, api_keys_file=keys).auth_enabled()
    keys.write_text("# team\nk3\n")
    assert Settings.isolated(data_dir=tmp_path, api_keys_file=keys).auth_enabled()
    oauth = Settings.isolated(
        data_dir=tmp_path,
        oauth_issuer_url="https://issuer.example.com",
        oauth_resource_url="https://mcp.example.com/mcp",
        oauth_jwks_url="https://issuer.example.com/jwks",
    )
    assert oauth.auth_enabled()


async def test_api_key_on_argv_warns_that_local_users_can_read_it(tmp_path: Path) -> None:
    secret = "sk-argv-visible-424242"
    command = [sys.executable, "-m", "container_mcp", "api", "--api-key", secret, "--port", "0", "--log-level", "INFO"]
    async with started(command, _clean_env(CONTAINER_MCP_DATA_DIR=str(tmp_path))) as server:
        seen = (await server.stop()).decode()
    assert "/proc/<pid>/cmdline" in seen and "CONTAINER_MCP_API_KEYS" in seen
    assert secret not in seen


def _sdk_hosts(settings: Settings, bound: str) -> list[str]:
    return OriginPolicy.from_settings(settings, bound).sdk_hosts()


def test_allowed_hosts_are_loopback_the_bound_address_and_the_configured_names(tmp_path: Path) -> None:
    settings = Settings.isolated(data_dir=tmp_path, allowed_hosts="MCP.example.com, proxy.internal:8443")
    hosts = _sdk_hosts(settings, "192.168.1.20")
    for expected in ("127.0.0.1:*", "localhost:*", "[::1]:*", "192.168.1.20:*", "mcp.example.com", "mcp.example.com:*",
                     "proxy.internal:8443"):  # fmt: skip
        assert expected in hosts
    assert "proxy.internal:8443:*" not in hosts
    # a wildcard bind adds no Host value: no client names 0.0.0.0 or ::
    assert not any(h.startswith(("0.0.0.0", "[::]")) for h in _sdk_hosts(settings, "0.0.0.0"))
    assert not any(h.startswith("[::]") for h in _sdk_hosts(settings, "::"))
    assert "[::1]:*" in _sdk_hosts(settings, "::1")


def test_allowed_origins_are_loopback_and_the_configured_ones(tmp_path: Path) -> None:
    settings = Settings.isolated(
        data_dir=tmp_path, allowed_hosts="proxy.internal:8443", allowed_origins="https://app.example.com/"
    )
    origins = OriginPolicy.from_settings(settings, "0.0.0.0").sdk_origins()
    for expected in ("http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*", "https://app.example.com",
                     "https://proxy.internal:8443"):  # fmt: skip
        assert expected in origins
    # a configured origin without a port is that origin only, as on the REST API
    assert "https://app.example.com:*" not in origins
    assert not any("0.0.0.0" in o for o in origins)


def test_a_malformed_allowed_host_is_refused_by_the_settings(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CONTAINER_MCP_ALLOWED_HOSTS entry 'a:b'"):
        Settings.isolated(data_dir=tmp_path, allowed_hosts="a:b")
