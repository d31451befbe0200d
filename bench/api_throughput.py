"""Throughput and memory of ``container-mcp api`` on 127.0.0.1.

Starts the real CLI (``python -m container_mcp api``) as a child process on a free port, with a
fresh data dir and quotas raised out of the way, then measures with httpx2 (keep-alive, N
concurrent workers):

* requests/s and p50/p95 latency of container create, container list, a 4 KiB upload and a
  4 KiB download;
* a large upload and download (1 GiB by default) streamed from/to the client without holding it,
  with the server's resident memory: before the transfer (the baseline), and its peak during the
  transfer (``VmHWM`` after resetting it through ``/proc/<pid>/clear_refs``; Linux only), next to
  the file size. The content's SHA-256 is checked on the way back.

Reproduce: ``.venv/bin/python bench/api_throughput.py`` (``--big-mib 0`` skips the large part).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import httpx2

KEY = "bench-key"
MiB = 1 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


def reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


async def timed(n: int, concurrency: int, op: Callable[[int], Awaitable[None]]) -> tuple[float, list[float]]:
    latencies: list[float] = []
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < n:
            i = next_i
            next_i += 1
            t = time.perf_counter()
            await op(i)
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return time.perf_counter() - start, latencies


def report(name: str, n: int, wall: float, latencies: list[float]) -> None:
    q = statistics.quantiles(latencies, n=100)
    print(f"{name:<22} {n:>6} {n / wall:>10.0f} {q[49] * 1000:>9.2f} {q[94] * 1000:>9.2f}")


def check(r: httpx2.Response) -> httpx2.Response:
    if r.status_code != 200:
        raise SystemExit(f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text[:300]}")
    return r


async def small_ops(http: httpx2.AsyncClient, n: int, concurrency: int) -> None:
    print(f"{'operation':<22} {'n':>6} {'req/s':>10} {'p50 ms':>9} {'p95 ms':>9}   (concurrency {concurrency})")
    ids: list[str] = []

    async def create(i: int) -> None:
        ids.append(check(await http.post("/containers", json={"name": f"bench-{i}"})).json()["id"])

    report("container create", n, *await timed(n, concurrency, create))

    async def list_(i: int) -> None:
        check(await http.get("/containers", params={"limit": 20}))

    report("container list (20)", n, *await timed(n, concurrency, list_))

    payload = os.urandom(4096)
    cid = ids[0]
    file_ids: list[str] = []

    async def upload(i: int) -> None:
        r = await http.post(f"/containers/{cid}/files", files={"file": (f"f{i % 50}.bin", payload)})
        file_ids.append(check(r).json()["id"])

    report("upload 4 KiB", n, *await timed(n, concurrency, upload))

    last = check(await http.get(f"/containers/{cid}/files", params={"limit": 1})).json()["data"][0]["id"]

    async def download(i: int) -> None:
        r = check(await http.get(f"/containers/{cid}/files/{last}/content"))
        assert len(r.content) == 4096

    report("download 4 KiB", n, *await timed(n, concurrency, download))


async def big_transfer(http: httpx2.AsyncClient, pid: int, size_mib: int) -> None:
    cid = check(await http.post("/containers", json={"name": "big"})).json()["id"]
    block = os.urandom(MiB)
    sent_hash = hashlib.sha256()
    boundary = "benchboundary"

    async def body() -> AsyncIterator[bytes]:
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n').encode()
        for i in range(size_mib):
            chunk = bytes([i % 256]) + block[1:]
            sent_hash.update(chunk)
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    peak_ok = reset_peak(pid)
    before = proc_status(pid)["VmRSS"]
    t = time.perf_counter()
    r = await http.post(
        f"/containers/{cid}/files",
        content=body(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=600,
    )
    up_s = time.perf_counter() - t
    file = check(r).json()
    up_peak = proc_status(pid)["VmHWM"]
    assert file["bytes"] == size_mib * MiB, file

    reset_peak(pid)
    before_down = proc_status(pid)["VmRSS"]
    got_hash = hashlib.sha256()
    received = 0
    t = time.perf_counter()
    async with http.stream("GET", f"/containers/{cid}/files/{file['id']}/content", timeout=600) as resp:
        if resp.status_code != 200:
            await resp.aread()
            check(resp)
        async for chunk in resp.aiter_raw():
            got_hash.update(chunk)
            received += len(chunk)
    down_s = time.perf_counter() - t
    down_peak = proc_status(pid)["VmHWM"]
    assert received == size_mib * MiB and got_hash.digest() == sent_hash.digest(), "content differs"

    peak_note = "" if peak_ok else "  (clear_refs refused: peak is since process start)"
    print(f"\nlarge file: {size_mib} MiB, SHA-256 verified on the way back{peak_note}")
    print(f"{'transfer':<10} {'MiB/s':>8} {'file MiB':>9} {'RSS before':>11} {'peak RSS':>9} {'growth':>8}")
    for name, secs, base, peak in [("upload", up_s, before, up_peak), ("download", down_s, before_down, down_peak)]:
        print(
            f"{name:<10} {size_mib / secs:>8.0f} {size_mib:>9} {base / 1024:>10.1f}M "
            f"{peak / 1024:>8.1f}M {(peak - base) / 1024:>7.1f}M"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=1000, help="requests per small operation (default 1000)")
    parser.add_argument("-c", "--concurrency", type=int, default=8, help="concurrent requests (default 8)")
    parser.add_argument("--big-mib", type=int, default=1024, help="large transfer size in MiB; 0 skips (default 1024)")
    args = parser.parse_args()

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="cmcp-bench-") as data_dir:
        env = {
            **os.environ,
            "CONTAINER_MCP_DATA_DIR": data_dir,
            "CONTAINER_MCP_API_KEYS": KEY,
            "CONTAINER_MCP_MAX_CONTAINERS": "1000000",
            "CONTAINER_MCP_MAX_CALLS_PER_MINUTE": "1000000000",
            "CONTAINER_MCP_MAX_FILE_BYTES": str(max(args.big_mib, 1) * MiB + MiB),
            "CONTAINER_MCP_MAX_SESSION_BYTES": str(4 * max(args.big_mib, 1) * MiB + 64 * MiB),
        }
        command = [sys.executable, "-m", "container_mcp", "api", "--port", str(port)]
        print("server: python", " ".join(command[1:]), f"(data dir {data_dir})")
        server = await anyio.open_process(command, env=env, stdin=None, stdout=None, stderr=None)
        try:
            base_url = f"http://127.0.0.1:{port}/v1"
            limits = httpx2.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
            async with httpx2.AsyncClient(
                base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, limits=limits, timeout=60
            ) as http:
                with anyio.fail_after(30):
                    while True:  # readiness: the only wait
                        try:
                            await http.get("/openapi.json")
                            break
                        except httpx2.TransportError:
                            await anyio.sleep(0.05)
                print(f"pid {server.pid}, idle RSS {proc_status(server.pid)['VmRSS'] / 1024:.1f} MiB\n")
                await small_ops(http, args.n, args.concurrency)
                if args.big_mib:
                    await big_transfer(http, server.pid, args.big_mib)
        finally:
            server.terminate()
            with anyio.fail_after(30):
                await server.wait()
    flags = f"-n {args.n} -c {args.concurrency} --big-mib {args.big_mib}"
    print(f"\nreproduce: .venv/bin/python bench/api_throughput.py {flags}")


if __name__ == "__main__":
    anyio.run(main)
