"""Remote engines: tcp:// with TLS (through a TLS relay in front of the test engine) and ssh://
(through a real sshd whose remote ``docker system dial-stdio`` dials the test engine)."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from container_mcp.errors import InvalidRequest, ProviderUnavailable
from container_mcp.models import ContainerSpec
from container_mcp.providers.base import ExecRequest
from container_mcp.providers.docker import DockerProvider
from container_mcp.providers.docker_api import Engine, EngineOptions
from container_mcp.providers.docker_transport import engine_base
from container_mcp.settings import Settings
from container_mcp.uploads import BytesUpload

from .calls import accept
from .engine import docker_provider, engine_containers, require_engine
from .remote import Certificates, make_certificates, ssh_children, sshd, tls_relay

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("docker-certs"))


async def contract_basics(docker: DockerProvider) -> None:
    """Create, exec (stdin in, output out, a file made), a file both ways, delete: all over the engine's transport."""
    c = await docker.create_container(ContainerSpec(name="remote"))
    up = await docker.create_file(c.id, "/mnt/data/in.bin", BytesUpload(bytes(range(256)) * 64))
    result = await docker.exec(
        c.id,
        ExecRequest(argv=["/bin/sh", "-c", "cat; wc -c < in.bin; printf made > out.txt"], stdin=b"fed\n"),
        approve=accept,
    )
    assert (result.exit_code, result.stdout) == (0, "fed\n16384\n")
    assert [f.path for f in result.files_created] == ["/mnt/data/out.txt"]
    made = b"".join([chunk async for chunk in docker.read_file(c.id, result.files_created[0].id)])
    back = b"".join([chunk async for chunk in docker.read_file(c.id, up.id)])
    assert (made, back) == (b"made", bytes(range(256)) * 64)
    await docker.delete_container(c.id)
    assert await engine_containers(docker.data_dir) == []


# --- tcp:// + TLS ------------------------------------------------------------------------------


async def test_the_provider_works_over_tls_with_a_client_certificate(tmp_path: Path, certs: Certificates) -> None:
    await require_engine()
    with tls_relay(certs) as port:
        options = EngineOptions(tls_verify=True, cert_path=certs.good)
        async with docker_provider(tmp_path / "d", docker_host=f"tcp://127.0.0.1:{port}", options=options) as docker:
            assert docker.engine._client.base_url.scheme == "https"
            await contract_basics(docker)


async def test_an_engine_wanting_a_client_certificate_refuses_one_without_clearly(certs: Certificates) -> None:
    await require_engine()
    with tls_relay(certs) as port:
        options = EngineOptions(tls_verify=True, cert_path=certs.ca_only)
        async with Engine(f"tcp://127.0.0.1:{port}", options=options) as engine:
            with pytest.raises(ProviderUnavailable, match="client certificate") as caught:
                await engine.version()
    assert str(certs.ca_only) in caught.value.message and "DOCKER_CERT_PATH" in caught.value.message


async def test_an_engine_not_signed_by_our_ca_is_refused_naming_docker_cert_path(certs: Certificates) -> None:
    await require_engine()
    with tls_relay(certs) as port:
        options = EngineOptions(tls_verify=True, cert_path=certs.wrong_ca)
        async with Engine(f"tcp://127.0.0.1:{port}", options=options) as engine:
            with pytest.raises(ProviderUnavailable, match="failed TLS verification") as caught:
                await engine.version()
    assert str(certs.wrong_ca / "ca.pem") in caught.value.message and "DOCKER_CERT_PATH" in caught.value.message


async def test_docker_tls_without_verify_connects_to_any_engine_and_warns(
    certs: Certificates, caplog: pytest.LogCaptureFixture
) -> None:
    await require_engine()
    with tls_relay(certs) as port:
        with caplog.at_level(logging.WARNING):
            engine = Engine(f"tcp://127.0.0.1:{port}", options=EngineOptions(tls=True, cert_path=certs.wrong_ca))
        async with engine:
            assert "ApiVersion" in await engine.version()  # wrong_ca's CA never signed the relay: not checked
    assert "not verified" in caplog.text


def _tls_settings(cert_path: Path) -> Settings:
    return Settings.isolated(
        provider="docker", docker_host="tcp://127.0.0.1:2376", docker_tls_verify="1", docker_cert_path=cert_path
    )


def test_missing_certificate_files_are_named_at_start(tmp_path: Path, certs: Certificates) -> None:
    with pytest.raises(ValidationError, match=r"ca\.pem is missing"):
        _tls_settings(tmp_path)
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(certs.good / "ca.pem", lone / "ca.pem")
    shutil.copy(certs.good / "cert.pem", lone / "cert.pem")
    with pytest.raises(ValidationError, match=r"key\.pem is missing"):
        _tls_settings(lone)
    assert _tls_settings(certs.good).docker_cert_path == certs.good
    assert _tls_settings(certs.ca_only).docker_tls_verify is True  # no client certificate at all is allowed


def test_a_key_others_may_read_is_refused_and_never_shown(tmp_path: Path, certs: Certificates) -> None:
    exposed = tmp_path / "exposed"
    shutil.copytree(certs.good, exposed)
    (exposed / "key.pem").chmod(0o644)
    with pytest.raises(ValidationError, match="chmod 600") as caught:
        _tls_settings(exposed)
    key = (exposed / "key.pem").read_text()
    body = key.splitlines()[1]
    assert body not in str(caught.value)


