"""Configuration, read once at the edge.

Every field can be set by a ``CONTAINER_MCP_*`` environment variable (a few OpenAI ones also by
their usual names) or by the matching command-line flag. Only ``cli.py`` builds ``Settings`` from
the environment; everything else takes the values it needs as arguments, and tests build
``Settings(...)`` from keyword arguments.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["MiB", "Settings", "default_data_dir"]

MiB = 1 << 20


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("container-mcp", appauthor=False))


class Settings(BaseSettings):
    """All of container-mcp's settings; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="CONTAINER_MCP_",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    provider: Literal["local", "openai"] = Field(
        "local", description="Backend: 'local' (embedded sandbox, no account) or 'openai' (hosted API)."
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where the local provider keeps its registry and files, and where session state lives.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "WARNING", description="Log level for stderr logs (DEBUG, INFO, WARNING, ...)."
    )

    # --- quotas, per session -------------------------------------------------------------
    max_containers: int = Field(10, ge=1, description="Live (not expired) containers per session.")
    max_files_per_container: int = Field(1000, ge=1, description="Files per container.")
    max_file_bytes: int = Field(100 * MiB, ge=1, description="Bytes of one file.")
    max_session_bytes: int = Field(1024 * MiB, ge=1, description="Bytes stored per session, all containers.")
    max_calls_per_minute: int = Field(600, ge=1, description="Tool calls per session per minute.")

    # --- MCP server ------------------------------------------------------------------------
    allow_paths: Annotated[list[Path], NoDecode] = Field(
        default_factory=list,
        description="Host directories file_create may read source_path from; a stdio client's roots can "
        "only narrow them (comma-separated in the environment). None by default.",
    )
    stdio_session_key: str = Field(
        "local",
        description="Session key of the stdio transport. stdio has one client, the local user, so the key "
        "is stable: a restarted server sees the containers it created before.",
    )
    read_chunk_bytes: int = Field(64 * 1024, ge=1, description="Default max_bytes of file_read.")
    resource_page_size: int = Field(100, ge=1, le=1000, description="Resources per resources/list page.")
    reaper_interval_s: float = Field(30.0, gt=0, description="Seconds between expiry sweeps (local).")

    # --- exec (local provider) -------------------------------------------------------------
    exec_default_timeout_s: float = Field(
        45.0,
        gt=0,
        description="container_exec timeout when none is given; below the 60 s request timeout common MCP "
        "clients use, so the caller sees our timeout error rather than its own.",
    )
    exec_max_timeout_s: float = Field(600.0, gt=0, description="Largest timeout_s container_exec accepts.")
    exec_max_output_bytes: int = Field(64 * 1024, ge=1024, description="Bytes kept of stdout and stderr each.")
    exec_pids_limit: int = Field(256, ge=8, description="Max processes/threads a command may have at once.")
    exec_cpu_seconds: int = Field(600, ge=1, description="CPU seconds a command may use.")

    # --- OpenAI provider -------------------------------------------------------------------
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("CONTAINER_MCP_OPENAI_API_KEY", "OPENAI_API_KEY", "openai_api_key"),
        description="API key of the OpenAI-compatible backend (never logged).",
    )
    openai_base_url: str = Field(
        "https://api.openai.com/v1",
        validation_alias=AliasChoices("CONTAINER_MCP_OPENAI_BASE_URL", "OPENAI_BASE_URL", "openai_base_url"),
        description="Base URL of the OpenAI-compatible backend (OpenAI, a LiteLLM proxy, container-mcp api).",
    )
    openai_organization: str | None = Field(
        None,
        validation_alias=AliasChoices("CONTAINER_MCP_OPENAI_ORGANIZATION", "OPENAI_ORG_ID", "openai_organization"),
        description="Sent as OpenAI-Organization.",
    )
    openai_project: str | None = Field(
        None,
        validation_alias=AliasChoices("CONTAINER_MCP_OPENAI_PROJECT", "OPENAI_PROJECT_ID", "openai_project"),
        description="Sent as OpenAI-Project.",
    )
    openai_extra_headers: dict[str, str] = Field(
        default_factory=dict,
        description='Extra headers for every upstream request, as JSON (e.g. {"custom-llm-provider": "openai"}).',
    )
    openai_connect_timeout_s: float = Field(5.0, gt=0, description="Upstream connect timeout.")
    openai_read_timeout_s: float = Field(600.0, gt=0, description="Upstream read timeout.")
    openai_max_retries: int = Field(2, ge=0, le=10, description="Retries of retryable upstream failures.")

    # --- REST API (`container-mcp api`) ----------------------------------------------------
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Bearer tokens accepted by `container-mcp api` (comma-separated); each key is an owner.",
    )
    api_keys_file: Path | None = Field(
        None, description="File with one accepted API key per line (# comments allowed)."
    )

    @field_validator("allow_paths", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, str):
            return [p for p in (s.strip() for s in value.split(",")) if p]
        return value

    @field_validator("allow_paths")
    @classmethod
    def _resolve_paths(cls, value: list[Path]) -> list[Path]:
        # Resolved once, at start: an allowed directory is the one it named then. A directory
        # swapped for a symlink later (by another local user who owns it) is not followed.
        return [Path(os.path.realpath(p)) for p in value]

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k for k in (s.strip() for s in value.split(",")) if k]
        return value

    def all_api_keys(self) -> list[str]:
        """Keys from ``api_keys`` and ``api_keys_file``, deduplicated, order kept."""
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return list(dict.fromkeys(keys))
