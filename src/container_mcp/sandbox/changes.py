"""Staging a command's writes to /mnt/data, reporting them, and committing or discarding them.

A run never writes to the container's directory. ``/mnt/data`` inside the sandbox is an
overlayfs whose lower layer is the container directory (read-only to the kernel's overlay) and
whose upper layer is ``<stage>/upper``, a fresh directory on the same filesystem. After the run,
the upper layer holds exactly what the command changed: new and modified files (whole copies),
whiteouts (character devices 0/0) for deletions, and ``user.overlay.opaque`` directories that
replaced a directory wholesale. ``Stage.scan`` turns that into a ``ChangeSet`` relative to the
container directory, plus a plan; ``Stage.apply`` carries the plan out, ``Stage.destroy``
throws the stage away. The container directory is untouched until ``apply``.

Applying is atomic per file: each new or modified file is ``rename(2)``d from the stage into
place (same filesystem), so a reader sees the old file or the new one, never a partial one.
Deletions happen first, then directory creations, then the renames. The directory walk uses
``O_NOFOLLOW`` directory fds, so nothing outside the container directory can be touched even if
a symlink were in the way. What cannot be represented as a container file is reported in
``skipped`` and not applied: symlinks, FIFOs, sockets, devices, and paths that
``container_mcp.paths.normalize_path`` rejects (control characters, over-long names or paths,
invalid UTF-8). The owner's permission bits are kept; group/other bits and setuid/setgid/sticky
are dropped (``OWNER_BITS``: the container directory is private to the server's user, whatever
mode the command chose); overlay xattrs are stripped.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import InvalidPath
from ..paths import normalize_path
from .cgroups import pid_alive
from .tree import DIR_FLAGS, DirFds, Remover, adopt_tree, remove_tree, strip_overlay_xattrs, tree_usage

__all__ = [
    "JOURNAL",
    "STAGE_PREFIX",
    "ChangeSet",
    "FileChange",
    "SkippedEntry",
    "Stage",
    "recover_stage",
    "sweep_stages",
]

STAGE_PREFIX = ".sandbox-run-"

OWNER_BITS = 0o700
"""The permission bits a committed file or directory keeps."""

_OPAQUE_XATTRS = ("user.overlay.opaque", "trusted.overlay.opaque")

SkipKind = Literal["symlink", "fifo", "socket", "device", "invalid-path"]


@dataclass(frozen=True)
class FileChange:
    """One regular file. ``path`` is relative to /mnt/data (``out/result.csv``).

    ``size`` is the size after the run (created/changed) or before it (deleted);
    ``previous_size`` is set for changed files.
    """

    path: str
    size: int
    previous_size: int | None = None


@dataclass(frozen=True)
class SkippedEntry:
    """Something the command created that is not applied (and why)."""

    path: str
    kind: SkipKind


@dataclass(frozen=True)
class ChangeSet:
    """The net effect a finished command would have on the container directory.

    Lists are sorted by path. Files only count as ``changed`` when their bytes or owner permission bits
    differ (opening a file for writing and leaving it as it was is no change).
    """

    created: tuple[FileChange, ...] = ()
    changed: tuple[FileChange, ...] = ()
    deleted: tuple[FileChange, ...] = ()
    dirs_created: tuple[str, ...] = ()
    dirs_deleted: tuple[str, ...] = ()
    skipped: tuple[SkippedEntry, ...] = ()

    @property
    def empty(self) -> bool:
        """True when applying would change nothing."""
        return not (self.created or self.changed or self.deleted or self.dirs_created or self.dirs_deleted)

    @property
    def files_delta(self) -> int:
        """Change in the number of files."""
        return len(self.created) - len(self.deleted)

    @property
    def bytes_delta(self) -> int:
        """Change in stored bytes."""
        return (
            sum(f.size for f in self.created)
            + sum(f.size - (f.previous_size or 0) for f in self.changed)
            - sum(f.size for f in self.deleted)
        )

    @property
    def largest_file_bytes(self) -> int:
        """Size of the largest created or changed file (0 when none)."""
        return max((f.size for f in (*self.created, *self.changed)), default=0)


@dataclass(frozen=True)
class _Mkdir:
    rel: str
    mode: int
    uid: int
    gid: int


@dataclass
class _Plan:
    removes: list[str] = field(default_factory=list)
    mkdirs: list[_Mkdir] = field(default_factory=list)
    installs: list[tuple[str, int]] = field(default_factory=list)  # (rel, mode)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: Path) -> bool:
    for name in _OPAQUE_XATTRS:
        try:
            if os.getxattr(path, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def _skip_kind(mode: int) -> SkipKind:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device"


def _valid_rel(rel: str) -> bool:
    try:
        return normalize_path(rel) == "/mnt/data/" + rel
    except InvalidPath:
        return False


def _same_content(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


class _Scanner:
    def __init__(self, upper: Path, lower: Path) -> None:
        self.upper = upper
        self.lower = lower
        self.plan = _Plan()
        self.created: list[FileChange] = []
        self.changed: list[FileChange] = []
        self.deleted: list[FileChange] = []
        self.dirs_created: list[str] = []
        self.dirs_deleted: list[str] = []
        self.skipped: list[SkippedEntry] = []

    def result(self) -> ChangeSet:
        def by_path(xs: list[FileChange]) -> tuple[FileChange, ...]:
            return tuple(sorted(xs, key=lambda f: f.path))

        return ChangeSet(
            created=by_path(self.created),
            changed=by_path(self.changed),
            deleted=by_path(self.deleted),
            dirs_created=tuple(sorted(self.dirs_created)),
            dirs_deleted=tuple(sorted(self.dirs_deleted)),
            skipped=tuple(sorted(self.skipped, key=lambda s: s.path)),
        )

    def delete_lower(self, rel: str, st: os.stat_result) -> None:
        """Record that whatever the container directory has at ``rel`` goes away."""
        self.plan.removes.append(rel)
        if stat.S_ISREG(st.st_mode):
            self.deleted.append(FileChange(rel, st.st_size))
        elif stat.S_ISDIR(st.st_mode):
            self.dirs_deleted.append(rel)
            for root, dirs, files in os.walk(self.lower / rel):
                base = Path(root).relative_to(self.lower).as_posix()
                for d in dirs:
                    if (Path(root) / d).is_symlink():
                        continue
                    self.dirs_deleted.append(f"{base}/{d}")
                for f in files:
                    fst = _lstat(Path(root) / f)
                    if fst is not None and stat.S_ISREG(fst.st_mode):
                        self.deleted.append(FileChange(f"{base}/{f}", fst.st_size))

    def walk(self, rel: str, lower_state: Literal["visible", "hidden", "absent"]) -> None:
        """Compare upper directory ``rel`` with the container directory.

        ``visible``: the container has this directory and the sandbox saw its contents;
        ``hidden``: the container has it but the sandbox saw it replaced (opaque);
        ``absent``: the container has no directory here.
        """
        udir = self.upper / rel if rel else self.upper
        ldir = self.lower / rel if rel else self.lower
        names: set[str] = set()
        with os.scandir(udir) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            names.add(entry.name)
            r = f"{rel}/{entry.name}" if rel else entry.name
            ust = entry.stat(follow_symlinks=False)
            lst = _lstat(ldir / entry.name) if lower_state != "absent" else None
            if _is_whiteout(ust):
                if lst is not None:
                    self.delete_lower(r, lst)
                continue
            if not _valid_rel(r):
                self.skipped.append(SkippedEntry(r, "invalid-path"))
                if lst is not None:
                    self.delete_lower(r, lst)
                continue
            if stat.S_ISDIR(ust.st_mode):
                if lst is not None and stat.S_ISDIR(lst.st_mode):
                    opaque = _is_opaque(Path(entry.path))
                    self.walk(r, "visible" if lower_state == "visible" and not opaque else "hidden")
                    continue
                if lst is not None:
                    self.delete_lower(r, lst)
                self.plan.mkdirs.append(_Mkdir(r, stat.S_IMODE(ust.st_mode) & OWNER_BITS, ust.st_uid, ust.st_gid))
                self.dirs_created.append(r)
                self.walk(r, "absent")
            elif stat.S_ISREG(ust.st_mode):
                mode = stat.S_IMODE(ust.st_mode) & OWNER_BITS
                if lst is not None and stat.S_ISREG(lst.st_mode):
                    if (
                        lst.st_size == ust.st_size
                        and stat.S_IMODE(lst.st_mode) & OWNER_BITS == mode
                        and _same_content(ldir / entry.name, Path(entry.path))
                    ):
                        continue
                    self.changed.append(FileChange(r, ust.st_size, lst.st_size))
                else:
                    if lst is not None:
                        self.delete_lower(r, lst)
                    self.created.append(FileChange(r, ust.st_size))
                self.plan.installs.append((r, mode))
            else:
                self.skipped.append(SkippedEntry(r, _skip_kind(ust.st_mode)))
                if lst is not None:
                    self.delete_lower(r, lst)
        if lower_state == "hidden":
            with os.scandir(ldir) as it:
                gone = sorted(e.name for e in it if e.name not in names)
            for name in gone:
                lst = _lstat(ldir / name)
                if lst is not None:
                    self.delete_lower(f"{rel}/{name}" if rel else name, lst)


class Stage:
    """The staging directory of one run: ``upper/`` and ``work/`` of the overlay, and ``lower``.

    ``lower`` is a symlink to the container directory, so the overlay's mount options name only
    relative paths (nothing of the host's layout shows in the sandbox's ``/proc/self/mountinfo``).
    """

    def __init__(self, root: Path, data_dir: Path) -> None:
        self.root = root
        self.data_dir = data_dir
        self.upper = root / "upper"
        self.work = root / "work"

    @classmethod
    def create(
        cls,
        data_dir: Path,
        stage_root: Path,
        *,
        owner: tuple[int, int] | None,
        adopt: bool = True,
        home_dir: Path | None = None,
    ) -> Stage:
        """Make a stage for ``data_dir`` under ``stage_root`` (which must be on the same filesystem).

        With ``owner`` (server running as root), the container directory's tree is handed to that
        uid/gid first (unless ``adopt`` is False: the caller knows it already is), so the
        unprivileged sandbox user can modify it; the stage's upper root gets the same owner and
        the container directory's permission bits. With ``home_dir`` (on the same filesystem), the
        stage also gets what its home overlay needs: an empty ``home-lower``, ``home-work`` and a
        ``home`` link to ``home_dir`` (given to ``owner``, when set).
        """
        data_st = os.stat(data_dir)
        if not stat.S_ISDIR(data_st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(data_dir))
        stage_root.mkdir(parents=True, exist_ok=True)
        if os.stat(stage_root).st_dev != data_st.st_dev:
            raise OSError(
                errno.EXDEV,
                f"stage directory {stage_root} is not on the same filesystem as {data_dir}; "
                "changes could not be applied atomically",
            )
        root = Path(tempfile.mkdtemp(prefix=f"{STAGE_PREFIX}{os.getpid()}-", dir=stage_root))
        stage = cls(root, data_dir)
        try:
            stage.upper.mkdir(mode=0o700)
            stage.work.mkdir(mode=0o700)
            os.symlink(data_dir.resolve(), root / "lower")
            os.chmod(stage.upper, stat.S_IMODE(data_st.st_mode))
            if owner is not None:
                if adopt:
                    adopt_tree(data_dir, *owner)
                os.chown(stage.upper, *owner)
            if home_dir is not None:
                if os.stat(home_dir).st_dev != data_st.st_dev:
                    raise OSError(errno.EXDEV, f"home directory {home_dir} is not on the filesystem of {data_dir}")
                (root / "home-lower").mkdir(mode=0o755)
                (root / "home-work").mkdir(mode=0o700)
                os.symlink(home_dir.resolve(), root / "home")
                if owner is not None:
                    os.chown(home_dir, *owner, follow_symlinks=False)
        except BaseException:
            stage.destroy()
            raise
        return stage

    def usage(self, *, max_entries: int) -> tuple[int, int, bool]:
        """Bytes and entries written so far (see ``tree_usage``)."""
        return tree_usage(self.upper, max_entries=max_entries)

    def scan(self) -> tuple[ChangeSet, _Plan]:
        """The change set and the plan that applies it. Call once the sandbox has exited."""
        scanner = _Scanner(self.upper, self.data_dir)
        scanner.walk("", "visible")
        return scanner.result(), scanner.plan

    def apply(self, plan: _Plan) -> None:
        """Apply ``plan`` to the container directory, all of it or (after a crash) none of it.

        The plan is first written to the stage's journal and made durable together with the
        staged files; only then does the container directory change (removals, new directories,
        then renames). A crash from then on is rolled forward by ``recover_stage``; a crash
        before leaves the container as it was.
        """
        _write_journal(self.root, plan)
        _carry_out(self.data_dir, self.root, plan, removed=False)

    def destroy(self) -> None:
        """Remove the stage (idempotent)."""
        if self.root.exists() or self.root.is_symlink():
            remove_tree(self.root)


JOURNAL = "journal.json"
"""The plan of a commit that has begun, in its stage (written whole: temp file, fsync, rename)."""

_REMOVED = "journal.removed"
"""Marks that a commit's removals are done: rolling forward must not repeat them (an install may
since have put a new file where one was removed)."""


def _fsync_path(path: Path, flags: int = os.O_RDONLY) -> None:
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(path: Path) -> None:
    """Flush the filesystem holding ``path`` (the staged files: one call, not one fsync per file)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _write_journal(root: Path, plan: _Plan) -> None:
    body = json.dumps(
        {
            "removes": plan.removes,
            "mkdirs": [[d.rel, d.mode, d.uid, d.gid] for d in plan.mkdirs],
            "installs": [[rel, mode] for rel, mode in plan.installs],
        }
    ).encode()
    _syncfs(root)
    temp = root / (JOURNAL + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, root / JOURNAL)
    _fsync_path(root)


