"""One behavioural suite that every provider passes (see conftest.py for the list).

What it pins is the OpenAI object model and semantics the tools rely on: ids, statuses, cursor
paging, not-found vs. expired, atomic and approved uploads, exact bytes back.
"""

from __future__ import annotations

import re

import pytest

from container_mcp.errors import ContainerNotFound, FileNotFound, FileTooLarge, QuotaExceeded
from container_mcp.models import ContainerSpec, ExpiresAfter, ListParams, NetworkPolicy
from container_mcp.providers.base import FileChanges, Provider
from container_mcp.providers.docker import DockerProvider
from container_mcp.providers.local import LocalProvider
from container_mcp.providers.openai import OpenAIProvider
from container_mcp.uploads import BytesUpload

pytestmark = pytest.mark.anyio

ALL_BYTES = bytes(range(256))


async def read_all(provider: Provider, container_id: str, file_id: str, **kw: int) -> bytes:
    return b"".join([chunk async for chunk in provider.read_file(container_id, file_id, **kw)])


async def test_create_retrieve_delete(provider: Provider) -> None:
    spec = ContainerSpec(
        name="contract",
        expires_after=ExpiresAfter(minutes=15),
        memory_limit="4g",
        network_policy=NetworkPolicy(type="disabled"),
    )
    created = await provider.create_container(spec)
    assert re.fullmatch(r"cntr_[0-9a-f]{48}", created.id)
    assert created.object == "container"
    assert created.status == "running"
    assert created.name == "contract"
    assert created.expires_after.minutes == 15
    assert created.memory_limit == "4g"
    got = await provider.get_container(created.id)
    assert got.id == created.id and got.created_at == created.created_at
    deleted = await provider.delete_container(created.id)
    assert deleted.model_dump() == {"id": created.id, "object": "container.deleted", "deleted": True}
    with pytest.raises(ContainerNotFound):
        await provider.get_container(created.id)
    with pytest.raises(ContainerNotFound):
        await provider.delete_container(created.id)


async def test_list_paging_matches_openai(provider: Provider) -> None:
    # Listing a whole backend is not part of the Provider protocol (the views read the ledger);
    # every provider offers it, and it pages as OpenAI's does.
    assert isinstance(provider, LocalProvider | OpenAIProvider | DockerProvider)
    empty = await provider.list_containers(ListParams(name="nobody-has-this-name"))
    assert empty.model_dump() == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    ids = [(await provider.create_container(ContainerSpec(name="page"))).id for _ in range(5)]
    await provider.create_container(ContainerSpec(name="other"))

    seen: list[str] = []
    after = None
    while True:
        page = await provider.list_containers(ListParams(limit=2, order="asc", name="page", after=after))
        assert page.first_id == page.data[0].id and page.last_id == page.data[-1].id
        seen += [c.id for c in page.data]
        if not page.has_more:
            break
        after = page.last_id
    assert seen == ids

    desc = await provider.list_containers(ListParams(limit=100, order="desc", name="page"))
    assert [c.id for c in desc.data] == ids[::-1]
    assert desc.has_more is False
    exact = await provider.list_containers(ListParams(limit=5, order="asc", name="page"))
    assert exact.has_more is False and len(exact.data) == 5


async def test_file_round_trip_all_byte_values(provider: Provider) -> None:
    container = await provider.create_container(ContainerSpec(name="files"))
    f = await provider.create_file(container.id, "/mnt/data/blob.bin", BytesUpload(ALL_BYTES))
    assert re.fullmatch(r"cfile_[0-9a-f]{32}", f.id)
    assert f.object == "container.file"
    assert f.container_id == container.id
    assert f.bytes == 256
    assert f.path.startswith("/mnt/data/") and f.path.endswith("blob.bin")
    assert f.source == "user"
    assert await read_all(provider, container.id, f.id) == ALL_BYTES
    assert await read_all(provider, container.id, f.id, offset=250) == ALL_BYTES[250:]
    assert await read_all(provider, container.id, f.id, offset=10, length=5) == ALL_BYTES[10:15]
    assert (await provider.get_file(container.id, f.id)).model_dump() == f.model_dump()

    listed = await provider.list_files(container.id, ListParams())
    assert [x.id for x in listed.data] == [f.id]

    assert (await provider.delete_file(container.id, f.id)).model_dump() == {
        "id": f.id,
        "object": "container.file.deleted",
        "deleted": True,
    }
    with pytest.raises(FileNotFound):
        await provider.get_file(container.id, f.id)
    with pytest.raises(FileNotFound):
        await provider.delete_file(container.id, f.id)
    empty = await provider.list_files(container.id, ListParams())
    assert empty.data == [] and empty.first_id is None and empty.last_id is None


