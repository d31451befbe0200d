"""Stopping and killing the engine's own processes from a docker-provider container, one attack each.

A process of the container's user that stops every process it may signal also stops ``runc
init`` of each later exec, and the engine then hangs on that container (exec, kill, rm -f). The
containers' seccomp profile refuses stop signals (``docker_seccomp``); its neighbours (a kill loop,
a ptrace loop) must end every call and never wedge the engine. Each test runs the attack as a
caller's command would, with every wait bounded, and ends with no engine container left.
"""

from __future__ import annotations

import struct
from pathlib import Path

import anyio
import pytest

from container_mcp.clock import ManualClock
from container_mcp.errors import ProviderError
from container_mcp.models import ContainerSpec, ExpiresAfter
from container_mcp.providers.base import ExecRequest, ExecResult
from container_mcp.providers.docker import DockerProvider
from container_mcp.providers.docker_exec import ExecLimits
from container_mcp.uploads import BytesUpload

from .calls import accept
from .engine import docker_provider, engine_containers
from .programs import PTRACE_LOOP, elf

pytestmark = pytest.mark.anyio

ENGINES = ["docker", "podman"]
"""The tests taking ``engine_host`` or ``docker`` also run on the session's Podman service."""

LIMITS = ExecLimits(pids_limit=64, kill_wait_s=3)
BOUND_S = 60
"""No call of these tests may take longer: past it, the engine is wedged and the test fails."""


async def run(docker: DockerProvider, container_id: str, script: str, timeout_s: float = 20) -> ExecResult:
    with anyio.fail_after(BOUND_S):
        return await docker.exec(
            container_id, ExecRequest(argv=["/bin/sh", "-c", script], timeout_s=timeout_s), approve=accept
        )


STOP_LOOP = "while :; do kill -STOP -1 2>/dev/null; done"
STATES = "for f in /proc/[0-9]*/stat; do read -r l < $f && set -- ${l##*') '} && echo $1; done | sort -u"
"""The distinct states of the container's processes (T: stopped)."""


async def test_stop_signals_are_refused_and_every_other_signal_is_not(docker: DockerProvider) -> None:
    c = await docker.create_container(ContainerSpec(name="signals"))
    found = await docker.engine.inspect(f"cmcp-{c.id}")
    assert found is not None
    options = found["HostConfig"]["SecurityOpt"]
    assert options[0] == "no-new-privileges" and options[1].startswith("seccomp=")  # inline, or Podman's path
    result = await run(
        docker,
        c.id,
        # The target ignores the signals that would end it (an ignored signal stays ignored across exec).
        "(trap '' USR1 HUP 34 64; exec sleep 60) & p=$!; until [ \"$(cat /proc/$p/comm)\" = sleep ]; do :; done; "
        "for s in STOP TSTP TTIN TTOU CONT URG WINCH USR1 HUP 0 34 64; do "
        "kill -$s $p 2>/dev/null; echo $s=$?; done; kill -STOP 1 2>/dev/null; echo init=$?; "
        "for q in 1 $p; do read -r l < /proc/$q/stat; set -- ${l##*') '}; [ $1 = T ] && echo stopped; done; kill -9 $p",
    )
    assert result.stdout.split() == [
        *("STOP=1", "TSTP=1", "TTIN=1", "TTOU=1"),
        *("CONT=0", "URG=0", "WINCH=0", "USR1=0", "HUP=0", "0=0", "34=0", "64=0"),
        "init=1",
    ]


async def test_a_stop_loop_times_out_and_the_container_stays_usable(tmp_path: Path, engine_host: str) -> None:
    async with docker_provider(tmp_path / "docker", limits=LIMITS, host=engine_host) as docker:
        c = await docker.create_container(ContainerSpec(name="stop-loop"))
        result = await run(docker, c.id, STOP_LOOP, timeout_s=2)
        assert result.timed_out and result.killed_reason == "timeout"
        after = await run(docker, c.id, f"echo alive; {STATES}")
        assert after.stdout.split()[0] == "alive" and "T" not in after.stdout.split()
        await docker.delete_container(c.id)
        assert await engine_containers(docker.data_dir, engine_host) == []


