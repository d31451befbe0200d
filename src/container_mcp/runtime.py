"""Assembles a running ContainerService from Settings: provider, session store, limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread

from .clock import Clock, system_clock
from .private import secure_data_dir
from .providers.docker import DockerProvider
from .providers.local import LocalProvider
from .providers.registry import create_provider
from .service import ContainerService
from .settings import Settings
from .store import Limits, SqliteSessionStore

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

    Session state (ownership, quota counters) lives in ``<data_dir>/sessions-<provider>.sqlite3``, so a
    restarted server keeps who owns what. The data dir is made private first (``secure_data_dir``).
    With the local and docker providers, the store's per-container counters are recomputed from what is really
    stored at start, and after any repair of a container a crashed process left half-done.
    """
    await anyio.to_thread.run_sync(secure_data_dir, settings.data_dir)
    store = SqliteSessionStore(settings.data_dir / f"sessions-{settings.provider}.sqlite3")
    try:
        async with create_provider(settings, clock) as provider:
            if isinstance(provider, LocalProvider | DockerProvider):
                # Counters follow the containers' real contents after any crash (see local.py).
                provider.attach_usage_sink(store.set_usage)
                await provider.recount()
            yield ContainerService(provider, store, limits_from(settings), egress=settings.egress_rules(), clock=clock)
    finally:
        store.close()
