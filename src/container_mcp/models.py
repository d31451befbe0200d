"""Provider-neutral models, wire-compatible with OpenAI's Containers API.

Every provider returns these; tools and the REST API serialise them unchanged, so an agent sees
the same objects on every backend. Field names and values follow OpenAI's (see
``openai-containers-api.md`` §2); the few extra fields (``expires_at``, ``mime_type``,
``sha256``) are additions an OpenAI client ignores.
"""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "MEMORY_LIMITS",
    "UNSUPPORTED_CREATE_FIELDS",
    "Container",
    "ContainerDeleted",
    "ContainerFile",
    "ContainerSpec",
    "ExpiresAfter",
    "FileDeleted",
    "ListParams",
    "MemoryLimit",
    "NetworkPolicy",
    "Order",
    "Page",
]

MemoryLimit = Literal["1g", "4g", "16g", "64g"]
MEMORY_LIMITS: dict[str, int] = {"1g": 1 << 30, "4g": 4 << 30, "16g": 16 << 30, "64g": 64 << 30}
"""Memory tiers in bytes, as OpenAI names them."""

UNSUPPORTED_CREATE_FIELDS: dict[str, str] = {
    "skills": "this server cannot attach skills to a container",
    "network_policy.domain_secrets": "this server cannot inject secrets into a container's outbound requests",
}
"""Fields of OpenAI's create-container body that no provider here honours, and why. A request that
carries one is refused (the REST API answers 400 naming the field) rather than served without it."""

Order = Literal["asc", "desc"]
ContainerStatus = Literal["running", "expired"]
FileSource = Literal["user", "assistant"]

DEFAULT_EXPIRY_MINUTES = 20
MIN_EXPIRY_MINUTES = 1
MAX_EXPIRY_MINUTES = 1440


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class ExpiresAfter(_Model):
    """Inactivity window: the container expires ``minutes`` after ``last_active_at``."""

    anchor: Literal["last_active_at"] = "last_active_at"
    minutes: int = Field(
        DEFAULT_EXPIRY_MINUTES,
        ge=MIN_EXPIRY_MINUTES,
        le=MAX_EXPIRY_MINUTES,
        description="Minutes of inactivity before the container expires (1-1440).",
    )


class NetworkPolicy(_Model):
    """Outbound network access from commands run in the container."""

    type: Literal["disabled", "allowlist"] = "disabled"
    allowed_domains: list[str] | None = Field(
        None,
        exclude_if=lambda v: v is None,
        description="With type 'allowlist': host names commands may reach (with their subdomains; '*.' only "
        "as the leading label) or public IP addresses; no URL, path or port.",
    )

    @model_validator(mode="after")
    def _check_domains(self) -> NetworkPolicy:
        if self.type == "allowlist" and not self.allowed_domains:
            raise ValueError("network_policy of type 'allowlist' needs at least one allowed domain")
        if self.type == "disabled" and self.allowed_domains:
            raise ValueError("network_policy of type 'disabled' takes no allowed_domains")
        return self


class Container(_Model):
    """A container, as OpenAI's ``container`` object."""

    id: str = Field(description="'cntr_' followed by 48 hex characters.")
    object: Literal["container"] = "container"
    name: str
    created_at: int = Field(description="Unix seconds.")
    status: ContainerStatus = Field(description="'running', or 'expired' after inactivity.")
    expires_after: ExpiresAfter = Field(default_factory=ExpiresAfter)
    last_active_at: int | None = Field(None, description="Unix seconds of the last activity.")
    memory_limit: MemoryLimit | None = "1g"
    network_policy: NetworkPolicy | None = None
    expires_at: int | None = Field(
        None,
        description="Unix seconds when the container expires unless used again (not an OpenAI field).",
    )


class ContainerFile(_Model):
    """A file in a container, as OpenAI's ``container.file`` object."""

    id: str = Field(description="'cfile_' followed by 32 hex characters.")
    object: Literal["container.file"] = "container.file"
    container_id: str
    created_at: int = Field(description="Unix seconds.")
    bytes: int | None = Field(description="Size in bytes; null when the backend did not say.")
    path: str = Field(description="Absolute path under /mnt/data.")
    source: FileSource | str = Field(description="'user' for uploads, 'assistant' for files commands wrote.")
    mime_type: str | None = Field(None, description="Guessed from the file name (not an OpenAI field).")
    sha256: str | None = Field(None, description="Hex SHA-256 of the content (not an OpenAI field).")


T = TypeVar("T", Container, ContainerFile)


class Page(_Model, Generic[T]):
    """One page of a cursor-paged list, as OpenAI's ``list`` object.

    ``first_id``/``last_id`` are the ids of the first and last item, null when ``data`` is empty.
    Pass ``last_id`` as ``after`` to get the next page while ``has_more`` is true.
    """

    object: Literal["list"] = "list"
    data: list[T]
    first_id: str | None
    last_id: str | None
    has_more: bool

    @classmethod
    def of(cls, data: list[T], has_more: bool) -> Page[T]:
        return cls(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=has_more,
        )


class ContainerDeleted(_Model):
    id: str
    object: Literal["container.deleted"] = "container.deleted"
    deleted: bool = True


class FileDeleted(_Model):
    id: str
    object: Literal["container.file.deleted"] = "container.file.deleted"
    deleted: bool = True


class ContainerSpec(_Model):
    """What ``create_container`` needs.

    ``file_ids`` here are ids the backend resolves itself (OpenAI's ``file-…`` ids); copies of
    ``cfile_`` ids from the caller's own containers are resolved by the service.
    """

    name: str = Field(min_length=1, max_length=256)
    expires_after: ExpiresAfter = Field(default_factory=ExpiresAfter)
    memory_limit: MemoryLimit = "1g"
    network_policy: NetworkPolicy = Field(default_factory=NetworkPolicy)
    file_ids: list[str] = Field(default_factory=list)
    image: str | None = Field(
        None, description="Image of the container (docker provider: one of capabilities.images); None: the default."
    )


class ListParams(_Model):
    """Cursor paging, exactly as OpenAI's: ``after`` is an id, exclusive."""

    limit: int = Field(20, ge=1, le=100)
    order: Order = "desc"
    after: str | None = None
    name: str | None = None
    path_prefix: str | None = None
    """Files only: those whose path starts with this (``/mnt/data/out/``); not an OpenAI parameter,
    offered where ``Capabilities.file_path_prefix``."""