def test_a_ca_that_is_not_pem_is_refused_without_its_content(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate SECRETISH\n")
    with pytest.raises(ValidationError, match="not a PEM CA certificate") as caught:
        _tls_settings(tmp_path)
    assert "SECRETISH" not in str(caught.value)


def test_tls_variables_are_on_when_set_to_anything_as_for_the_docker_cli() -> None:
    assert Settings.isolated(docker_tls_verify="0").docker_tls_verify is True
    assert Settings.isolated(docker_tls_verify="").docker_tls_verify is False
    assert Settings.isolated(docker_tls="false").docker_tls is True
    assert Settings.isolated().docker_tls is False


def test_tcp_ports_default_as_for_the_docker_cli(certs: Certificates) -> None:
    assert engine_base("tcp://127.0.0.1")[1] == "http://127.0.0.1:2375/v1.41"
    tls = EngineOptions(tls_verify=True, cert_path=certs.good)
    assert engine_base("tcp://127.0.0.1", tls)[1] == "https://127.0.0.1:2376/v1.41"
    assert engine_base("tcp://[::1]:9", tls)[1] == "https://[::1]:9/v1.41"


def test_plain_tcp_to_another_host_warns_and_loopback_does_not(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        engine_base("tcp://127.0.0.1:2375")
        engine_base("tcp://localhost:2375")
        assert caplog.text == ""
        engine_base("tcp://192.0.2.7:2375")  # built, never dialled: no traffic leaves loopback
    assert "plain HTTP to another host" in caplog.text and "DOCKER_TLS_VERIFY" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        engine_base("tcp://127.0.0.1:2375", EngineOptions(cert_path=Path("/nonexistent")))
    assert "DOCKER_CERT_PATH is set but neither" in caplog.text  # certificates meant for TLS, left unused


# --- ssh:// ------------------------------------------------------------------------------------


@pytest.fixture
def no_ssh_left() -> Iterator[None]:
    assert ssh_children() == []
    yield
    assert ssh_children() == [], "an ssh process outlived its connection"


async def test_the_provider_works_over_ssh_and_leaves_no_ssh_process(tmp_path: Path, no_ssh_left: None) -> None:
    await require_engine()
    async with sshd(tmp_path / "sshd") as server:
        options = EngineOptions(ssh_config=server.client_config)
        async with docker_provider(tmp_path / "d", docker_host=server.docker_host, options=options) as docker:
            await contract_basics(docker)
            pooled = len(ssh_children())
            assert pooled >= 1  # the kept-alive connections' ssh processes
            c = await docker.create_container(ContainerSpec(name="again"))
            for _ in range(2):  # each exec's hijacked connection ends with its ssh process
                result = await docker.exec(c.id, ExecRequest(argv=["true"]), approve=accept)
                assert result.exit_code == 0
            assert len(ssh_children()) <= pooled + 1
        assert ssh_children() == []  # aclose killed every connection's ssh


async def test_a_changed_host_key_is_refused_without_a_prompt(tmp_path: Path, no_ssh_left: None) -> None:
    await require_engine()
    async with sshd(tmp_path / "sshd") as server:
        options = EngineOptions(ssh_config=server.wrong_host_config)
        async with Engine(server.docker_host, options=options, timeout_s=30) as engine:
            with pytest.raises(ProviderUnavailable, match="Host key verification failed") as caught:
                await engine.version()
    assert "ssh to" in caught.value.message and "known host key" in caught.value.message


def test_a_missing_ssh_client_is_a_clear_error_at_start() -> None:
    with pytest.raises(InvalidRequest, match="needs an ssh client") as caught:
        engine_base("ssh://u@127.0.0.1", EngineOptions(ssh_program="/nonexistent/ssh"))
    assert "openssh-client" in caught.value.message


def test_ssh_argv_carries_no_secret_and_passes_the_users_config(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text("")
    transport, base = engine_base("ssh://alice@127.0.0.1:2222/run/user/1000/docker.sock", EngineOptions())
    argv = transport.backend.argv  # type: ignore[attr-defined]
    assert base == "http://docker/v1.41"
    assert "-F" not in argv and argv[argv.index("--") + 1] == "127.0.0.1"
    assert argv[1:3] == ["-o", "BatchMode=yes"]
    assert argv[argv.index("-l") : argv.index("-l") + 2] == ["-l", "alice"]
    assert argv[-1] == "docker --host unix:///run/user/1000/docker.sock system dial-stdio"
    transport, _ = engine_base("ssh://127.0.0.1", EngineOptions(ssh_config=config))
    assert transport.backend.argv[1:3] == ["-F", str(config)]  # type: ignore[attr-defined]
    for bad in ["ssh://alice:pw@127.0.0.1", "ssh://-oProxyCommand=x@127.0.0.1", "ssh://"]:
        with pytest.raises(InvalidRequest) as caught:
            engine_base(bad)
        assert "pw@" not in caught.value.message


async def test_the_server_builds_its_engine_from_the_tls_and_ssh_settings(tmp_path: Path, certs: Certificates) -> None:
    from container_mcp.providers.registry import create_provider

    config = tmp_path / "ssh_config"
    config.write_text("")
    for values in [
        {"docker_host": "tcp://127.0.0.1:2376", "docker_tls_verify": "1", "docker_cert_path": certs.good},
        {"docker_host": "ssh://u@127.0.0.1:2222", "docker_ssh_config": config},
    ]:
        settings = Settings.isolated(provider="docker", data_dir=tmp_path / "data", **values)
        provider = create_provider(settings)
        assert isinstance(provider, DockerProvider)
        try:
            assert provider.engine.options == settings.docker_engine_options()
            assert provider.engine.docker_host == values["docker_host"]
        finally:
            provider.registry.close()
            await provider.engine.aclose()
