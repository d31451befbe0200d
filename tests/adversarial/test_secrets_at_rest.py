"""Secrets at rest: nothing in the data dir is readable by another local user, and no session id
is stored there in clear (another user who read one could act as that session).

The attacks use the real console script: a streamable-HTTP server started under umask 000, the
official MCP client over HTTP, and the stdio server restarted on the same data dir.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from container_mcp.errors import ContainerMCPError
from container_mcp.ledger.sqlite import KEY_FILE, SqliteLedger
from container_mcp.private import secret_key, secure_data_dir
from container_mcp.runtime import open_service
from container_mcp.settings import Settings
from tests.calls import call as ok
from tests.processes import console_script, started

from ..envs import clean_env

pytestmark = pytest.mark.anyio


def loose_entries(root: Path) -> list[str]:
    """Every entry under ``root`` (and ``root`` itself) with a group or other permission bit."""
    found = []
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
            found.append(f"{path.relative_to(root)} {stat.filemode(st.st_mode)}")
    return found


def files_containing(root: Path, needle: bytes) -> list[str]:
    """Every file under ``root`` whose bytes contain ``needle`` (databases, -wal, -shm included)."""
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
            hits.append(str(path.relative_to(root)))
    return hits


@asynccontextmanager
async def http_server(data_dir: Path, *, umask: int) -> AsyncIterator[str]:
    """``container-mcp --transport streamable-http`` on 127.0.0.1:0 under ``umask``; yields its URL."""
    argv = [console_script(), "--transport", "streamable-http", "--port", "0", "--data-dir", str(data_dir)]
    umasked = ["sh", "-c", f'umask {umask:03o} && exec "$@"', "sh", *argv, "--log-level", "INFO"]
    async with started(umasked, clean_env()) as server:
        yield server.url
        await server.stop()


@asynccontextmanager
async def client_with_session_id(url: str) -> AsyncIterator[tuple[Client, list[str]]]:
    """A handshake-era client over streamable HTTP, and the Mcp-Session-Id values the server gave it."""
    session_ids: list[str] = []

    async def record(response: httpx2.Response) -> None:
        if sid := response.headers.get("mcp-session-id"):
            session_ids.append(sid)

    async with httpx2.AsyncClient(event_hooks={"response": [record]}, timeout=60) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
            yield client, session_ids


async def test_a_real_server_under_umask_000_keeps_the_data_dir_private_and_session_ids_out(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    async with http_server(data_dir, umask=0o000) as url:
        async with client_with_session_id(url) as (client, session_ids):
            cid = (await ok(client, "container_create", name="private"))["id"]
            await ok(client, "file_create", container_id=cid, path="deep/dir/notes.txt", text="private notes")
            tools = {t.name for t in (await client.list_tools()).tools}
            if "container_exec" in tools:
                # The command picks loose modes; what is committed to the host is owner-only.
                result = await ok(
                    client,
                    "container_exec",
                    container_id=cid,
                    command="umask 000; mkdir -m 777 open; echo x > open/f; printf '#!/bin/sh\\necho ran\\n' > run.sh;"
                    " chmod 755 run.sh; ./run.sh",
                )
                assert result["exit_code"] == 0 and result["stdout"] == "ran\n", result
                again = await ok(client, "container_exec", container_id=cid, command="./run.sh")
                assert again["stdout"] == "ran\n"  # the owner's execute bit survives the commit
            await ok(client, "session_usage")
            # While the server runs: databases with their -wal and -shm files, container dirs, key file.
            assert (data_dir / "sessions-local.sqlite3-wal").exists()
            assert loose_entries(data_dir) == []
            assert session_ids, "the server never sent an Mcp-Session-Id"
            sid = session_ids[0].encode()
            assert files_containing(data_dir, sid) == []
    assert loose_entries(data_dir) == []
    assert files_containing(data_dir, sid) == []


async def test_a_loose_data_dir_is_tightened_at_start_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "local" / "containers" / "cntr_x" / "files").mkdir(parents=True)
    os.chmod(data_dir, 0o755)
    os.chmod(data_dir / "local", 0o777)
    (data_dir / "sessions-local.sqlite3-wal").write_bytes(b"")
    os.chmod(data_dir / "sessions-local.sqlite3-wal", 0o644)
    secret = data_dir / "local" / "containers" / "cntr_x" / "files" / "f.txt"
    secret.write_text("x")
    os.chmod(secret, 0o664)
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    os.chmod(outside, 0o644)
    (data_dir / "local" / "link").symlink_to(outside)  # never followed: its target is not ours to change
    caplog.set_level(logging.WARNING, logger="container_mcp")
    async with open_service(Settings.isolated(data_dir=data_dir)):
        pass
    assert loose_entries(data_dir) == []
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644
    assert "readable by other users" in caplog.text and "removed their group/other permissions" in caplog.text


async def test_the_store_creates_its_files_0600_under_umask_000(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store = SqliteLedger(tmp_path / "s" / "sessions.sqlite3")
        await store.hit("stdio:local", 0.0, _limits())
        assert loose_entries(tmp_path / "s") == []
        assert {p.name for p in (tmp_path / "s").iterdir()} >= {"sessions.sqlite3", "sessions.sqlite3-wal", KEY_FILE}
        store.close()
    finally:
        os.umask(old)


def _limits() -> Any:
    from container_mcp.ledger.base import Limits

    return Limits(
        max_containers=5, max_files_per_container=5, max_file_bytes=5, max_session_bytes=5, max_calls_per_minute=50
    )


OLD_SID = "f3b1c0de5e55101d00000000deadbeef"  # what an older version stored: a live Mcp-Session-Id


async def test_clear_keys_of_an_older_version_are_migrated_and_the_stdio_user_keeps_its_containers(
    tmp_path: Path,
) -> None:
    params = StdioServerParameters(command=console_script(), args=["--data-dir", str(tmp_path)])
    async with Client(params) as client:
        mine = (await ok(client, "container_create", name="before the upgrade"))["id"]
    # Make the database look like an older version's: owners in clear, an HTTP session's too.
    db = sqlite3.connect(tmp_path / "sessions-local.sqlite3")
    db.execute("UPDATE owned SET owner = 'stdio:local' WHERE container_id = ?", (mine,))
    db.execute(
        "INSERT INTO owned (container_id, owner, name, created_at, state) VALUES (?, ?, 'theirs', 0, 'live')",
        ("cntr_" + "0" * 48, f"http:{OLD_SID}"),
    )
    db.execute("INSERT INTO calls (owner, window, count) VALUES (?, 1, 1)", (f"http:{OLD_SID}",))
    db.commit()
    db.close()
    assert files_containing(tmp_path, OLD_SID.encode())  # the attack: another user reads this file

    async with Client(params) as client:  # the upgraded server on the same data dir
        listed = await ok(client, "container_list")
        assert [c["id"] for c in listed["data"]] == [mine]
    assert files_containing(tmp_path, OLD_SID.encode()) == []
    assert files_containing(tmp_path, b"stdio:local") == []
    async with Client(params) as client:  # and a second restart still agrees on the key
        assert [c["id"] for c in (await ok(client, "container_list"))["data"]] == [mine]


def test_the_key_file_is_made_once_and_a_damaged_one_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(secret_key(path))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys[0]) == 32  # concurrent first starts agree on one key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE]  # no temp file left behind
    path.write_bytes(b"short")
    with pytest.raises(ContainerMCPError, match="damaged"):
        secret_key(path)


async def test_the_same_key_under_another_secret_is_another_owner(tmp_path: Path) -> None:
    a = SqliteLedger(tmp_path / "a" / "s.sqlite3")
    b = SqliteLedger(tmp_path / "b" / "s.sqlite3")
    try:
        ra = await a.reserve("stdio:local", "x", 0.0, _limits())
        await a.commit(ra, "cntr_a", 0, "{}")
        stored = await a.get("cntr_a")
        assert stored is not None and "stdio:local" not in stored.owner
        assert await a.owns("stdio:local", "cntr_a") and not await a.owns("stdio:other", "cntr_a")
        # A digest copied to another data dir does not match there: the secret is per data dir.
        rb = await b.reserve("stdio:local", "x", 0.0, _limits())
        await b.commit(rb, "cntr_b", 0, "{}")
        other = await b.get("cntr_b")
        assert other is not None and other.owner != stored.owner
    finally:
        a.close()
        b.close()


def test_secure_data_dir_reports_zero_on_a_private_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    assert secure_data_dir(data_dir) == 0
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
