"""Background processes of one caller's container: the service's side (``ContainerService.processes``).

The provider runs them (``ProcessProvider``); here they are tied to the session: ownership was
checked when this view was made, the per-session limit is checked on start, and a process's file
changes count against the session's quotas when it exits, exactly as a foreground command's do
(the same approval; on refusal, or if it is killed, nothing is charged). Subscribers hear of the
files it committed.
"""

from __future__ import annotations

import signal as signals
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Literal, TypeVar

import anyio

from .errors import ContainerExpired, ContainerNotFound, InvalidRequest, QuotaExceeded, Unsupported
from .gate import Charges
from .providers.base import ExecRequest, ExecResult, ProcessInfo, ProcessOutput, ProcessProvider

if TYPE_CHECKING:
    from .service import ContainerService

__all__ = ["MAX_STDIN_WRITE_BYTES", "SIGNALS", "Processes"]

T = TypeVar("T")

SIGNALS = {name: int(getattr(signals, f"SIG{name}")) for name in ("TERM", "INT", "HUP", "KILL", "QUIT", "USR1", "USR2")}
"""The signals a caller may send, by name."""

MAX_STDIN_WRITE_BYTES = 1 << 20
"""Bytes of stdin one start or write may bring: what a process has not read yet waits in the
server's memory (a few writes deep), so a write is bounded far below what a request may carry."""


def _check_stdin(data: bytes | None) -> None:
    if data is not None and len(data) > MAX_STDIN_WRITE_BYTES:
        raise InvalidRequest(
            f"stdin is {len(data)} bytes; one start or write takes at most {MAX_STDIN_WRITE_BYTES}. Write it in "
            "pieces, or put it in a file under /mnt/data and have the command read that.",
            param="stdin",
        )


class Processes:
    """The background processes of ``container_id``, on behalf of ``owner`` (already checked)."""

    def __init__(self, service: ContainerService, owner: str, container_id: str) -> None:
        provider = service.provider
        caps = provider.capabilities
        if not caps.processes or not isinstance(provider, ProcessProvider):
            raise Unsupported(f"The {caps.provider} provider cannot run background processes.")
        self._service = service
        self._provider: ProcessProvider = provider
        self._owner = owner
        self._container_id = container_id
        self._per_session = caps.processes_per_session

    async def start(self, request: ExecRequest) -> ProcessInfo:
        """Start ``request`` in the background; its file changes are charged when it exits."""
        service, owner, cid = self._service, self._owner, self._container_id
        _check_stdin(request.stdin)
        if self._per_session is not None:
            live = await service.catalog.live_ids(owner)
            if self._provider.running_processes(live) >= self._per_session:
                raise QuotaExceeded(
                    f"This session already runs {self._per_session} background processes, the limit. Wait for one "
                    "to end or signal it, or ask the operator to raise CONTAINER_MCP_EXEC_MAX_PROCESSES_PER_SESSION.",
                    limit_name="CONTAINER_MCP_EXEC_MAX_PROCESSES_PER_SESSION",
                    limit=self._per_session,
                    used=self._per_session,
                )

        # The charges outlive this call: they are approved when the process exits, and released
        # then if the exit commits nothing.
        charges = Charges(service.gate, owner, cid)
        request = request.model_copy(update={"max_home_growth_bytes": await service.home_room(owner)})

        async def on_exit(result: ExecResult | None, error: BaseException | None) -> None:
            with anyio.CancelScope(shield=True):  # an exit must settle its charges even when cancelled
                if result is None:
                    await charges.rollback()
                    if error is not None:
                        await service.catalog.note_failure(cid, error)
                    return
                # (No audit note: the call that started it was recorded when it returned.)
                await service.ran(owner, cid, result)

        return await self._guarded(self._provider.start_process(cid, request, approve=charges.approve, on_exit=on_exit))

    async def list(self) -> list[ProcessInfo]:
        return await self._guarded(self._provider.list_processes(self._container_id))

    async def read(
        self, process_id: str, *, stream: Literal["stdout", "stderr"], offset: int, max_bytes: int
    ) -> ProcessOutput:
        if offset < 0:
            raise InvalidRequest("offset must be 0 or more (a previous read's next_offset).", param="offset")
        return await self._guarded(
            self._provider.read_process(
                self._container_id, process_id, stream=stream, offset=offset, max_bytes=max_bytes
            )
        )

    async def write(self, process_id: str, data: bytes, *, close: bool) -> ProcessInfo:
        _check_stdin(data)
        return await self._guarded(self._provider.write_process(self._container_id, process_id, data, close=close))

    async def signal(self, process_id: str, name: str) -> ProcessInfo:
        number = SIGNALS.get(name)
        if number is None:
            raise InvalidRequest(f"signal must be one of {', '.join(SIGNALS)}; got {name[:20]!r}.", param="signal")
        return await self._guarded(self._provider.signal_process(self._container_id, process_id, number))

    async def wait(self, process_id: str, timeout_s: float) -> ProcessInfo:
        return await self._guarded(self._provider.wait_process(self._container_id, process_id, timeout_s))

    async def _guarded(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except (ContainerExpired, ContainerNotFound) as exc:
            await self._service.catalog.note_failure(self._container_id, exc)
            raise
