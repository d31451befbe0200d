"""The entry point: ``container-mcp [serve] ...`` and ``container-mcp api ...``.

Flags override ``CONTAINER_MCP_*`` environment variables, which override defaults. A flag may be
written before or after the subcommand (after wins; repeatable ones add up); one that does not
apply to the chosen command is refused, never ignored. Logs go to stderr only: stdout belongs to
the stdio transport.
"""

from __future__ import annotations

import argparse
import logging
import sys
import urllib.parse
from collections.abc import Sequence
from typing import Any

import anyio
from pydantic import ValidationError

from . import __version__
from .errors import ProviderUnavailable, StateUnavailable, UnsafeConfiguration
from .settings import Settings

__all__ = ["build_settings", "main", "parse_args"]

log = logging.getLogger("container_mcp")

_QUOTA_FLAGS = {
    "max_containers": "live containers per session",
    "max_files_per_container": "files per container",
    "max_file_bytes": "bytes per file",
    "max_session_bytes": "stored bytes per session",
    "max_calls_per_minute": "tool calls per session per minute",
}

_LIST_FLAGS = {"allow_path": "allow_paths", "allowed_host": "allowed_hosts", "allowed_origin": "allowed_origins"}
"""Repeatable flags and the list settings they set."""


def _common(p: argparse.ArgumentParser, top: bool) -> None:
    """Options of every command. On the top-level parser (``top``) they carry the defaults; on a
    subcommand they default to "not given" (``SUPPRESS``), so a value written before the
    subcommand survives and one written after it wins."""

    def default(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    p.add_argument(
        "--provider", choices=["local", "openai", "docker"], default=default(None), help="backend (default: local)"
    )
    p.add_argument(
        "--data-dir",
        default=default(None),
        help="where state and local containers live (default: the user data dir)",
    )
    # No default here (filled in by parse_args): a --host or --port given to stdio is refused.
    p.add_argument("--host", default=default(None), help="interface for HTTP transports (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=default(None), help="port for HTTP transports (default: 8000)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], default=default(None))
    _repeatable(
        p,
        top,
        "--allowed-host",
        "NAME",
        "Host header value accepted besides loopback and the bound address, e.g. the public name "
        "behind a proxy (repeatable)",
    )
    _repeatable(
        p,
        top,
        "--allowed-origin",
        "ORIGIN",
        "Origin accepted besides the loopback ones, e.g. https://app.example.com (repeatable)",
    )
    for field, help_text in _QUOTA_FLAGS.items():
        p.add_argument("--" + field.replace("_", "-"), type=int, default=default(None), help=help_text)
    p.add_argument(
        "--state-url",
        default=default(None),
        help="Redis URL holding ownership, quotas and the rate limit for several hosts (openai provider "
        "only). A URL with a password: use CONTAINER_MCP_STATE_URL, as argv is readable by other users",
    )
    p.add_argument(
        "--api-keys-file",
        default=default(None),
        help="file with one accepted bearer token per line (HTTP transports and api)",
    )
    _repeatable(
        p,
        top,
        "--api-key",
        "KEY",
        "accepted bearer token (repeatable). Discouraged: other local users can read it in "
        "/proc/<pid>/cmdline; use CONTAINER_MCP_API_KEYS or --api-keys-file",
    )


def _repeatable(p: argparse.ArgumentParser, top: bool, flag: str, metavar: str, help_text: str) -> None:
    # A subcommand collects its own list (dest "<name>_after_command"); parse_args appends it to
    # the one written before the subcommand, so "--allow-path A serve --allow-path B" allows both.
    dest = flag.removeprefix("--").replace("-", "_") + ("" if top else _AFTER)
    p.add_argument(
        flag, action="append", metavar=metavar, dest=dest, default=None if top else argparse.SUPPRESS, help=help_text
    )


def _mcp_only(p: argparse.ArgumentParser, top: bool) -> None:
    """Options of the MCP server only (``serve``, or no subcommand)."""
    p.add_argument(
        "--transport",
        choices=["stdio", "sse", "streamable-http"],
        default=None if top else argparse.SUPPRESS,
        help="MCP transport (default: stdio)",
    )
    _repeatable(
        p,
        top,
        "--allow-path",
        "DIR",
        "host directory file_create may read source_path from (repeatable; none by default)",
    )


