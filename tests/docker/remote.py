"""Remote-engine fronts for the test engine: a TLS relay and a real sshd, both on 127.0.0.1.

* ``tls_relay``: a TLS server on 127.0.0.1:0 that requires a client certificate signed by the test
  CA and relays the bytes to the engine's unix socket (half-closes included, so the exec hijack
  works): the "TLS side" of a remote ``dockerd --tlsverify``, without a second engine.
* ``certificates``: a test CA, the relay's certificate for IP 127.0.0.1, a client certificate, and
  a second, unrelated CA; written as DOCKER_CERT_PATH folders.
* ``sshd``: ``/usr/sbin/sshd -D`` with its own config, host key and authorized key, on a free
  port; the remote side's ``docker system dial-stdio`` dials the same test engine. Its client
  config (``-F``) names the key and a known_hosts file, so nothing of ~/.ssh is read or written.
"""

from __future__ import annotations

import contextlib
import datetime
import getpass
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .engine import DOCKER_HOST

__all__ = ["Certificates", "SSHD", "make_certificates", "sshd", "ssh_children", "tls_relay"]

SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class Certificates:
    good: Path
    """ca.pem (the relay's CA), cert.pem + key.pem (a client certificate it accepts)."""
    ca_only: Path
    """ca.pem alone: no client certificate to present."""
    wrong_ca: Path
    """ca.pem of another CA (the relay is not verified by it), the good client certificate."""
    server_cert: Path
    server_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    server: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if server:
        import ipaddress

        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def make_certificates(root: Path) -> Certificates:
    ca_key, other_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca, other = _issue("cmcp test CA", ca_key, None), _issue("cmcp other CA", other_key, None)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = _issue("127.0.0.1", server_key, (ca.subject, ca_key), server=True)
    client = _issue("cmcp client", client_key, (ca.subject, ca_key))
    for folder, ca_cert, with_client in [("good", ca, True), ("ca-only", ca, False), ("wrong-ca", other, True)]:
        _write(root / folder / "ca.pem", _pem(ca_cert))
        if with_client:
            _write(root / folder / "cert.pem", _pem(client))
            _write(root / folder / "key.pem", _key_pem(client_key), 0o600)
    return Certificates(
        good=root / "good",
        ca_only=root / "ca-only",
        wrong_ca=root / "wrong-ca",
        server_cert=_write(root / "server" / "cert.pem", _pem(server)),
        server_key=_write(root / "server" / "key.pem", _key_pem(server_key), 0o600),
    )


def _pump(source: socket.socket, sink: socket.socket, half_close: bool) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    if half_close:
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _relay_one(raw: socket.socket, context: ssl.SSLContext) -> None:
    try:
        # The handshake: a client without an acceptable certificate gets the alert, as from dockerd.
        client = context.wrap_socket(raw, server_side=True)
    except (ssl.SSLError, OSError):
        raw.close()
        return
    with client, socket.socket(socket.AF_UNIX) as engine:
        engine.connect(DOCKER_HOST.removeprefix("unix://"))
        up = threading.Thread(target=_pump, args=(client, engine, True), daemon=True)
        up.start()  # the client's end of input reaches the engine as a half-close
        _pump(engine, client, False)
    up.join()


@contextmanager
def tls_relay(certs: Certificates) -> Iterator[int]:
    """A TLS front of the test engine on 127.0.0.1; yields its port. Client certificates required.

    Threads with blocking stdlib ssl sockets, so that a refused handshake sends its alert."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    context.load_verify_locations(certs.good / "ca.pem")
    context.verify_mode = ssl.CERT_REQUIRED
    # The client ends an exec's input by half-closing TCP under TLS (no close_notify; see
    # docker_api.ExecStream.send_stdin). Go's TLS, the engine's, keeps writing after that EOF;
    # OpenSSL 3 fails the connection instead unless told to read it as a clean end.
    context.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    server = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            try:
                raw, _ = server.accept()
            except OSError:
                return  # closed: the relay is over
            threading.Thread(target=_relay_one, args=(raw, context), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        acceptor.join()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class SSHServer:
    port: int
    user: str
    client_config: Path
    """``ssh -F`` file: the test key, the right known_hosts, BatchMode."""
    wrong_host_config: Path
    """Like ``client_config``, but known_hosts holds another key for this host."""

    @property
    def docker_host(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return Path(f"{path}.pub").read_text().strip()


def _client_config(root: Path, name: str, known_hosts: Path, key: Path) -> Path:
    return _write(
        root / name,
        (
            "Host *\n"
            f"  UserKnownHostsFile {known_hosts}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n"
            f"  IdentityFile {key}\n"
            "  IdentitiesOnly yes\n"
            "  IdentityAgent none\n"
            "  LogLevel ERROR\n"
        ).encode(),
    )


def _prepare_sshd(root: Path) -> tuple[Path, SSHServer]:
    """The sshd config and what a client needs, written under ``root`` (keys made by ssh-keygen)."""
    assert Path(SSHD).exists(), "scripts/bootstrap --dev installs openssh-server"
    root.mkdir(parents=True, exist_ok=True)
    host_key, client_key, other_key = root / "host_ed25519", root / "client_ed25519", root / "other_ed25519"
    host_pub, client_pub, other_pub = _keygen(host_key), _keygen(client_key), _keygen(other_key)
    _write(root / "authorized_keys", f"{client_pub}\n".encode(), 0o600)
    port = _free_port()
    _write(root / "known_hosts", f"[127.0.0.1]:{port} {host_pub}\n".encode())
    _write(root / "wrong_known_hosts", f"[127.0.0.1]:{port} {other_pub}\n".encode())
    config = _write(
        root / "sshd_config",
        (
            f"ListenAddress 127.0.0.1:{port}\n"
            f"HostKey {host_key}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\n"
            f"PidFile {root / 'sshd.pid'}\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "AllowTcpForwarding no\n"
            "X11Forwarding no\n"
            "PrintMotd no\n"
            "LogLevel INFO\n"
        ).encode(),
    )
    if os.geteuid() == 0:
        # sshd refuses to start as root without its privilege separation directory (made at boot by systemd).
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    server = SSHServer(
        port=port,
        user=getpass.getuser(),
        client_config=_client_config(root, "ssh_config", root / "known_hosts", client_key),
        wrong_host_config=_client_config(root, "wrong_ssh_config", root / "wrong_known_hosts", client_key),
    )
    return config, server


@asynccontextmanager
async def sshd(root: Path) -> AsyncIterator[SSHServer]:
    """A real sshd on 127.0.0.1 that lets this user in with a test key; stopped afterwards."""
    config, server = _prepare_sshd(root)
    process = await anyio.open_process(
        [SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
    )
    try:
        assert process.stderr is not None
        said = b""
        with anyio.fail_after(20):  # its own word that it listens: no polling of the port
            while b"Server listening on" not in said:
                said += await process.stderr.receive()
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, process.stderr)  # a full stderr pipe would stop sshd
            yield server
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            process.terminate()
            await process.aclose()


async def _drain(stream: anyio.abc.ByteReceiveStream) -> None:
    async for _ in stream:
        pass


def ssh_children() -> list[int]:
    """Pids of this process's child ``ssh`` processes (the ssh:// transport's connections)."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == me and comm == "ssh":
            found.append(int(entry.name))
    return found
