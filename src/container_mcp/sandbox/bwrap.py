"""The command that starts a sandbox: the setup script and bubblewrap's arguments.

A run is started by a *launcher* (see ``launchers.py``), a process the server spawned as::

    unshare --mount [--user --map-root-user] -- sh /dev/fd/N

It waits in a private mount namespace, already inside the run's cgroups, until the server writes
the setup script built here into fd N. The script then becomes, by successive ``exec``s::

    cd STAGE && mount -t overlay ... <overlay_mountpoint>   the staging overlay (this namespace only)
    [unshare --setuid 65534 --setgid 65534 --]              as root: drop to the unprivileged uid
      bwrap --args FD                                       the sandbox proper
        COMMAND

No process is forked along the chain, so the pid the server holds is bubblewrap's: killing it
kills the sandbox's PID 1 (``--die-with-parent``), which tears down the whole PID namespace.
(``unshare --setuid/--setgid`` with no namespace flag just clears the supplementary groups, sets
the ids and execs; leaving uid 0 drops every capability. It starts ~0.6 ms faster than setpriv.)

Nothing of the host's paths reaches the sandbox through the chain. bubblewrap's PID 1 inside
the sandbox is a fork of bubblewrap itself, so its ``/proc/1/cmdline`` and ``/proc/1/environ``
are what bubblewrap was started with: its arguments (host paths, the caller's ``env`` values)
therefore go through a memfd (``--args FD``, which bubblewrap reads and closes; only the
command itself follows on the command line), and it is
exec'd with an empty environment (the shell's ``cd`` into the stage would otherwise leave the
stage's host path in ``OLDPWD``).

Mounted in the sandbox (read-only unless noted): /usr and the /bin, /sbin, /lib* links or
directories; a fixed list of /etc entries (``ETC_ENTRIES``) plus generated passwd, group,
hosts, hostname and nsswitch.conf; a fresh /proc of its PID namespace; a minimal /dev; private
tmpfs /tmp and /dev/shm (read-write, size-limited); /mnt/data (read-write, the staging overlay of
the container's own directory); with a home, /home/sandbox (read-write, the container's
persistent home, written in place). Nothing else: no other /home, no /root, /run, /var, /sys, no
other container, no project checkout. The root itself and /dev are read-only.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_ENV",
    "ETC_ENTRIES",
    "FORWARDER_PATH",
    "HOME",
    "HOME_FSTAB",
    "PROXY_PORT",
    "PROXY_SOCKET_PATH",
    "BwrapOptions",
    "bwrap_args",
    "etc_files",
    "home_fstab",
    "args_data",
    "launcher_argv",
    "setup_script",
]

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_ENV = {
    "PATH": SYSTEM_PATH,
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "USER": "sandbox",
    "LOGNAME": "sandbox",
}
PROXY_PORT = 3128
RUN_DIR = "/run/container-mcp"
PROXY_SOCKET_PATH = f"{RUN_DIR}/proxy.sock"
FORWARDER_PATH = f"{RUN_DIR}/forward.py"
HOSTNAME = "sandbox"
HOME = "/home/sandbox"
"""Where a job's persistent home (``SandboxJob.home_dir``) is mounted, and ``$HOME`` then."""

ETC_ENTRIES = (
    "alternatives",
    "ca-certificates",
    "debian_version",
    "fonts",
    "ld.so.cache",
    "localtime",
    "matplotlibrc",
    "mime.types",
    "os-release",
    "protocols",
    "services",
    "ssl",
    "timezone",
)
"""/etc entries bound read-only when present (plus ``python3*``). Never passwd/shadow/credentials."""

_SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


def launcher_argv(*, unshare: str, shell: str, script_fd: int, root: bool) -> list[str]:
    """The argv of a launcher: a shell in a private mount namespace reading its script from ``script_fd``.

    As root only a mount namespace is needed; otherwise a user namespace maps the server's uid
    to root in it, so the overlay can be mounted (kernel >= 5.11).
    """
    userns = [] if root else ["--user", "--map-root-user"]
    return [unshare, *userns, "--mount", "--propagation", "private", "--", shell, f"/dev/fd/{script_fd}"]


