"""The docker provider's pure parts: DOCKER_HOST parsing, the listing's bound (no engine needed)."""

from __future__ import annotations

import pytest

from container_mcp.errors import InvalidRequest, ProviderUnavailable
from container_mcp.providers.docker import DockerProvider
from container_mcp.providers.docker_api import Engine
from container_mcp.providers.docker_transport import engine_base

pytestmark = pytest.mark.anyio


def test_docker_host_forms() -> None:
    assert engine_base("unix:///var/run/docker.sock")[1] == "http://docker/v1.41"
    assert engine_base("tcp://127.0.0.1:2375")[1] == "http://127.0.0.1:2375/v1.41"
    with pytest.raises(InvalidRequest, match="not understood"):
        engine_base("npipe:////./pipe/docker_engine")
    with pytest.raises(InvalidRequest, match="absolute socket path"):
        engine_base("unix://relative.sock")


@pytest.mark.parametrize("host", ["tcp://admin:s3cret-pw@127.0.0.1:2375", "ssh://admin:s3cret-pw@127.0.0.1"])
def test_credentials_in_docker_host_are_refused_and_never_shown(host: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        engine_base(host)
    assert "s3cret-pw" not in str(caught.value) and "***@" in str(caught.value)


async def test_no_engine_is_a_clear_error_at_start(tmp_path) -> None:
    provider = DockerProvider(tmp_path / "d", engine=Engine("unix:///nonexistent/docker.sock"), image="x")
    with pytest.raises(ProviderUnavailable, match="did not answer") as caught:
        async with provider:
            pass
    assert "DOCKER_HOST" in caught.value.message


def test_docker_host_is_judged_only_for_the_docker_provider() -> None:
    from pydantic import ValidationError

    from container_mcp.settings import Settings

    assert Settings.isolated(docker_host="npipe:////./pipe/docker_engine").provider == "local"
    with pytest.raises(ValidationError, match="not understood"):
        Settings.isolated(provider="docker", docker_host="npipe:////./pipe/docker_engine")


def test_allowed_images_are_comma_separated_and_the_default_comes_first(tmp_path) -> None:
    from container_mcp.settings import Settings

    settings = Settings.isolated(docker_images="alpine:3.20, debian:bookworm-slim,")
    assert settings.docker_image == "python:3.12-slim"
    assert settings.docker_images == ["alpine:3.20", "debian:bookworm-slim"]
    provider = DockerProvider(
        tmp_path / "d",
        engine=Engine("unix:///nonexistent/docker.sock"),
        image=settings.docker_image,
        images=[*settings.docker_images, settings.docker_image],
    )
    try:
        assert provider.capabilities.images == ["python:3.12-slim", "alpine:3.20", "debian:bookworm-slim"]
    finally:
        provider.registry.close()


def test_a_listing_longer_than_its_bound_is_dropped_not_kept() -> None:
    from container_mcp.providers import docker_exec
    from container_mcp.sandbox.output import OutputCapture

    err = OutputCapture(1024)
    divert = docker_exec._Divert(err, "nonce")
    divert.feed(b"said\n" + b"\nnonce\n/mnt/data/a\0")
    for _ in range(docker_exec._MAX_LISTING // 65536 + 2):
        divert.feed(b"x" * 65536)
    divert.feed(b"\nnonce.\n")
    assert divert.finish() is None and err.getvalue() == b"said\n"
    kept = docker_exec._Divert(OutputCapture(1024), "nonce")
    kept.feed(b"\nnonce\n/mnt/data/a\0/mnt/data/b\0\nnonce.\n")
    assert kept.finish() == {"/mnt/data/a", "/mnt/data/b"}
