# ruff: noqa: ASYNC240  (host-side checks in tests: a few stats of tiny files)
"""Paths stay under /mnt/data (file_create and container_exec workdir), and the sandbox holds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ..calls import call as ok
from .conftest import EnvFactory, err

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "path",
    [
        "../x", "a/../../x", "/mnt/data/../etc/passwd", "/mnt/data/..", "/mnt/dataX/y", "//mnt/data/x",
        "/etc/passwd", "a\\..\\x", "a\x00b", "a\nb", "a/", "/mnt/data", "", "   ", "x" * 256,
        "/".join(["d" * 200] * 6), "\ud800.txt", "é" * 128,
    ],
)  # fmt: skip
async def test_file_create_refuses_escaping_paths_and_changes_nothing(env_factory: EnvFactory, path: str) -> None:
    async with env_factory() as env, env.session("s") as c:
        cid = (await ok(c, "container_create", name="x"))["id"]
        text = await err(c, "file_create", container_id=cid, path=path, text="x")
        assert "path" in text.lower()
        assert (await ok(c, "file_list", container_id=cid))["data"] == []
        assert (await ok(c, "session_usage"))["stored_bytes"]["used"] == 0


@pytest.mark.parametrize("path", ["／etc／passwd", "．．/x", "\u2025/x", "a/./b/.//c", "\u202egnp.exe", "x" * 255])
async def test_lookalike_paths_stay_inside(env_factory: EnvFactory, path: str) -> None:
    async with env_factory() as env, env.session("s") as c:
        cid = (await ok(c, "container_create", name="x"))["id"]
        f = await ok(c, "file_create", container_id=cid, path=path, text="inside")
        assert f["path"].startswith("/mnt/data/")
        root = env.provider.data_dir / "containers" / cid / "files"
        host = Path(os.path.realpath(root / f["path"][len("/mnt/data/") :]))
        assert host.is_relative_to(root.resolve()) and host.read_text() == "inside"


async def test_directory_where_a_file_should_be_and_the_reverse(env_factory: EnvFactory) -> None:
    async with env_factory() as env, env.session("s") as c:
        cid = (await ok(c, "container_create", name="x"))["id"]
        await ok(c, "file_create", container_id=cid, path="d/inner.txt", text="1")
        await ok(c, "file_create", container_id=cid, path="f.txt", text="22")
        assert "delete what is" in await err(c, "file_create", container_id=cid, path="d", text="x")
        assert "non-directory" in await err(c, "file_create", container_id=cid, path="f.txt/y", text="x")
        u = await ok(c, "session_usage")
        assert (u["files"], u["stored_bytes"]["used"]) == (2, 3)


async def test_symlinks_a_command_plants_never_lead_outside(env_factory: EnvFactory) -> None:
    async with env_factory(exec_=True) as env, env.session("s") as c:
        cid = (await ok(c, "container_create", name="x"))["id"]
        r = await ok(
            c, "container_exec", container_id=cid,
            command="ln -s /etc etc; ln -s / root; mkdir d; ln -s /etc/passwd d/pw; ln -s .. up; mkfifo p; echo ok",
        )  # fmt: skip
        assert r["exit_code"] == 0 and r["files_created"] == []
        root = env.provider.data_dir / "containers" / cid / "files"
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                assert not os.path.islink(os.path.join(dirpath, name)), name
        # writing or reading through the names the links had stays inside
        for path in ("etc/passwd", "root/tmp/x", "d/pw", "up/x"):
            made = await c.call_tool("file_create", {"container_id": cid, "path": path, "text": "in"})
            if not made.is_error:
                host = Path(os.path.realpath(root / path))
                assert host.is_relative_to(root.resolve()), host
        assert (
            "root:" not in Path(os.path.realpath(root / "etc/passwd")).read_text()
            if (root / "etc/passwd").exists()
            else True
        )


@pytest.mark.parametrize(
    ("workdir", "says"),
    [
        ("/mnt/data/../../etc", "'..'"), ("/etc", "workdir must be"), ("sub", "workdir must be"),
        ("/mnt/data/f.txt", "non-directory"), ("/mnt/data/f.txt/x", "non-directory"), ("/mnt/data/a\x00", "NUL"),
    ],
)  # fmt: skip
async def test_exec_workdir_cannot_escape(env_factory: EnvFactory, workdir: str, says: str) -> None:
    async with env_factory(exec_=True) as env, env.session("s") as c:
        cid = (await ok(c, "container_create", name="x"))["id"]
        await ok(c, "file_create", container_id=cid, path="f.txt", text="x")
        assert says in await err(c, "container_exec", container_id=cid, command="pwd", workdir=workdir)


async def test_exec_cannot_read_host_or_other_containers_or_write_outside(env_factory: EnvFactory) -> None:
    async with env_factory(exec_=True) as env, env.session("a") as a, env.session("b") as b:
        other = (await ok(b, "container_create", name="other"))["id"]
        await ok(b, "file_create", container_id=other, path="s.txt", text="TOP-SECRET")
        cid = (await ok(a, "container_create", name="x"))["id"]
        data = env.provider.data_dir
        script = (
            f"cat {data}/containers/{other}/files/s.txt; cat /proc/1/root{data}/containers/{other}/files/s.txt; "
            "cat /etc/shadow /root/.bashrc; ls /home /var /run /sys; "
            "touch /etc/x /usr/x /x /mnt/x; echo w > /mnt/data/../escape; "
            "grep -rs TOP-SECRET /tmp /mnt /proc/1/root/tmp 2>/dev/null | head -1; echo done"
        )
        r = await ok(a, "container_exec", container_id=cid, command=script, timeout_s=20)
        assert "TOP-SECRET" not in r["stdout"] + r["stderr"]
        assert r["stdout"].strip().endswith("done")
        assert not Path("/escape").exists() and not Path("/etc/x").exists() and not Path("/usr/x").exists()
        assert [f["path"] for f in r["files_created"]] == ["/mnt/data/escape"] or r["files_created"] == []


async def test_exec_has_no_network_when_disabled(env_factory: EnvFactory) -> None:
    async with env_factory(exec_=True) as env, env.session("s") as c:
        cid = (await ok(c, "container_create", name="x"))["id"]
        script = (
            "import socket\n"
            "for host, port in [('1.1.1.1', 53), ('127.0.0.1', 22), ('::1', 22)]:\n"
            "    try:\n"
            "        socket.create_connection((host, port), timeout=1); print('CONNECTED', host)\n"
            "    except OSError as e:\n"
            "        print('blocked', host, e.errno)\n"
            "import os; print(sorted(os.listdir('/sys/class/net')) if os.path.exists('/sys/class/net') else 'nosys')\n"
        )
        r = await ok(c, "container_exec", container_id=cid, command=["python3", "-c", script])
        assert "CONNECTED" not in r["stdout"], r["stdout"]


async def test_exec_leaves_no_process_behind(env_factory: EnvFactory) -> None:
    async with env_factory(exec_=True) as env, env.session("s") as c:
        cid = (await ok(c, "container_create", name="x"))["id"]
        marker = "adv-marker-4242"
        await ok(
            c, "container_exec", container_id=cid,
            command=f"(setsid sh -c 'exec -a {marker} sleep 300' &) ; nohup sh -c 'sleep 300' >/dev/null 2>&1 & "
            f"(trap '' HUP TERM; exec -a {marker} sleep 300) & echo started",
        )  # fmt: skip
        left = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                left.append(pid)
        assert left == [], f"processes outlived the command: {left}"


async def test_exec_fork_bomb_hits_the_pids_limit_and_the_server_survives(env_factory: EnvFactory) -> None:
    async with env_factory(exec_=True, exec_pids_limit=32) as env, env.session("s") as c:
        cid = (await ok(c, "container_create", name="x"))["id"]
        r = await c.call_tool(
            "container_exec",
            {
                "container_id": cid,
                "command": "for i in $(seq 200); do sleep 1 & done 2>&1 | tail -1; echo end",
                "timeout_s": 20,
            },
        )
        text = str(r.structured_content or r.content)
        assert "Traceback" not in text and "Internal error" not in text
        again = await ok(c, "container_exec", container_id=cid, command="echo alive")
        assert again["stdout"] == "alive\n"
