"""Attacks on the boundary the engine enforces for the docker provider, one test each.

Every command here runs as a caller's command would (``DockerProvider.exec``), in the busybox
test image, and the test reads the outcome from inside and, where it can, from the engine.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from container_mcp.models import ContainerSpec
from container_mcp.providers.base import ExecRequest
from container_mcp.providers.docker import LABEL_CONTAINER, DockerProvider
from container_mcp.providers.docker_seccomp import security_opt
from container_mcp.uploads import BytesUpload

from .calls import accept

pytestmark = pytest.mark.anyio


SEARCH = "for d in /*; do case $d in /proc|/sys|/dev|/bin|/sbin) ;; *) grep -rl '{}' $d 2>/dev/null;; esac; done"
"""Every file holding the text in the container's writable places (not the kernel's /proc, /sys, /dev,
nor the image's busybox)."""


async def run(docker: DockerProvider, container_id: str, script: str, timeout_s: float = 30) -> tuple[str, str]:
    result = await docker.exec(
        container_id, ExecRequest(argv=["/bin/sh", "-c", script], timeout_s=timeout_s), approve=accept
    )
    return result.stdout, result.stderr


async def test_the_engine_applies_every_limit_and_no_privilege(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="limits", memory_limit="4g"))
    found = await docker.engine.inspect(f"cmcp-{c.id}")
    assert found is not None
    host = found["HostConfig"]
    assert host["Memory"] == host["MemorySwap"] == 4 << 30
    assert host["PidsLimit"] == 64 and host["NanoCpus"] == 1_000_000_000
    # Docker shows CapDrop as sent (["ALL"]), Podman as the list it dropped: the process's own
    # capability sets (CapEff and CapBnd 0, below) are what holds on both.
    assert host["CapDrop"] == ["ALL"] or "CHOWN" in host["CapDrop"]
    assert not host.get("CapAdd")
    assert host["SecurityOpt"] == ["no-new-privileges", security_opt()] and host["Privileged"] is False
    assert host["NetworkMode"] == "none" and not host.get("Binds") and found["Mounts"] == []
    assert found["Config"]["Labels"][LABEL_CONTAINER] == c.id
    status, _ = await run(docker, c.id, "id -u; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status")
    zero = "0000000000000000"
    assert status.split() == ["1000", "CapEff:", zero, "CapBnd:", zero, "NoNewPrivs:", "1", "Seccomp:", "2"]


async def test_host_files_are_not_visible(docker: DockerProvider, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret.txt"
    token = secrets.token_hex(16)
    secret.write_text(token)
    c = await docker.create_container(ContainerSpec(name="host"))
    out, _ = await run(docker, c.id, f"cat {secret} 2>&1; {SEARCH.format(token)}; echo; ls /")
    assert token not in out and "No such file" in out
    # The image's own tree, the engine's init (Docker's /sbin/docker-init, Podman's /run/podman-init
    # beside /run/.containerenv), and nothing of the host's.
    found = out.split("\n\n")[-1].split()
    assert found in (
        ["bin", "dev", "etc", "mnt", "proc", "root", "sbin", "sys", "tmp"],
        ["bin", "dev", "etc", "mnt", "proc", "root", "run", "sys", "tmp"],
    )


async def test_another_containers_files_are_not_visible(docker: DockerProvider) -> None:
    a = await docker.create_container(ContainerSpec(name="a"))
    b = await docker.create_container(ContainerSpec(name="b"))
    token = secrets.token_hex(16)
    await docker.create_file(a.id, "/mnt/data/a-secret.txt", BytesUpload(token.encode()))
    out, _ = await run(docker, b.id, f"ls -A /mnt/data; {SEARCH.format(token)}; echo end")
    assert out == "end\n"


async def test_network_disabled_means_loopback_only(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="net"))
    out, _ = await run(
        docker, c.id, "ls /sys/class/net; ip route; cat /etc/resolv.conf 2>/dev/null | grep -c nameserver"
    )
    assert out.split() == ["lo", "0"]


async def test_a_fork_bomb_stops_at_the_pids_limit_and_is_killed(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="forks"))
    result = await docker.exec(
        c.id,
        ExecRequest(argv=["/bin/sh", "-c", "while :; do sleep 60 & done"], timeout_s=2),
        approve=accept,
    )
    assert result.timed_out
    assert "fork" in result.stderr.lower() or "resource" in result.stderr.lower()
    out, _ = await run(docker, c.id, "ps -o args | grep -c '^sleep 60' || true")
    assert out.strip() == "0"  # the timeout took every one of them


async def test_a_memory_bomb_is_killed_by_the_memory_limit(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="memory", memory_limit="1g"))
    result = await docker.exec(
        c.id, ExecRequest(argv=["dd", "if=/dev/zero", "of=/dev/null", "bs=1536M", "count=1"]), approve=accept
    )
    assert (result.exit_code, result.signal, result.killed_reason) == (None, 9, "memory_limit")
    out, _ = await run(docker, c.id, "echo alive")
    assert out == "alive\n"  # the container itself survived its command's OOM kill
