"""Configuration, read once at the edge.

Every field can be set by a ``CONTAINER_MCP_*`` environment variable (a few OpenAI ones also by
their usual names) or by the matching command-line flag. Only ``cli.py`` builds ``Settings`` from
the environment; everything else takes the values it needs as arguments, and tests build
``Settings.isolated(...)`` from keyword arguments, which reads no environment variable at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from .netpolicy import DEFAULT_PORTS, EgressRules

if TYPE_CHECKING:
    from .providers.docker_transport import EngineOptions

__all__ = ["ASYMMETRIC_ALGORITHMS", "MiB", "Settings", "default_data_dir"]

MiB = 1 << 20


def _check_key(key: str, where: str) -> None:
    """Refuse (``ValueError``, naming ``where``, never the key) a key no client could send as a bearer token."""
    if not key or not all("!" <= c <= "~" for c in key):
        raise ValueError(
            f"{where} is empty or has a character other than visible ASCII (a space, a control character, a "
            "non-ASCII letter): no client can send it in an Authorization header, so it could never match. "
            "Use random keys, e.g. openssl rand -hex 24."
        )


ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
"""JWS algorithms OAuth mode may accept: signatures checked with the issuer's public keys. HMAC
ones are excluded: with them a published public key would double as the shared secret."""


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("container-mcp", appauthor=False))


class Settings(BaseSettings):
    """All of container-mcp's settings; see the README's configuration table."""

    model_config = SettingsConfigDict(
        env_prefix="CONTAINER_MCP_",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
        # An error must not print what was given: API keys, the OpenAI key and extra headers are secrets.
        hide_input_in_errors=True,
    )

    provider: Literal["local", "openai", "docker"] = Field(
        "local",
        description="Backend: 'local' (embedded sandbox, no account), 'openai' (hosted API) or 'docker' "
        "(a Docker-compatible engine at DOCKER_HOST).",
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where the local provider keeps its registry and files, and where session state lives.",
    )
    state_url: SecretStr | None = Field(
        None,
        description="Where ownership, quota counters and the rate limit live when several hosts share "
        "them: redis://[:password@]host:port/db, rediss://... (TLS) or unix:///path. Unset: SQLite in the "
        "data dir, shared by every process on this host. Valid only with provider 'openai' (local "
        "containers live on one host). A secret when it holds a password.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "WARNING", description="Log level for stderr logs (DEBUG, INFO, WARNING, ...)."
    )
    audit: str = Field(
        "off",
        description="Where the audit records go, one JSON line per tool call, resource read and REST request: "
        "'off', 'stderr', or an absolute file path outside the data dir (appended to; created 0600).",
    )

    # --- quotas, per session -------------------------------------------------------------
    max_containers: int = Field(10, ge=1, description="Live (not expired) containers per session.")
    max_files_per_container: int = Field(100_000, ge=1, description="Files per container.")
    max_file_bytes: int = Field(100 * MiB, ge=1, description="Bytes of one file.")
    max_session_bytes: int = Field(1024 * MiB, ge=1, description="Bytes stored per session, all containers.")
    max_calls_per_minute: int = Field(600, ge=1, description="Tool calls per session per minute.")

    # --- MCP server ------------------------------------------------------------------------
    max_sessions_per_owner: int = Field(
        32,
        ge=1,
        description="Open MCP sessions (handshake-era streamable HTTP, SSE streams) one token owner may hold "
        "at once; without auth (loopback only) there is no limit per owner.",
    )
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
    exec_max_output_bytes: int = Field(
        32 * 1024, ge=1024, description="Bytes kept of stdout and stderr together (head and tail)."
    )
    exec_home_max_bytes: int = Field(
        1024 * MiB, ge=1 * MiB, description="Bytes a container's persistent $HOME may hold (counted in stored bytes)."
    )
    exec_home_max_files: int = Field(100_000, ge=100, description="Entries a container's persistent $HOME may hold.")
    exec_max_processes_per_container: int = Field(4, ge=1, description="Background processes per container.")
    exec_max_processes_per_session: int = Field(8, ge=1, description="Background processes per session.")
    exec_process_max_lifetime_s: float = Field(
        3600.0, gt=0, description="Seconds a background process may run before it is killed."
    )
    exec_process_max_output_bytes: int = Field(
        8 * MiB, ge=1024, description="Bytes kept of a background process's stdout and of its stderr (on disk)."
    )
    exec_pids_limit: int = Field(256, ge=8, description="Max processes/threads a command may have at once.")
    exec_cpu_seconds: int = Field(600, ge=1, description="CPU seconds a command may use.")

    # --- egress of allowlist containers (operator only: no caller can change these) ----------
    egress_allow_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Destinations opened although not public (comma-separated in the environment): CIDRs or "
        "addresses (e.g. 10.20.0.0/16, a company mirror's network) that commands may then reach, and host names "
        "(mirror.corp.example, *.corp.example) that may resolve to private addresses. Callers still have to list "
        "them in allowed_domains. None by default.",
    )
    egress_ports: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_PORTS),
        description="Destination ports allowlist containers may reach: numbers or ranges like 8000-8100 "
        "(comma-separated in the environment). Default 80,443.",
    )

    # --- the local sandbox when the server runs as root ------------------------------------
    sandbox_uid: int = Field(
        65534,
        ge=1,
        le=2**32 - 2,
        description="Host uid commands run as when the server runs as root. Reserve it for container-mcp: any "
        "other process running as this uid can read a running command's environment and files and use its "
        "egress proxy. Default 65534 (nobody), which some system daemons share.",
    )
    sandbox_gid: int = Field(65534, ge=1, le=2**32 - 2, description="Host gid commands run as when root.")

    # --- Docker provider -------------------------------------------------------------------
    docker_host: str = Field(
        "unix:///var/run/docker.sock",
        validation_alias=AliasChoices("CONTAINER_MCP_DOCKER_HOST", "DOCKER_HOST", "docker_host"),
        description="Where the Docker Engine API is: unix:///path/to/socket, tcp://host:port or ssh://user@host.",
    )
    docker_tls_verify: bool = Field(
        False,
        validation_alias=AliasChoices("CONTAINER_MCP_DOCKER_TLS_VERIFY", "DOCKER_TLS_VERIFY", "docker_tls_verify"),
        description="tcp:// over TLS, the engine verified against docker_cert_path/ca.pem. As for the docker CLI, "
        "any non-empty value turns it on (even 0).",
    )
    docker_tls: bool = Field(
        False,
        validation_alias=AliasChoices("CONTAINER_MCP_DOCKER_TLS", "DOCKER_TLS", "docker_tls"),
        description="tcp:// over TLS without verifying the engine (warned about). Any non-empty value turns it on.",
    )
    docker_cert_path: Path | None = Field(
        None,
        validation_alias=AliasChoices("CONTAINER_MCP_DOCKER_CERT_PATH", "DOCKER_CERT_PATH", "docker_cert_path"),
        description="Folder of ca.pem, cert.pem and key.pem for TLS (default ~/.docker).",
    )
    docker_ssh_config: Path | None = Field(
        None, description="ssh client config file (ssh -F) for ssh:// engines; by default the user's own."
    )
    docker_image: str = Field(
        "python:3.12-slim", min_length=1, description="Image of new containers when the caller names none."
    )
    docker_images: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Further images callers may choose with container_create's image (comma-separated). None "
        "by default: only docker_image.",
    )
    docker_user: str = Field(
        "1000:1000",
        description="uid:gid commands run as inside Docker containers; '' uses the image's own user (which may "
        "be root, with every capability dropped).",
    )
    docker_cpus: float = Field(1.0, gt=0, le=256, description="CPUs one Docker container may use.")

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
        description="Bearer tokens accepted by every HTTP entry point (comma-separated); each key is an owner.",
    )
    api_keys_file: Path | None = Field(
        None, description="File with one accepted API key per line (# comments allowed)."
    )

    # --- HTTP edge (every HTTP entry point: `container-mcp api`, SSE, streamable HTTP) -----
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host header values accepted beside the loopback names and the bound address "
        "(comma-separated; 'name' or 'name:port', 'name:*' for any port). Name the public hostname here "
        "when serving behind a DNS name.",
    )
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origin header values accepted beside those of the allowed hosts (comma-separated, "
        "e.g. https://app.example.com; 'scheme://name:*' for any port). A request without Origin is not "
        "checked.",
    )
    http_header_timeout_s: float = Field(
        10.0, gt=0, description="Seconds a connection has to send a request's complete headers, then it is closed."
    )
    http_body_idle_timeout_s: float = Field(
        30.0, gt=0, description="Seconds a request body may stall (no bytes while the server waits), then it is closed."
    )
    http_max_connections: int = Field(
        1000,
        ge=1,
        description="Open connections per HTTP server. At the cap, a new connection displaces the oldest one "
        "that has not sent complete headers, else the slowest one sending a body below http_min_body_rate, "
        "else the oldest one of a key holding more than half of them; otherwise it gets a fast 503.",
    )
    http_max_sessions: int = Field(
        10_000,
        ge=2,
        description="Streamable HTTP sessions open at once, all callers together (one ends on the client's DELETE "
        "or after 30 min idle); max_sessions_per_owner bounds one caller's share.",
    )
    http_min_body_rate: float = Field(
        16384.0,
        ge=0,
        description="Bytes per second under which a request body counts as trickled: at the connection cap its "
        "connection may be displaced (measured over the time the server waits for the body, after 1 s).",
    )
    max_inline_bytes_in_flight: int = Field(
        256 * MiB,
        ge=MiB,
        description="Bytes of inline file content (file_create text/base64, and MCP request bodies over 1 MiB) "
        "held at once across the process; beyond it a call waits briefly, then is refused with a retry hint.",
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _host_entries(cls, value: list[str]) -> list[str]:
        # Refused here, not where a server starts, so every entry point refuses the same entries alike.
        from .hosts import OriginPolicy

        OriginPolicy("127.0.0.1", value)
        return value

    # --- OAuth 2.1 resource-server mode (all HTTP entry points) ----------------------------
    oauth_issuer_url: str | None = Field(
        None,
        description="Issuer ('iss') of accepted JWT access tokens; setting it turns OAuth mode on "
        "(with oauth_resource_url and oauth_jwks_url).",
    )
    oauth_resource_url: str | None = Field(
        None,
        description="This server's resource URL, e.g. https://mcp.example.com/mcp: the audience ('aud') a "
        "token must name, and the resource its RFC 9728 metadata publishes.",
    )
    oauth_jwks_url: str | None = Field(
        None, description="Where the issuer publishes its signing keys (JWKS); https, or http on loopback."
    )
    oauth_required_scopes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Scopes every access token must carry (comma-separated)."
    )
    oauth_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["RS256", "PS256", "ES256", "EdDSA"],
        description="JWS algorithms accepted (comma-separated); asymmetric ones only.",
    )
    oauth_leeway_s: float = Field(
        30.0, ge=0, le=300, description="Clock skew allowed on a token's exp and nbf, in seconds."
    )
    oauth_jwks_cache_s: float = Field(
        300.0, gt=0, description="Seconds the issuer's keys are cached; an unknown key id refetches sooner."
    )

    @field_validator(
        "allow_paths",
        "allowed_hosts",
        "docker_images",
        "allowed_origins",
        "api_keys",
        "oauth_required_scopes",
        "oauth_algorithms",
        mode="before",
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [w for w in (s.strip() for s in value.split(",")) if w]
        return value

    @field_validator("docker_tls_verify", "docker_tls", mode="before")
    @classmethod
    def _set_means_on(cls, value: object) -> object:
        # The docker CLI's reading: set to anything but the empty string means on (DOCKER_TLS_VERIFY=0
        # verifies there too), so an environment made for it never gets less security here.
        if isinstance(value, str):
            return value != ""
        return value

    def docker_engine_options(self) -> EngineOptions:
        """How the docker provider reaches a remote engine (TLS files, ssh config)."""
        from .providers.docker_transport import EngineOptions

        return EngineOptions(
            tls_verify=self.docker_tls_verify,
            tls=self.docker_tls,
            cert_path=self.docker_cert_path,
            ssh_config=self.docker_ssh_config,
        )

    @model_validator(mode="after")
    def _docker_host(self) -> Settings:
        # Only the docker provider speaks to it: a DOCKER_HOST (or DOCKER_CERT_PATH) exported for the
        # docker CLI, in a form or state this client refuses, must not stop a server on another provider.
        if self.provider == "docker":
            from .errors import InvalidRequest
            from .providers.docker_transport import check_docker_host

            try:
                check_docker_host(self.docker_host, self.docker_engine_options())
            except InvalidRequest as exc:
                raise ValueError(exc.message) from None
        return self

    @field_validator("audit")
    @classmethod
    def _audit_target(cls, value: str) -> str:
        from .audit import check_audit_target

        return check_audit_target(value)

    @model_validator(mode="after")
    def _audit_outside_data_dir(self) -> Settings:
        if self.audit not in ("off", "stderr"):
            target = Path(os.path.realpath(self.audit))
            if target.is_relative_to(os.path.realpath(self.data_dir)):
                raise ValueError(
                    f"audit file {self.audit} is inside the data dir {self.data_dir}, which holds only the "
                    "server's own entries; put it elsewhere, e.g. /var/log/container-mcp/audit.jsonl"
                )
        return self

    @field_validator("oauth_algorithms")
    @classmethod
    def _asymmetric_only(cls, value: list[str]) -> list[str]:
        unknown = [alg for alg in value if alg not in ASYMMETRIC_ALGORITHMS]
        if unknown or not value:
            raise ValueError(
                "oauth_algorithms accepts only asymmetric JWS algorithms "
                f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))}); got {', '.join(unknown) or 'none'}"
            )
        return value

    @field_validator("api_keys")
    @classmethod
    def _sendable_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        for n, key in enumerate(value, 1):
            _check_key(key.get_secret_value(), f"API key {n}")
        return value

    @field_validator("api_keys_file")
    @classmethod
    def _readable_keys_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"api_keys_file {value} is not a file: create it with one key per line (mode 0600)")
        if value is not None:
            for n, line in enumerate(value.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip() and not line.strip().startswith("#"):
                    _check_key(line.strip(), f"{value} line {n}")
        return value

    @field_validator("oauth_jwks_url")
    @classmethod
    def _jwks_over_tls(cls, value: str | None) -> str | None:
        if value is not None:
            from .auth.oauth import check_jwks_url

            check_jwks_url(value)
        return value

    @field_validator("state_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("state_url must be a Redis URL: redis://host:port/db, rediss://... or unix:///path")
        return value

    @model_validator(mode="after")
    def _state_fits_provider(self) -> Settings:
        if self.state_url is not None and self.provider in ("local", "docker"):
            raise ValueError(
                f"CONTAINER_MCP_STATE_URL (a Redis ledger) is valid only with provider 'openai': {self.provider} "
                "containers are tracked in this host's data dir, so their state must be too. Run several "
                f"{self.provider}-provider processes on one host with the default SQLite ledger (same "
                "--data-dir), or unset CONTAINER_MCP_STATE_URL."
            )
        return self

    @model_validator(mode="after")
    def _oauth_complete(self) -> Settings:
        given = {
            "oauth_issuer_url": self.oauth_issuer_url,
            "oauth_resource_url": self.oauth_resource_url,
            "oauth_jwks_url": self.oauth_jwks_url,
        }
        missing = [name for name, value in given.items() if not value]
        if len(missing) not in (0, len(given)):
            raise ValueError(
                f"OAuth mode needs {', '.join(given)} together; missing: {', '.join(missing)} "
                "(set them as CONTAINER_MCP_<NAME>)"
            )
        return self

    @property
    def oauth_enabled(self) -> bool:
        """Whether JWT access tokens are accepted (OAuth 2.1 resource-server mode)."""
        return self.oauth_issuer_url is not None

    def auth_enabled(self) -> bool:
        """Whether HTTP entry points authenticate callers (API keys or OAuth); reads the keys file."""
        return self.oauth_enabled or bool(self.all_api_keys())

    @field_validator("egress_allow_networks", "egress_ports", mode="before")
    @classmethod
    def _split_egress(cls, value: object) -> object:
        if isinstance(value, str):
            return [p for p in (s.strip() for s in value.split(",")) if p]
        if isinstance(value, list | tuple):
            return [str(v) for v in value]
        return value

    @model_validator(mode="after")
    def _check_egress(self) -> Settings:
        self.egress_rules()  # a bad network, host or port stops the server at start, naming it
        return self

    def egress_rules(self) -> EgressRules:
        """The egress rules of allowlist containers, from ``egress_allow_networks`` and ``egress_ports``."""
        return EgressRules.parse(self.egress_allow_networks, self.egress_ports)

    @field_validator("allow_paths")
    @classmethod
    def _resolve_paths(cls, value: list[Path]) -> list[Path]:
        # Resolved once, at start: an allowed directory is the one it named then. A directory
        # swapped for a symlink later (by another local user who owns it) is not followed.
        return [Path(os.path.realpath(p)) for p in value]

    def all_api_keys(self) -> list[str]:
        """Keys from ``api_keys`` and ``api_keys_file``, deduplicated, order kept."""
        keys = [k.get_secret_value() for k in self.api_keys]
        if self.api_keys_file is not None:
            for line in self.api_keys_file.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    keys.append(line)
        return list(dict.fromkeys(keys))

    @classmethod
    def isolated(cls, **values: Any) -> Settings:
        """Settings from ``values`` and the defaults alone: no ``CONTAINER_MCP_*``, ``OPENAI_*`` or
        other environment variable, dotenv or secrets file is read. For tests and for embedding,
        where the caller's environment must not change the result."""
        return _IsolatedSettings(**values)


class _IsolatedSettings(Settings):
    """``Settings`` whose only source is the constructor's keyword arguments."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)
