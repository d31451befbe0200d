"""Bounded capture of a command's output, and decoding for readers.

A stream is kept as raw bytes: its head and its tail, half of the budget each, so both the first
lines and the final error of a long run survive. When bytes were dropped, the kept bytes are
``head + marker + tail`` with an ASCII marker line naming how many bytes were omitted. Invalid
UTF-8 and binary data are never touched; ``decode_output`` turns the bytes into text with
U+FFFD replacements when a caller wants a ``str``.
"""

from __future__ import annotations

__all__ = ["OutputCapture", "decode_output", "omission_marker"]


def omission_marker(omitted: int) -> bytes:
    """The line put between head and tail of a truncated stream."""
    return f"\n[... {omitted} bytes omitted ...]\n".encode()


def decode_output(data: bytes) -> str:
    """UTF-8 text of captured output, undecodable bytes replaced with U+FFFD."""
    return data.decode("utf-8", errors="replace")


class OutputCapture:
    """Keeps at most ``limit`` bytes of a stream (head and tail) and counts all of it."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("limit must be >= 0")
        self.limit = limit
        self._tail_limit = limit // 2
        self._head_limit = limit - self._tail_limit
        self._head = bytearray()
        self._tail = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        if chunk and self._tail_limit:
            self._tail += chunk
            # Trim lazily: keep at most twice the tail budget in memory.
            if len(self._tail) > 2 * self._tail_limit:
                del self._tail[: -self._tail_limit]

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def getvalue(self) -> bytes:
        """All bytes if they fit; otherwise head, an omission marker, and the tail."""
        tail = bytes(self._tail[-self._tail_limit :]) if self._tail_limit else b""
        if not self.truncated:
            return bytes(self._head) + tail
        omitted = self.total - len(self._head) - len(tail)
        return bytes(self._head) + omission_marker(omitted) + tail
