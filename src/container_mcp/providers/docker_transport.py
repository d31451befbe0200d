"""Where the Docker engine is and how to reach it: ``DOCKER_HOST`` and its TLS / ssh options.

``DOCKER_HOST`` forms, as the Docker CLI reads them:

* ``unix:///path`` (default ``/var/run/docker.sock``; Docker Desktop's and Podman's sockets too);
* ``tcp://host[:port]``: plain HTTP (port 2375 by default), or HTTPS when TLS is on (port 2376).
  TLS is on with ``DOCKER_TLS_VERIFY`` (the engine's certificate must be signed by
  ``DOCKER_CERT_PATH/ca.pem`` and name the host) or ``DOCKER_TLS`` (encrypted, the engine not
  verified: a warning on stderr). A client certificate ``cert.pem`` + ``key.pem`` from the same
  folder is presented when both exist. Plain tcp:// to a host other than loopback warns on stderr:
  whoever reaches that port is root on the engine's host.
* ``ssh://[user@]host[:port][/socket]``: one ``ssh ... -- host docker system dial-stdio`` process
  per connection (``docker_ssh``), as the Docker CLI does; the remote ``docker`` CLI dials its
  engine.

Credentials never belong in ``DOCKER_HOST`` (refused; messages show it masked by ``shown``).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shutil
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx2

from ..errors import InvalidRequest
from .docker_ssh import SSHBackend, SSHTransport

__all__ = ["API_VERSION", "DEFAULT_DOCKER_HOST", "EngineOptions", "check_docker_host", "engine_base", "shown"]

log = logging.getLogger(__name__)

API_VERSION = "v1.41"
"""Docker 20.10's API: the oldest engine Debian 12 ships; newer engines and Podman accept it."""

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class EngineOptions:
    """How to reach a remote engine besides ``DOCKER_HOST`` itself (see the module docstring).

    ``tls_verify`` / ``tls``: ``DOCKER_TLS_VERIFY`` / ``DOCKER_TLS`` (``tls_verify`` implies TLS).
    ``cert_path``: ``DOCKER_CERT_PATH`` (None: ``~/.docker``). ``ssh_config``: an ssh client
    configuration file passed as ``-F`` (None: the user's own, untouched). ``ssh_program``: the
    ssh client to run (found on ``PATH`` when it has no ``/``).
    """

    tls_verify: bool = False
    tls: bool = False
    cert_path: Path | None = None
    ssh_config: Path | None = None
    ssh_program: str = "ssh"


def shown(docker_host: str) -> str:
    """``docker_host`` as messages may show it: any ``user:password@`` part masked, at most 100
    characters (an operator's URL may carry credentials; they never reach logs or tool output)."""
    return re.sub(r"//[^/]*@", "//***@", docker_host)[:100]


def check_docker_host(docker_host: str, options: EngineOptions | None = None) -> str:
    """``docker_host`` if this client can speak to it with ``options`` (certificate files
    readable, an ssh client present); else ``InvalidRequest`` naming what to set."""
    engine_base(docker_host, options or EngineOptions(), quiet=True)
    return docker_host


def engine_base(
    docker_host: str, options: EngineOptions | None = None, *, quiet: bool = False
) -> tuple[httpx2.AsyncBaseTransport, str]:
    """The transport and base URL for ``docker_host``; raises ``InvalidRequest`` naming what to set.

    Warnings (unverified or plain TCP to another host) go to the log unless ``quiet``.
    """
    options = options or EngineOptions()
    if docker_host.startswith("unix://"):
        path = docker_host.removeprefix("unix://")
        if not path.startswith("/"):
            raise InvalidRequest(
                f"DOCKER_HOST {shown(docker_host)!r} must name an absolute socket path, e.g. {DEFAULT_DOCKER_HOST}."
            )
        return httpx2.AsyncHTTPTransport(uds=path), f"http://docker/{API_VERSION}"
    if docker_host.startswith("tcp://"):
        return _tcp(docker_host, options, quiet=quiet)
    if docker_host.startswith("ssh://"):
        return _ssh(docker_host, options)
    raise InvalidRequest(
        f"DOCKER_HOST {shown(docker_host)!r} is not understood: use unix:///path/to/docker.sock, tcp://host:port "
        "or ssh://user@host (on Windows, Docker Desktop's 'Expose daemon on tcp://localhost:2375')."
    )