def _read_journal(root: Path) -> _Plan | None:
    try:
        raw = json.loads((root / JOURNAL).read_bytes())
    except FileNotFoundError:
        return None
    return _Plan(
        removes=[str(r) for r in raw["removes"]],
        mkdirs=[_Mkdir(str(r), int(m), int(u), int(g)) for r, m, u, g in raw["mkdirs"]],
        installs=[(str(r), int(m)) for r, m in raw["installs"]],
    )


def _carry_out(data_dir: Path, root: Path, plan: _Plan, *, removed: bool) -> None:
    """Apply ``plan``; every step may be repeated (rolling forward after a crash)."""
    upper = root / "upper"
    fds = DirFds(data_dir)
    park_fd = os.open(root, DIR_FLAGS)
    try:
        if not removed:
            remover = Remover(park_fd, "removed")
            for rel in plan.removes:
                try:
                    parent, name = fds.parent(rel)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                remover.remove_at(parent, name)
            fds.forget()
            fd = os.open(root / _REMOVED, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            os.close(fd)
            _fsync_path(root)
        for d in plan.mkdirs:
            parent, name = fds.parent(d.rel)
            try:
                os.mkdir(name, 0o700, dir_fd=parent)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(name, dir_fd=parent).st_mode):
                    raise
            fd = fds.dir(d.rel)
            os.fchmod(fd, d.mode)
            if os.geteuid() == 0:
                os.fchown(fd, d.uid, d.gid)
        for rel, mode in plan.installs:
            src = upper / rel
            if _lstat(src) is None:
                continue  # renamed into place before a crash
            os.chmod(src, mode)
            strip_overlay_xattrs(src)
            parent, name = fds.parent(rel)
            os.rename(src, name, dst_dir_fd=parent)
        for rel in {rel.rpartition("/")[0] for rel, _ in plan.installs}:
            os.fsync(fds.dir(rel))
    finally:
        fds.close()
        os.close(park_fd)