async def test_a_stop_loop_left_running_wedges_nothing_and_delete_and_expiry_remove_it(
    tmp_path: Path, engine_host: str
) -> None:
    clock = ManualClock()
    async with docker_provider(tmp_path / "docker", clock=clock, limits=LIMITS, host=engine_host) as docker:
        deleted = await docker.create_container(ContainerSpec(name="deleted"))
        expiring = await docker.create_container(ContainerSpec(name="expiring", expires_after=ExpiresAfter(minutes=1)))
        for c in (deleted, expiring):
            left = await run(docker, c.id, f"({STOP_LOOP}) >/dev/null 2>&1 </dev/null & echo started")
            assert left.stdout == "started\n"
            # The next commands (each one a new runc init for the loop to catch) run and see nothing stopped.
            for _ in range(3):
                after = await run(docker, c.id, f"echo alive; {STATES}")
                assert after.stdout.split()[0] == "alive" and "T" not in after.stdout.split()
        fresh = await docker.create_container(ContainerSpec(name="fresh"))
        assert (await run(docker, fresh.id, "echo fresh")).stdout == "fresh\n"
        with anyio.fail_after(BOUND_S):
            await docker.delete_container(deleted.id)
            await docker.delete_container(fresh.id)
            clock.advance(61)
            assert await docker.sweep() == [expiring.id]
        assert await engine_containers(docker.data_dir, engine_host) == []


_EXIT_WITH_ERRNO = bytes.fromhex("4889c748f7dfb83c0000000f05")
"""mov rdi, rax; neg rdi; mov eax, 60; syscall: exit with the last syscall's errno (0 on success)."""


def signal_parent(nr: int, sig: int) -> bytes:
    """kill(getppid(), sig) (nr 62) or tgkill(getppid(), getppid(), sig) (nr 234), all 64 bits of sig given."""
    getppid = bytes.fromhex("b86e0000000f054889c7")  # mov eax, 110; syscall; mov rdi, rax
    if nr == 62:
        args = b"\x48\xbe" + struct.pack("<Q", sig)  # movabs rsi, sig
    else:
        args = bytes.fromhex("4889c6") + b"\x48\xba" + struct.pack("<Q", sig)  # mov rsi, rax; movabs rdx, sig
    return elf(getppid + args + b"\xb8" + struct.pack("<I", nr) + b"\x0f\x05" + _EXIT_WITH_ERRNO)


def sigio_parent(cmd: int, sig: int) -> bytes:
    """A pipe owned by the parent (F_SETOWN), fcntl(fd, cmd, sig) (F_SETSIG with all 64 bits given), O_ASYNC,
    then one byte written: the kernel sends ``sig`` to the parent. Exits with fcntl's errno, or 0."""
    code = bytes.fromhex(
        "4883ec104889e731f6b8250100000f05"  # sub rsp, 16; pipe2(rsp, 0)
        "b86e0000000f054889c28b3c24be08000000b8480000000f05"  # fcntl(rfd, F_SETOWN, getppid())
        "8b3c24"  # mov edi, [rsp]
    )
    code += b"\x48\xbe" + struct.pack("<Q", cmd) + b"\x48\xba" + struct.pack("<Q", sig)
    code += bytes.fromhex(
        "b8480000000f054885c07829"  # fcntl(rfd, cmd, sig); js exit
        "8b3c24be04000000ba00280000b8480000000f05"  # fcntl(rfd, F_SETFL, O_ASYNC | O_NONBLOCK)
        "8b7c24044889e6ba01000000b8010000000f05"  # write(wfd, rsp, 1)
        "31c0"  # xor eax, eax
    )
    return elf(code + _EXIT_WITH_ERRNO)


