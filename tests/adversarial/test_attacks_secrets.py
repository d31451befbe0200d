"""Attacks on secrets at rest and on ``source_path`` that got past the first hardening.

Each test is one attack: a file that grows after it was approved (OpenAI provider), an allowed
directory another local user swaps for a symlink after the server started, a ``source_path``
that cannot be encoded as a host path, and a server killed in the middle of the clear-key
migration.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import anyio
import httpx2
import pytest

from container_mcp.errors import ContainerMCPError, InvalidRequest
from container_mcp.ledger.sqlite import KEY_FILE, SqliteLedger
from container_mcp.private import secure_data_dir
from container_mcp.providers.base import FileChanges
from container_mcp.runtime import open_service
from container_mcp.server.host_files import open_host_file
from container_mcp.settings import Settings
from container_mcp.sqlite import connect
from container_mcp.uploads import HostFileUpload
from tests.calls import call as ok
from tests.providers.openai_fakes import CONTAINER_ID, file_body, multipart_parts, provider_over

from .conftest import INSIDE, EnvFactory, err
from .test_host_files import session
from .test_secrets_at_rest import files_containing, loose_entries

pytestmark = pytest.mark.anyio


# --- the OpenAI provider sends exactly the bytes that were approved ---------------------------


async def test_a_host_file_that_grows_after_approval_sends_only_the_approved_bytes(tmp_path: Path) -> None:
    # A writer in the allowed directory appends to the file between the check and the upload.
    # The old code handed httpx2 the open file object, which reads to EOF: more bytes left than
    # the size limit and the quota approved.
    host = tmp_path / "grows.txt"
    host.write_bytes(b"ten bytes!")
    fd, size = open_host_file(str(host), allowed=[tmp_path], roots=None, data_dir=tmp_path / "data", max_bytes=10)
    upload = HostFileUpload(fd, size)
    sent: list[bytes] = []

    def upstream(request: httpx2.Request) -> httpx2.Response:
        [(_, payload)] = multipart_parts(request.headers["content-type"], request.content)
        sent.append(payload)
        return httpx2.Response(200, json=file_body(bytes=len(payload)))

    approved: list[FileChanges] = []

    async def approve(changes: FileChanges) -> None:
        approved.append(changes)
        with host.open("ab") as f:
            f.write(b"X" * 4096)  # grows only after the quota said yes

    try:
        async with provider_over(httpx2.MockTransport(upstream)) as provider:
            await provider.create_file(CONTAINER_ID, "/mnt/data/grows.txt", upload, max_bytes=10, approve=approve)
    finally:
        upload.close()
    assert [c.bytes_delta for c in approved] == [10]
    assert sent == [b"ten bytes!"]


# --- the allowed directory is the one the operator named at start ------------------------------


async def test_an_allowed_dir_swapped_for_a_symlink_after_start_reads_nothing_outside(
    env_factory: EnvFactory, tree: Path
) -> None:
    # Another local user owns the allowed directory (a shared drop directory in /tmp, say). After
    # the server started they replace it with a symlink to a directory the server can read and
    # they cannot. The old code resolved --allow-path again on every call and followed it.
    share = tree / "share"
    share.mkdir()
    (share / "secret.txt").write_bytes(INSIDE)
    async with session(env_factory, [share]) as (client, cid):
        share.rename(tree / "share.old")
        share.symlink_to(tree / "outside")
        message = await err(client, "file_create", container_id=cid, path="x", source_path=str(share / "secret.txt"))
        assert "OUTSIDE" not in message
        assert (await ok(client, "file_list", container_id=cid))["data"] == []


def test_allowed_dirs_are_resolved_when_the_settings_are_made(tmp_path: Path) -> None:
    # An operator may name the allowed directory through a symlink: it counts as what it pointed
    # to when the server started (and a relative path as relative to the start directory).
    (tmp_path / "real").mkdir()
    (tmp_path / "via").symlink_to(tmp_path / "real")
    settings = Settings.isolated(data_dir=tmp_path / "data", allow_paths=[tmp_path / "via"])
    assert settings.allow_paths == [tmp_path / "real"]


async def test_a_symlinked_allowed_dir_given_at_start_still_works(env_factory: EnvFactory, tree: Path) -> None:
    (tree / "via").symlink_to(tree / "allowed")
    async with session(env_factory, [tree / "via"]) as (client, cid):
        f = await ok(client, "file_create", container_id=cid, path="a", source_path=str(tree / "via/top.txt"))
        assert f["bytes"] == len(INSIDE)


# --- a source_path that is no host path at all --------------------------------------------------


async def test_a_source_path_that_cannot_be_encoded_is_a_clear_error(env_factory: EnvFactory, tree: Path) -> None:
    # JSON can carry a lone surrogate ("\ud800"); no file system name encodes to it. The old code
    # let the UnicodeEncodeError out of realpath: an internal error instead of the caller's mistake.
    async with session(env_factory, [tree / "allowed"]) as (client, cid):
        message = await err(
            client, "file_create", container_id=cid, path="x", source_path=str(tree / "allowed") + "/\ud800.txt"
        )
        assert "source_path" in message and "cannot be a host path" in message


# --- a crash in the middle of the clear-key migration -------------------------------------------

OLD_SID = "d0d0cafe5e55101d0000000000c1ea12"


def _old_database(path: Path) -> None:
    """A session database as an older version left it: owners in clear, a live Mcp-Session-Id among them."""
    SqliteLedger(path).close()  # today's schema, then the rows an older version wrote
    db = sqlite3.connect(path)
    db.executemany(
        "INSERT INTO owned (container_id, owner, name, created_at, state) VALUES (?, ?, 'c', 0, 'live')",
        [(f"cntr_{i:048d}", f"http:{OLD_SID}") for i in range(3)],
    )
    db.execute("INSERT INTO calls (owner, window, count) VALUES (?, 1, 1)", (f"http:{OLD_SID}",))
    db.commit()
    db.close()


_CRASH_AT_VACUUM = textwrap.dedent(
    """
    import os, signal, sqlite3, sys
    from pathlib import Path

    class Crashing(sqlite3.Connection):
        def execute(self, sql, *args):
            if sql.strip().upper().startswith("VACUUM"):
                os.kill(os.getpid(), signal.SIGKILL)  # the crash: right after the migration committed
            return super().execute(sql, *args)

    real_connect = sqlite3.connect
    sqlite3.connect = lambda *a, **k: real_connect(*a, factory=Crashing, **k)
    from container_mcp.ledger.sqlite import KEY_FILE, SqliteLedger

    SqliteLedger(Path(sys.argv[1]))
    """
)


def test_a_crash_between_the_migration_and_the_vacuum_leaves_no_clear_session_id(tmp_path: Path) -> None:
    path = tmp_path / "sessions-local.sqlite3"
    _old_database(path)
    assert files_containing(tmp_path, OLD_SID.encode())
    crashed = subprocess.run([sys.executable, "-c", _CRASH_AT_VACUUM, str(path)], check=False)
    assert crashed.returncode == -signal.SIGKILL
    store = SqliteLedger(path)  # the restart: nothing is left to migrate, but the scrub is
    try:
        assert anyio.run(store.owns, f"http:{OLD_SID}", f"cntr_{0:048d}")  # ownership survived the crash
        assert files_containing(tmp_path, OLD_SID.encode()) == []  # while the restarted server runs
    finally:
        store.close()
    assert files_containing(tmp_path, OLD_SID.encode()) == []
    assert not os.path.exists(f"{path}-journal")


# --- a data dir named through a symlink is tightened all the same -------------------------------


async def test_a_data_dir_named_through_a_symlink_is_tightened_at_start(tmp_path: Path) -> None:
    # ~/.local/share/container-mcp as a symlink to a bigger disk is an ordinary setup. The old
    # start-up walk opened the data dir with O_NOFOLLOW, failed on the link and silently skipped
    # the whole tree (an older version's 0644 files stayed readable by every local user), and the
    # first start then died creating the session key (NotADirectoryError on the same open).
    real = tmp_path / "disk" / "container-mcp"
    secret = real / "local" / "containers" / "cntr_x" / "files" / "notes.txt"
    secret.parent.mkdir(parents=True)
    secret.write_text("private notes")
    for path in (real / "local", real / "local" / "containers", secret.parent.parent, secret.parent):
        os.chmod(path, 0o755)
    os.chmod(secret, 0o644)
    (tmp_path / "data").symlink_to(real)
    async with open_service(Settings.isolated(data_dir=tmp_path / "data")):
        pass
    assert loose_entries(real) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory another user owns needs root")
async def test_a_data_dir_another_user_made_first_is_refused(tmp_path: Path) -> None:
    # Another local user squats the operator's --data-dir (say /tmp/container-mcp) before the
    # first start, with a session key they chose. A root server used to chmod it 0700 and carry
    # on: the squatter still owns the directory (they can loosen it again and swap its files) and
    # knows the key every session id is hashed with.
    squat = tmp_path / "squatted"
    squat.mkdir()
    (squat / KEY_FILE).write_bytes(b"k" * 32)
    for path in (squat, squat / KEY_FILE):
        os.chown(path, 65534, 65534)
    os.chmod(squat, 0o777)
    with pytest.raises(ContainerMCPError, match=r"belongs to uid 65534, not to this server's user"):
        async with open_service(Settings.isolated(data_dir=squat)):
            pass
    assert not (squat / "sessions-local.sqlite3").exists()


async def test_a_very_long_source_path_is_refused_before_it_is_resolved(env_factory: EnvFactory, tree: Path) -> None:
    # realpath's cost grows with the square of the number of components: a megabyte of
    # "a/a/a/..." kept a worker thread busy for minutes. 100 KB shows the refusal quickly.
    async with session(env_factory, [tree / "allowed"]) as (client, cid):
        long_path = str(tree / "allowed") + "/a" * 50_000
        message = await err(client, "file_create", container_id=cid, path="x", source_path=long_path)
        assert "a host path is shorter than 4096 bytes" in message


async def test_a_client_root_with_a_nul_byte_is_a_clear_error(env_factory: EnvFactory, tree: Path) -> None:
    # "file:///srv/x%00" decodes to a path with a NUL, which no host path has; the old code let
    # realpath's ValueError out as an internal error on every source_path.
    bad_root = Path(str(tree / "allowed") + "\x00")
    async with session(env_factory, [tree / "allowed"], roots=[bad_root]) as (client, cid):
        message = await err(
            client, "file_create", container_id=cid, path="x", source_path=str(tree / "allowed/top.txt")
        )
        assert "root" in message and "NUL" in message


def test_an_allowed_dir_flipping_to_a_symlink_mid_call_never_leaks(tree: Path) -> None:
    # The same swap racing a call: the path check sees the real directory, the open a moment
    # later would follow the symlink. The directory is reached from / without following links.
    # (The old code also let realpath's own race out as an internal error: it lstat()s a link,
    # then readlink() fails with FileNotFoundError because the link was renamed in between.)
    share = tree / "share"
    share.mkdir()
    (share / "secret.txt").write_bytes(INSIDE)
    (tree / "share.lnk").symlink_to(tree / "outside")
    allowed = Settings.isolated(data_dir=tree / "data", allow_paths=[share]).allow_paths
    stop = threading.Event()

    def flip() -> None:
        real, link = tree / "share.dir", tree / "share.lnk"
        while not stop.is_set():
            os.rename(share, real)
            os.rename(link, share)  # now a symlink out
            os.rename(share, link)
            os.rename(real, share)  # the directory again

    thread = threading.Thread(target=flip, daemon=True)
    thread.start()
    read = refused = 0
    try:
        for _ in range(3000):
            try:
                fd, size = open_host_file(
                    str(share / "secret.txt"), allowed=allowed, roots=None, data_dir=tree / "data", max_bytes=1 << 20
                )
            except InvalidRequest:
                refused += 1
                continue
            try:
                assert os.pread(fd, size, 0) == INSIDE
                read += 1
            finally:
                os.close(fd)
    finally:
        stop.set()
        thread.join(10)
    assert read + refused == 3000


def test_missing_parents_of_the_data_dir_are_made_private_too(tmp_path: Path) -> None:
    # A first start under umask 000 with no ~/.local/share yet: the old code made the parents
    # 0777, so another user could rename the data dir away and put their own (or a link) there.
    data_dir = tmp_path / "home" / ".local" / "share" / "container-mcp"
    old = os.umask(0)
    try:
        secure_data_dir(data_dir)
    finally:
        os.umask(old)
    for made in (tmp_path / "home", tmp_path / "home" / ".local", data_dir.parent, data_dir):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
    # A parent that already existed is not the server's to change.
    (tmp_path / "shared").mkdir()
    os.chmod(tmp_path / "shared", 0o755)
    secure_data_dir(tmp_path / "shared" / "data")
    assert stat.S_IMODE((tmp_path / "shared").stat().st_mode) == 0o755


# --- two servers starting at once on a new data dir ------------------------------------------


def test_a_second_first_open_waits_for_the_first_instead_of_failing(tmp_path: Path) -> None:
    # Two servers started together both switch the new database to WAL. The one that loses the
    # lock upgrade got "database is locked" at once (SQLite refuses a deadlocking upgrade without
    # waiting out busy_timeout) and died at start; about one start in twenty racing ones did.
    path = tmp_path / "sessions-local.sqlite3"
    first = sqlite3.connect(path, isolation_level=None)
    first.execute("CREATE TABLE t (x)")
    first.execute("BEGIN IMMEDIATE")  # the other server, in the middle of its first write
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # the other server finishes while this one waits
        waits.append(seconds)
        first.execute("COMMIT")

    db = connect(path, sleep=sleep)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert len(waits) == 1
    finally:
        db.close()
        first.close()


# --- a data dir that is really a shared directory ----------------------------------------------


@pytest.mark.parametrize("kind", ["world-writable like /tmp", "in use like /var/lib or a home directory"])
async def test_a_shared_directory_as_data_dir_is_refused_and_left_as_it_was(tmp_path: Path, kind: str) -> None:
    # "--data-dir /tmp" (or /var/lib, or ~) by mistake: the start used to make it 0700 and strip
    # group/other permissions from everything in it, other users' files included (found the hard
    # way: a store opened at /tmp/x.sqlite3 turned /tmp into drwx-----T for the whole machine).
    shared = tmp_path / "shared"
    shared.mkdir()
    theirs = shared / "someone-elses.txt"
    theirs.write_text("readable by all, on purpose")
    os.chmod(theirs, 0o644)
    mode = 0o1777 if kind.startswith("world") else 0o755
    os.chmod(shared, mode)
    with pytest.raises(ContainerMCPError, match="writable by other users|holds entries the server did not make"):
        async with open_service(Settings.isolated(data_dir=shared)):
            pass
    assert stat.S_IMODE(shared.stat().st_mode) == mode
    assert stat.S_IMODE(theirs.stat().st_mode) == 0o644
    assert sorted(p.name for p in shared.iterdir()) == ["someone-elses.txt"]
