"""Bounded capture of a command's output, and decoding for readers.

Standard output and standard error share one budget (``shared``): a stream that needs less than
half leaves the rest to the other, so a quiet stderr costs the stdout nothing. A stream is kept
as raw bytes: its head and its tail, half of the budget each, so both the first
lines and the final error of a long run survive. When bytes were dropped, the kept bytes are
``head + marker + tail`` with an ASCII marker line naming how many bytes were omitted. Invalid
UTF-8 and binary data are never touched; ``decode_output`` turns the bytes into text with
U+FFFD replacements when a caller wants a ``str``.
"""

from __future__ import annotations

__all__ = ["OutputCapture", "decode_output", "omission_marker", "shared"]


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
        return self.render(self.limit)

    def render(self, limit: int) -> bytes:
        """Like ``getvalue`` with a budget of ``limit`` (at most ``self.limit``) bytes."""
        limit = min(limit, self.limit)
        whole = len(self._head) + len(self._tail) == self.total  # nothing dropped yet
        if whole and self.total <= limit:
            return bytes(self._head) + bytes(self._tail)
        tail_limit = limit // 2
        head = bytes(self._head[: limit - tail_limit])
        source = self._head + self._tail if whole else self._tail
        tail = bytes(source[len(source) - tail_limit :]) if tail_limit else b""
        omitted = self.total - len(head) - len(tail)
        return head + omission_marker(omitted) + tail


def shared(out: OutputCapture, err: OutputCapture, limit: int) -> tuple[tuple[bytes, bool], tuple[bytes, bool]]:
    """Both streams within ``limit`` bytes together: ((stdout, truncated), (stderr, truncated)).

    Each is owed half; what one does not need goes to the other.
    """
    half = limit // 2
    if out.total <= half:
        a = out.total
    elif err.total <= limit - half:
        a = limit - err.total
    else:
        a = half
    b = limit - a
    return (out.render(a), out.total > a), (err.render(b), err.total > b)