def setup_script(
    *,
    mount: str,
    unshare: str,
    stage_root: Path,
    overlay_mountpoint: str,
    host_ids: tuple[int, int] | None,
    bwrap: str,
    args_fd: int,
    argv: Sequence[str],
    home: bool = False,
) -> bytes:
    """The script a launcher runs: mount the stage overlay, drop root if needed, exec bubblewrap.

    bubblewrap reads its options from ``args_fd`` (see ``args_data``); only the command ``argv``
    (its own, in-sandbox words) follows on its command line, where bubblewrap needs it. Every
    word is ``shlex``-quoted. ``host_ids`` is the uid/gid to drop to when the server is root (the mount
    needs root, the sandbox must not have it); None when the server is unprivileged (its user
    namespace already maps it). The launcher runs with an empty environment, and the variables
    ``cd`` sets are unset, so bubblewrap's environment is empty.

    With ``home``, the mounts are those of ``home_fstab`` (written in the stage as ``fstab``).
    """
    q = shlex.quote
    drop = [unshare, "--setuid", str(host_ids[0]), "--setgid", str(host_ids[1]), "--"] if host_ids else []
    mp = q(overlay_mountpoint)
    if home:
        # One mount(8) for the three mounts (``home_fstab``, in the stage): a fork and exec each
        # would cost ~1 ms more per run.
        mounts = [f"{q(mount)} -n -a -T {HOME_FSTAB} || exit 123"]
    else:
        mounts = [
            f"{q(mount)} -n -t overlay -o lowerdir=lower,upperdir=upper,workdir=work,userxattr overlay {mp} || exit 123"
        ]
    lines = [
        f"cd {q(str(stage_root))} || exit 122",
        *mounts,
        "cd / || exit 122",
        "unset OLDPWD PWD",
        "exec " + " ".join(q(word) for word in [*drop, bwrap, "--args", str(args_fd), "--", *argv]),
    ]
    return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")


HOME_FSTAB = "fstab"
"""The stage's file of mounts for a run with a home (``home_fstab``)."""


def home_fstab(overlay_mountpoint: str) -> bytes:
    """The mounts of a run with a home, as an fstab for ``mount -a -T``: a small tmpfs over
    ``overlay_mountpoint``, and in it two overlays: ``data`` (the stage, as without a home) and
    ``home``, whose upper layer is the persistent home itself (the stage's ``home`` link; its lower
    layer an empty directory), so writes there land in place. Both name only stage-relative paths.

    A background process and a foreground command of the same container mount the same home as
    upper layer at once. The kernel allows that with ``index=off`` only (with ``index=on``, a host
    default on some distributions, the second mount fails with EBUSY), warning that the two views
    are undefined: each overlay caches its own dentries, so one sandbox may briefly see a stale
    name the other changed. The lower layer is empty, so nothing is ever copied up, whited out or
    redirected: every operation is a plain one on the home's own files, and stays inside it.
    """
    if any(c.isspace() for c in overlay_mountpoint):
        raise ValueError("the overlay mount point must not contain whitespace")
    mkdir = "userxattr,X-mount.mkdir=0755"
    return (
        f"mounts {overlay_mountpoint} tmpfs size=16k,mode=0755 0 0\n"
        f"overlay {overlay_mountpoint}/data overlay lowerdir=lower,upperdir=upper,workdir=work,{mkdir} 0 0\n"
        f"overlay {overlay_mountpoint}/home overlay lowerdir=home-lower,upperdir=home,workdir=home-work,index=off,"
        f"{mkdir} 0 0\n"
    ).encode()


def args_data(args: Sequence[str]) -> bytes:
    """bubblewrap's ``--args`` format: every argument NUL-terminated.

    A NUL inside an argument would split it into bubblewrap options of the caller's choosing,
    so it is refused here whatever the callers checked before.
    """
    if any("\0" in arg for arg in args):
        raise ValueError("a sandbox argument contains a NUL character")
    return b"".join(arg.encode("utf-8", "surrogateescape") + b"\0" for arg in args)


