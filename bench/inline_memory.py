"""Peak memory of the MCP server under concurrent large inline uploads (issue 7: 2.2 GiB for four).

Starts the real CLI (``python -m container_mcp --transport streamable-http``) on a free port with
a fresh data dir, once per configuration, and has N official ``mcp`` clients (separate sessions)
each send one ``file_create`` with the same ~99 MiB file as inline base64, all at once. Reported
per configuration, side by side: calls stored / refused, wall time, the server's resident memory
before (the baseline) and its peak during the uploads (``VmHWM`` after resetting it through
``/proc/<pid>/clear_refs``; Linux only).

Configurations:

* ``no budget``: ``CONTAINER_MCP_MAX_INLINE_BYTES_IN_FLIGHT`` = 8 GiB, so every call proceeds at
  once (chunked decoding still on): what the budget buys;
* ``default budget``: the shipped default (256 MiB): large calls queue at the HTTP edge, unread;
* with ``--baseline-src DIR`` also that source tree (e.g. the previous release's ``src``) first,
  run with this interpreter: the code before the change.

Reproduce: ``.venv/bin/python bench/inline_memory.py`` (``--baseline-src ../main/src`` to add the
old code; ``-n`` and ``--mib`` change the load).
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    raise KeyError(key)


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


async def one_upload(url: str, content: str, outcome: list[str]) -> None:
    try:
        async with Client(url, mode="legacy") as client:
            cid = (await client.call_tool("container_create", {"name": "bench"})).structured_content
            assert cid is not None
            result = await client.call_tool(
                "file_create", {"container_id": cid["id"], "path": "big.bin", "base64": content}
            )
            if result.is_error:
                text = getattr(result.content[0], "text", "")
                outcome.append("refused: " + text[:60])
            else:
                outcome.append("stored")
    except Exception as exc:
        outcome.append(f"failed: {type(exc).__name__}")


async def run(label: str, env: dict[str, str], n: int, content: str) -> dict[str, Any]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-inline-") as data_dir:
        command = [sys.executable, "-m", "container_mcp", "--transport", "streamable-http", "--port", str(port)]
        command += ["--data-dir", data_dir, "--log-level", "WARNING"]
        server = await anyio.open_process(command, env={**os.environ, **env}, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/mcp"
            with anyio.fail_after(30):
                while True:
                    try:
                        await (await anyio.connect_tcp("127.0.0.1", port)).aclose()
                        break
                    except OSError:
                        await anyio.sleep(0.05)
            async with Client(url, mode="legacy") as warm:  # load every module before the baseline
                await warm.call_tool("session_usage", {})
            before = proc_kib(server.pid, "VmRSS")
            peak_ok = reset_peak(server.pid)
            outcome: list[str] = []
            start = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(one_upload, url, content, outcome)
            wall = time.perf_counter() - start
            peak = proc_kib(server.pid, "VmHWM") if peak_ok else proc_kib(server.pid, "VmRSS")
        finally:
            server.terminate()
            with anyio.move_on_after(15):
                await server.wait()
            if server.returncode is None:
                server.kill()
                await server.wait()
    return {"label": label, "outcome": outcome, "wall": wall, "before": before / 1024, "peak": peak / 1024}


def configurations(baseline_src: str | None) -> list[tuple[str, dict[str, str]]]:
    here = str(Path(__file__).resolve().parents[1] / "src")
    configs: list[tuple[str, dict[str, str]]] = []
    if baseline_src:
        configs.append((f"baseline ({baseline_src})", {"PYTHONPATH": str(Path(baseline_src).resolve())}))
    configs.append(("no budget", {"PYTHONPATH": here, "CONTAINER_MCP_MAX_INLINE_BYTES_IN_FLIGHT": str(8 << 30)}))
    configs.append(("default budget", {"PYTHONPATH": here}))
    return configs


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=4, help="concurrent uploads (default 4)")
    parser.add_argument("--mib", type=int, default=99, help="file size in MiB (default 99)")
    parser.add_argument("--baseline-src", help="a source tree to run first as the baseline (e.g. ../main/src)")
    args = parser.parse_args()

    content = base64.b64encode(os.urandom(args.mib * MiB)).decode()
    configs = configurations(args.baseline_src)

    print(f"{args.n} concurrent file_create calls, {args.mib} MiB each as inline base64 ({len(content) / MiB:.0f} MiB)")
    results = [await run(label, env, args.n, content) for label, env in configs]
    print(f"\n{'configuration':<34} {'stored':>6} {'refused':>7} {'wall s':>7} {'RSS before':>11} {'peak RSS':>9}")
    for r in results:
        stored = r["outcome"].count("stored")
        print(
            f"{r['label']:<34} {stored:>6} {len(r['outcome']) - stored:>7} {r['wall']:>7.1f} "
            f"{r['before']:>8.0f} MiB {r['peak']:>5.0f} MiB"
        )
    for r in results:
        other = sorted({o for o in r["outcome"] if o != "stored"})
        if other:
            print(f"  {r['label']}: {'; '.join(other)}")
    flags = f"-n {args.n} --mib {args.mib}" + (f" --baseline-src {args.baseline_src}" if args.baseline_src else "")
    print(f"\nreproduce: .venv/bin/python bench/inline_memory.py {flags}")


if __name__ == "__main__":
    anyio.run(main)
