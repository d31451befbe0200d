"""In-sandbox TCP -> Unix-socket forwarder, then exec of the command (allowlist network only).

This file is not imported by container-mcp: its text is handed to bubblewrap (``--ro-bind-data``)
and run *inside* the sandbox by the system interpreter as
``python3 -I -S forward.py SOCKET PORT -- ARGV...``. It must therefore use only the standard
library and stay compatible with any Python 3.7+.

The sandbox has its own network namespace with nothing but loopback, so this is the only way
out: it listens on 127.0.0.1:PORT (the sandbox's own loopback, where HTTP(S)_PROXY points) and
copies bytes to the host-side filtering proxy behind SOCKET. It enforces nothing itself; the
proxy on the host does. The listener is bound before the command starts (no race), and the
serving process is double-forked so it is not a child of the command (a shell's ``wait`` does
not wait for it); it dies with the sandbox's PID namespace when the command exits.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading

_CHUNK = 65536


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(_CHUNK)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _handle(client: socket.socket, path: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(path)
    except OSError:
        client.close()
        upstream.close()
        return
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    client.close()
    upstream.close()


def _serve(listener: socket.socket, path: str) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            continue
        threading.Thread(target=_handle, args=(client, path), daemon=True).start()


def _detach_stdio() -> None:
    # The serving process must not hold the command's stdout/stderr pipes open.
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def main(args: list[str]) -> int:
    if len(args) < 4 or args[2] != "--":
        sys.stderr.write("usage: forward.py SOCKET PORT -- ARGV...\n")
        return 2
    path, port, argv = args[0], int(args[1]), args[3:]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    child = os.fork()
    if child == 0:
        if os.fork() != 0:
            os._exit(0)
        try:
            _detach_stdio()
            _serve(listener, path)
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    listener.close()
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        sys.stderr.write(f"{argv[0]}: command not found\n")
        return 127
    except OSError as exc:
        sys.stderr.write(f"{argv[0]}: {exc.strerror}\n")
        return 126
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
