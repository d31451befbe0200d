"""A pull-style, streaming ``multipart/form-data`` reader.

Starlette's ``request.form()`` collects the whole form first (file parts spooled to temporary
files) before the handler sees anything. An upload here is instead read part by part as it
arrives: the handler gets a part's name and filename as soon as its headers are in, then its bytes
as an async iterator it hands straight to the ``ContainerService``, which writes them to the
container. Memory stays flat whatever the file size (one request chunk plus one ~1 MiB write
buffer), nothing is written twice, and a request the service refuses (not found, expired, over
quota) is refused before its file is read.

python-multipart's push parser does the parsing; its callbacks queue events that the reader hands
out in order. Non-file fields are capped (``max_field_bytes``), as are the number of parts and the
size of a part's headers. A malformed body raises ``InvalidRequest``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from ..errors import InvalidRequest
from ..uploads import CHUNK_SIZE

__all__ = ["MultipartReader", "Part", "drain"]

_PART, _DATA, _END, _FINISH = range(4)


@dataclass(frozen=True)
class Part:
    """One part's headers: ``filename`` is None for a plain field."""

    name: str
    filename: str | None
    content_type: str | None


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


class MultipartReader:
    """Reads one multipart body from ``stream``; see the module docstring.

    Use ``next_part()`` to move to the next part (skipping what is left of the current one), then
    ``read()``, ``chunks()`` or nothing (skip) for its content.
    """

    def __init__(
        self,
        content_type: str,
        stream: AsyncIterator[bytes],
        *,
        max_field_bytes: int = 1 << 20,
        max_parts: int = 100,
        max_header_bytes: int = 16 << 10,
    ) -> None:
        ctype, params = parse_options_header(content_type)
        if ctype != b"multipart/form-data":
            raise InvalidRequest("Expected a multipart/form-data body.", param="file")
        boundary = params.get(b"boundary")
        if not boundary:
            raise InvalidRequest("The multipart/form-data Content-Type has no boundary.", param="file")
        self._stream = stream
        self._max_field_bytes = max_field_bytes
        self._max_parts = max_parts
        self._max_header_bytes = max_header_bytes
        self._events: deque[tuple[int, bytes | Part | None]] = deque()
        self._headers: list[tuple[bytes, bytes]] = []
        self._field = b""
        self._value = b""
        self._header_bytes = 0
        self._parts = 0
        self._in_part = False
        self._finished = False
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_part_begin": self._on_part_begin,
                "on_part_data": self._on_part_data,
                "on_part_end": lambda: self._events.append((_END, None)),
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_end": lambda: self._events.append((_FINISH, None)),
            },
        )

    # --- parser callbacks (synchronous, inside parser.write) --------------------------------

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > self._max_parts:
            raise InvalidRequest(f"The multipart body has more than {self._max_parts} parts.")
        self._headers = []
        self._header_bytes = 0

    def _grow_headers(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self._max_header_bytes:
            raise InvalidRequest(f"A multipart part's headers are over {self._max_header_bytes} bytes.")

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._grow_headers(end - start)
        self._field += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._grow_headers(end - start)
        self._value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers.append((self._field.lower(), self._value))
        self._field = self._value = b""

    def _on_headers_finished(self) -> None:
        headers = dict(self._headers)
        _, options = parse_options_header(headers.get(b"content-disposition", b"").decode("latin-1"))
        if b"name" not in options:
            raise InvalidRequest('A multipart part has no Content-Disposition "name".')
        filename = options.get(b"filename")
        ctype = headers.get(b"content-type")
        self._events.append(
            (
                _PART,
                Part(
                    name=_decode(options[b"name"]),
                    filename=None if filename is None else _decode(filename).replace("%22", '"'),
                    content_type=None if ctype is None else _decode(ctype),
                ),
            )
        )

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if end > start:
            self._events.append((_DATA, data[start:end]))

    # --- pulling -----------------------------------------------------------------------------

    async def _next_event(self) -> tuple[int, bytes | Part | None]:
        while not self._events:
            if self._finished:
                return (_FINISH, None)
            try:
                chunk = await anext(self._stream)
            except StopAsyncIteration:
                self._finished = True
                try:
                    self._parser.finalize()
                except MultipartParseError as exc:
                    raise InvalidRequest(f"Malformed multipart body: {exc}.") from None
                if not self._events or self._events[-1][0] != _FINISH:
                    raise InvalidRequest("The multipart body ended before its closing boundary.") from None
                continue
            if chunk:
                try:
                    self._parser.write(chunk)
                except MultipartParseError as exc:
                    raise InvalidRequest(f"Malformed multipart body: {exc}.") from None
        event = self._events.popleft()
        if event[0] == _FINISH:
            self._finished = True
            self._events.clear()
            self._events.append(event)  # stays: every later call sees the end
        return event

    async def next_part(self) -> Part | None:
        """The next part's headers, skipping the rest of the current part; None at the end."""
        while True:
            kind, value = await self._next_event()
            if kind == _FINISH:
                self._in_part = False
                return None
            if kind == _PART:
                assert isinstance(value, Part)
                self._in_part = True
                return value

    async def chunks(self, min_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        """The current part's bytes, coalesced to about ``min_size`` per chunk (fewer writes)."""
        buffer: list[bytes] = []
        size = 0
        while self._in_part:
            kind, value = await self._next_event()
            if kind == _DATA:
                assert isinstance(value, bytes)
                buffer.append(value)
                size += len(value)
                if size >= min_size:
                    yield b"".join(buffer)
                    buffer, size = [], 0
            else:
                self._in_part = False
                if kind == _FINISH:  # pragma: no cover - the parser ends parts before the body
                    break
        if buffer:
            yield b"".join(buffer)

    async def read(self) -> bytes:
        """The current part's bytes, at most ``max_field_bytes`` (else ``InvalidRequest``)."""
        out = bytearray()
        async for chunk in self.chunks(min_size=1):
            out += chunk
            if len(out) > self._max_field_bytes:
                raise InvalidRequest(f"A multipart field is over {self._max_field_bytes} bytes.")
        return bytes(out)


async def drain(stream: AsyncIterator[bytes], limit: int) -> bool:
    """Read and drop the rest of a request body, at most ``limit`` bytes; True if it all went.

    Used before answering early (an error mid-upload), so that the client, which may still be
    sending, reads the answer instead of a reset connection. A stream already ended or broken
    (client gone) counts as drained.
    """
    seen = 0
    try:
        async for chunk in stream:
            seen += len(chunk)
            if seen > limit:
                return False
    except Exception:  # the client went away: nothing left to drain
        return True
    return True
