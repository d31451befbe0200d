"""The one error tree of container-mcp.

Every layer below ``server/`` and ``api/`` raises only these. Providers translate their
backend's failures into this tree in one table each; ``server/errors.py`` maps the tree to
MCP tool errors and ``api/errors.py`` maps it to OpenAI's error envelope, each in one place.

Messages are written for the reader at the end of the chain, usually a model: they say what
happened and what to do next, and never contain secrets. An error is one source for both
surfaces: ``message`` states the facts in words true on either, and ``hint`` (a ``Hint``) says
what to do next once per surface: in tool names on MCP ("Delete one with container_delete"), in
endpoints and fields on the REST API ("Delete one with DELETE /v1/containers/{id}").
``render(exc, surface)`` joins them; each boundary mapping calls it with its own surface.

* ContainerMCPError
  x InvalidRequest               bad input: nothing was changed
    - InvalidPath                a file path that is not a plain path under /mnt/data
    - InvalidId                  a malformed container or file id
  x NotFound                     unknown id, or an id owned by another session
    - ContainerNotFound
    - FileNotFound
  x ContainerExpired             the container expired; its files are gone
  x QuotaExceeded                a per-session limit would be exceeded
    - FileTooLarge               one file over the per-file byte limit
    - RateLimited                too many calls per minute
  x Unsupported                  the provider lacks the capability
  x UnsafeConfiguration          the operator's settings would expose the server; refused at start
  x ExecError                    a command could not be run (not: a command that failed)
    - SandboxUnavailable
  x StateUnavailable             the shared ledger (Redis) cannot be reached; nothing was changed
  x ProviderError                the backend failed; carries status and request id
    - ProviderAuthError
    - ProviderRateLimited
    - ProviderUnavailable        5xx, timeouts, dropped connections
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "SURFACES",
    "ContainerExpired",
    "ContainerMCPError",
    "ContainerNotFound",
    "ExecError",
    "FileNotFound",
    "FileTooLarge",
    "Hint",
    "InvalidId",
    "InvalidPath",
    "InvalidRequest",
    "NotFound",
    "ProviderAuthError",
    "ProviderError",
    "ProviderRateLimited",
    "ProviderUnavailable",
    "QuotaExceeded",
    "RateLimited",
    "SandboxUnavailable",
    "StateUnavailable",
    "Surface",
    "UnsafeConfiguration",
    "Unsupported",
    "render",
]

Surface = Literal["mcp", "rest"]
SURFACES: tuple[Surface, ...] = ("mcp", "rest")


@dataclass(frozen=True)
class Hint:
    """What the caller can do next, said for each surface.

    ``mcp`` names tools and their arguments; ``rest`` names endpoints and body or query fields.
    Neither may mention the other surface (``tests/core/test_error_surfaces.py`` checks both).
    """

    mcp: str
    rest: str

    def on(self, surface: Surface) -> str:
        return self.mcp if surface == "mcp" else self.rest


class ContainerMCPError(Exception):
    """Root of every error this package raises on purpose.

    ``message`` is the reader-facing statement of what happened, true on every surface;
    ``hint``, when there is one, says what to do next on each surface (see ``render``).
    ``param`` names the offending argument when there is one (OpenAI's envelope carries it);
    ``code`` is a short machine-readable tag.
    When the error came from a remote backend, ``status`` is its HTTP status and ``request_id``
    its ``x-request-id``, whatever the class (a 404 upstream is still ``ContainerNotFound``).
    """

    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        hint: Hint | None = None,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.param = param
        self.status = status
        self.request_id = request_id
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


def render(exc: ContainerMCPError, surface: Surface) -> str:
    """The full text a caller on ``surface`` reads: the facts, then that surface's hint."""
    if exc.hint is None:
        return exc.message
    return f"{exc.message} {exc.hint.on(surface)}"


class InvalidRequest(ContainerMCPError):
    """The request was malformed or out of range; nothing was changed."""

    code = "invalid_request"


class InvalidPath(InvalidRequest):
    """A file path is not a plain relative path confined to /mnt/data."""

    code = "invalid_path"


class InvalidId(InvalidRequest):
    """A container or file id does not have the expected form."""

    code = "invalid_id"


class NotFound(ContainerMCPError):
    """The object does not exist, or belongs to another session (indistinguishable on purpose)."""

    code = "not_found"


class ContainerNotFound(NotFound):
    def __init__(self, container_id: str) -> None:
        super().__init__(
            f"Container with id '{container_id}' not found.",
            hint=Hint(
                mcp="List your containers with container_list, or create one with container_create.",
                rest="List your containers with GET /v1/containers, or create one with POST /v1/containers.",
            ),
            param="container_id",
        )
        self.container_id = container_id


class FileNotFound(NotFound):
    def __init__(self, container_id: str, file_id: str) -> None:
        super().__init__(
            f"File {file_id} not found on container {container_id}.",
            hint=Hint(
                mcp="List the container's files with file_list.",
                rest=f"List the container's files with GET /v1/containers/{container_id}/files.",
            ),
            param="file_id",
        )
        self.container_id = container_id
        self.file_id = file_id


class ContainerExpired(ContainerMCPError):
    """The container expired after inactivity; its metadata stays, its files are gone."""

    code = "container_expired"

    def __init__(self, container_id: str) -> None:
        super().__init__(
            f"Container is expired: {container_id} was inactive past its expires_after window, "
            "and its files were discarded. An expired container cannot be reactivated.",
            hint=Hint(
                mcp="Create a new one with container_create and upload the files again.",
                rest="Create a new one with POST /v1/containers and upload the files again.",
            ),
            param="container_id",
        )
        self.container_id = container_id


class QuotaExceeded(ContainerMCPError):
    """A per-session limit would be exceeded; nothing was changed.

    ``limit_name`` is the setting that holds the limit (e.g. ``CONTAINER_MCP_MAX_CONTAINERS``).
    """

    code = "quota_exceeded"

    def __init__(self, message: str, *, limit_name: str, limit: int, used: int, hint: Hint | None = None) -> None:
        super().__init__(message, hint=hint)
        self.limit_name = limit_name
        self.limit = limit
        self.used = used


class FileTooLarge(QuotaExceeded):
    code = "file_too_large"

    @classmethod
    def over(cls, limit: int, size: int | None = None, *, what: str = "") -> FileTooLarge:
        """The error for content over the per-file ``limit``: ``size`` bytes, or (None) "more than".

        ``what`` names the content when it is not plainly "the file" (e.g. "the request body").
        """
        amount = f"{size} bytes" if size is not None else f"more than {limit} bytes"
        subject = f"{what} is " if what else ""
        return cls(
            f"File too large: {subject}{amount}; the limit is {limit} bytes per file. Split the file, or ask the "
            "operator to raise CONTAINER_MCP_MAX_FILE_BYTES.",
            limit_name="CONTAINER_MCP_MAX_FILE_BYTES",
            limit=limit,
            used=size if size is not None else limit + 1,
        )


class RateLimited(QuotaExceeded):
    """Too many calls in the current minute; ``retry_after`` is in seconds."""

    code = "rate_limited"

    def __init__(self, message: str, *, limit_name: str, limit: int, used: int, retry_after: float) -> None:
        super().__init__(message, limit_name=limit_name, limit=limit, used=used)
        self.retry_after = retry_after


class UnsafeConfiguration(ContainerMCPError):
    """The server was told to start in a way that would expose it (e.g. an unauthenticated network
    listener). Raised before anything is opened; the CLI prints it and exits with status 2."""

    code = "unsafe_configuration"


class Unsupported(ContainerMCPError):
    """The provider does not offer this operation (see its capabilities)."""

    code = "unsupported"


class ExecError(ContainerMCPError):
    """A command could not be started or supervised. A command that exits non-zero is not an error."""

    code = "exec_error"


class SandboxUnavailable(ExecError):
    code = "sandbox_unavailable"


class StateUnavailable(ContainerMCPError):
    """The ledger that holds ownership and quotas (Redis, ``CONTAINER_MCP_STATE_URL``) cannot be
    reached. The call was refused before it changed anything it could not account for; retrying
    once the store is back is safe."""

    code = "state_unavailable"


class ProviderError(ContainerMCPError):
    """The backend failed. ``status`` is the upstream HTTP status (None for transport failures)."""

    code = "provider_error"


class ProviderAuthError(ProviderError):
    code = "provider_auth_error"


class ProviderRateLimited(ProviderError):
    """The backend rate-limited us; ``retry_after`` is its advice in seconds, when it gave one."""

    code = "provider_rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ProviderUnavailable(ProviderError):
    code = "provider_unavailable"
