"""The docker provider's overhead, next to raw Engine API calls and the local bwrap provider, in one run.

Reproduce with (a Docker engine at /var/run/docker.sock; scripts/docker-engine start makes one)::

    .venv/bin/python bench/docker.py               # 30 rounds, the busybox test image
    .venv/bin/python bench/docker.py --runs 50 --image container-mcp-test-debian:bookworm-python3

Series, interleaved round by round, in an order shuffled each round (an exec right after another
pays for the engine's teardown of the first), so the machine's noise spreads over all of them:

* ``raw engine``: the same Engine API calls a careful client makes, through the same client
  (``docker_api.Engine``): exec create + start (hijacked stream) + inspect for ``exec true``, into
  the very container the provider series uses; container create + start, that exec, and a forced
  remove for the lifecycle (these containers have the engine's default seccomp profile and no
  CPU quota);
* ``raw, default seccomp``: that exec into a container with the engine's own default profile, so
  the cost of the provider's profile (``docker_seccomp``: runc compiles it for every exec) shows;
* ``provider``: ``DockerProvider`` (registry, lock, /bin/sh wrapper, the change scan of /mnt/data);
* ``MCP tool``: the tools through the official client in memory (service, quotas, JSON-RPC);
* ``local bwrap``: the local provider's ``exec true`` and create -> exec -> delete.

The target: the provider's ``exec true`` p50 at most 10% over the raw engine's.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
from mcp import Client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.docker.calls import accept
from tests.docker.engine import busybox_image, remove_all

from container_mcp.clock import system_clock
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.models import ContainerSpec
from container_mcp.providers.base import ExecRequest
from container_mcp.providers.docker import DockerProvider
from container_mcp.providers.docker_api import DEFAULT_DOCKER_HOST, Engine
from container_mcp.providers.local import LocalProvider
from container_mcp.providers.local_exec import ExecLimits as LocalLimits
from container_mcp.runtime import limits_from
from container_mcp.server.app import create_server
from container_mcp.service import ContainerService
from container_mcp.settings import Settings


def pct(samples: list[float], q: float) -> float:
    return (
        statistics.quantiles(samples, n=100, method="inclusive")[round(q * 100) - 1] if len(samples) > 1 else samples[0]
    )


async def raw_exec(engine: Engine, ref: str, argv: list[str]) -> int:
    exec_id = await engine.exec_create(ref, argv, user="1000:1000", env=[], workdir="/", stdin=False)
    stream = await engine.exec_start(exec_id)
    try:
        await stream.send_stdin(None)
        async for _ in stream.frames():
            pass
    finally:
        await stream.aclose()
    return int((await engine.exec_inspect(exec_id))["ExitCode"])


def raw_config(image: str) -> dict[str, object]:
    return {
        "Image": image,
        "Entrypoint": ["sleep"],
        "Cmd": ["2147483647"],
        "User": "1000:1000",
        "HostConfig": {
            "NetworkMode": "none",
            "Memory": 1 << 30,
            "MemorySwap": 1 << 30,
            "PidsLimit": 256,
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "Init": True,
        },
    }


async def main(runs: int, image: str | None, host: str) -> None:
    results: dict[str, list[float]] = {}

    async def timed(name: str, step: Callable[[], Awaitable[object]]) -> None:
        start = time.perf_counter()
        await step()
        results.setdefault(name, []).append((time.perf_counter() - start) * 1000)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        async with Engine(host) as raw:
            image = image or await busybox_image(raw)
            settings = Settings.isolated(data_dir=root / "data", provider="docker", max_calls_per_minute=10**6)
            store = SqliteLedger()
            docker_dir = root / "data" / "docker"
            try:
                async with (
                    DockerProvider(docker_dir, engine=Engine(host), image=image) as docker,
                    LocalProvider(root / "local", clock=system_clock, exec_limits=LocalLimits()) as local,
                ):
                    service = ContainerService(docker, store, limits_from(settings))
                    async with Client(create_server(service, settings)) as client:
                        warm = await docker.create_container(ContainerSpec(name="warm"))
                        tool_warm = (await client.call_tool("container_create", {"name": "tool"})).structured_content
                        assert tool_warm is not None
                        local_warm = await local.create_container(ContainerSpec(name="warm"))
                        raw_ref = await raw.create_container(f"bench-raw-{root.name}", raw_config(image))
                        await raw.start(raw_ref)
                        true = ExecRequest(argv=["true"])
                        shuffled = random.Random(1)
                        try:
                            for n in range(runs):

                                async def raw_lifecycle(n: int = n) -> None:
                                    ref = await raw.create_container(f"bench-raw-{root.name}-{n}", raw_config(image))
                                    await raw.start(ref)
                                    assert await raw_exec(raw, ref, ["true"]) == 0
                                    await raw.remove(ref)

                                async def provider_lifecycle() -> None:
                                    c = await docker.create_container(ContainerSpec(name="bench"))
                                    assert (await docker.exec(c.id, true, approve=accept)).exit_code == 0
                                    await docker.delete_container(c.id)

                                async def tool_lifecycle() -> None:
                                    made = await client.call_tool("container_create", {"name": "bench"})
                                    assert made.structured_content is not None
                                    cid = made.structured_content["id"]
                                    ran = await client.call_tool(
                                        "container_exec", {"container_id": cid, "command": ["true"]}
                                    )
                                    assert ran.is_error is False, ran.content
                                    await client.call_tool("container_delete", {"container_id": cid})

                                async def local_lifecycle() -> None:
                                    c = await local.create_container(ContainerSpec(name="bench"))
                                    await local.exec(c.id, true, approve=accept)
                                    await local.delete_container(c.id)

                                async def tool_exec() -> None:
                                    ran = await client.call_tool(
                                        "container_exec", {"container_id": tool_warm["id"], "command": ["true"]}
                                    )
                                    assert ran.is_error is False, ran.content

                                # Into the provider's own container: same image, limits and state.
                                execs: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                                    ("exec true: raw engine", lambda: raw_exec(raw, f"cmcp-{warm.id}", ["true"])),
                                    ("exec true: raw, default seccomp", lambda: raw_exec(raw, raw_ref, ["true"])),
                                    ("exec true: provider", lambda: docker.exec(warm.id, true, approve=accept)),
                                    ("exec true: MCP tool", tool_exec),
                                    ("exec true: local bwrap", lambda: local.exec(local_warm.id, true, approve=accept)),
                                ]
                                lifecycles: list[tuple[str, Callable[[], Awaitable[object]]]] = [
                                    ("create+exec+delete: raw engine", raw_lifecycle),
                                    ("create+exec+delete: provider", provider_lifecycle),
                                    ("create+exec+delete: MCP tool", tool_lifecycle),
                                    ("create+exec+delete: local bwrap", local_lifecycle),
                                ]
                                # The engine keeps working for a few ms after an exec returns (the exec's
                                # teardown): a series that always follows another exec pays for it, and one
                                # that always follows the local series never does. A rotation keeps those
                                # neighbours; a shuffle per round (seeded: the same orders every run) gives
                                # every series every neighbour.
                                for order in (execs, lifecycles):
                                    for label, step in shuffled.sample(order, len(order)):
                                        await timed(label, step)
                        finally:
                            await raw.remove(raw_ref)
            finally:
                store.close()
                await remove_all(docker_dir, host)

    print(f"# {runs} rounds, image {image}, engine {host}; command: .venv/bin/python bench/docker.py --runs {runs}")
    print(f"{'series':34s} {'p50 ms':>8s} {'p95 ms':>8s}")
    for name, samples in results.items():
        print(f"{name:34s} {pct(samples, 0.5):8.2f} {pct(samples, 0.95):8.2f}")
    for what, baseline in [
        ("exec true", "raw engine"),
        ("exec true", "raw, default seccomp"),
        ("create+exec+delete", "raw engine"),
    ]:
        raw_p50 = pct(results[f"{what}: {baseline}"], 0.5)
        for series in ("provider", "MCP tool"):
            p50 = pct(results[f"{what}: {series}"], 0.5)
            print(f"{what}, {series}: p50 {100 * (p50 - raw_p50) / raw_p50:+.1f}% over {baseline}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--image", default=None, help="an image the engine has (default: the busybox test image)")
    parser.add_argument(
        "--host", default=DEFAULT_DOCKER_HOST, help="the engine's DOCKER_HOST, e.g. a Podman service's socket"
    )
    args = parser.parse_args()
    anyio.run(main, args.runs, args.image, args.host)
