"""Container files through the official SDK against a live server: upload, copy, list, content."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import httpx2
import pytest
from openai import AsyncOpenAI, BadRequestError, NotFoundError

from .live import KEY_A, LiveApi
from .recordings import header, recorded, same_shape

pytestmark = pytest.mark.anyio

ALL_BYTES = bytes(range(256))


async def new_container(client: AsyncOpenAI, name: str = "files") -> str:
    return (await client.containers.create(name=name)).id


async def test_upload_retrieve_list_content_delete(client: AsyncOpenAI) -> None:
    cid = await new_container(client)
    text = b"Test file content for get/delete operations."
    created = await client.containers.files.create(cid, file=("test-get-file.txt", text, "text/plain"))
    assert created.id.startswith("cfile_") and len(created.id) == 38
    assert (created.object, created.container_id, created.bytes, created.source) == (
        "container.file",
        cid,
        len(text),
        "user",
    )
    assert created.path == "/mnt/data/test-get-file.txt"

    got = await client.containers.files.retrieve(created.id, container_id=cid)
    assert got.model_dump() == created.model_dump()

    page = await client.containers.files.list(cid)
    assert [f.id for f in page.data] == [created.id]
    assert page.model_dump()["first_id"] == page.model_dump()["last_id"] == created.id
    assert page.has_more is False

    content = await client.containers.files.content.retrieve(created.id, container_id=cid)
    assert content.content == text

    await client.containers.files.delete(created.id, container_id=cid)
    with pytest.raises(NotFoundError, match=f"File {created.id} not found on container {cid}."):
        await client.containers.files.retrieve(created.id, container_id=cid)
    assert (await client.containers.files.list(cid)).data == []


async def test_upload_from_a_path_and_binary_round_trip(client: AsyncOpenAI, tmp_path: Path) -> None:
    cid = await new_container(client)
    source = tmp_path / "all-bytes.bin"
    source.write_bytes(ALL_BYTES * 3)
    created = await client.containers.files.create(cid, file=source)
    assert (created.path, created.bytes) == ("/mnt/data/all-bytes.bin", 768)
    content = await client.containers.files.content.retrieve(created.id, container_id=cid)
    assert content.content == ALL_BYTES * 3
    assert content.response.headers["content-type"] == "application/octet-stream"


async def test_upload_to_an_existing_path_replaces_the_file(client: AsyncOpenAI) -> None:
    cid = await new_container(client)
    first = await client.containers.files.create(cid, file=("notes.md", b"one"))
    second = await client.containers.files.create(cid, file=("notes.md", b"two, longer"))
    page = await client.containers.files.list(cid)
    assert [(f.id, f.path, f.bytes) for f in page.data] == [(second.id, "/mnt/data/notes.md", 11)]
    with pytest.raises(NotFoundError):
        await client.containers.files.retrieve(first.id, container_id=cid)


async def test_upload_keeps_only_the_basename(api: LiveApi, client: AsyncOpenAI) -> None:
    cid = await new_container(client)
    async with httpx2.AsyncClient(base_url=api.base_url, headers={"Authorization": f"Bearer {KEY_A}"}) as http:
        r = await http.post(f"/containers/{cid}/files", files={"file": ("../../etc/dir/report.csv", b"a,b\n")})
        assert r.status_code == 200, r.text
        assert r.json()["path"] == "/mnt/data/report.csv"
        r = await http.post(f"/containers/{cid}/files", files={"file": ("", b"x")})
        assert r.status_code == 400 and r.json()["error"]["param"] == "file"


async def test_content_headers_match_the_recording(api: LiveApi, client: AsyncOpenAI) -> None:
    rec = recorded("CanUploadGetAndDeleteContainerFile", "GET", 1)
    rec_body = rec["ResponseBody"].encode()
    cid = await new_container(client)
    created = await client.containers.files.create(cid, file=("test-get-file.txt", rec_body))
    async with httpx2.AsyncClient(base_url=api.base_url, headers={"Authorization": f"Bearer {KEY_A}"}) as http:
        r = await http.get(f"/containers/{cid}/files/{created.id}/content", headers={"Accept": "application/binary"})
    assert r.content == rec_body
    assert r.headers["content-type"] == header(rec, "Content-Type") == "text/plain; charset=utf-8"
    assert r.headers["content-length"] == header(rec, "Content-Length") == str(len(rec_body))
    assert r.headers["content-disposition"] == (
        "attachment; filename=\"test-get-file.txt\"; filename*=UTF-8''test-get-file.txt"
    )
    assert header(rec, "Content-Disposition").startswith("attachment; filename=")
    assert r.headers["x-request-id"].startswith("req_")


async def test_content_disposition_of_a_non_ascii_name(client: AsyncOpenAI) -> None:
    cid = await new_container(client)
    name = 'résumé "final" 中文.pdf'
    created = await client.containers.files.create(cid, file=(name, b"%PDF-1.4"))
    assert created.path == f"/mnt/data/{name}"
    content = await client.containers.files.content.retrieve(created.id, container_id=cid)
    disposition = content.response.headers["content-disposition"]
    assert disposition == f"attachment; filename=\"resume _final_ __.pdf\"; filename*=UTF-8''{quote(name, safe='')}"
    assert content.response.headers["content-type"] == "application/pdf"


async def test_file_shapes_match_the_recordings(api: LiveApi, client: AsyncOpenAI) -> None:
    rec_post = recorded("CanUploadGetAndDeleteContainerFile", "POST")
    rec_get = recorded("CanUploadGetAndDeleteContainerFile", "GET")
    rec_delete = recorded("CanUploadGetAndDeleteContainerFile", "DELETE")
    rec_list = recorded("ContainerFileCollectionOptionsCanBeConfigured", "GET")
    cid = await new_container(client)
    async with httpx2.AsyncClient(base_url=api.base_url, headers={"Authorization": f"Bearer {KEY_A}"}) as http:
        posted = await http.post(f"/containers/{cid}/files", files={"file": ("test-get-file.txt", b"x" * 44)})
        fid = posted.json()["id"]
        got = await http.get(f"/containers/{cid}/files/{fid}")
        listed = await http.get(f"/containers/{cid}/files", params={"limit": 5, "order": "asc"})
        deleted = await http.delete(f"/containers/{cid}/files/{fid}", headers={"Content-Type": "application/json"})
    for ours, theirs in [(posted, rec_post), (got, rec_get), (listed, rec_list), (deleted, rec_delete)]:
        assert ours.status_code == 200
        assert ours.headers["content-type"] == "application/json"
        assert list(ours.json()) == list(theirs["ResponseBody"])
        assert same_shape(ours.json(), theirs["ResponseBody"])
        assert ours.text == json.dumps(ours.json(), indent=2)
    assert deleted.json() == {"id": fid, "object": "container.file.deleted", "deleted": True}


async def test_create_by_file_id_json_copies_between_containers(client: AsyncOpenAI) -> None:
    src = await new_container(client, "src")
    dst = await new_container(client, "dst")
    original = await client.containers.files.create(src, file=("data/all.bin", ALL_BYTES))
    copied = await client.containers.files.create(dst, file_id=original.id)  # JSON {"file_id": ...}
    assert copied.container_id == dst and copied.id != original.id
    assert (copied.path, copied.bytes, copied.source) == (original.path, 256, "user")
    content = await client.containers.files.content.retrieve(copied.id, container_id=dst)
    assert content.content == ALL_BYTES
    # The source is untouched.
    assert [f.id for f in (await client.containers.files.list(src)).data] == [original.id]


async def test_create_by_file_id_as_a_multipart_field_like_old_sdks(api: LiveApi, client: AsyncOpenAI) -> None:
    src = await new_container(client, "src")
    dst = await new_container(client, "dst")
    original = await client.containers.files.create(src, file=("old.txt", b"legacy"))
    async with httpx2.AsyncClient(base_url=api.base_url, headers={"Authorization": f"Bearer {KEY_A}"}) as http:
        # openai 1.x sends a file_id-only create as one multipart text part.
        boundary = "legacyboundary"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file_id"\r\n\r\n{original.id}\r\n--{boundary}--\r\n'
        ).encode()
        r = await http.post(
            f"/containers/{dst}/files",
            content=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    assert r.status_code == 200, r.text
    assert (r.json()["container_id"], r.json()["path"]) == (dst, "/mnt/data/old.txt")


async def test_file_and_file_id_together_the_upload_wins(client: AsyncOpenAI) -> None:
    src = await new_container(client, "src")
    original = await client.containers.files.create(src, file=("a.txt", b"from source"))
    created = await client.containers.files.create(src, file=("b.txt", b"uploaded"), file_id=original.id)
    assert created.path == "/mnt/data/b.txt"


@pytest.mark.parametrize(
    ("file_id", "error", "param"),
    [
        ("file-abc123", BadRequestError, "file_id"),
        ("cfile_" + "0" * 32, NotFoundError, "file_id"),
    ],
)
async def test_create_by_unknown_file_id(client: AsyncOpenAI, file_id: str, error: type[Exception], param: str) -> None:
    cid = await new_container(client)
    with pytest.raises(error) as info:
        await client.containers.files.create(cid, file_id=file_id)
    assert getattr(info.value, "param", None) == param


async def test_create_with_neither_file_nor_file_id(client: AsyncOpenAI) -> None:
    cid = await new_container(client)
    with pytest.raises(BadRequestError) as info:
        await client.containers.files.create(cid)
    assert info.value.param == "file"


async def test_file_paging_both_orders(client: AsyncOpenAI, api: LiveApi) -> None:
    cid = await new_container(client)
    made = []
    for i in range(12):
        made.append((await client.containers.files.create(cid, file=(f"f{i:02d}.txt", b"x"))).id)
        api.clock.advance(1)
    assert [f.id async for f in client.containers.files.list(cid, limit=5, order="asc")] == made
    assert [f.id async for f in client.containers.files.list(cid, limit=5)] == made[::-1]


async def test_an_aborted_upload_leaves_nothing_behind(api: LiveApi, client: AsyncOpenAI) -> None:
    cid = await new_container(client)

    class Aborted(Exception):
        pass

    async def body() -> AsyncIterator[bytes]:
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="cut.bin"\r\n\r\n'
        for _ in range(40):
            yield b"z" * 65536
        raise Aborted  # the client gives up mid-file: the server sees the connection drop

    async with httpx2.AsyncClient(base_url=api.base_url, headers={"Authorization": f"Bearer {KEY_A}"}) as http:
        with pytest.raises(Aborted):
            await http.post(
                f"/containers/{cid}/files",
                content=body(),
                headers={"Content-Type": "multipart/form-data; boundary=b"},
            )
    # The same path again: the container's write lock orders it after the aborted upload's cleanup.
    done = await client.containers.files.create(cid, file=("cut.bin", b"whole"))
    assert [(f.id, f.bytes) for f in (await client.containers.files.list(cid)).data] == [(done.id, 5)]
    container_dir = api.provider.data_dir / "containers" / cid
    assert sorted(p.name for p in container_dir.rglob("*") if p.is_file()) == ["cut.bin"]


async def test_create_container_with_file_ids_copies_them(client: AsyncOpenAI) -> None:
    src = await new_container(client, "src")
    original = await client.containers.files.create(src, file=("seed.txt", b"seed"))
    dst = await client.containers.create(name="dst", file_ids=[original.id])
    files = (await client.containers.files.list(dst.id)).data
    assert [(f.path, f.bytes) for f in files] == [("/mnt/data/seed.txt", 4)]
