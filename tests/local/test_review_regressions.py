"""Regressions found in review: each pins a promise that once broke."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from container_mcp.clock import ManualClock
from container_mcp.errors import ContainerExpired
from container_mcp.ledger.base import Limits
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.models import ContainerSpec, ExpiresAfter
from container_mcp.providers.base import ExecRequest
from container_mcp.providers.local import LocalProvider
from container_mcp.providers.local_exec import ExecLimits
from container_mcp.service import ContainerService
from container_mcp.uploads import BytesUpload

pytestmark = pytest.mark.anyio

LIMITS = Limits(
    max_containers=5,
    max_files_per_container=10,
    max_file_bytes=1000,
    max_session_bytes=1000,
    max_calls_per_minute=10**6,
)


async def test_bytes_of_an_expired_container_stop_counting(tmp_path: Path) -> None:
    clock = ManualClock()
    async with LocalProvider(tmp_path, clock=clock) as provider:
        service = ContainerService(provider, SqliteLedger(), LIMITS, clock=clock)
        a = await service.create_container("s", ContainerSpec(name="a", expires_after=ExpiresAfter(minutes=1)))
        await service.create_file("s", a.id, "big.bin", BytesUpload(b"x" * 900))
        clock.advance(61)
        await provider.sweep()
        b = await service.create_container("s", ContainerSpec(name="b"))
        f = await service.create_file("s", b.id, "next.bin", BytesUpload(b"y" * 500))
        assert f.bytes == 500
        assert (await service.usage("s")).stored_bytes.used == 500


async def test_a_failed_copy_leaks_no_file_descriptor(tmp_path: Path) -> None:
    clock = ManualClock()
    async with LocalProvider(tmp_path, clock=clock) as provider:
        src = await provider.create_container(ContainerSpec(name="src"))
        dst = await provider.create_container(ContainerSpec(name="dst", expires_after=ExpiresAfter(minutes=1)))
        f = await provider.create_file(src.id, "/mnt/data/a.txt", BytesUpload(b"a"))
        clock.advance(30)
        await provider.get_container(src.id)  # src stays alive, dst will not
        clock.advance(31)
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            with pytest.raises(ContainerExpired):
                await provider.copy_file(src.id, f.id, dst.id)
        assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.sandbox
async def test_the_reaper_never_expires_a_container_while_a_command_runs(tmp_path: Path) -> None:
    clock = ManualClock()
    async with LocalProvider(tmp_path, clock=clock, exec_limits=ExecLimits()) as provider:
        if not provider.capabilities.exec:
            pytest.skip(f"sandbox unavailable: {provider.capabilities.exec_unavailable_reason}")
        c = await provider.create_container(ContainerSpec(name="busy", expires_after=ExpiresAfter(minutes=1)))
        await provider.create_file(c.id, "/mnt/data/keep.txt", BytesUpload(b"input\n"))
        results = []

        async def approve(changes: object) -> None:
            return None

        async def run() -> None:
            request = ExecRequest(argv=["sh", "-c", "sleep 1; cat keep.txt > out.txt"], timeout_s=30)
            results.append(await provider.exec(c.id, request, approve=approve))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await anyio.sleep(0.3)  # the command is running (it sleeps 1 s)
            clock.advance(120)  # idle time passes for the clock...
            assert await provider.sweep() == []  # ...but a running command is activity
            assert (await provider.get_container(c.id, touch=False)).status == "running"
        (result,) = results
        assert result.exit_code == 0, result.stderr
        assert [f.path for f in result.files_created] == ["/mnt/data/out.txt"]