def etc_files(inner_uid: int) -> dict[str, bytes]:
    """Generated /etc files: a ``sandbox`` user, loopback hosts, files-only NSS."""
    return {
        "/etc/passwd": (
            "root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"sandbox:x:{inner_uid}:{inner_uid}:sandbox:/tmp:/bin/sh\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ).encode(),
        "/etc/group": f"root:x:0:\nsandbox:x:{inner_uid}:\nnogroup:x:65534:\n".encode(),
        "/etc/hosts": (
            f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        ).encode(),
        "/etc/hostname": f"{HOSTNAME}\n".encode(),
        "/etc/nsswitch.conf": b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n"
        b"protocols: files\nservices: files\nethers: files\nrpc: files\n",
    }


@dataclass(frozen=True)
class BwrapOptions:
    """Everything ``bwrap_args`` needs; fds must be inheritable in the spawned chain."""

    env: Mapping[str, str]
    workdir: str
    inner_uid: int
    overlay_mountpoint: str
    tmp_bytes: int
    data_fds: Mapping[str, int]
    """Destination path -> fd whose content is copied there (read-only)."""
    forwarder: str | None
    """Host path of the forwarder script, bound at ``FORWARDER_PATH`` (allowlist only)."""
    status_fd: int
    seccomp_fd: int | None
    disable_userns: bool
    proxy_socket: str | None = None
    """Host path of the egress proxy's socket, bound at ``PROXY_SOCKET_PATH``."""
    home: bool = False
    """The setup script mounted ``data`` and ``home`` under ``overlay_mountpoint`` (``setup_script``)."""


def _system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in _SYSTEM_DIRS:
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    return args


def _etc_binds() -> list[str]:
    etc = Path("/etc")
    names = list(ETC_ENTRIES)
    with contextlib.suppress(OSError):
        names += sorted(p.name for p in etc.glob("python3*"))
    args = ["--perms", "0755", "--dir", "/etc"]
    for name in names:
        if (etc / name).exists():
            args += ["--ro-bind-try", str(etc / name), str(etc / name)]
    return args + ["--symlink", "/proc/self/mounts", "/etc/mtab"]


def bwrap_args(opts: BwrapOptions) -> list[str]:
    """bubblewrap's options for one run (see the module docstring); the command goes to ``setup_script``."""
    uid = str(opts.inner_uid)
    args = [
        "--unshare-user", "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
        "--unshare-cgroup-try",
        *(["--disable-userns"] if opts.disable_userns else []),
        "--uid", uid, "--gid", uid, "--hostname", HOSTNAME,
        "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--clearenv",
    ]  # fmt: skip
    for key, value in opts.env.items():
        args += ["--setenv", key, value]
    args += _system_binds()
    args += _etc_binds()
    # Plain files in bubblewrap's root tmpfs: read-only once the root is remounted read-only at
    # the end, and far cheaper than --ro-bind-data (a bind mount and a remount per file).
    for dest, fd in opts.data_fds.items():
        args += ["--perms", "0644", "--file", str(fd), dest]
    args += ["--proc", "/proc", "--dev", "/dev"]
    size = str(opts.tmp_bytes)
    args += ["--perms", "01777", "--size", size, "--tmpfs", "/tmp"]
    args += ["--perms", "01777", "--size", size, "--tmpfs", "/dev/shm", "--remount-ro", "/dev"]
    if opts.home:
        args += ["--bind", opts.overlay_mountpoint + "/data", "/mnt/data"]
        args += ["--bind", opts.overlay_mountpoint + "/home", HOME]
    else:
        args += ["--bind", opts.overlay_mountpoint, "/mnt/data"]
    if opts.forwarder or opts.proxy_socket:
        args += ["--perms", "0755", "--dir", "/run", "--perms", "0755", "--dir", RUN_DIR]
        if opts.forwarder:
            args += ["--ro-bind", opts.forwarder, FORWARDER_PATH]
        if opts.proxy_socket:
            args += ["--bind", opts.proxy_socket, PROXY_SOCKET_PATH]
    args += ["--remount-ro", "/", "--chdir", opts.workdir]
    if opts.seccomp_fd is not None:
        args += ["--seccomp", str(opts.seccomp_fd)]
    args += ["--json-status-fd", str(opts.status_fd)]
    return args
