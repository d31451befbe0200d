"""The single outbound mapping of the MCP boundary: ContainerMCPError -> what an MCP client sees.

A tool reports every error of the tree as a tool error (``isError``) with the error's MCP
rendering (``render(exc, "mcp")``: its facts, then its hint in tool names), which the model reads
and can act on. A resource read answers a JSON-RPC error with
the code below and the URI in ``data``:

=========================  ================  ==================================="""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar

from mcp import MCPError
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST

from ..errors import (
    ContainerExpired,
    ContainerMCPError,
    ContainerNotFound,
    ExecError,
    FileNotFound,
    FileTooLarge,
    InvalidId,
    InvalidPath,
    InvalidRequest,
    NotFound,
    ProviderAuthError,
    ProviderError,
    ProviderRateLimited,
    ProviderUnavailable,
    QuotaExceeded,
    RateLimited,
    SandboxUnavailable,
    StateUnavailable,
    UnsafeConfiguration,
    Unsupported,
    render,
)

__all__ = ["ERROR_TABLE", "mcp_error", "resource_boundary", "resource_code", "tool_boundary"]

log = logging.getLogger("container_mcp.server")

ERROR_TABLE: dict[type[ContainerMCPError], int] = {
    ContainerMCPError: INTERNAL_ERROR,
    InvalidRequest: INVALID_PARAMS,
    InvalidPath: INVALID_PARAMS,
    InvalidId: INVALID_PARAMS,
    NotFound: INVALID_PARAMS,
    ContainerNotFound: INVALID_PARAMS,
    FileNotFound: INVALID_PARAMS,
    ContainerExpired: INVALID_PARAMS,
    QuotaExceeded: INVALID_PARAMS,
    FileTooLarge: INVALID_PARAMS,
    RateLimited: INVALID_REQUEST,
    Unsupported: INVALID_REQUEST,
    UnsafeConfiguration: INTERNAL_ERROR,
    ExecError: INTERNAL_ERROR,
    SandboxUnavailable: INTERNAL_ERROR,
    StateUnavailable: INTERNAL_ERROR,
    ProviderError: INTERNAL_ERROR,
    ProviderAuthError: INTERNAL_ERROR,
    ProviderRateLimited: INVALID_REQUEST,
    ProviderUnavailable: INTERNAL_ERROR,
}
"""The JSON-RPC code of a resource read failing with each error (see the module docstring)."""

P = ParamSpec("P")
R = TypeVar("R")


def resource_code(exc: ContainerMCPError) -> int:
    """The row of ``exc``'s class, or of its nearest ancestor with one."""
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return INTERNAL_ERROR  # unreachable: ContainerMCPError has a row


def mcp_error(exc: ContainerMCPError, uri: str | None) -> MCPError:
    """The JSON-RPC error a resource request (about ``uri``, if one) answers for ``exc``."""
    data: dict[str, Any] = {"uri": uri} if uri is not None else {}
    if exc.param is not None:
        data["param"] = exc.param
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(retry_after, int | float):
        data["retryAfterSeconds"] = max(1, round(retry_after))
    return MCPError(resource_code(exc), render(exc, "mcp"), data)


def tool_boundary(tool: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Wrap the tool function ``tool`` so every error reaches the model as a tool error with a usable message.

    The wrapper keeps the function's signature (``functools.wraps``), from which the SDK builds
    the tool's schema.
    """

    def wrap(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        @functools.wraps(fn)
        async def bounded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return await fn(*args, **kwargs)
            except ContainerMCPError as exc:
                raise ToolError(render(exc, "mcp")) from exc
            except (ToolError, MCPError):
                raise
            except Exception as exc:
                log.exception("unexpected error in tool %s", tool)
                raise ToolError(
                    f"Internal error in {tool} ({type(exc).__name__}); the operation may not have completed. "
                    "Check its effect with the matching list or retrieve tool before retrying, and report it if "
                    "it persists."
                ) from exc

        return bounded

    return wrap


@contextmanager
def resource_boundary(uri: str | None) -> Iterator[None]:
    """Map whatever a resource request (about ``uri``, if one) raises to its JSON-RPC error (``MCPError``)."""
    try:
        yield
    except ContainerMCPError as exc:
        raise mcp_error(exc, uri) from exc
    except MCPError:
        raise
    except Exception as exc:
        log.exception("unexpected error in a resource request (%s)", uri)
        what = f"reading {uri}" if uri is not None else "listing resources"
        data = {"uri": uri} if uri is not None else None
        raise MCPError(INTERNAL_ERROR, f"Internal error {what} ({type(exc).__name__}).", data) from exc