async def test_stop_signals_cannot_be_smuggled_in_high_bits_or_sent_through_f_setsig(docker: DockerProvider) -> None:
    if (await docker.engine.version()).get("Arch") != "amd64":
        pytest.skip("the attack programs are x86-64 machine code")
    c = await docker.create_container(ContainerSpec(name="smuggle"))
    attacks = {
        # The kernel reads the signal as a 32-bit int: 0x1_00000013 is SIGSTOP to it.
        "kill-high": signal_parent(62, 0x1_0000_0013),
        "tgkill-high": signal_parent(234, 0xFFFF_FFFF_0000_0014),
        "kill": signal_parent(62, 19),
        "setsig": sigio_parent(10, 19),
        "setsig-high-cmd": sigio_parent(0x1_0000_000A, 21),
        "setsig-high-sig": sigio_parent(10, 0x1_0000_0016),
        # What stays allowed: SIGCONT through the same two paths.
        "kill-cont": signal_parent(62, 18),
        "setsig-cont": sigio_parent(10, 18),
    }
    for name, program in attacks.items():
        await docker.create_file(c.id, f"/mnt/data/{name}", BytesUpload(program))
    # Each program signals its parent, a subshell: stopped, it would never print its line, and the call time out.
    script = "cd /mnt/data; chmod +x *; " + " ".join(f"(./{n}; echo {n}=$?);" for n in attacks)
    result = await run(docker, c.id, script, timeout_s=10)
    assert not result.timed_out, result
    assert result.stdout.split() == [
        *("kill-high=1", "tgkill-high=1", "kill=1", "setsig=1", "setsig-high-cmd=1", "setsig-high-sig=1"),
        *("kill-cont=0", "setsig-cont=0"),
    ]


async def test_a_ptrace_loop_bounds_every_call_and_delete_removes_it(tmp_path: Path) -> None:
    # runc init is not dumpable, so the loop cannot hold it: the engine stays usable. The commands it
    # does catch (dumpable once they run) end at their timeout, and a fresh container is untouched.
    async with docker_provider(tmp_path / "docker", limits=LIMITS) as docker:
        if (await docker.engine.version()).get("Arch") != "amd64":
            pytest.skip("the attack program is x86-64 machine code")
        c = await docker.create_container(ContainerSpec(name="traced"))
        await docker.create_file(c.id, "/mnt/data/tracer", BytesUpload(PTRACE_LOOP))
        await run(docker, c.id, "chmod +x tracer; setsid ./tracer >/dev/null 2>&1 </dev/null & echo started", 2)
        await run(docker, c.id, "echo alive", timeout_s=2)  # ends, by itself or at its timeout
        fresh = await docker.create_container(ContainerSpec(name="fresh"))
        assert (await run(docker, fresh.id, "echo fresh")).stdout == "fresh\n"
        with anyio.fail_after(BOUND_S):
            await docker.delete_container(c.id)
            await docker.delete_container(fresh.id)
        assert await engine_containers(docker.data_dir) == []


@pytest.mark.parametrize("signal", ["KILL", "SEGV"])
async def test_a_kill_loop_at_every_process_ends_its_call_and_the_next_command_runs_again(
    tmp_path: Path, signal: str, engine_host: str
) -> None:
    # The loop kills the container's main process too, so the container stops (and the loop with it):
    # the call ends at once, and the next command starts the container again (files stay).
    async with docker_provider(tmp_path / "docker", limits=LIMITS, host=engine_host) as docker:
        c = await docker.create_container(ContainerSpec(name="kill-loop"))
        await docker.create_file(c.id, "/mnt/data/kept.txt", BytesUpload(b"kept"))
        ended = await run(docker, c.id, f"while :; do kill -{signal} -1 2>/dev/null; done", timeout_s=5)
        assert not ended.timed_out and ended.exit_code is None and ended.signal is not None
        try:
            after = await run(docker, c.id, "cat /mnt/data/kept.txt")
        except ProviderError as exc:
            # It started as the container was stopping: told so, and the one after runs.
            assert "did not start" in exc.message and "Run it again" in exc.message
            after = await run(docker, c.id, "cat /mnt/data/kept.txt")
        assert after.stdout == "kept"
        with anyio.fail_after(BOUND_S):
            await docker.delete_container(c.id)
        assert await engine_containers(docker.data_dir, engine_host) == []
