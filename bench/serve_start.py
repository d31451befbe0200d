"""How fast ``scripts/serve`` starts on an installed clone, offline.

Runs the real ``scripts/serve`` (bootstrap, then the console script) with ``PIP_INDEX_URL``
pointing at a closed port, a fresh data dir and a clean environment, and reports for each
entry point the median of ``--runs`` starts:

* ``stdio``: time until the answer to ``initialize`` arrives on stdout;
* ``api``, ``streamable-http``, ``sse``: time until the ``listening on`` line (default log level)
  and until the first HTTP response.

Run ``scripts/bootstrap`` once first (the stamp must be present, or the first start installs).
Reproduce: ``.venv/bin/python bench/serve_start.py --runs 5``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVE = str(ROOT / "scripts" / "serve")
LISTENING = re.compile(r"listening on (http://\S+)")


def _env(home: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": home, "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}


def stdio_start() -> float:
    with tempfile.TemporaryDirectory() as home:
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "b", "version": "0"},
            },
        }
        start = time.perf_counter()
        proc = subprocess.Popen(
            [SERVE, "--data-dir", f"{home}/data"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=_env(home),
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write((json.dumps(init) + "\n").encode())
        proc.stdin.flush()
        proc.stdout.readline()
        elapsed = time.perf_counter() - start
        proc.stdin.close()
        proc.wait(timeout=20)
        return elapsed


def http_start(args: list[str]) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as home:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [SERVE, *args, "--port", "0", "--data-dir", f"{home}/data"],
            stderr=subprocess.PIPE,
            text=True,
            env=_env(home),
        )
        assert proc.stderr is not None
        try:
            for line in proc.stderr:
                if match := LISTENING.search(line):
                    listening = time.perf_counter() - start
                    url = match[1]
                    break
            else:
                raise SystemExit(f"{args}: no listening line")
            probe = url.removesuffix("/v1") + "/openapi.json" if url.endswith("/v1") else url
            # An MCP endpoint answers a bare GET with an error status: still a response.
            with contextlib.suppress(urllib.error.HTTPError):
                urllib.request.urlopen(urllib.request.Request(probe, method="GET"), timeout=10).close()
            return listening, time.perf_counter() - start
        finally:
            proc.terminate()
            proc.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    runs = parser.parse_args().runs
    stdio = [stdio_start() for _ in range(runs)]
    print(f"stdio            initialize answered  median {statistics.median(stdio):.3f} s  (max {max(stdio):.3f})")
    for name, args in [
        ("api", ["api"]),
        ("streamable-http", ["--transport", "streamable-http"]),
        ("sse", ["--transport", "sse"]),
    ]:
        results = [http_start(args) for _ in range(runs)]
        listening = [r[0] for r in results]
        first = [r[1] for r in results]
        print(
            f"{name:<16} listening median {statistics.median(listening):.3f} s, first response median "
            f"{statistics.median(first):.3f} s  (max {max(first):.3f})"
        )


if __name__ == "__main__":
    main()
