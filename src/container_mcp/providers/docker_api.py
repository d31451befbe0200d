"""A small async client of the Docker Engine API (v1.41), spoken with httpx2 over the engine's socket.

Docker Engine, Docker Desktop (macOS, Windows, Linux) and Podman's compatible service all speak
this API; ``DOCKER_HOST`` names where: ``unix:///path`` (default ``/var/run/docker.sock``) or
``tcp://host:port``. ``ssh://`` is refused with the one-line way to reach the engine instead
(forward its socket), because speaking it would mean running ``ssh`` subprocesses per connection.

Every failure becomes a ``ProviderError`` (``status`` = the engine's HTTP status, None for a
transport failure: ``ProviderUnavailable``), with the engine's own message; callers that expect
a 404 look at ``status``.

``exec_start`` uses the attach "hijack": the request asks for ``Upgrade: tcp``, the engine answers
101 and the connection becomes a raw byte stream (httpx2 hands it over as the response's
``network_stream``): stdin goes up it, and stdout/stderr come down multiplexed in frames of an
8-byte header (stream 1 or 2, three zero bytes, big-endian length) and a payload.
"""

from __future__ import annotations

import base64
import json
import math
import re
import socket
import struct
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any

import anyio
import httpx2

from ..errors import InvalidRequest, ProviderError, ProviderUnavailable

__all__ = ["API_VERSION", "DEFAULT_DOCKER_HOST", "Engine", "ExecStream", "check_docker_host", "engine_base"]

API_VERSION = "v1.41"
"""Docker 20.10's API: the oldest engine Debian 12 ships; newer engines and Podman accept it."""

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

_FRAME = struct.Struct(">BxxxL")


def shown(docker_host: str) -> str:
    """``docker_host`` as messages may show it: any ``user:password@`` part masked, at most 100
    characters (an operator's URL may carry credentials; they never reach logs or tool output)."""
    return re.sub(r"//[^/]*@", "//***@", docker_host)[:100]


def check_docker_host(docker_host: str) -> str:
    """``docker_host`` if this client can speak to it; else ``InvalidRequest`` naming what to set."""
    engine_base(docker_host)
    return docker_host


def engine_base(docker_host: str) -> tuple[httpx2.AsyncHTTPTransport, str]:
    """The transport and base URL for ``docker_host``; raises ``InvalidRequest`` naming what to set."""
    if docker_host.startswith("unix://"):
        path = docker_host.removeprefix("unix://")
        if not path.startswith("/"):
            raise InvalidRequest(
                f"DOCKER_HOST {shown(docker_host)!r} must name an absolute socket path, e.g. {DEFAULT_DOCKER_HOST}."
            )
        return httpx2.AsyncHTTPTransport(uds=path), f"http://docker/{API_VERSION}"
    if docker_host.startswith("tcp://"):
        hostport = docker_host.removeprefix("tcp://").rstrip("/")
        if not hostport or "/" in hostport or "@" in hostport:
            raise InvalidRequest(
                f"DOCKER_HOST {shown(docker_host)!r} must look like tcp://host:2375 (no path, no credentials)."
            )
        return httpx2.AsyncHTTPTransport(), f"http://{hostport}/{API_VERSION}"
    if docker_host.startswith("ssh://"):
        raise InvalidRequest(
            f"DOCKER_HOST {shown(docker_host)!r}: ssh:// engines are reached through a forwarded socket here. Run "
            "`ssh -nNT -L /tmp/remote-docker.sock:/var/run/docker.sock user@host` and set "
            "DOCKER_HOST=unix:///tmp/remote-docker.sock."
        )
    raise InvalidRequest(
        f"DOCKER_HOST {shown(docker_host)!r} is not understood: use unix:///path/to/docker.sock or tcp://host:port "
        "(on Windows, Docker Desktop's 'Expose daemon on tcp://localhost:2375')."
    )


def _message(response: httpx2.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])[:300]
    return response.text[:300]


