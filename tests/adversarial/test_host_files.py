"""``source_path``: host files only beneath the allowed directories, whatever races or links say.

Every attack goes through the MCP tool with the official in-memory client (a stdio-like local
client, the one transport whose roots count). Both opening strategies are attacked: ``openat2``
(``RESOLVE_BENEATH``) and the ``O_NOFOLLOW`` component walk used where the kernel lacks it.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import threading
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.types import ListRootsResult, Root

from container_mcp import beneath
from container_mcp.beneath import EscapeError, open_beneath
from container_mcp.server.app import create_server

from ..calls import call as ok
from .conftest import INSIDE, Env, EnvFactory, err

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["openat2", "walk"])
def opener(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with ``openat2`` and again with the component-walk fallback."""
    if request.param == "openat2":
        if not beneath.openat2_available():
            pytest.skip("this kernel has no openat2")
    else:
        monkeypatch.setattr(beneath, "_openat2_works", False)
    return str(request.param)


def roots_client(env: Env, roots: list[Path] | None) -> Client:
    """An in-memory client; with ``roots`` it declares the roots capability and lists those."""
    server = create_server(env.service, env.settings)
    if roots is None:
        return Client(server)

    async def list_roots(context: Any) -> ListRootsResult:
        return ListRootsResult(roots=[Root(uri=p.as_uri()) for p in roots])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the roots capability is deprecated in 2026-07-28
        return Client(server, mode="legacy", list_roots_callback=list_roots)  # roots are a handshake-era feature


@asynccontextmanager
async def session(
    env_factory: EnvFactory, allow: list[Path], roots: list[Path] | None = None, **overrides: Any
) -> AsyncIterator[tuple[Client, str]]:
    async with env_factory(allow_paths=allow, **overrides) as env, roots_client(env, roots) as client:
        cid = (await ok(client, "container_create", name="host-files"))["id"]
        yield client, cid


async def test_a_file_under_the_allowed_dir_is_copied(env_factory: EnvFactory, tree: Path, opener: str) -> None:
    async with session(env_factory, [tree / "allowed"]) as (client, cid):
        f = await ok(
            client, "file_create", container_id=cid, path="in.txt", source_path=str(tree / "allowed/sub/data.txt")
        )
        assert f["bytes"] == len(INSIDE)
        read = await ok(client, "file_read", container_id=cid, file_id=f["id"])
        assert read["content"].encode() == INSIDE


