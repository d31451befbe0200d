"""Builds the MCP server: tools and resources over one shared ContainerService."""

from __future__ import annotations

from .. import __version__
from ..audit import AuditLog
from ..auth import BearerVerifier
from ..inline import InlineBudget
from ..observer import Observer
from ..service import ContainerService
from ..settings import Settings
from .bearer import SdkTokenVerifier, auth_settings
from .live import Live, install_live
from .observe import AuditMiddleware, ObservedServer
from .resources import register_resources
from .session import session_key
from .surface import install_surface
from .tools import ToolDeps, register_tools

__all__ = ["create_server"]

INSTRUCTIONS = """\
container-mcp gives you isolated containers, each with its own /mnt/data directory.
Typical flow: container_create -> file_create (text, base64 or a host path) -> {exec}file_read or \
the resource container://{{container_id}}/files/{{file_id}} -> container_delete when done.
Containers expire after expires_after_minutes without use; an expired container keeps its metadata \
but loses its files. Lists are paged: pass last_id as `after` while has_more is true. \
session_usage shows what this session may still use."""


def create_server(
    service: ContainerService,
    settings: Settings,
    *,
    verifier: BearerVerifier | None = None,
    base_url: str = "http://127.0.0.1",
    inline_budget: InlineBudget | None = None,
    audit_log: AuditLog | None = None,
) -> ObservedServer:
    """An MCPServer exposing the tools the provider can serve, and the resources.

    With an enabled ``verifier`` its HTTP apps accept only callers with a token it accepts (401
    otherwise), and each caller's session key is its token's owner (``session.py``); ``base_url``
    is this server's own URL (see ``bearer.auth_settings``). Auth never applies on stdio.
    ``inline_budget`` is the process's budget of inline content in flight; pass the one the HTTP
    transport's ``InlineBodyGate`` uses (default: a new one of ``settings.max_inline_bytes_in_flight``).
    Every tool call and resource read is written to ``audit_log`` (the process's one, from
    ``audit.open_audit_log``; default: none) and counted in the server's own metrics, which its HTTP
    apps serve at ``/metrics`` (``server/observe.py``).
    """
    exec_step = "container_exec (run commands) -> " if service.capabilities.exec else ""
    enabled = verifier is not None and verifier.enabled
    mcp = ObservedServer(
        "container-mcp",
        version=__version__,
        instructions=INSTRUCTIONS.format(exec=exec_step),
        log_level=settings.log_level,
        token_verifier=SdkTokenVerifier(verifier) if verifier is not None and enabled else None,
        auth=auth_settings(verifier, base_url) if verifier is not None and enabled else None,
    )
    mcp.observer = Observer(audit_log or AuditLog(None), service.ledger)
    mcp.middleware.append(AuditMiddleware(mcp, settings.stdio_session_key))
    budget = inline_budget or InlineBudget(settings.max_inline_bytes_in_flight)
    deps = ToolDeps(service=service, settings=settings, inline=budget)
    register_tools(mcp, deps)
    register_resources(mcp, deps)
    install_surface(mcp)
    live = Live(owns=service.ledger.owns)
    service.changes.subscribe(live.on_change)
    install_live(
        mcp,
        live,
        owner_of=lambda ctx: session_key(ctx, settings.stdio_session_key),
        check=lambda owner, container_id, file_id: service.get_file(owner, container_id, file_id),
    )
    return mcp