def recover_stage(stage: Path, data_dir: Path) -> bool:
    """Finish or undo the commit a crash cut short in ``stage``, then remove the stage. Blocking.

    A stage with a journal had begun committing: its plan is carried out to the end (rolled
    forward), and True is returned. A stage without one never touched ``data_dir``: it is only
    removed (rolled back), and False is returned. The caller must hold the container's lock.
    """
    plan = _read_journal(stage)
    if plan is not None:
        _carry_out(data_dir, stage, plan, removed=(stage / _REMOVED).exists())
    remove_tree(stage)
    return plan is not None


def sweep_stages(stage_root: Path) -> int:
    """Remove stages left in ``stage_root`` by a server process that is gone (a crash).

    Stages are named ``.sandbox-run-<server pid>-<random>``; those of live processes are left
    alone. A stage whose commit had begun (it has a journal) is rolled forward into the directory
    its ``lower`` link names first (``recover_stage``), so no commit is left half-applied. Call it
    at startup for each stage root (e.g. each container directory), holding nothing that could
    change those directories meanwhile. Returns how many were removed. Blocking.
    """
    removed = 0
    try:
        entries = list(stage_root.iterdir())
    except OSError:
        return 0
    for entry in entries:
        pid = entry.name.removeprefix(STAGE_PREFIX).split("-", 1)[0]
        if entry.name.startswith(STAGE_PREFIX) and pid.isdigit() and not pid_alive(int(pid)):
            try:
                if (entry / JOURNAL).exists():
                    recover_stage(entry, Path(os.readlink(entry / "lower")))
                else:
                    remove_tree(entry)
            except OSError:
                continue
            removed += 1
    return removed
