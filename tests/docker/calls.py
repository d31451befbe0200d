"""What the docker tests call the provider with: an approval that accepts, a shell command, and a
look inside as the image's root (the scene an attack test sets; never what a caller can do)."""

from __future__ import annotations

from container_mcp.models import ListParams
from container_mcp.providers.base import ExecRequest, FileChanges
from container_mcp.providers.docker import DockerProvider

__all__ = ["NONCE", "accept", "as_root", "rows", "sh", "stored"]

NONCE = "n=$(tr '\\0' '\\n' < /proc/$PPID/cmdline | grep '^container-mcp-files-')"
"""Shell that reads the wrapper's listing nonce from its argv (same user: /proc shows it)."""


async def accept(changes: FileChanges) -> None:
    return None


def sh(script: str, **kw: object) -> ExecRequest:
    return ExecRequest(argv=["/bin/sh", "-c", script], **kw)


async def as_root(docker: DockerProvider, container_id: str, script: str) -> bytes:
    """Run ``script`` as the image's root in the container; its stdout."""
    engine = docker.engine
    exec_id = await engine.exec_create(
        f"cmcp-{container_id}", ["/bin/sh", "-c", script], user="0", env=[], workdir="/", stdin=False
    )
    stream = await engine.exec_start(exec_id)
    out = bytearray()
    try:
        await stream.send_stdin(None)
        async for kind, payload in stream.frames():
            if kind == 1:
                out += payload
    finally:
        await stream.aclose()
    return bytes(out)


async def stored(docker: DockerProvider, container_id: str) -> dict[str, int]:
    """Every regular file under /mnt/data and its size, as root sees them."""
    out = await as_root(docker, container_id, "find /mnt/data -type f -exec stat -c '%s %n' {} +")
    return {
        line.split(" ", 1)[1].removeprefix("/mnt/data/"): int(line.split(" ", 1)[0])
        for line in out.decode().splitlines()
        if line
    }


async def rows(docker: DockerProvider, container_id: str) -> dict[str, int]:
    return {
        f.path.removeprefix("/mnt/data/"): f.bytes or 0
        for f in (await docker.list_files(container_id, ListParams(limit=100))).data
    }
