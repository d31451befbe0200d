"""The suite runs with hostile settings exported (``tests/conftest.py``) and reads none of them."""

from __future__ import annotations

import os

from container_mcp.settings import Settings

from ..conftest import HOSTILE_ENVIRONMENT
from ..envs import clean_env


def test_the_hostile_environment_is_exported() -> None:
    assert {k: os.environ.get(k) for k in HOSTILE_ENVIRONMENT} == HOSTILE_ENVIRONMENT


def test_isolated_settings_read_no_environment() -> None:
    settings = Settings.isolated(data_dir="/tmp/x")
    assert settings.max_calls_per_minute == 600 and settings.max_containers == 10
    assert settings.provider == "local" and settings.api_keys == [] and settings.allowed_hosts == []
    assert settings.openai_api_key is None and settings.openai_base_url == "https://api.openai.com/v1"


def test_child_processes_get_a_clean_environment() -> None:
    env = clean_env(CONTAINER_MCP_DATA_DIR="/tmp/x")
    assert not any(k.startswith(("CONTAINER_MCP_", "OPENAI_")) for k in env if k != "CONTAINER_MCP_DATA_DIR")
    assert env["PATH"] == os.environ["PATH"]
