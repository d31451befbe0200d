"""``ssh://`` engines: HTTP over ``ssh ... -- host docker system dial-stdio``, as the Docker CLI does.

One ssh process per connection: the connection pool's "connect" starts it, the HTTP bytes go down
its stdin and come back on its stdout (the remote ``docker`` CLI relays them to its engine's
socket), and closing the connection kills it. Every request works this way, the exec hijack (the
upgraded stream is the same pipe pair; half-closing it closes ssh's stdin) and archive streams
included.

The ssh client runs with the user's own configuration (``~/.ssh/config``, agent, known hosts)
untouched, plus ``-F file`` when ``docker_ssh_config`` is set, and always ``BatchMode=yes``: a
server has no terminal, so a prompt (password, passphrase, unknown host key) must fail at once
rather than hang. Nothing secret is ever put in argv (a password in ``DOCKER_HOST`` is refused).
ssh's stderr goes to an unnamed temporary file and only its last lines reach an error message.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import ssl
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.abc
import httpcore2
import httpx2

__all__ = ["SSHBackend", "SSHFailure", "SSHTransport"]

# The timeout parameters below (ruff's ASYNC109) are httpcore's network stream interface.

_STDERR_SHOWN = 600
"""Characters of ssh's stderr an error message shows (its last ones: where ssh says why)."""


class SSHFailure(httpcore2.ConnectError):
    """The ssh process ended before the engine answered; the message says how, from ssh's stderr."""


class SSHBackend(httpcore2.AsyncNetworkBackend):
    """httpcore's network backend for one ``ssh://`` engine: every connection is an ssh process."""

    def __init__(
        self,
        *,
        program: str,
        host: str,
        user: str | None = None,
        port: int | None = None,
        socket: str | None = None,
        config: Path | None = None,
    ) -> None:
        self.where = f"{user}@{host}" if user else host
        options = [*(["-F", str(config)] if config is not None else []), "-o", "BatchMode=yes"]
        options += ["-o", "ConnectTimeout=30", "-T"]
        options += [*(["-l", user] if user else []), *(["-p", str(port)] if port else [])]
        # ssh hands the remote command to the remote user's shell as one string: quote each word.
        remote = ["docker", *(["--host", f"unix://{socket}"] if socket else []), "system", "dial-stdio"]
        self.argv = [program, *options, "--", host, " ".join(shlex.quote(word) for word in remote)]

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        # The URL's host and port are placeholders: where to go is this backend's ssh destination.
        stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- owned by the stream, closed by its aclose
        try:
            process = await anyio.open_process(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
        except OSError as exc:
            stderr.close()
            raise SSHFailure(f"{self.argv[0]} could not be started: {exc.strerror or exc}") from None
        return SSHStream(process, stderr, self.where)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        raise SSHFailure("an ssh:// engine has no local socket")

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


class SSHStream(httpcore2.AsyncNetworkStream):
    """One connection: the ssh process's stdout (read) and stdin (write); ``aclose`` kills it."""

    def __init__(self, process: anyio.abc.Process, stderr: IO[bytes], where: str) -> None:
        self._process = process
        self._stderr = stderr
        self._where = where
        self._answered = False
        self._closed = False

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        assert self._process.stdout is not None
        try:
            with anyio.fail_after(timeout):
                data = await self._process.stdout.receive(max_bytes)
        except TimeoutError:
            raise httpcore2.ReadTimeout(f"the engine over ssh to {self._where} sent nothing in time") from None
        except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
            if not self._answered:
                raise await self._failure() from None
            return b""
        self._answered = True
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        assert self._process.stdin is not None
        try:
            with anyio.fail_after(timeout):
                await self._process.stdin.send(buffer)
        except TimeoutError:
            raise httpcore2.WriteTimeout(f"the engine over ssh to {self._where} took no data in time") from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise await self._failure() from None

    async def close_write(self) -> None:
        """End our half: the remote ``dial-stdio`` half-closes its engine connection in turn."""
        assert self._process.stdin is not None
        await self._process.stdin.aclose()

    async def _failure(self) -> SSHFailure:
        # ssh closed its stdout or stdin: it is exiting; give it a moment to say why.
        with anyio.move_on_after(5):
            await self._process.wait()
        code = self._process.returncode
        self._stderr.seek(0, 2)
        size = self._stderr.tell()
        self._stderr.seek(max(0, size - _STDERR_SHOWN))
        said = self._stderr.read().decode("utf-8", "replace").strip().replace("\r", "")
        said = " ".join(line.strip() for line in said.splitlines()[-4:] if line.strip())
        how = f"exit {code}" if code is not None else "still running"
        return SSHFailure(
            f"ssh to {self._where} ended before the engine answered ({how}): {said or 'ssh said nothing'}. Check "
            f"that `ssh {self._where} docker version` works without a prompt (BatchMode: keys or an agent, a known "
            "host key) and that the remote user may use its docker engine."
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            if self._process.returncode is None:
                # os.kill, not Process.kill: Popen's kill first reaps an exited ssh itself, racing the event
                # loop's child watcher (which then warns "Unknown child process"). The pid cannot be reused
                # before the watcher's reap reaches the loop, which has not happened while returncode is None
                # but in the instant between the two, far too short for the pids to wrap around.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._process.pid, getattr(signal, "SIGKILL", signal.SIGTERM))  # Windows: SIGTERM
            await self._process.aclose()
        self._stderr.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore2.AsyncNetworkStream:
        raise SSHFailure("TLS over an ssh:// engine connection is not used")

    def get_extra_info(self, info: str) -> Any:
        if info == "close_write":
            close: Callable[[], Awaitable[None]] = self.close_write
            return close
        if info == "is_readable":
            # An idle connection whose ssh exited (the engine or the network dropped it) is not reused.
            return self._process.returncode is not None
        return None


class SSHTransport(httpx2.AsyncHTTPTransport):
    """httpx2's HTTP transport whose connection pool connects through ``backend``.

    httpx2's transport takes no network backend, so its pool is replaced by one that does (the
    rest, request mapping and error mapping, is httpx2's own).
    """

    def __init__(self, backend: SSHBackend) -> None:
        super().__init__()
        self.backend = backend
        self._pool = httpcore2.AsyncConnectionPool(network_backend=backend)
