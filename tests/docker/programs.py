"""Tiny static x86-64 programs the attack tests run inside containers (no compiler in the images)."""

from __future__ import annotations

import struct

__all__ = ["PTRACE_LOOP", "elf"]


def elf(code: bytes) -> bytes:
    """A static x86-64 Linux executable of ``code`` alone (one loaded segment, no libc)."""
    base, head = 0x400000, 64 + 56
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, base + head, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, head + len(code), head + len(code), 0x1000)
    return header + segment + code


PTRACE_LOOP = elf(bytes.fromhex("bb02000000bf1000000089de31d24531d2b8650000000f05ffc381fb000400007ce3ebdc"))
"""for (;;) for (pid = 2; pid < 1024; pid++) ptrace(PTRACE_ATTACH, pid, 0, 0): every process it may trace
is stopped and stays so (its tracer never lets it go on)."""