class ExecStream:
    """A running exec's hijacked connection: ``send_stdin`` once, then ``frames()`` until the end."""

    def __init__(self, response: httpx2.Response) -> None:
        self._response = response
        self._stream: Any = response.extensions["network_stream"]
        self._buffer = bytearray()

    async def send_stdin(self, data: bytes | None) -> None:
        """Write ``data`` (if any) and close our half, so the command sees end of input."""
        if data:
            await self.write(data)
        self.close_stdin()

    async def write(self, data: bytes) -> None:
        """Write ``data`` up the command's stdin; more may follow, until ``close_stdin``."""
        await self._stream.write(data)

    def close_stdin(self) -> None:
        """Close our half of the connection: the command sees end of input."""
        sock = self._stream.get_extra_info("socket")
        if sock is not None:
            sock.shutdown(socket.SHUT_WR)

    async def frames(self, *, idle_s: float | None = None) -> AsyncIterator[tuple[int, bytes]]:
        """(stream, payload) pairs: 1 stdout, 2 stderr; ends when the command's output ends.

        ``idle_s``: raise ``ProviderError`` (status 504) when nothing arrives for that long (a
        helper the container's own processes stopped or blocked must not hold the call forever).
        """
        while True:
            while len(self._buffer) < _FRAME.size:
                if not await self._fill(idle_s):
                    return
            kind, size = _FRAME.unpack_from(self._buffer)
            del self._buffer[: _FRAME.size]
            while size:
                if not self._buffer and not await self._fill(idle_s):
                    return
                take = bytes(self._buffer[:size])
                del self._buffer[: len(take)]
                size -= len(take)
                yield kind, take

    async def _fill(self, idle_s: float | None) -> bool:
        chunk: bytes = b""
        with anyio.move_on_after(idle_s if idle_s is not None else math.inf) as idle:
            chunk = await self._stream.read(65536)
        if idle.cancelled_caught:
            raise ProviderError(f"The exec stream sent nothing for {idle_s:.0f}s; its helper was given up.", status=504)
        self._buffer += chunk
        return bool(chunk)

    async def aclose(self) -> None:
        await self._response.aclose()


