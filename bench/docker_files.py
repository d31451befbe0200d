"""Uploads on the docker provider: the archive API as root (the design before) next to the helper as the
container's user (the design now), in one run.

Reproduce with (a Docker engine at /var/run/docker.sock; scripts/docker-engine start makes one)::

    .venv/bin/python bench/docker_files.py                 # 5 rounds of 64 MiB, the busybox test image
    .venv/bin/python bench/docker_files.py --mib 64 --runs 5 --image cmcp-test-debian:bookworm-python3

Series, interleaved round by round, each storing the same generated content at one path of one
provider container (replacing it each time):

* ``archive API, as root (before)``: what ``create_file`` did before: the upload spooled to a
  private host file, a tar stream of it (``tar_one_file``, kept here as the baseline) PUT to the
  engine's archive API, then the engine's stat;
* ``helper as the user (now)``: ``DockerProvider.create_file``: the same spool, then the bytes
  streamed up a helper's stdin (``DockerExec.write``), the stat and the registry row.

Printed: throughput (MiB/s, p50 of the rounds) and the Python heap's peak during one upload of
each (tracemalloc, a separate round so that tracing does not slow the timed ones).
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tarfile
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.docker.engine import busybox_image, remove_all

from container_mcp.clock import system_clock
from container_mcp.models import ContainerSpec
from container_mcp.paths import MOUNT
from container_mcp.providers.docker import DockerProvider
from container_mcp.providers.docker_api import DEFAULT_DOCKER_HOST, Engine
from container_mcp.uploads import CHUNK_SIZE

BLOCK = 512


class Generated:
    """``size`` bytes of a fixed pseudo-random pattern, made chunk by chunk (the source holds no copy)."""

    host_fd: int | None = None

    def __init__(self, size: int) -> None:
        self.size: int | None = size
        self._pattern = hashlib.sha256(b"bench").digest() * (CHUNK_SIZE // 32)

    async def chunks(self) -> AsyncIterator[bytes]:
        left = self.size or 0
        while left:
            take = min(left, len(self._pattern))
            yield self._pattern[:take]
            left -= take


async def tar_one_file(
    rel: str, size: int, chunks: AsyncIterator[bytes], *, uid: int, gid: int
) -> AsyncIterator[bytes]:
    """The archive of one file and its parent directories, as the provider streamed it before."""
    parts = rel.split("/")
    for depth in range(1, len(parts)):
        info = tarfile.TarInfo("/".join(parts[:depth]) + "/")
        info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, uid, gid
        yield info.tobuf(format=tarfile.PAX_FORMAT)
    info = tarfile.TarInfo(rel)
    info.size, info.mode, info.uid, info.gid, info.mtime = size, 0o644, uid, gid, int(time.time())
    yield info.tobuf(format=tarfile.PAX_FORMAT)
    async for chunk in chunks:
        yield chunk
    yield b"\0" * (-size % BLOCK) + b"\0" * (2 * BLOCK)


async def archive_upload(docker: DockerProvider, container_id: str, rel: str, upload: Generated) -> None:
    """The design before: spool, then the archive API extracts the tar as root."""
    name = f"cmcp-{container_id}"
    async with docker._spool(upload, None) as (spool, size, _sha):

        async def chunks() -> AsyncIterator[bytes]:
            while data := await anyio.to_thread.run_sync(_read, spool):
                yield data

        await docker.engine.put_archive(name, MOUNT, tar_one_file(rel, size, chunks(), uid=1000, gid=1000))
        stat = await docker.engine.stat_path(name, f"{MOUNT}/{rel}")
        assert stat is not None and int(stat["size"]) == size


def _read(fd: int) -> bytes:
    import os

    return os.read(fd, CHUNK_SIZE)


async def main(mib: int, runs: int, image: str | None) -> None:
    size = mib << 20
    seconds: dict[str, list[float]] = {}
    peaks: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "docker"
        async with Engine(DEFAULT_DOCKER_HOST) as probe:
            image = image or await busybox_image(probe)
        try:
            async with DockerProvider(
                data_dir, engine=Engine(DEFAULT_DOCKER_HOST), image=image, clock=system_clock
            ) as docker:
                c = await docker.create_container(ContainerSpec(name="bench", memory_limit="4g"))

                async def before() -> None:
                    await archive_upload(docker, c.id, "in/archive.bin", Generated(size))

                async def now() -> None:
                    f = await docker.create_file(c.id, "/mnt/data/in/helper.bin", Generated(size))
                    assert f.bytes == size

                series: dict[str, Callable[[], Awaitable[None]]] = {
                    "archive API, as root (before)": before,
                    "helper as the user (now)": now,
                }
                for name, step in series.items():  # a warm-up round, traced for the heap's peak
                    tracemalloc.start()
                    try:
                        await step()
                        peaks[name] = tracemalloc.get_traced_memory()[1]
                    finally:
                        tracemalloc.stop()
                for _ in range(runs):
                    for name, step in series.items():
                        start = time.perf_counter()
                        await step()
                        seconds.setdefault(name, []).append(time.perf_counter() - start)
        finally:
            await remove_all(data_dir)

    print(
        f"# {runs} rounds of a {mib} MiB upload, image {image}; command: .venv/bin/python bench/docker_files.py "
        f"--mib {mib} --runs {runs}"
    )
    print(f"{'series':32s} {'p50 s':>7s} {'MiB/s':>7s} {'peak heap MiB':>14s}")
    for name, samples in seconds.items():
        p50 = statistics.median(samples)
        print(f"{name:32s} {p50:7.3f} {mib / p50:7.1f} {peaks[name] / (1 << 20):14.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--image", default=None, help="an image the engine has (default: the busybox test image)")
    args = parser.parse_args()
    anyio.run(main, args.mib, args.runs, args.image)
