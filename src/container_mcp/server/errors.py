"""The single outbound mapping: ContainerMCPError -> what an MCP client sees.

Tools raise ``ToolError`` with the error's MCP rendering (``render(exc, "mcp")``: its facts, then
its hint in tool names; the model reads it and can act on it);
resources raise ``ResourceNotFoundError`` for not-found and ``ResourceError`` otherwise. An
unexpected exception is logged with its traceback and reported without internals, so a model
never sees a bare "Error executing tool" and never sees a stack trace or a secret.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError

from ..errors import ContainerMCPError, NotFound, render

__all__ = ["resource_errors", "tool_errors"]

log = logging.getLogger("container_mcp.server")


@contextmanager
def tool_errors(tool: str) -> Iterator[None]:
    try:
        yield
    except ContainerMCPError as exc:
        raise ToolError(render(exc, "mcp")) from exc
    except ToolError:
        raise
    except Exception as exc:
        log.exception("unexpected error in tool %s", tool)
        raise ToolError(
            f"Internal error in {tool} ({type(exc).__name__}); the operation may not have completed. Check its "
            "effect with the matching list or retrieve tool before retrying, and report it if it persists."
        ) from exc


@contextmanager
def resource_errors(uri: str) -> Iterator[None]:
    try:
        yield
    except NotFound as exc:
        raise ResourceNotFoundError(render(exc, "mcp")) from exc
    except ContainerMCPError as exc:
        raise ResourceError(render(exc, "mcp")) from exc
    except (ResourceError, ResourceNotFoundError):
        raise
    except Exception as exc:
        log.exception("unexpected error reading %s", uri)
        raise ResourceError(f"Internal error reading {uri} ({type(exc).__name__}).") from exc
