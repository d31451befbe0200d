"""The streaming multipart reader, fed directly, chunk boundaries anywhere."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from container_mcp.api.multipart import MultipartReader, drain
from container_mcp.errors import InvalidRequest

pytestmark = pytest.mark.anyio

CTYPE = "multipart/form-data; boundary=XyZ"
PAYLOAD = bytes(range(256)) * 40 + b"\r\n--XyZ-looks-like-a-boundary\r\n--Xy"


def body(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--XyZ--\r\n"


def part(headers: str, data: bytes) -> bytes:
    return b"--XyZ\r\n" + headers.encode() + b"\r\n\r\n" + data + b"\r\n"


FORM = body(
    part('Content-Disposition: form-data; name="purpose"', b"assistants"),
    part(
        'Content-Disposition: form-data; name="file"; filename="déjà %22vu%22.bin"\r\n'
        "Content-Type: application/octet-stream",
        PAYLOAD,
    ),
    part('Content-Disposition: form-data; name="file_id"', b"cfile_abc"),
)


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_all(reader: MultipartReader) -> list[tuple[str, str | None, bytes]]:
    out = []
    while (p := await reader.next_part()) is not None:
        data = b"".join([c async for c in reader.chunks(min_size=100)])
        out.append((p.name, p.filename, data))
    return out


@pytest.mark.parametrize("size", [1, 2, 7, 64, 1000, 1 << 20])
async def test_parts_survive_any_chunking(size: int) -> None:
    reader = MultipartReader(CTYPE, chunked(FORM, size))
    parts = await read_all(reader)
    assert parts == [
        ("purpose", None, b"assistants"),
        ("file", 'déjà "vu".bin', PAYLOAD),
        ("file_id", None, b"cfile_abc"),
    ]
    assert await reader.next_part() is None  # the end stays the end


async def test_skipping_parts_and_reading_a_field() -> None:
    reader = MultipartReader(CTYPE, chunked(FORM, 5))
    assert (await reader.next_part()) is not None
    file_part = await reader.next_part()  # "purpose" skipped unread
    assert file_part is not None and file_part.content_type == "application/octet-stream"
    field = await reader.next_part()  # the file skipped unread
    assert field is not None and field.name == "file_id"
    assert await reader.read() == b"cfile_abc"


async def test_chunks_are_coalesced_up_to_the_minimum() -> None:
    reader = MultipartReader(CTYPE, chunked(body(part('Content-Disposition: form-data; name="f"', b"z" * 1000)), 10))
    await reader.next_part()
    sizes = [len(c) async for c in reader.chunks(min_size=300)]
    assert sum(sizes) == 1000 and all(s >= 300 for s in sizes[:-1]) and len(sizes) == 4


@pytest.mark.parametrize(
    ("content_type", "data", "message"),
    [
        ("application/json", FORM, "Expected a multipart/form-data body"),
        ("multipart/form-data", FORM, "no boundary"),
        (CTYPE, b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\nunfinished', "ended before"),
        (CTYPE, b"--WRONG\r\n\r\n", "Malformed multipart body"),
        (CTYPE, part("Content-Type: text/plain", b"x") + b"--XyZ--\r\n", 'no Content-Disposition "name"'),
    ],
)
async def test_malformed_bodies(content_type: str, data: bytes, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        reader = MultipartReader(content_type, chunked(data, 3))
        while await reader.next_part() is not None:
            pass


async def test_limits() -> None:
    big_field = body(part('Content-Disposition: form-data; name="file_id"', b"x" * 2000))
    reader = MultipartReader(CTYPE, chunked(big_field, 100), max_field_bytes=1000)
    await reader.next_part()
    with pytest.raises(InvalidRequest, match="over 1000 bytes"):
        await reader.read()

    many = body(*[part(f'Content-Disposition: form-data; name="f{i}"', b"v") for i in range(5)])
    reader = MultipartReader(CTYPE, chunked(many, 100), max_parts=3)
    with pytest.raises(InvalidRequest, match="more than 3 parts"):
        while await reader.next_part() is not None:
            pass

    long_header = body(part('Content-Disposition: form-data; name="f"; filename="' + "n" * 500 + '"', b"v"))
    reader = MultipartReader(CTYPE, chunked(long_header, 100), max_header_bytes=200)
    with pytest.raises(InvalidRequest, match="headers are over 200 bytes"):
        await reader.next_part()


async def test_drain() -> None:
    assert await drain(chunked(b"x" * 1000, 100), limit=1000) is True
    assert await drain(chunked(b"x" * 1000, 100), limit=500) is False
