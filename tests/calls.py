"""Calling a tool with the official client and taking its structured result."""

from __future__ import annotations

from typing import Any

from mcp import Client

__all__ = ["call"]


async def call(client: Client, tool: str, **args: Any) -> dict[str, Any]:
    """``tool``'s structured result; the call must not be a tool error."""
    result = await client.call_tool(tool, args)
    assert result.is_error is False, result.content
    assert result.structured_content is not None
    return result.structured_content
