"""network_policy at container_create: refused before anything exists, on both surfaces, and only
offered where the sandbox really enforces it (issue 7 item 1)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from mcp import Client

from container_mcp.api.app import create_app
from container_mcp.clock import ManualClock
from container_mcp.errors import SandboxUnavailable
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.models import NetworkPolicy
from container_mcp.providers.local import LocalProvider
from container_mcp.providers.local_exec import ExecLimits
from container_mcp.runtime import limits_from
from container_mcp.sandbox import Sandbox, SandboxConfig, SandboxJob
from container_mcp.server.app import create_server
from container_mcp.service import ContainerService
from container_mcp.settings import Settings
from tests.api.live import KEY_A, serve_app
from tests.calls import call as ok

from .conftest import EnvFactory, err

pytestmark = pytest.mark.anyio

REFUSED = [
    ("127.0.0.1", "loopback"),
    ("2130706433", "loopback"),
    ("0x7f.1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),
    ("[::1]", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("169.254.169.254", "metadata"),
    ("0251.0376.0251.0376", "metadata"),
    ("10.1.2.3", "private"),
    ("64:ff9b::a9fe:a9fe", "metadata"),
    ("https://pypi.org", "URL"),
    ("pypi.org/simple", "path"),
    ("pypi.org:443", "port"),
    ("a.*.example.com", "wildcard"),
    ("*", "wildcard"),
    ("", "non-empty"),
    ("x" * 300, "at most 253"),
    ("localhost", "localhost"),
    ("*.com", "top-level domain"),
    ("com", "top-level domain"),
]


def _policy(entry: str) -> dict[str, Any]:
    return {"type": "allowlist", "allowed_domains": ["pypi.org", entry]}


async def _nothing_created(client: Client, provider: LocalProvider) -> None:
    assert (await ok(client, "container_list"))["data"] == []
    assert (await ok(client, "session_usage"))["containers"]["used"] == 0
    assert provider.registry.all_ids() == set()


@pytest.mark.sandbox
async def test_container_create_refuses_bad_entries_and_creates_nothing(env_factory: EnvFactory) -> None:
    async with env_factory(exec_=True) as env, env.session("alice") as a:
        for entry, why in REFUSED:
            text = await err(a, "container_create", name="x", network_policy=_policy(entry))
            assert "network_policy.allowed_domains[1]" in text, (entry, text)
            assert why in text, (entry, text)
            await _nothing_created(a, env.provider)
        good = {"type": "allowlist", "allowed_domains": ["pypi.org", "*.pythonhosted.org", "93.184.216.34"]}
        created = await ok(a, "container_create", name="ok", network_policy=good)
        assert created["network_policy"] == good


@pytest.mark.sandbox
async def test_only_the_operator_opens_private_destinations(env_factory: EnvFactory) -> None:
    async with env_factory(exec_=True, egress_allow_networks=["10.20.0.0/16"]) as env, env.session("a") as a:
        await ok(a, "container_create", name="mirror", network_policy=_policy("10.20.1.2"))
        text = await err(a, "container_create", name="x", network_policy=_policy("10.21.0.1"))
        assert "private" in text and "CONTAINER_MCP_EGRESS_ALLOW_NETWORKS" in text


@asynccontextmanager
async def local_service(tmp_path: Path, sandbox: Sandbox | None, **settings: Any) -> AsyncIterator[ContainerService]:
    """A service over a LocalProvider; ``sandbox`` None means exec is not enabled."""
    cfg = Settings.isolated(data_dir=tmp_path / "data", **settings)
    store = SqliteLedger()
    limits = ExecLimits() if sandbox is not None else None
    try:
        async with LocalProvider(cfg.data_dir / "local", exec_limits=limits, sandbox=sandbox) as provider:
            yield ContainerService(provider, store, limits_from(cfg), egress=cfg.egress_rules(), clock=ManualClock())
    finally:
        store.close()


async def _capabilities(client: Client) -> dict[str, Any]:
    result = await client.read_resource("container://capabilities")
    return json.loads(result.contents[0].text)  # type: ignore[union-attr]


@pytest.mark.sandbox
async def test_allowlist_is_advertised_only_where_it_is_enforced(tmp_path: Path) -> None:
    # A sandbox whose "python3" cannot run the forwarder: the probe's trial request fails.
    broken = Sandbox(SandboxConfig(python="/usr/bin/true", warm_launchers=0))
    async with local_service(tmp_path / "broken", broken) as service:
        if not service.capabilities.exec:
            pytest.skip(f"sandbox unavailable: {service.capabilities.exec_unavailable_reason}")
        async with Client(create_server(service, Settings.isolated(data_dir=tmp_path / "broken"))) as client:
            caps = await _capabilities(client)
            assert caps["exec"] is True
            assert caps["network_policies"] == ["disabled"]
            assert "cannot be enforced" in caps["network_unavailable_reason"]
            text = await err(client, "container_create", name="x", network_policy=_policy("pypi.org"))
            assert "'allowlist' is not available" in text and "cannot be enforced" in text
            assert (await ok(client, "container_list"))["data"] == []
        # A container stored with an allowlist (before, or on another host) is not run unfiltered.
        files = tmp_path / "c" / "files"
        files.mkdir(parents=True)
        job = SandboxJob(
            data_dir=files, argv=["true"], network=NetworkPolicy(type="allowlist", allowed_domains=["a.b"])
        )
        with pytest.raises(SandboxUnavailable, match="cannot be enforced"):
            await broken.run(job)
    async with local_service(tmp_path / "good", Sandbox(SandboxConfig(warm_launchers=0))) as service:
        caps = service.capabilities.model_dump()
        assert caps["network_policies"] == ["disabled", "allowlist"] and caps["network_unavailable_reason"] is None
        assert "ports 80, 443" in caps["network_enforcement"]
    async with local_service(tmp_path / "noexec", None) as service:
        assert service.capabilities.network_policies == ["disabled"]


@pytest.mark.sandbox
async def test_rest_api_refuses_bad_entries_with_a_400_naming_them(tmp_path: Path) -> None:
    """POST /v1/containers through the official SDK against a live server: 400, param, nothing created."""
    async with local_service(tmp_path, Sandbox(SandboxConfig(warm_launchers=0)), api_keys=[KEY_A]) as service:
        if "allowlist" not in service.capabilities.network_policies:
            pytest.skip(f"allowlist unavailable: {service.capabilities.network_unavailable_reason}")
        settings = Settings.isolated(data_dir=tmp_path / "data", api_keys=[KEY_A])
        async with serve_app(create_app(service, settings)) as origin:
            async with openai.AsyncOpenAI(api_key=KEY_A, base_url=origin + "/v1", max_retries=0) as client:
                for entry, why in REFUSED:
                    with pytest.raises(openai.BadRequestError) as caught:
                        await client.containers.create(name="x", network_policy=_policy(entry))  # type: ignore[arg-type]
                    e = caught.value
                    assert e.status_code == 400 and e.type == "invalid_request_error", entry
                    assert e.param == "network_policy.allowed_domains[1]", (entry, e.param)
                    assert why in e.message, (entry, e.message)
                    assert [c async for c in client.containers.list()] == []
                good = await client.containers.create(name="ok", network_policy=_policy("*.pythonhosted.org"))  # type: ignore[arg-type]
                assert good.network_policy is not None
        assert len(service.provider.registry.all_ids()) == 1  # type: ignore[attr-defined]