_AFTER = "_after_command"
_MCP_ONLY = ("transport", "allow_path")
_HTTP_ONLY = ("host", "port", "allowed_host", "allowed_origin")
"""Options that only an HTTP server reads (``api``, or ``serve`` on sse or streamable-http)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="container-mcp",
        description="OpenAI-compatible containers for AI agents: an MCP server (serve) or a /v1 REST API (api). "
        "Options may be written before or after the subcommand; after it wins.",
    )
    parser.add_argument("--version", action="version", version=f"container-mcp {__version__}")
    _common(parser, top=True)
    _mcp_only(parser, top=True)
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="serve MCP (the default)")
    api = sub.add_parser("api", help="serve the OpenAI-compatible /v1/containers REST API")
    _common(serve, top=False)
    _mcp_only(serve, top=False)
    _common(api, top=False)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, options merged from both sides of the subcommand.

    Exits with status 2 (argparse's usage error) for an MCP-only option (``--transport``,
    ``--allow-path``) given to ``api``, or an HTTP-only one (``--host``, ``--port``,
    ``--allowed-host``, ``--allowed-origin``) given to the stdio transport: it would have no
    effect, and is refused rather than ignored.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    for name, value in list(vars(args).items()):
        if name.endswith(_AFTER):
            base = name.removesuffix(_AFTER)
            setattr(args, base, (getattr(args, base, None) or []) + value)
            delattr(args, name)
    if args.command == "api":
        given = [n for n in _MCP_ONLY if getattr(args, n, None)]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            parser.error(f"{flags} applies to the MCP server (serve), not to api")
    if args.transport is None:
        args.transport = "stdio"
    if args.command != "api" and args.transport == "stdio":
        given = [n for n in _HTTP_ONLY if getattr(args, n, None) is not None]
        if given:
            flags = ", ".join("--" + n.replace("_", "-") for n in given)
            parser.error(
                f"{flags} applies to the HTTP transports (--transport sse or streamable-http) and api, not stdio"
            )
    if args.host is None:
        args.host = "127.0.0.1"
    if args.port is None:
        args.port = 8000
    return args


ARGV_KEY_WARNING = (
    "--api-key puts the key on the command line, where every local user can read it (ps, "
    "/proc/<pid>/cmdline). Pass keys in CONTAINER_MCP_API_KEYS or a file given to --api-keys-file instead."
)


ARGV_STATE_URL_WARNING = (
    "--state-url holds a password, on the command line, where every local user can read it (ps, "
    "/proc/<pid>/cmdline). Pass a URL with a password in CONTAINER_MCP_STATE_URL instead."
)


def _has_password(url: str | None) -> bool:
    try:
        return url is not None and urllib.parse.urlsplit(url).password is not None
    except ValueError:  # not a URL: Settings refuses it
        return False


def build_settings(args: argparse.Namespace) -> Settings:
    """Settings from the environment, overridden by the flags that were given."""
    overrides: dict[str, Any] = {}
    for name in ("provider", "data_dir", "log_level", "api_keys_file", "state_url", *_QUOTA_FLAGS):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    for flag, field in _LIST_FLAGS.items():
        if getattr(args, flag, None):
            overrides[field] = getattr(args, flag)
    if getattr(args, "api_key", None):
        overrides["api_keys"] = args.api_key
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        settings = build_settings(args)
    except ValidationError as exc:
        print(f"container-mcp: invalid configuration:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(
        stream=sys.stderr, level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if getattr(args, "api_key", None):
        log.warning(ARGV_KEY_WARNING)
    if _has_password(getattr(args, "state_url", None)):
        log.warning(ARGV_STATE_URL_WARNING)
    try:
        if args.command == "api":
            from .api.serve import serve_api

            anyio.run(serve_api, settings, args.host, args.port)
        else:
            anyio.run(_serve_mcp, settings, args.transport, args.host, args.port)
    except UnsafeConfiguration as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
    except (
        StateUnavailable,
        ProviderUnavailable,
    ) as exc:  # the ledger or the backend (e.g. no Docker engine) is not there at start
        print(f"container-mcp: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass


async def _serve_mcp(settings: Settings, transport: str, host: str, port: int) -> None:
    from .audit import open_audit_log
    from .auth import open_verifier
    from .http_guard import ConnectionLimits
    from .inline import InlineBodyGate, InlineBudget, mcp_body_limit
    from .runtime import open_service
    from .server.app import create_server
    from .server.http import HttpTransport, http_app
    from .serving import refuse_unauthenticated_exposure, serve_asgi
    from .stdio import run_stdio

    # Room for a whole file sent inline as base64, plus the JSON-RPC envelope, within the inline budget.
    body_limit = mcp_body_limit(settings)
    if transport == "stdio":
        async with open_audit_log(settings.audit) as audit_log, open_service(settings) as service:
            log.info("container-mcp %s: provider=%s transport=stdio", __version__, settings.provider)
            # A command already running when stdin closes may finish (and be answered) within its timeout.
            drain_s = settings.exec_max_timeout_s + 15
            await run_stdio(create_server(service, settings, audit_log=audit_log), body_limit, drain_s)
        return
    kind: HttpTransport = "sse" if transport == "sse" else "streamable-http"
    # One read of the keys decides both the refusal and which tokens pass (see serve_api).
    async with open_verifier(settings) as verifier:
        refuse_unauthenticated_exposure(
            host, authenticated=verifier.enabled, command=f"container-mcp --transport {transport}"
        )
        if not verifier.enabled:
            log.warning(
                "no API keys configured: every local process can use this server, and 2026-07-28 clients share "
                "one anonymous session. Set CONTAINER_MCP_API_KEYS (or --api-keys-file) to give each caller its own."
            )
        async with open_audit_log(settings.audit) as audit_log, open_service(settings) as service:
            # One budget of inline content in flight for the whole process: the HTTP gate and the tools share it.
            budget = InlineBudget(settings.max_inline_bytes_in_flight)
            url_host = f"[{host}]" if ":" in host else host
            mcp = create_server(
                service,
                settings,
                verifier=verifier,
                base_url=f"http://{url_host}:{port}",
                inline_budget=budget,
                audit_log=audit_log,
            )
            # Only a caller with an accepted token may hold (or wait for) a share of the budget.
            gate_verifier = verifier if verifier.enabled else None
            app = InlineBodyGate(http_app(mcp, settings, kind, host, body_limit), budget, verifier=gate_verifier)
            limits = ConnectionLimits.from_settings(settings)
            log.info("container-mcp %s: provider=%s transport=%s", __version__, settings.provider, transport)
            if kind == "sse":
                await serve_asgi(app, host, port, label="container-mcp (SSE)", path="/sse", limits=limits)
            else:
                # lifespan on: the streamable HTTP app runs its session manager there
                await serve_asgi(
                    app, host, port, label="container-mcp (streamable HTTP)", path="/mcp", lifespan="on", limits=limits
                )
