"""Assembles a running ContainerService from Settings: provider, ledger, limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread

from .clock import Clock, system_clock
from .ledger.base import Ledger, Limits
from .ledger.redis import RedisLedger
from .ledger.sqlite import SqliteLedger
from .private import secure_data_dir
from .providers.docker import DockerProvider
from .providers.local import LocalProvider
from .providers.registry import create_provider
from .service import ContainerService
from .settings import Settings

__all__ = ["limits_from", "open_service"]


def limits_from(settings: Settings) -> Limits:
    return Limits(
        max_containers=settings.max_containers,
        max_files_per_container=settings.max_files_per_container,
        max_file_bytes=settings.max_file_bytes,
        max_session_bytes=settings.max_session_bytes,
        max_calls_per_minute=settings.max_calls_per_minute,
    )


@asynccontextmanager
async def open_service(settings: Settings, *, clock: Clock = system_clock) -> AsyncIterator[ContainerService]:
    """The process's one ContainerService; the provider is entered and closed with it.

    Session state (ownership, quota counters, the rate limit: the ledger) lives in
    ``<data_dir>/sessions-<provider>.sqlite3``, so a restarted server keeps who owns what, or with
    ``state_url`` in that Redis, shared by every process on every host using it. The data dir is
    made private first (``secure_data_dir``). With the local and docker providers, the per-container
    counters are recomputed from what is really stored at start, and after any repair of a
    container a crashed process left half-done.
    """
    await anyio.to_thread.run_sync(secure_data_dir, settings.data_dir)
    ledger: Ledger
    if settings.state_url is not None:
        ledger = await RedisLedger.open(settings.state_url.get_secret_value())
    else:
        ledger = SqliteLedger(settings.data_dir / f"sessions-{settings.provider}.sqlite3")
    try:
        async with create_provider(settings, clock) as provider:
            if isinstance(provider, LocalProvider | DockerProvider):
                # Counters follow the containers' real contents after any crash (see local.py).
                provider.attach_usage_sink(ledger.set_usage, ledger.set_files)
                await provider.recount()
            yield ContainerService(provider, ledger, limits_from(settings), egress=settings.egress_rules(), clock=clock)
    finally:
        await ledger.aclose()