@pytest.fixture
def swapper(tree: Path) -> Iterator[threading.Event]:
    """Flip ``allowed/sub`` between a real directory and a symlink to ``outside/sub`` until set.

    Between a check of the path and its open there is a moment when the directory the check saw
    is a symlink out; the old code (``resolve()`` then ``open()`` by path) read OUTSIDE then.
    """
    allowed = tree / "allowed"
    (allowed / "sub.lnk").symlink_to(tree / "outside" / "sub")
    stop = threading.Event()

    def flip() -> None:
        sub, real, link = allowed / "sub", allowed / "sub.dir", allowed / "sub.lnk"
        for _ in range(2_000_000):
            if stop.is_set():
                return
            os.rename(sub, real)
            os.rename(link, sub)  # now a symlink out
            os.rename(sub, link)
            os.rename(real, sub)  # a directory again

    thread = threading.Thread(target=flip, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive()


async def test_swapping_a_parent_for_a_symlink_never_leaks_outside_bytes(
    env_factory: EnvFactory, tree: Path, opener: str, swapper: threading.Event
) -> None:
    outcomes = {"copied": 0, "refused": 0}
    async with session(env_factory, [tree / "allowed"]) as (client, cid):
        for _ in range(150):
            result = await client.call_tool(
                "file_create",
                {"container_id": cid, "path": "race.txt", "source_path": str(tree / "allowed/sub/data.txt")},
            )
            if result.is_error:
                outcomes["refused"] += 1
                continue
            outcomes["copied"] += 1
            assert result.structured_content is not None
            # Whatever moment the swap hit, only the allowed directory's bytes can arrive.
            assert result.structured_content["sha256"] == hashlib.sha256(INSIDE).hexdigest(), outcomes
    swapper.set()
    assert outcomes["copied"] + outcomes["refused"] == 150, outcomes


async def test_a_symlink_out_of_the_allowed_dir_is_refused(env_factory: EnvFactory, tree: Path, opener: str) -> None:
    (tree / "allowed" / "link.txt").symlink_to(tree / "outside" / "secret.txt")
    (tree / "allowed" / "linkdir").symlink_to(tree / "outside")
    async with session(env_factory, [tree / "allowed"]) as (client, cid):
        for source in ("link.txt", "linkdir/secret.txt", "sub/../../outside/secret.txt"):
            message = await err(
                client, "file_create", container_id=cid, path="x", source_path=str(tree / "allowed" / source)
            )
            assert "outside the server's --allow-path directories" in message, message
            assert str(tree / "allowed") in message


async def test_dotdot_after_a_symlink_is_judged_where_it_really_lands(
    env_factory: EnvFactory, tree: Path, opener: str
) -> None:
    # allowed/hop -> outside/sub: "hop/.." is outside/, not allowed/ as the spelling suggests.
    (tree / "allowed" / "hop").symlink_to(tree / "outside" / "sub")
    (tree / "allowed" / "secret.txt").write_bytes(INSIDE)
    async with session(env_factory, [tree / "allowed"]) as (client, cid):
        message = await err(
            client, "file_create", container_id=cid, path="x", source_path=str(tree / "allowed/hop/../secret.txt")
        )
        assert "outside the server's --allow-path directories" in message


async def test_proc_magic_links_do_not_lead_out(env_factory: EnvFactory, tree: Path, opener: str) -> None:
    (tree / "allowed" / "root").symlink_to("/proc/self/root")
    async with session(env_factory, [tree / "allowed"]) as (client, cid):
        message = await err(
            client,
            "file_create",
            container_id=cid,
            path="x",
            source_path=str(tree / "allowed" / "root") + str(tree / "outside" / "secret.txt"),
        )
        assert "outside" in message
    # Beneath /proc itself, the magic link is refused by the kernel (openat2) or as a symlink (walk).
    proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(EscapeError):
            os.close(open_beneath(proc, f"self/root{tree}/outside/secret.txt"))
    finally:
        os.close(proc)


async def test_special_files_are_refused_without_blocking(env_factory: EnvFactory, tree: Path, opener: str) -> None:
    os.mkfifo(tree / "allowed" / "fifo")
    async with session(env_factory, [tree / "allowed", Path("/dev")]) as (client, cid):
        with anyio.fail_after(10):  # opening a FIFO for reading would wait for a writer forever
            message = await err(
                client, "file_create", container_id=cid, path="x", source_path=str(tree / "allowed/fifo")
            )
        assert "not a regular file (it is a FIFO)" in message
        message = await err(client, "file_create", container_id=cid, path="x", source_path="/dev/zero")
        assert "not a regular file (it is a device)" in message
        message = await err(client, "file_create", container_id=cid, path="x", source_path=str(tree / "allowed/sub"))
        assert "not a regular file (it is a directory)" in message
        message = await err(client, "file_create", container_id=cid, path="x", source_path=str(tree / "allowed"))
        assert "is a directory" in message
        message = await err(client, "file_create", container_id=cid, path="x", source_path=str(tree / "allowed/nope"))
        assert "does not exist" in message


async def test_a_file_over_the_size_limit_is_refused_before_reading(env_factory: EnvFactory, tree: Path) -> None:
    (tree / "allowed" / "big.bin").write_bytes(b"x" * 101)
    async with session(env_factory, [tree / "allowed"], max_file_bytes=100) as (client, cid):
        message = await err(
            client, "file_create", container_id=cid, path="x", source_path=str(tree / "allowed/big.bin")
        )
        assert "File too large: 101 bytes; the limit is 100 bytes" in message
        assert (await ok(client, "file_list", container_id=cid))["data"] == []


async def test_the_data_dir_inside_an_allowed_dir_is_never_read(
    env_factory: EnvFactory, tmp_path: Path, opener: str
) -> None:
    # The data dir is tmp_path/data; allowing tmp_path puts it inside. A link to it is refused too.
    (tmp_path / "share").mkdir()
    (tmp_path / "share" / "state").symlink_to(tmp_path / "data")
    async with session(env_factory, [tmp_path]) as (client, cid):
        registry = tmp_path / "data" / "local" / "registry.sqlite3"
        for source in (registry, tmp_path / "share" / "state" / "local" / "registry.sqlite3"):
            message = await err(client, "file_create", container_id=cid, path="x", source_path=str(source))
            assert "inside the server's data directory" in message


# --- --allow-path and client roots: an intersection -------------------------------------------


async def test_client_roots_narrow_the_allowed_dirs(env_factory: EnvFactory, tree: Path) -> None:
    async with session(env_factory, [tree / "allowed"], roots=[tree / "allowed" / "sub"]) as (client, cid):
        f = await ok(client, "file_create", container_id=cid, path="a", source_path=str(tree / "allowed/sub/data.txt"))
        assert f["bytes"] == len(INSIDE)
        message = await err(
            client, "file_create", container_id=cid, path="b", source_path=str(tree / "allowed/top.txt")
        )
        assert "under the server's --allow-path directories but outside the client's roots" in message
        assert str(tree / "allowed" / "sub") in message and "Add a root" in message


async def test_client_roots_never_widen_the_allowed_dirs(env_factory: EnvFactory, tree: Path) -> None:
    # The old code let the client's roots replace --allow-path: a root of "/" opened everything.
    async with session(env_factory, [tree / "allowed"], roots=[Path("/")]) as (client, cid):
        message = await err(
            client, "file_create", container_id=cid, path="x", source_path=str(tree / "outside/secret.txt")
        )
        assert "outside the server's --allow-path directories" in message
        ok_file = await ok(client, "file_create", container_id=cid, path="y", source_path=str(tree / "allowed/top.txt"))
        assert ok_file["bytes"] == len(INSIDE)


async def test_client_roots_alone_open_nothing(env_factory: EnvFactory, tree: Path) -> None:
    async with session(env_factory, [], roots=[tree / "allowed"]) as (client, cid):
        message = await err(
            client, "file_create", container_id=cid, path="x", source_path=str(tree / "allowed/top.txt")
        )
        assert "the server was started without --allow-path" in message
        assert "--allow-path DIR" in message


async def test_declared_but_empty_roots_say_so_not_that_allow_path_is_missing(
    env_factory: EnvFactory, tree: Path
) -> None:
    async with session(env_factory, [tree / "allowed"], roots=[]) as (client, cid):
        message = await err(
            client, "file_create", container_id=cid, path="x", source_path=str(tree / "allowed/top.txt")
        )
        assert "the client declared no file:// roots" in message
        assert "without --allow-path" not in message
        assert str(tree / "allowed") in message


async def test_a_client_root_swapped_for_a_link_out_reads_nothing_outside(
    env_factory: EnvFactory, tree: Path, opener: str
) -> None:
    # The client's root is a path other local users may be able to change: it is resolved when
    # used, and opened beneath the operator's directory.
    (tree / "allowed" / "sub.lnk").symlink_to(tree / "outside" / "sub")
    async with session(env_factory, [tree / "allowed"], roots=[tree / "allowed" / "sub"]) as (client, cid):
        os.rename(tree / "allowed" / "sub", tree / "allowed" / "sub.dir")
        os.rename(tree / "allowed" / "sub.lnk", tree / "allowed" / "sub")
        message = await err(
            client, "file_create", container_id=cid, path="x", source_path=str(tree / "allowed/sub/data.txt")
        )
        assert "OUTSIDE" not in message and "outside" in message


def test_a_kernel_without_openat2_falls_back_to_the_walk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A fake syscall: the one fault a real part here cannot produce (this kernel has openat2).
    def enosys(*args: Any) -> int:
        ctypes.set_errno(errno.ENOSYS)
        return -1

    monkeypatch.setattr(beneath, "_syscall", enosys)
    monkeypatch.setattr(beneath, "_openat2_works", None)
    assert beneath.openat2_available() is False
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_bytes(INSIDE)
    (tmp_path / "inner").symlink_to("real")
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = open_beneath(root, "real/f")
        assert os.read(fd, 100) == INSIDE
        os.close(fd)
        with pytest.raises(EscapeError):  # the walk refuses every symlink, even one that stays inside
            open_beneath(root, "inner/f")
    finally:
        os.close(root)
