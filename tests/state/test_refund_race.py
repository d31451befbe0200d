"""A change approved and then not made is refunded while its container is still held: released
after, a recount another process made in between (under the lock, from what is stored) was
undone by the refund, and the counters stayed one change short of what is stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from container_mcp.ledger.base import Limits
from container_mcp.ledger.sqlite import SqliteLedger
from container_mcp.models import ContainerSpec, ListParams
from container_mcp.providers.local import LocalProvider
from container_mcp.service import ContainerService
from container_mcp.uploads import BytesUpload

pytestmark = pytest.mark.anyio

LIMITS = Limits(
    max_containers=3, max_files_per_container=9, max_file_bytes=100, max_session_bytes=1000, max_calls_per_minute=99
)


async def test_an_upload_cancelled_after_its_charge_is_refunded_before_the_container_is_let_go(
    tmp_path: Path,
) -> None:
    ledger = SqliteLedger(tmp_path / "s.sqlite3")
    try:
        async with LocalProvider(tmp_path / "local") as provider:
            provider.attach_usage_sink(ledger.set_usage, ledger.set_files)
            service = ContainerService(provider, ledger, LIMITS)
            box = await service.create_container("s", ContainerSpec(name="a"))
            await service.create_file("s", box.id, "kept.txt", BytesUpload(b"k" * 10))
            charge, release = ledger.charge, ledger.release
            scope = anyio.CancelScope()

            async def charge_then_hang_up(*args: Any) -> None:
                await charge(*args)
                scope.cancel()  # the client goes away once the upload was charged

            async def release_after_a_peers_recount(*args: Any) -> None:
                await provider.recount()  # another process's reaper, whenever no one holds the container
                await release(*args)

            ledger.charge = charge_then_hang_up  # type: ignore[method-assign,assignment]
            ledger.release = release_after_a_peers_recount  # type: ignore[method-assign,assignment]
            with scope:
                await service.create_file("s", box.id, "new.txt", BytesUpload(b"n" * 5))
            ledger.charge, ledger.release = charge, release  # type: ignore[method-assign]
            usage = await service.usage("s")
            listed = (await service.list_files("s", box.id, ListParams())).data
            assert [f.path for f in listed] == ["/mnt/data/kept.txt"]
            assert (usage.files, usage.stored_bytes.used) == (1, 10)
    finally:
        await ledger.aclose()
