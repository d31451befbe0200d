"""A small seccomp-bpf deny list, handed to bubblewrap with ``--seccomp FD``.

Namespaces, dropped capabilities and ``no_new_privs`` already contain a command; this filter
removes kernel surface it never needs and that sandboxes are classically attacked through:
debugging other processes (``ptrace``, ``process_vm_*``, ``pidfd_getfd``), the keyring (the
server's session keyring is inherited), new namespaces and mounts, ``bpf``, ``perf_event_open``,
``userfaultfd``, ``io_uring``, module/kexec loading, handle-based opens, clock and swap changes.
Denied calls fail with ``EPERM`` (``clone3`` and ``io_uring_*`` with ``ENOSYS``, so that libc and
runtimes fall back to ``clone`` and plain syscalls). ``clone`` is allowed unless it asks for a
new namespace. Calls from another ABI (i386/x32 on x86-64, arm32 on arm64) are refused.

The program is classic BPF built by hand (no libseccomp binding needed); x86-64 and aarch64 are
supported, other machines run without the filter (``program_for_machine`` returns None and the
probe reports ``seccomp=False``).
"""

from __future__ import annotations

import errno
import platform
import struct

__all__ = ["DENIED_SYSCALLS", "program_for_machine"]

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
_OFF_NR = 0
_OFF_ARCH = 4
_OFF_ARG0_LO = 16  # little-endian: the low 32 bits of args[0]

_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06

_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000

_X32_SYSCALL_BIT = 0x40000000
_CLONE_NEW_ANY = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
    | 0x00000080  # CLONE_NEWTIME
)

DENIED_SYSCALLS = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "process_madvise",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "mount",
    "umount2",
    "pivot_root",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "quotactl_fd",
    "lookup_dcookie",
    "open_by_handle_at",
    "name_to_handle_at",
    "syslog",
    "vhangup",
    "clock_settime",
    "settimeofday",
    "adjtimex",
    "clock_adjtime",
)
_ENOSYS_SYSCALLS = ("clone3", "io_uring_setup", "io_uring_enter", "io_uring_register")

# (AUDIT_ARCH, has x32 bit, syscall table) per machine, numbers from the kernel's unistd headers.
_X86_64 = {
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "pidfd_getfd": 438,
    "process_madvise": 440, "keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321,
    "perf_event_open": 298, "userfaultfd": 323, "kexec_load": 246, "kexec_file_load": 320,
    "init_module": 175, "finit_module": 313, "delete_module": 176, "mount": 165, "umount2": 166,
    "pivot_root": 155, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "mount_setattr": 442, "unshare": 272, "setns": 308,
    "swapon": 167, "swapoff": 168, "reboot": 169, "acct": 163, "quotactl": 179, "quotactl_fd": 443,
    "lookup_dcookie": 212, "open_by_handle_at": 304, "name_to_handle_at": 303, "syslog": 103,
    "vhangup": 153, "clock_settime": 227, "settimeofday": 164, "adjtimex": 159, "clock_adjtime": 305,
    "clone3": 435, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "clone": 56,
}  # fmt: skip
_AARCH64 = {
    "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "pidfd_getfd": 438,
    "process_madvise": 440, "keyctl": 219, "add_key": 217, "request_key": 218, "bpf": 280,
    "perf_event_open": 241, "userfaultfd": 282, "kexec_load": 104, "kexec_file_load": 294,
    "init_module": 105, "finit_module": 273, "delete_module": 106, "mount": 40, "umount2": 39,
    "pivot_root": 41, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "mount_setattr": 442, "unshare": 97, "setns": 268,
    "swapon": 224, "swapoff": 225, "reboot": 142, "acct": 89, "quotactl": 60, "quotactl_fd": 443,
    "lookup_dcookie": 18, "open_by_handle_at": 265, "name_to_handle_at": 264, "syslog": 116,
    "vhangup": 58, "clock_settime": 112, "settimeofday": 170, "adjtimex": 171, "clock_adjtime": 266,
    "clone3": 435, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "clone": 220,
}  # fmt: skip
_MACHINES: dict[str, tuple[int, bool, dict[str, int]]] = {
    "x86_64": (0xC000003E, True, _X86_64),
    "aarch64": (0xC00000B7, False, _AARCH64),
}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _build(audit_arch: int, x32: bool, table: dict[str, int]) -> bytes:
    eperm = _RET_ERRNO | errno.EPERM
    enosys = _RET_ERRNO | errno.ENOSYS
    prog = [
        _insn(_LD_W_ABS, _OFF_ARCH),
        _insn(_JEQ_K, audit_arch, jt=1, jf=0),
        _insn(_RET_K, enosys),  # another ABI
        _insn(_LD_W_ABS, _OFF_NR),
    ]
    if x32:
        prog += [_insn(_JGE_K, _X32_SYSCALL_BIT, jt=0, jf=1), _insn(_RET_K, enosys)]
    for name in DENIED_SYSCALLS:
        prog += [_insn(_JEQ_K, table[name], jt=0, jf=1), _insn(_RET_K, eperm)]
    for name in _ENOSYS_SYSCALLS:
        prog += [_insn(_JEQ_K, table[name], jt=0, jf=1), _insn(_RET_K, enosys)]
    prog += [
        _insn(_JEQ_K, table["clone"], jt=0, jf=3),
        _insn(_LD_W_ABS, _OFF_ARG0_LO),
        _insn(_JSET_K, _CLONE_NEW_ANY, jt=0, jf=1),
        _insn(_RET_K, eperm),
        _insn(_RET_K, _RET_ALLOW),
    ]
    return b"".join(prog)


def program_for_machine(machine: str | None = None) -> bytes | None:
    """The filter as raw ``struct sock_filter`` bytes for this (or the given) machine, or None."""
    spec = _MACHINES.get(machine or platform.machine())
    return _build(*spec) if spec else None
