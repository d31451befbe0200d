"""Escape battery: each test tries to get out and asserts it stayed in (not just that it returned)."""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import anyio
import pytest

from container_mcp.sandbox import Sandbox, SandboxProbe

from .conftest import Containers, listing, snapshot
from .helpers import py, sh

pytestmark = [pytest.mark.anyio, pytest.mark.sandbox]

CHECKOUT = Path(__file__).resolve().parents[2]


async def test_identity_is_unprivileged(sandbox: Sandbox, probe: SandboxProbe, data_dir: Path) -> None:
    async with await sh(sandbox, data_dir, "id -u; id -g; cat /proc/self/status; touch mine") as run:
        out = run.stdout_text
        await run.commit()
    lines = out.splitlines()
    assert lines[0] == "1000" and lines[1] == "1000"
    status = dict(line.split(":\t", 1) for line in lines[2:] if ":\t" in line)
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, cap
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == ("2" if probe.seccomp else "0")
    # The kernel uid of sandboxed processes (the owner of what they create) is never host root.
    owner = os.stat(data_dir / "mine").st_uid
    assert owner == probe.host_uid
    assert owner != 0


async def test_cannot_read_shadow(sandbox: Sandbox, data_dir: Path) -> None:
    assert await anyio.Path("/etc/shadow").exists()
    async with await sh(sandbox, data_dir, "cat /etc/shadow; ls -la /etc") as run:
        assert run.exit_code != 0 or "root:" not in run.stdout_text
        assert "shadow" not in run.stdout_text
        assert "root:" not in run.stdout_text.replace("root:x:0:0", "")


async def test_host_home_and_private_dirs_are_absent(sandbox: Sandbox, data_dir: Path) -> None:
    script = (
        "for d in /root /home /run /var /sys /srv /opt /work /boot /media; do test -e $d && echo FOUND $d; done; true"
    )
    async with await sh(sandbox, data_dir, script) as run:
        assert run.exit_code == 0
        assert run.stdout_text == ""
    # The host python of this checkout lives under /root/.pyenv here; it must not be reachable.
    async with await sh(sandbox, data_dir, "ls /root/.pyenv; ls $HOME; echo HOME=$HOME") as run:
        assert "HOME=/tmp" in run.stdout_text
        assert "No such file" in run.stderr_text


async def test_project_checkout_is_not_visible(sandbox: Sandbox, data_dir: Path) -> None:
    assert (CHECKOUT / "pyproject.toml").exists()
    script = (
        f"cat {CHECKOUT}/pyproject.toml; ls {CHECKOUT}; "
        "find / -xdev -name runner.py -path '*container_mcp*' 2>/dev/null; echo done"
    )
    async with await sh(sandbox, data_dir, script, timeout_s=20) as run:
        assert run.stdout_text == "done\n"
        assert "container-mcp" not in run.stdout_text


async def test_other_containers_are_not_visible(sandbox: Sandbox, containers: Containers) -> None:
    mine = containers.make("cntr_mine")
    theirs = containers.make("cntr_theirs")
    secret = secrets.token_hex(16)
    (theirs / "secret.txt").write_text(secret)
    before = snapshot(theirs)
    script = (
        f"cat {theirs}/secret.txt; ls /mnt/data/..; ls /mnt; "
        "find / -name secret.txt -not -path '/proc/*' 2>/dev/null; "
        f"grep -rs {secret} /tmp /mnt /etc /dev 2>/dev/null; "
        "echo overwrite > ../cntr_theirs/files/secret.txt; echo done"
    )
    async with await sh(sandbox, mine, script, timeout_s=20) as run:
        assert secret not in run.stdout_text
        assert "cntr_theirs" not in run.stdout_text
        assert run.stdout_text.splitlines()[-1] == "done"
        await run.commit()
    assert snapshot(theirs) == before


async def test_writes_outside_mnt_data_do_not_reach_the_host(sandbox: Sandbox, data_dir: Path) -> None:
    marker = "cmcp-escape-" + secrets.token_hex(6)
    targets = ["/etc", "/usr", "/usr/lib", "/", "/mnt", "/dev", "/proc", "/tmp", "/dev/shm"]
    script = "; ".join(f"echo x > {t.rstrip('/')}/{marker} 2>/dev/null && echo WROTE {t}" for t in targets)
    async with await sh(sandbox, data_dir, script + "; true") as run:
        # Only the private tmpfs mounts accept writes.
        assert sorted(run.stdout_text.split()) == sorted(["WROTE", "/tmp", "WROTE", "/dev/shm"])
        assert run.changes.empty
    for t in targets:
        assert not await anyio.Path(t, marker).exists(), t
    assert listing(data_dir) == []


