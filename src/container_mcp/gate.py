"""The gate every operation passes: the rate limit, ownership and quotas, over one ``Ledger``.

``ContainerService`` opens ``Gate.container`` once per operation on a container::

    async with gate.container(owner, container_id) as charges:
        await provider.create_file(..., approve=charges.approve)

On entry the call is counted against the per-minute budget and ownership is checked (an id the
caller did not create answers ``ContainerNotFound``, exactly as an id that does not exist, so
callers learn nothing about each other). ``charges.approve`` checks and charges a change's files
and bytes in one ledger transaction before the provider makes it visible. If the block raises,
whatever was charged is released, and an expiry or disappearance the provider reported is
written to the ledger, so the views (``Catalog``) know at once without asking; if it succeeds,
the container's activity time is recorded (``Catalog.used``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio

from . import audit
from .clock import Clock
from .errors import ContainerNotFound, FileTooLarge, Hint, InvalidId, QuotaExceeded
from .ledger.base import Ledger, Limits, OwnedContainer
from .providers.base import FileChanges, Refund

if TYPE_CHECKING:
    from .catalog import Catalog

__all__ = ["Charges", "Gate", "check_id"]

_ID_RES = {"container": re.compile(r"cntr_[A-Za-z0-9_\-]{1,59}"), "file": re.compile(r"cfile_[A-Za-z0-9_\-]{1,58}")}


def check_id(value: str, kind: str) -> str:
    """``value`` if it is shaped like a ``kind`` ('container' or 'file') id; else ``InvalidId``."""
    if not isinstance(value, str) or not _ID_RES[kind].fullmatch(value):
        prefix = "cntr_" if kind == "container" else "cfile_"
        route = "/v1/containers" if kind == "container" else "/v1/containers/{container_id}/files"
        raise InvalidId(
            f"Invalid {kind} id {str(value)[:80]!r}: {kind} ids look like '{prefix}' followed by hex characters.",
            hint=Hint(
                mcp=f"Copy the id from the {kind}_list or {kind}_create result.",
                rest=f"Copy the id from the response of GET or POST {route}.",
            ),
            param=f"{kind}_id",
        )
    return value


class Charges:
    """What one operation on a container charged; ``approve`` is the provider's ``ApproveChanges``."""

    def __init__(self, gate: Gate, owner: str, container_id: str, row: OwnedContainer | None = None) -> None:
        self._gate = gate
        self._owner = owner
        self.container_id = container_id
        self.row = row
        """The container's ledger row as the gate found it (None within a create)."""
        self.approved: list[FileChanges] = []
        self.fresh = False
        """Set by an operation that recorded the container as the provider just returned it (its
        activity then needs no recording of its own)."""

    @property
    def replaced(self) -> bool:
        """Whether an approved change replaced an existing file."""
        return any(change.changed for change in self.approved)

    async def approve(self, changes: FileChanges) -> Refund:
        """Check ``changes`` against the per-file, per-container and per-session limits and charge them.

        Over a limit, raises ``FileTooLarge`` or ``QuotaExceeded`` and charges nothing. Returns
        the ``Refund`` of this charge (released at most once, by it or by the rollback). Bytes of
        containers that expired since the ledger last heard count until reconciled, so a refusal
        is retried once after reconciling.
        """
        limits = self._gate.limits
        if changes.largest_file_bytes > limits.max_file_bytes:
            raise FileTooLarge.over(limits.max_file_bytes, changes.largest_file_bytes)
        ledger = self._gate.ledger
        try:
            await ledger.charge(self._owner, self.container_id, changes.files_delta, changes.bytes_delta, limits)
        except QuotaExceeded:
            await self._gate.catalog.reconcile(self._owner, skip=self.container_id)
            await ledger.charge(self._owner, self.container_id, changes.files_delta, changes.bytes_delta, limits)
        self.approved.append(changes)

        async def refund() -> None:
            if any(c is changes for c in self.approved):
                self.approved = [c for c in self.approved if c is not changes]
                await ledger.release(self.container_id, changes.files_delta, changes.bytes_delta)

        return refund

    async def rollback(self) -> None:
        for changes in self.approved:
            await self._gate.ledger.release(self.container_id, changes.files_delta, changes.bytes_delta)
        self.approved.clear()


class Gate:
    """Rate limit, ownership and quotas of every operation. See the module docstring."""

    def __init__(self, ledger: Ledger, limits: Limits, clock: Clock, catalog: Catalog) -> None:
        self.ledger = ledger
        self.limits = limits
        self._clock = clock
        self.catalog = catalog
        """Told what a failed operation's error says about its container, asked to reconcile."""

    async def call(self, owner: str) -> None:
        """Count one call; ``RateLimited`` when the per-minute budget is spent."""
        await self.ledger.hit(owner, self._clock(), self.limits)

    async def own(self, owner: str, container_id: str) -> OwnedContainer:
        """The ledger's row of ``container_id`` if ``owner`` owns it; ``ContainerNotFound`` otherwise."""
        check_id(container_id, "container")
        audit.note_container(container_id)
        row = await self.ledger.owned(owner, container_id)
        if row is None:
            raise ContainerNotFound(container_id)
        return row

    @asynccontextmanager
    async def container(self, owner: str, container_id: str) -> AsyncIterator[Charges]:
        """One operation by ``owner`` on its container ``container_id`` (see the module docstring)."""
        await self.call(owner)
        row = await self.own(owner, container_id)
        async with self.charging(owner, container_id, row) as charges:
            yield charges
        if not charges.fresh:
            await self.catalog.used(row, self._clock())

    @asynccontextmanager
    async def charging(
        self, owner: str, container_id: str, row: OwnedContainer | None = None
    ) -> AsyncIterator[Charges]:
        """The charges of a change to ``container_id``, released if the block raises."""
        charges = Charges(self, owner, container_id, row)
        try:
            yield charges
        except BaseException as exc:
            with anyio.CancelScope(shield=True):  # a cancelled operation must not leave charges behind
                await charges.rollback()
                await self.catalog.note_failure(container_id, exc)
            raise

    async def reserve(self, owner: str, name: str) -> str:
        """Hold one of the owner's live-container slots; ``QuotaExceeded`` at the limit.

        A refusal is retried once after reconciling: some containers may have expired unheard.
        """
        try:
            return await self.ledger.reserve(owner, name, self._clock(), self.limits)
        except QuotaExceeded:
            await self.catalog.reconcile(owner)
            return await self.ledger.reserve(owner, name, self._clock(), self.limits)