async def test_files_page_in_creation_order(provider: Provider) -> None:
    container = await provider.create_container(ContainerSpec(name="many"))
    ids = [
        (await provider.create_file(container.id, f"/mnt/data/f{i}.txt", BytesUpload(b"x" * i))).id for i in range(5)
    ]
    page1 = await provider.list_files(container.id, ListParams(limit=3, order="asc"))
    page2 = await provider.list_files(container.id, ListParams(limit=3, order="asc", after=page1.last_id))
    assert [f.id for f in page1.data + page2.data] == ids
    assert page1.has_more is True and page2.has_more is False


async def test_unknown_ids_answer_not_found(provider: Provider) -> None:
    missing = "cntr_" + "0" * 48
    with pytest.raises(ContainerNotFound):
        await provider.get_container(missing)
    with pytest.raises(ContainerNotFound):
        await provider.list_files(missing, ListParams())
    container = await provider.create_container(ContainerSpec(name="nf"))
    with pytest.raises(FileNotFound):
        await provider.get_file(container.id, "cfile_" + "0" * 32)


async def test_approve_sees_the_change_and_can_refuse(provider: Provider) -> None:
    container = await provider.create_container(ContainerSpec(name="approve"))
    seen: list[FileChanges] = []

    async def approve(changes: FileChanges) -> None:
        seen.append(changes)

    await provider.create_file(container.id, "/mnt/data/a.txt", BytesUpload(b"12345"), approve=approve)
    assert seen[0].files_delta == 1 and seen[0].bytes_delta == 5 and seen[0].largest_file_bytes == 5

    async def refuse(changes: FileChanges) -> None:
        raise QuotaExceeded("no", limit_name="X", limit=0, used=0)

    with pytest.raises(QuotaExceeded):
        await provider.create_file(container.id, "/mnt/data/b.txt", BytesUpload(b"678"), approve=refuse)
    names = [f.path.rsplit("/", 1)[-1] for f in (await provider.list_files(container.id, ListParams())).data]
    assert not any(n.endswith("b.txt") for n in names)


async def test_max_bytes_refuses_without_storing(provider: Provider) -> None:
    container = await provider.create_container(ContainerSpec(name="big"))
    with pytest.raises(FileTooLarge):
        await provider.create_file(container.id, "/mnt/data/big.bin", BytesUpload(b"x" * 2048), max_bytes=1024)
    assert (await provider.list_files(container.id, ListParams())).data == []


async def test_copy_file_between_containers(provider: Provider) -> None:
    a = await provider.create_container(ContainerSpec(name="a"))
    b = await provider.create_container(ContainerSpec(name="b"))
    f = await provider.create_file(a.id, "/mnt/data/src.bin", BytesUpload(ALL_BYTES))
    copied = await provider.copy_file(a.id, f.id, b.id)
    assert copied.container_id == b.id and copied.id != f.id
    assert copied.path.endswith("src.bin")
    assert await read_all(provider, b.id, copied.id) == ALL_BYTES


async def test_capabilities_are_data(provider: Provider) -> None:
    caps = provider.capabilities
    assert caps.provider in {"local", "openai", "docker"}
    assert "1g" in caps.memory_limits
    assert "disabled" in caps.network_policies
    if not caps.exec:
        assert caps.exec_unavailable_reason
