"""What bearer authentication adds to an MCP tool round trip over streamable HTTP.

Reproduce with::

    .venv/bin/python bench/auth_overhead.py               # 400 rounds, 2026-07-28 clients
    .venv/bin/python bench/auth_overhead.py --mode legacy --rounds 1000

Three servers over one ``ContainerService`` (local provider, fresh data dir, rate limit raised out
of the way), each on uvicorn on 127.0.0.1, built exactly as ``container-mcp --transport
streamable-http`` builds them:

* ``no auth``: no verifier (what a loopback-only server without keys runs);
* ``API key``: 50 configured keys (each request's digest is compared with all of them);
* ``OAuth JWT``: an RS256 access token checked against a JWKS served by a fourth loopback server.

One official ``mcp`` client per server calls ``session_usage`` (a read-only tool: one store query)
in interleaved rounds, so the machine's noise falls on every series alike. Reported: p50/p95 of the
round trip and each authenticated series' p50 overhead over ``no auth`` (the target is at most 10%).
"""

from __future__ import annotations

import argparse
import os
import shlex
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import anyio
import httpx2
import jwt
import uvicorn
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from container_mcp.auth import BearerVerifier, open_verifier
from container_mcp.runtime import open_service
from container_mcp.server.app import create_server
from container_mcp.server.http import http_app
from container_mcp.serving import listen
from container_mcp.settings import Settings

ISSUER = "https://issuer.example.com"
RESOURCE = "https://mcp.example.com/mcp"


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@asynccontextmanager
async def serve(app: Any, *, lifespan: Literal["on", "off"]) -> AsyncIterator[str]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan=lifespan, access_log=False)
    server = uvicorn.Server(config)
    with listen("127.0.0.1", 0) as sock:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            # uvicorn exposes no "started" event to wait on
            while not server.started:  # noqa: ASYNC110
                await anyio.sleep(0.01)
            try:
                yield f"http://127.0.0.1:{sock.getsockname()[1]}"
            finally:
                server.should_exit = True


def jwks_app(key: rsa.RSAPrivateKey) -> Starlette:
    jwk = {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "k1", "use": "sig"}

    async def jwks(request: Request) -> JSONResponse:
        return JSONResponse({"keys": [jwk]})

    return Starlette(routes=[Route("/jwks", jwks)])


async def main(rounds: int, mode: str) -> None:
    print(f"# Linux {os.uname().release}, {os.cpu_count()} cpus, mode={mode}, rounds={rounds}")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    api_keys = [f"bench-key-{i:02d}-{os.urandom(8).hex()}" for i in range(50)]
    token = jwt.encode(
        {"iss": ISSUER, "aud": RESOURCE, "sub": "bench", "exp": int(time.time()) + 3600, "scope": "containers"},
        key,
        algorithm="RS256",
        headers={"kid": "k1"},
    )
    with tempfile.TemporaryDirectory() as tmp:
        base = Settings.isolated(data_dir=Path(tmp), max_calls_per_minute=10**9)
        async with AsyncExitStack() as stack:
            service = await stack.enter_async_context(open_service(base))
            issuer = await stack.enter_async_context(serve(jwks_app(key), lifespan="off"))
            common = base.model_dump(include={"data_dir", "max_calls_per_minute"})
            oauth = Settings.isolated(
                **common, oauth_issuer_url=ISSUER, oauth_resource_url=RESOURCE, oauth_jwks_url=issuer + "/jwks"
            )
            keyed = Settings.isolated(**common, api_keys=api_keys)
            verifiers = {
                "no auth": (base, None, None),
                "API key": (keyed, BearerVerifier.from_keys(keyed), api_keys[-1]),
                "OAuth JWT": (oauth, await stack.enter_async_context(open_verifier(oauth)), token),
            }
            clients: dict[str, Client] = {}
            for name, (settings, verifier, bearer) in verifiers.items():
                mcp = create_server(service, settings, verifier=verifier)
                url = await stack.enter_async_context(
                    serve(http_app(mcp, settings, "streamable-http", "127.0.0.1"), lifespan="on")
                )
                headers = {"authorization": f"Bearer {bearer}"} if bearer else {}
                http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers, timeout=30))
                client = Client(streamable_http_client(url + "/mcp", http_client=http), mode=mode)
                clients[name] = await stack.enter_async_context(client)

            results: dict[str, list[float]] = {name: [] for name in clients}
            for round_ in range(rounds + 20):
                for name, client in clients.items():
                    start = time.perf_counter()
                    result = await client.call_tool("session_usage", {})
                    elapsed = (time.perf_counter() - start) * 1000
                    assert not result.is_error, result.content
                    if round_ >= 20:  # warm-up
                        results[name].append(elapsed)

    width = max(map(len, results))
    print(f"{'series':<{width}}  {'p50 ms':>7}  {'p95 ms':>7}")
    for name, samples in results.items():
        print(f"{name:<{width}}  {pct(samples, 0.5):7.3f}  {pct(samples, 0.95):7.3f}")
    bare = pct(results["no auth"], 0.5)
    for name in ("API key", "OAuth JWT"):
        over = pct(results[name], 0.5) - bare
        print(f"p50 overhead of {name}: {over:+.3f} ms ({over / bare:+.1%}; target <= +10%)")
    argv = [".venv/bin/python", "bench/auth_overhead.py", "--rounds", str(rounds), "--mode", mode]
    print("reproduce:", shlex.join(argv))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400, help="measured rounds per series (default 400)")
    parser.add_argument("--mode", choices=["auto", "legacy"], default="auto", help="client protocol era")
    args = parser.parse_args()
    anyio.run(main, args.rounds, args.mode)
