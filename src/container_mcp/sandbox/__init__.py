"""Run a command "in" a local container: bubblewrap, real limits, egress policy, staged file changes.

Use::

    async with Sandbox(SandboxConfig()) as sandbox:          # once per server (keeps a launcher warm)
        probe = await sandbox.probe()                         # cached; report it as capabilities
        run = await sandbox.run(SandboxJob(data_dir=files_dir, argv=["python3", "x.py"],
                                           memory_bytes=MEMORY_LIMITS["1g"], network=policy,
                                           timeout_s=60), progress=on_progress)
        async with run:                                       # discards unless committed
            check_quotas(run.changes)                         # raise -> nothing is applied
            await run.commit()                                # atomic per file

``probe_sandbox(config)`` / ``run_sandboxed(job, config=...)`` do the same through a shared,
never-entered ``Sandbox`` per config: correct, but every run starts cold (~12 ms slower).

**Probe.** ``SandboxProbe.available`` is False, with a ``reason``, when bubblewrap or util-linux
is missing, or namespaces or the overlay cannot be created (a trial run is made). There is no
unsandboxed fallback: ``run`` then raises ``SandboxUnavailable``. The probe also says how limits
are enforced (``memory_enforcement``: ``cgroup-v2``/``cgroup-v1``/``rlimit-as``,
``pids_enforcement``: ``cgroup-v2``/``cgroup-v1``/``rlimit-nproc``), whether the seccomp
filter is on, the host uid commands run as, and which python3 runs the allowlist forwarder
(``None``, with ``allowlist_unavailable`` saying why: the allowlist network policy cannot be
enforced). That is decided by a trial request through forwarder and proxy, not by the
interpreter's presence.

**Changes, commit, discard.** A run never writes to ``data_dir``. /mnt/data is an overlayfs whose
lower layer is ``data_dir`` and whose upper layer is a stage directory under
``job.stage_root`` (default: ``data_dir.parent``; it must be on the same filesystem). When the
command has ended, ``run.changes`` (a ``ChangeSet``) lists what it did relative to
``data_dir``: ``created``/``changed``/``deleted`` files (relative paths with sizes, previous
size for changed ones; a file is "changed" only if its bytes or owner permission bits differ),
``dirs_created``/``dirs_deleted``, and ``skipped`` entries that are never applied (symlinks,
FIFOs, sockets, devices, and paths ``container_mcp.paths`` rejects), plus ``files_delta``,
``bytes_delta`` and ``largest_file_bytes``. Then exactly one of:

* ``await run.commit()``: deletions, then new directories, then each file ``rename(2)``-d
  into place (atomic per file, never half-visible); only the owner's permission bits are kept
  (no group/other, setuid/setgid/sticky bits: the container directory is private);
  no symlink is followed. Returns the change set.
* ``await run.discard()`` (or leaving ``async with run``): the stage is removed and
  ``data_dir`` is exactly as before (contents, names, modes).

A cancelled or failed ``run()`` discards by itself. After a server crash, stages are left behind:
``sweep_stages(stage_root)`` removes those of dead server processes (call it at startup; run
cgroups of dead servers are swept by ``probe()``). Hold a per-container lock from ``run()``
until commit/discard: overlayfs needs ``data_dir`` unchanged while mounted, and two commits
would race. Different containers may run concurrently.

**What the command sees.** uid/gid 1000 (``sandbox``), no capabilities, ``no_new_privs``,
seccomp deny list (ptrace, keyctl, bpf, mount, unshare/setns/new namespaces, io_uring, ...),
new user/PID/IPC/UTS/mount/net/cgroup namespaces, ``--die-with-parent``, ``--new-session``,
a cleared environment plus ``job.env`` over defaults (PATH, HOME=/tmp, TMPDIR=/tmp,
LANG=C.UTF-8, PYTHONDONTWRITEBYTECODE=1). Read-only: /usr, /bin, /sbin, /lib*, a fixed list
of /etc entries (ssl, ca-certificates, alternatives, ld.so.cache, localtime, python3*, ...)
and generated passwd/group/hosts/nsswitch.conf. Read-write: /mnt/data (its own container
only), private size-limited tmpfs /tmp and /dev/shm. Its own /proc, a minimal /dev. Nothing
else of the host (no /home, /root, /run, /var, /sys, checkout, other containers, secrets).
System ``/usr/bin/python3`` works inside.

**Host uid.** Started by root, commands run as host uid ``sandbox_uid`` (65534), never uid 0:
bubblewrap alone would map the sandbox to host root, which can then write host sysctls and
chmod host device nodes. So that uid can modify the container, ``data_dir``'s tree is chowned
to it before each run (an ``lstat`` walk, ~2 ms per 1000 files; files the provider writes
afterwards are fixed up at the next run). Started by an ordinary user, commands run as that
user (unprivileged user namespaces must be allowed).

**Limits.** Memory: the run's cgroup (v2 ``memory.max`` + ``memory.oom.group``, or v1
``memory.limit_in_bytes`` + ``memsw``), else ``RLIMIT_AS``; an OOM kill is reported
(``oom_killed``, ``killed_reason="memory_limit"``). Processes: cgroup ``pids.max``, else
``RLIMIT_NPROC`` (counted per host uid, so shared by concurrent runs). CPU: ``RLIMIT_CPU`` per
process. File size: ``RLIMIT_FSIZE``. Optional ``max_stage_bytes``/``max_stage_files`` kill a run
whose writes under /mnt/data grow past them (checked every 0.25 s). Wall clock: ``timeout_s``
kills bubblewrap, the sandbox's PID 1 and everything in the run's cgroup, so nothing survives
the call; cgroups are removed after each run (and leftovers swept at probe).

**Network.** ``disabled``: an empty network namespace (loopback only). ``allowlist``: the same,
plus a per-run filtering proxy on the host (``egress.EgressProxy``: CONNECT and absolute-form
HTTP, domain-or-subdomain matching; it resolves names itself and judges every address it would
connect to — literal or resolved — by ``config.egress``, the operator's ``EgressRules``:
loopback, private, link-local/metadata, CGNAT, multicast, reserved and embedded-IPv4 forms are
refused unless opened, and only the listed ports are reachable) reached through a bind-mounted
Unix socket; a small forwarder inside listens on 127.0.0.1:3128 and HTTP(S)_PROXY point to it.
Direct connections and DNS have no route.

**Output.** stdout/stderr are bytes, capped together at ``max_output_bytes`` (they share it:
one that needs less leaves the rest to the other; head and tail kept, with an omission marker),
with totals and truncation flags; ``decode_output`` decodes with replacement characters.

**Host requirements.** Debian packages ``bubblewrap`` and ``util-linux`` (unshare, mount); an
existing ``/mnt`` (the overlay is mounted over it inside a private mount namespace only);
kernel >= 5.11 when not root. Nothing else; no socat.
"""

from __future__ import annotations

from .changes import STAGE_PREFIX, ChangeSet, FileChange, SkippedEntry, recover_stage, sweep_stages
from .config import SandboxConfig, SandboxProbe
from .egress import Allowlist, EgressProxy, static_resolver
from .job import Attachment, SandboxJob, SandboxProgress, SandboxRun
from .output import decode_output
from .runner import Sandbox, probe_sandbox, run_sandboxed

__all__ = [
    "Allowlist",
    "Attachment",
    "ChangeSet",
    "EgressProxy",
    "FileChange",
    "Sandbox",
    "SandboxConfig",
    "SandboxJob",
    "SandboxProbe",
    "SandboxProgress",
    "SandboxRun",
    "SkippedEntry",
    "decode_output",
    "probe_sandbox",
    "run_sandboxed",
    "static_resolver",
    "STAGE_PREFIX",
    "recover_stage",
    "sweep_stages",
]
