"""container-mcp: OpenAI-compatible containers for AI agents, over MCP and a REST API."""

from __future__ import annotations

from .errors import ContainerMCPError
from .models import Container, ContainerFile, ContainerSpec, Page
from .settings import Settings

__version__ = "0.1.0"

__all__ = ["Container", "ContainerFile", "ContainerMCPError", "ContainerSpec", "Page", "Settings", "__version__"]