class Engine:
    """One engine at ``docker_host``. An async context manager; ``aclose()`` closes its connections."""

    def __init__(self, docker_host: str = DEFAULT_DOCKER_HOST, *, timeout_s: float = 60.0) -> None:
        transport, base = engine_base(docker_host)
        self.docker_host = docker_host
        self._client = httpx2.AsyncClient(
            transport=transport, base_url=base, timeout=httpx2.Timeout(timeout_s, connect=5.0)
        )

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # --- plumbing --------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        content: AsyncIterable[bytes] | bytes | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
    ) -> httpx2.Response:
        request = self._client.build_request(method, path, params=params, json=body, content=content, headers=headers)
        try:
            response = await self._client.send(request, stream=stream)
        except httpx2.TransportError as exc:
            raise ProviderUnavailable(
                f"The Docker engine at {shown(self.docker_host)} did not answer ({type(exc).__name__}). Start it "
                "(Docker Desktop, `sudo systemctl start docker`, `podman system service`) or set DOCKER_HOST."
            ) from exc
        if response.status_code >= 400:
            if stream:
                await response.aread()
                await response.aclose()
            raise ProviderError(
                f"The Docker engine refused {method} {path.split('?')[0]}: {_message(response)}",
                status=response.status_code,
            )
        return response

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        response = await self._send(method, path, **kw)
        return response.json() if response.content else None

    # --- engine and images -----------------------------------------------------------------

    async def ping(self) -> None:
        """Raises unless the engine answers. ``/_ping``, not ``/version``: Podman's version runs its
        conmon and OCI runtime binaries to report theirs (~0.5 s a call)."""
        await self._send("GET", "/_ping")

    async def version(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", "/version")
        return result

    async def image_inspect(self, ref: str) -> dict[str, Any] | None:
        """The image's inspect document, or None when the engine does not have it."""
        try:
            result: dict[str, Any] = await self._json("GET", f"/images/{ref}/json")
        except ProviderError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def image_pull(self, ref: str) -> None:
        """Pull ``ref`` (the engine's registry access); raises ``ProviderError`` with the engine's reason."""
        if "@" in ref:  # by digest: the engine takes the whole reference
            params = {"fromImage": ref}
        elif ":" in ref.rsplit("/", 1)[-1]:
            name, _, tag = ref.rpartition(":")
            params = {"fromImage": name, "tag": tag}
        else:
            params = {"fromImage": ref, "tag": "latest"}
        response = await self._send("POST", "/images/create", params=params, stream=True)
        try:
            async for line in response.aiter_lines():
                if line.strip():
                    event = json.loads(line)
                    if "error" in event:
                        raise ProviderError(str(event["error"])[:300])
        finally:
            await response.aclose()

    async def image_import(self, tar: bytes | AsyncIterable[bytes], repo: str, tag: str, changes: list[str]) -> None:
        """Import a root filesystem tarball (bytes, or streamed) as ``repo:tag`` (``docker import``), offline."""
        # The tag travels inside ``repo``, as the docker CLI sends it: Podman's compat API ignores a
        # separate ``tag`` and would name the image ``repo:latest``.
        await self._json(
            "POST",
            "/images/create",
            params={"fromSrc": "-", "repo": f"{repo}:{tag}", "changes": changes},
            content=tar,
            headers={"Content-Type": "application/x-tar"},
        )

    # --- containers ------------------------------------------------------------------------

    async def create_container(self, name: str, config: Mapping[str, Any]) -> str:
        created = await self._json("POST", "/containers/create", params={"name": name}, body=config)
        return str(created["Id"])

    async def start(self, ref: str) -> None:
        await self._send("POST", f"/containers/{ref}/start")

    async def restart(self, ref: str) -> None:
        """Kill every process of the container (SIGKILL, no grace) and start it again."""
        await self._send("POST", f"/containers/{ref}/restart", params={"t": "0"})

    async def remove(self, ref: str) -> bool:
        """Force-remove the container and its anonymous volumes; False when it was already gone."""
        try:
            await self._send("DELETE", f"/containers/{ref}", params={"force": "true", "v": "true"})
        except ProviderError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def inspect(self, ref: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self._json("GET", f"/containers/{ref}/json")
        except ProviderError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def list_labelled(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Every container (stopped ones too) carrying all of ``labels``."""
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
        result: list[dict[str, Any]] = await self._json(
            "GET", "/containers/json", params={"all": "true", "filters": filters}
        )
        return result

    async def changes(self, ref: str, *, max_bytes: int, under: str) -> set[str] | None:
        """Paths under ``under`` that the container's filesystem added or modified since its creation;
        None when the engine's answer is longer than ``max_bytes`` (a command can make it any length)."""
        response = await self._send("GET", f"/containers/{ref}/changes", stream=True)
        body = bytearray()
        try:
            async for chunk in response.aiter_bytes():
                if len(body) + len(chunk) > max_bytes:
                    return None
                body += chunk
        finally:
            await response.aclose()
        prefix = under.rstrip("/") + "/"

        def keep(change: dict[str, Any]) -> str | None:  # each entry dropped as parsed: memory follows the kept
            path = change.get("Path")
            return path if isinstance(path, str) and path.startswith(prefix) and change.get("Kind") != 2 else None

        text = body.decode("utf-8", errors="replace")
        body.clear()
        found = json.loads(text, object_hook=keep) if text.strip() else None
        return {p for p in found or [] if isinstance(p, str)}

    # --- exec ------------------------------------------------------------------------------

    async def exec_create(
        self, ref: str, argv: list[str], *, user: str, env: list[str], workdir: str, stdin: bool
    ) -> str:
        created = await self._json(
            "POST",
            f"/containers/{ref}/exec",
            body={
                "Cmd": argv,
                "User": user,
                "Env": env,
                "WorkingDir": workdir,
                "AttachStdin": stdin,
                "AttachStdout": True,
                "AttachStderr": True,
                "Tty": False,
            },
        )
        return str(created["Id"])

    async def exec_start(self, exec_id: str) -> ExecStream:
        response = await self._send(
            "POST",
            f"/exec/{exec_id}/start",
            body={"Detach": False, "Tty": False},
            headers={"Connection": "Upgrade", "Upgrade": "tcp"},
            stream=True,
        )
        if response.status_code != 101 or "network_stream" not in response.extensions:
            await response.aclose()
            raise ProviderError(
                f"The Docker engine did not hand over the exec stream (HTTP {response.status_code}).",
                status=response.status_code,
            )
        return ExecStream(response)

    async def exec_inspect(self, exec_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._json("GET", f"/exec/{exec_id}/json")
        return result

    # --- files (tar streams) ---------------------------------------------------------------

    async def put_archive(self, ref: str, path: str, tar: AsyncIterable[bytes]) -> None:
        """Extract the tar stream ``tar`` at ``path`` in the container (streamed, never buffered whole)."""
        await self._send(
            "PUT",
            f"/containers/{ref}/archive",
            params={"path": path, "noOverwriteDirNonDir": "true"},
            content=tar,
            headers={"Content-Type": "application/x-tar"},
        )

    async def stat_path(self, ref: str, path: str) -> dict[str, Any] | None:
        """The engine's stat of ``path`` (name, size, mode, mtime, linkTarget), or None when absent."""
        try:
            response = await self._send("HEAD", f"/containers/{ref}/archive", params={"path": path})
        except ProviderError as exc:
            if exc.status == 404:
                return None
            raise
        header = response.headers.get("X-Docker-Container-Path-Stat")
        if header is None:
            return None
        result: dict[str, Any] = json.loads(base64.b64decode(header))
        return result