def _tcp(docker_host: str, options: EngineOptions, *, quiet: bool) -> tuple[httpx2.AsyncBaseTransport, str]:
    tls = options.tls or options.tls_verify
    rest = docker_host.removeprefix("tcp://").rstrip("/")
    try:
        parts = urlsplit("//" + rest)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or not rest or "/" in rest or "@" in rest or not parts.hostname:
        raise InvalidRequest(
            f"DOCKER_HOST {shown(docker_host)!r} must look like tcp://host:{2376 if tls else 2375} "
            "(no path, no credentials)."
        )
    host = parts.hostname
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{port or (2376 if tls else 2375)}"
    if not tls:
        if not quiet and options.cert_path is not None:
            log.warning(
                "DOCKER_CERT_PATH is set but neither DOCKER_TLS_VERIFY nor DOCKER_TLS: %s is spoken in plain HTTP "
                "(as the docker CLI would). Set DOCKER_TLS_VERIFY=1 to use the certificates.",
                shown(docker_host),
            )
        if not quiet and not _loopback(host):
            log.warning(
                "DOCKER_HOST %s is plain HTTP to another host: anyone who reaches that port controls the engine "
                "(root on its host). Use TLS (DOCKER_TLS_VERIFY=1, DOCKER_CERT_PATH) or ssh://.",
                shown(docker_host),
            )
        return httpx2.AsyncHTTPTransport(), f"http://{netloc}/{API_VERSION}"
    context = tls_context(options)
    if not options.tls_verify and not quiet:
        log.warning(
            "DOCKER_TLS is set without DOCKER_TLS_VERIFY: the connection to %s is encrypted but the engine is not "
            "verified, so anyone on the path can impersonate it. Set DOCKER_TLS_VERIFY=1 with its CA in "
            "DOCKER_CERT_PATH/ca.pem.",
            shown(docker_host),
        )
    return httpx2.AsyncHTTPTransport(verify=context), f"https://{netloc}/{API_VERSION}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cert_dir(options: EngineOptions) -> Path:
    return options.cert_path.expanduser() if options.cert_path is not None else Path.home() / ".docker"


def tls_context(options: EngineOptions) -> ssl.SSLContext:
    """The client's TLS context from ``DOCKER_CERT_PATH``; ``InvalidRequest`` naming a missing,
    unreadable or unprotected file (never its content).

    Verifying, ``ca.pem`` is required (no silent fall back to the system's CAs, which would
    accept any publicly certified host). ``cert.pem`` and ``key.pem`` are presented when both
    exist; one without the other is refused. Unlike the Docker CLI, a ``key.pem`` that group or
    others may read is refused (as ssh refuses such a key): that key is root on the engine's host.
    """
    folder = cert_dir(options)
    ca, cert, key = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    if options.tls_verify:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        _require(ca, "the engine's CA certificate (DOCKER_TLS_VERIFY verifies the engine against it)")
        try:
            context.load_verify_locations(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise InvalidRequest(f"DOCKER_CERT_PATH: {ca} is not a PEM CA certificate ({_reason(exc)}).") from None
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert.exists() or key.exists():
        _require(cert, "the client certificate (it comes with key.pem)")
        _require(key, "the client key (it comes with cert.pem)")
        _protected(key)
        try:
            context.load_cert_chain(certfile=str(cert), keyfile=str(key))
        except (OSError, ssl.SSLError) as exc:
            raise InvalidRequest(
                f"DOCKER_CERT_PATH: {cert} and {key} are not a PEM certificate and its unencrypted key "
                f"({_reason(exc)})."
            ) from None
    return context


def _require(path: Path, what: str) -> None:
    if not path.is_file():
        raise InvalidRequest(
            f"DOCKER_CERT_PATH: {path} is missing: {what}. Put it there or point DOCKER_CERT_PATH at the folder "
            "holding ca.pem, cert.pem and key.pem (default ~/.docker)."
        )


def _protected(key: Path) -> None:
    if os.name != "posix":  # Windows has no mode bits to judge; its ACLs are the user's own
        return
    mode = key.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):  # ssh's rule for private keys: the owner's alone
        raise InvalidRequest(
            f"DOCKER_CERT_PATH: {key} is open to other users (mode {stat.S_IMODE(mode):o}); it grants root on "
            f"the engine's host. Run `chmod 600 {key}`."
        )


def _reason(exc: BaseException) -> str:
    # OpenSSL's reason only: never a file's content.
    return str(getattr(exc, "reason", None) or type(exc).__name__)


def _ssh(docker_host: str, options: EngineOptions) -> tuple[httpx2.AsyncBaseTransport, str]:
    try:
        parts = urlsplit(docker_host)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or not parts.hostname or parts.password is not None or parts.query or parts.fragment:
        raise InvalidRequest(
            f"DOCKER_HOST {shown(docker_host)!r} must look like ssh://user@host[:port] (no password: use a key, "
            "an ssh agent or your ssh config)."
        )
    if parts.hostname.startswith("-") or (parts.username or "").startswith("-"):
        raise InvalidRequest(f"DOCKER_HOST {shown(docker_host)!r}: a host or user may not start with '-'.")
    program = shutil.which(options.ssh_program)
    if program is None:
        raise InvalidRequest(
            f"DOCKER_HOST {shown(docker_host)!r} needs an ssh client, and {options.ssh_program!r} is not found: "
            "install OpenSSH's client (Debian/Ubuntu: apt-get install openssh-client; Windows: the optional "
            "feature 'OpenSSH Client')."
        )
    if options.ssh_config is not None and not options.ssh_config.is_file():
        raise InvalidRequest(f"The ssh config file {options.ssh_config} (docker_ssh_config) does not exist.")
    backend = SSHBackend(
        program=program,
        host=parts.hostname,
        user=parts.username,
        port=port,
        socket=parts.path or None,
        config=options.ssh_config,
    )
    return SSHTransport(backend), f"http://docker/{API_VERSION}"
