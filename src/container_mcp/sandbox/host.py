"""Host-side helpers of a run: finding the tools, rlimits, the egress directory, small checks."""

from __future__ import annotations

import os
import resource
import shutil
import socket
import stat
import tempfile
from functools import cache
from pathlib import Path

from ..errors import InvalidRequest
from .bwrap import SYSTEM_PATH
from .config import MemoryEnforcement, PidsEnforcement, SandboxConfig
from .job import SandboxJob

__all__ = [
    "check_workdir",
    "egress_dir",
    "explain",
    "find_tools",
    "python_candidate",
    "set_rlimits",
    "tail",
    "version_at_least",
]

NOFILE_CAP = 16384


@cache
def forwarder_source() -> bytes:
    return Path(__file__).with_name("_forwarder.py").read_bytes()


def _which(name: str) -> str | None:
    if "/" in name:
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name, path=SYSTEM_PATH)


def tail(data: bytes, limit: int = 600) -> str:
    """The end of ``data`` as text, for error messages."""
    text = data.decode("utf-8", "replace").strip()
    return text[-limit:] if text else "(no output)"


def find_tools(cfg: SandboxConfig, root: bool) -> tuple[dict[str, str], str | None]:
    """Absolute paths of the tools the chain needs, or the reason the sandbox cannot work."""
    tools = {"bwrap": cfg.bwrap, "unshare": cfg.unshare, "mount": cfg.mount, "shell": cfg.shell}
    found: dict[str, str] = {}
    for key, name in tools.items():
        path = _which(name)
        if path is None:
            hint = {
                "bwrap": "install the Debian/Ubuntu package 'bubblewrap'",
                "shell": "a POSIX shell is required",
            }.get(key, "install util-linux")
            return found, f"{name} was not found ({hint}); commands cannot be sandboxed"
        found[key] = path
    if root and cfg.sandbox_uid == 0:
        return found, "sandbox_uid must not be 0: commands never run as root"
    if not os.path.isdir(cfg.overlay_mountpoint):
        return found, f"overlay_mountpoint {cfg.overlay_mountpoint} is not an existing directory"
    return found, None


def python_candidate(path: str) -> bool:
    """Whether ``path`` is an interpreter the sandbox can see (it mounts /usr and the /bin link)."""
    return path.startswith(("/usr/", "/bin/")) and os.path.isfile(path)


def egress_dir(owner: tuple[int, int] | None) -> tuple[Path, socket.socket]:
    """A private directory holding the proxy's listening socket and the forwarder script.

    It lives in the system temp dir (short socket path) and belongs to the sandbox's host uid,
    which bubblewrap runs as and which must reach both to bind them into the sandbox. Nobody
    else can enter it.
    """
    path = Path(tempfile.mkdtemp(prefix="container-mcp-egress-"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        (path / "forward.py").write_bytes(forwarder_source())
        sock.bind(str(path / "proxy.sock"))
        os.chmod(path / "proxy.sock", 0o600)
        if owner is not None:
            for p in (path, path / "proxy.sock", path / "forward.py"):
                os.chown(p, *owner)
        sock.listen(64)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path, sock


def version_at_least(version: str | None, wanted: tuple[int, ...]) -> bool:
    try:
        parts = tuple(int(p) for p in (version or "").split(".")[: len(wanted)])
    except ValueError:
        return False
    return parts >= wanted


def check_workdir(job: SandboxJob) -> None:
    if job.workdir != "/mnt/data" and not job.workdir.startswith("/mnt/data/"):
        return
    current = job.data_dir
    for part in [p for p in job.workdir[len("/mnt/data") :].split("/") if p not in ("", ".")]:
        current = current / part
        try:
            st = os.lstat(current)
        except OSError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            raise InvalidRequest(
                f"workdir {job.workdir} is not a directory in the container; create it first or use /mnt/data.",
                param="workdir",
            )


def explain(message: str, root: bool) -> str:
    if "unshare failed" in message or "No permissions to create new namespace" in message:
        hint = (
            "the kernel refuses new namespaces here"
            if root
            else "unprivileged user namespaces are disabled (sysctl kernel.unprivileged_userns_clone=0, "
            "user.max_user_namespaces=0, or AppArmor's restrict_unprivileged_userns)"
        )
        return f"{message} ({hint})"
    if "overlay" in message or "mount" in message:
        return (
            f"{message} (overlayfs must be mountable in a private mount namespace; kernel >= 5.11 needed without root)"
        )
    return message


def _setrlimit(pid: int, which: int, value: int) -> None:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.prlimit(pid, which, (value, value))


def set_rlimits(pid: int, job: SandboxJob, memory: MemoryEnforcement, pids: PidsEnforcement) -> None:
    """Set the run's rlimits on ``pid`` (the launcher, before it forks); raises ``OSError``.

    Always: no core dumps, ``RLIMIT_FSIZE`` = ``max_file_bytes``, ``RLIMIT_CPU`` =
    ``cpu_seconds`` (SIGXCPU, then SIGKILL a second later), at most 16384 open files. As
    fallbacks when cgroups are not usable: ``RLIMIT_AS`` for memory, ``RLIMIT_NPROC`` for pids.
    Limits are only ever lowered below the server's own hard limits.
    """
    _setrlimit(pid, resource.RLIMIT_CORE, 0)
    _setrlimit(pid, resource.RLIMIT_FSIZE, job.max_file_bytes)
    _setrlimit(pid, resource.RLIMIT_NOFILE, NOFILE_CAP)
    soft, hard = job.cpu_seconds, job.cpu_seconds + 1
    _, cur_hard = resource.getrlimit(resource.RLIMIT_CPU)
    if cur_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, cur_hard), min(hard, cur_hard)
    resource.prlimit(pid, resource.RLIMIT_CPU, (soft, hard))
    if memory == "rlimit-as":
        _setrlimit(pid, resource.RLIMIT_AS, job.memory_bytes)
    if pids == "rlimit-nproc":
        _setrlimit(pid, resource.RLIMIT_NPROC, job.pids_limit)
