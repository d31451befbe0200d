"""A small async client of the Docker Engine API (v1.41), spoken with httpx2 over the engine's socket.

Docker Engine, Docker Desktop (macOS, Windows, Linux) and Podman's compatible service all speak
this API; ``DOCKER_HOST`` names where: ``unix:///path`` (default ``/var/run/docker.sock``),
``tcp://host:port`` (TLS with ``DOCKER_TLS_VERIFY``) or ``ssh://user@host``; ``docker_transport``
turns it into a transport.

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
import socket
import ssl
import struct
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any

import anyio
import httpx2

from ..errors import ProviderError, ProviderUnavailable
from .docker_ssh import SSHFailure
from .docker_transport import DEFAULT_DOCKER_HOST, EngineOptions, cert_dir, engine_base, shown

__all__ = ["DEFAULT_DOCKER_HOST", "Engine", "EngineOptions", "ExecStream"]

_FRAME = struct.Struct(">BxxxL")

_CLIENT_CERT_ALERTS = (
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "UNKNOWN_CA",
    "HANDSHAKE_FAILURE",
    "CERTIFICATE_UNKNOWN",
)
"""OpenSSL reasons of a server's alert that it did not accept our client certificate (or its lack)."""


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first (httpx2 wraps httpcore, which wraps ssl)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


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
        await self.close_stdin()

    async def write(self, data: bytes) -> None:
        """Write ``data`` up the command's stdin; more may follow, until ``close_stdin``."""
        await self._stream.write(data)

    async def close_stdin(self) -> None:
        """Close our half of the connection: the command sees end of input."""
        close_write = self._stream.get_extra_info("close_write")  # an ssh:// connection's pipe
        if close_write is not None:
            await close_write()
            return
        # Over TLS this ends the TCP half without a close_notify; the engine reads it as end of input.
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
    """One engine at ``docker_host`` (reached as ``options`` say). An async context manager;
    ``aclose()`` closes its connections (over ssh: kills their ssh processes)."""

    def __init__(
        self, docker_host: str = DEFAULT_DOCKER_HOST, *, options: EngineOptions | None = None, timeout_s: float = 60.0
    ) -> None:
        self.options = options or EngineOptions()
        transport, base = engine_base(docker_host, self.options)
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
        except (httpx2.TransportError, ssl.SSLError) as exc:  # a TLS alert read mid-request escapes httpcore raw
            raise ProviderUnavailable(self._unreachable(exc)) from exc
        if response.status_code >= 400:
            if stream:
                await response.aread()
                await response.aclose()
            raise ProviderError(
                f"The Docker engine refused {method} {path.split('?')[0]}: {_message(response)}",
                status=response.status_code,
            )
        return response

    def _unreachable(self, exc: Exception) -> str:
        """What to tell the operator when the engine could not be reached (never a key or a URL's credentials)."""
        where = shown(self.docker_host)
        for cause in _causes(exc):
            if isinstance(cause, SSHFailure):
                return f"The Docker engine at {where} could not be reached: {cause}"
            if isinstance(cause, ssl.SSLCertVerificationError):
                return (
                    f"The Docker engine at {where} failed TLS verification ({cause.verify_message or cause.reason}): "
                    f"its certificate must be signed by the CA in {cert_dir(self.options) / 'ca.pem'} "
                    "(DOCKER_CERT_PATH) and name the host in DOCKER_HOST."
                )
            if isinstance(cause, ssl.SSLError) and any(w in str(cause.reason) for w in _CLIENT_CERT_ALERTS):
                return (
                    f"The Docker engine at {where} refused the TLS connection ({cause.reason}): it wants a client "
                    f"certificate signed by its CA, as cert.pem and key.pem in {cert_dir(self.options)} "
                    "(DOCKER_CERT_PATH)."
                )
            if isinstance(cause, ssl.SSLError):
                return (
                    f"The TLS connection to the Docker engine at {where} failed ({cause.reason or cause}): check that "
                    "the engine serves TLS on that port (dockerd --tlsverify) and DOCKER_CERT_PATH."
                )
        if (
            self._client.base_url.scheme == "https"
            and not isinstance(exc, httpx2.ConnectError)
            and not (cert_dir(self.options) / "cert.pem").exists()
        ):
            # TLS 1.3: the engine judges our certificate after our handshake ended; its alert may be lost
            # to the reset of the connection it closes, leaving only a dropped connection to go by.
            return (
                f"The Docker engine at {where} dropped the TLS connection ({type(exc).__name__}); engines started "
                f"with --tlsverify want a client certificate signed by their CA, and {cert_dir(self.options)} "
                "(DOCKER_CERT_PATH) has no cert.pem and key.pem."
            )
        return (
            f"The Docker engine at {where} did not answer ({type(exc).__name__}). Start it "
            "(Docker Desktop, `sudo systemctl start docker`, `podman system service`) or set DOCKER_HOST."
        )

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        response = await self._send(method, path, **kw)
        return response.json() if response.content else None

    # --- engine and images -----------------------------------------------------------------

    async def ping(self) -> dict[str, str]:
        """The engine's answer headers; raises unless it answers. ``/_ping``, not ``/version``: Podman's
        version runs its conmon and OCI runtime binaries to report theirs (~0.5 s a call)."""
        return dict((await self._send("GET", "/_ping")).headers)

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
