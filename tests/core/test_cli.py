from __future__ import annotations

from pathlib import Path

import pytest

from container_mcp.cli import _parser, build_settings


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONTAINER_MCP_MAX_CONTAINERS", "3")
    monkeypatch.setenv("CONTAINER_MCP_MAX_FILE_BYTES", "1234")
    monkeypatch.setenv("CONTAINER_MCP_ALLOW_PATHS", f"{tmp_path}/a, {tmp_path}/b")
    settings = build_settings(_parser().parse_args(["--max-containers", "7", "--data-dir", str(tmp_path)]))
    assert settings.max_containers == 7
    assert settings.max_file_bytes == 1234
    assert settings.data_dir == tmp_path
    assert settings.allow_paths == [tmp_path / "a", tmp_path / "b"]
    serve = build_settings(_parser().parse_args(["serve", "--allow-path", "/srv/x", "--transport", "sse"]))
    assert serve.allow_paths == [Path("/srv/x")]


def test_openai_key_is_read_from_the_usual_variable_and_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    settings = build_settings(_parser().parse_args(["--provider", "openai"]))
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-very-secret"
    assert settings.openai_base_url == "http://127.0.0.1:9/v1"
    assert "sk-very-secret" not in repr(settings) and "sk-very-secret" not in str(settings.model_dump())


def test_api_keys_from_flags_and_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nkey-b\n\nkey-a\n")
    settings = build_settings(_parser().parse_args(["api", "--api-key", "key-a", "--api-keys-file", str(keys_file)]))
    assert settings.all_api_keys() == ["key-a", "key-b"]


def test_allowed_hosts_and_origins_from_flags_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONTAINER_MCP_ALLOWED_HOSTS", "a.example.com, b.example.com:8443")
    assert build_settings(_parser().parse_args([])).allowed_hosts == ["a.example.com", "b.example.com:8443"]
    args = ["api", "--allowed-host", "mcp.example.com", "--allowed-origin", "https://app.example.com"]
    settings = build_settings(_parser().parse_args(args))
    assert settings.allowed_hosts == ["mcp.example.com"]
    assert settings.allowed_origins == ["https://app.example.com"]