async def test_cannot_write_host_sysctls_or_device_nodes(sandbox: Sandbox, data_dir: Path) -> None:
    # With bubblewrap alone, a sandbox started by root runs with host uid 0 and could do both.
    sysctl = anyio.Path("/proc/sys/kernel/printk_ratelimit")
    before = await sysctl.read_text()
    null_mode = os.stat("/dev/null").st_mode
    value = int(before) + 1
    script = (
        f"echo {value} > {sysctl} && echo SYSCTL; chmod 600 /dev/null && echo CHMOD; "
        "echo probe > /dev/null && echo NULLOK"
    )
    async with await sh(sandbox, data_dir, script) as run:
        assert "SYSCTL" not in run.stdout_text
        assert "CHMOD" not in run.stdout_text
        assert "NULLOK" in run.stdout_text
    assert await sysctl.read_text() == before
    assert os.stat("/dev/null").st_mode == null_mode


async def test_setuid_binaries_grant_nothing(sandbox: Sandbox, data_dir: Path) -> None:
    # mount(8) is setuid root on Debian: with setuid honoured, mounting would work.
    assert os.stat("/usr/bin/mount").st_mode & stat.S_ISUID
    script = (
        "mount -t tmpfs none /mnt/data && echo MOUNTED; "
        "cp /usr/bin/id ./myid && chmod 4755 ./myid && ./myid -u; "
        "grep -E '^NoNewPrivs' /proc/self/status; grep ' /usr ' /proc/self/mountinfo"
    )
    async with await sh(sandbox, data_dir, script) as run:
        out = run.stdout_text
        assert "MOUNTED" not in out
        assert "1000" in out.splitlines()
        assert "NoNewPrivs:\t1" in out
        assert "nosuid" in out.splitlines()[-1]
        created = {f.path for f in run.changes.created}
        assert created == {"myid"}
        await run.commit()
    # The setuid bit the command set is not carried into the container's directory.
    assert not os.stat(data_dir / "myid").st_mode & (stat.S_ISUID | stat.S_ISGID)


async def test_ptrace_fails(sandbox: Sandbox, data_dir: Path) -> None:
    host = await anyio.open_process(["sleep", "30"])
    try:
        code = f"""
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
child = os.fork()
if child == 0:
    time.sleep(5)
    os._exit(0)
for name, pid in (("sibling", child), ("host", {host.pid}), ("init", 1)):
    r = libc.ptrace(16, pid, None, None)  # PTRACE_ATTACH
    print(name, r, os.strerror(ctypes.get_errno()))
r = libc.ptrace(0, 0, None, None)  # PTRACE_TRACEME
print("traceme", r)
os.kill(child, 9)
"""
        async with await py(sandbox, data_dir, code) as run:
            lines = run.stdout_text.splitlines()
            assert run.exit_code == 0, run.stderr_text
            assert len(lines) == 4
            for line in lines:
                assert line.split()[1] == "-1", line
        status = await anyio.Path(f"/proc/{host.pid}/status").read_text()
        assert "TracerPid:\t0" in status
    finally:
        host.kill()
        await host.aclose()


async def test_namespace_and_kernel_surface_is_denied(sandbox: Sandbox, probe: SandboxProbe, data_dir: Path) -> None:
    code = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def call(name, *args):
    r = getattr(libc, name)(*args)
    return r, ctypes.get_errno()
print("unshare-user", *call("unshare", 0x10000000))
print("unshare-net", *call("unshare", 0x40000000))
print("keyctl", *call("syscall", 250, 0, -3, 0))  # KEYCTL_GET_KEYRING_ID @s (x86-64)
print("mount", *call("mount", b"none", b"/tmp", b"tmpfs", 0, None))
"""
    async with await py(sandbox, data_dir, code) as run:
        results = {line.split()[0]: int(line.split()[1]) for line in run.stdout_text.splitlines()}
    assert results["unshare-user"] == -1 and results["unshare-net"] == -1 and results["mount"] == -1
    if probe.seccomp and os.uname().machine == "x86_64":
        assert results["keyctl"] == -1


async def test_environment_is_cleared(sandbox: Sandbox, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CMCP_HOST_SECRET", "do-not-leak")
    async with await sh(sandbox, data_dir, "env | sort", env={"GREETING": "hi"}) as run:
        env = dict(line.split("=", 1) for line in run.stdout_text.splitlines())
    assert "CMCP_HOST_SECRET" not in env
    assert env["GREETING"] == "hi"
    assert env["HOME"] == "/tmp" and env["LANG"] == "C.UTF-8"
    assert env["PATH"].startswith("/usr/local/sbin")
    assert not any(k.lower().endswith("_proxy") for k in env)
