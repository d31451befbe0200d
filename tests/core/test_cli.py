"""The command line: every option works before or after the subcommand, or is refused; never dropped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from container_mcp.cli import build_settings, parse_args
from container_mcp.settings import Settings

Export = Callable[..., None]


def settings_of(argv: list[str]) -> Settings:
    return build_settings(parse_args(argv))


def test_flags_override_environment(exported: Export, tmp_path: Path) -> None:
    exported(
        CONTAINER_MCP_MAX_CONTAINERS="3",
        CONTAINER_MCP_MAX_FILE_BYTES="1234",
        CONTAINER_MCP_ALLOW_PATHS=f"{tmp_path}/a, {tmp_path}/b",
    )
    settings = settings_of(["--max-containers", "7", "--data-dir", str(tmp_path)])
    assert settings.max_containers == 7
    assert settings.max_file_bytes == 1234
    assert settings.data_dir == tmp_path
    assert settings.allow_paths == [tmp_path / "a", tmp_path / "b"]
    serve = settings_of(["serve", "--allow-path", "/srv/x", "--transport", "sse"])
    assert serve.allow_paths == [Path("/srv/x")]


def test_openai_key_is_read_from_the_usual_variable_and_never_printed(exported: Export) -> None:
    exported(OPENAI_API_KEY="sk-very-secret", OPENAI_BASE_URL="http://127.0.0.1:9/v1")
    settings = settings_of(["--provider", "openai"])
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == "sk-very-secret"
    assert settings.openai_base_url == "http://127.0.0.1:9/v1"
    assert "sk-very-secret" not in repr(settings) and "sk-very-secret" not in str(settings.model_dump())


def test_api_keys_from_flags_and_file(exported: Export, tmp_path: Path) -> None:
    exported()
    keys_file = tmp_path / "keys"
    keys_file.write_text("# team keys\nkey-b\n\nkey-a\n")
    settings = settings_of(["api", "--api-key", "key-a", "--api-keys-file", str(keys_file)])
    assert settings.all_api_keys() == ["key-a", "key-b"]


def test_allowed_hosts_and_origins_from_flags_or_environment(exported: Export) -> None:
    exported(CONTAINER_MCP_ALLOWED_HOSTS="a.example.com, b.example.com:8443")
    assert settings_of([]).allowed_hosts == ["a.example.com", "b.example.com:8443"]
    args = ["api", "--allowed-host", "mcp.example.com", "--allowed-origin", "https://app.example.com"]
    settings = settings_of(args)
    assert settings.allowed_hosts == ["mcp.example.com"]
    assert settings.allowed_origins == ["https://app.example.com"]


def _common_options(tmp_path: Path) -> list[tuple[list[str], str, Any]]:
    """(flag and value, Settings field or argument name, expected value) for every common option."""
    keys_file = tmp_path / "keys"
    keys_file.write_text("from-file\n")
    return [
        (["--provider", "openai"], "provider", "openai"),
        (["--data-dir", str(tmp_path / "d")], "data_dir", tmp_path / "d"),
        (["--log-level", "DEBUG"], "log_level", "DEBUG"),
        (["--allowed-host", "mcp.example.com"], "allowed_hosts", ["mcp.example.com"]),
        (["--allowed-origin", "https://app.example.com"], "allowed_origins", ["https://app.example.com"]),
        (["--max-containers", "4"], "max_containers", 4),
        (["--max-files-per-container", "5"], "max_files_per_container", 5),
        (["--max-file-bytes", "6"], "max_file_bytes", 6),
        (["--max-session-bytes", "7"], "max_session_bytes", 7),
        (["--max-calls-per-minute", "8"], "max_calls_per_minute", 8),
        (["--api-keys-file", str(keys_file)], "api_keys_file", keys_file),
        (["--api-key", "from-argv"], "all_api_keys", ["from-argv"]),
        (["--host", "::1"], "host", "::1"),
        (["--port", "9"], "port", 9),
    ]


def _value(argv: list[str], name: str) -> Any:
    args = parse_args(argv)
    if name in ("host", "port", "transport", "command"):
        return getattr(args, name)
    value = getattr(build_settings(args), name)
    return value() if callable(value) else value


@pytest.mark.parametrize("command", ["serve", "api"])
def test_every_common_option_works_on_either_side_of_the_subcommand(
    exported: Export, tmp_path: Path, command: str
) -> None:
    exported()
    # The HTTP-only options (--host, --port, ...) are refused on stdio: serve here is served over HTTP.
    http = ["--transport", "streamable-http"] if command == "serve" else []
    for option, name, expected in _common_options(tmp_path):
        before = _value([*option, command, *http], name)
        after = _value([command, *http, *option], name)
        assert before == after == expected, (option, command)


@pytest.mark.parametrize(
    ("option", "name", "expected"),
    [
        (["--transport", "sse"], "transport", "sse"),
        (["--allow-path", "/srv/in"], "allow_paths", [Path("/srv/in")]),
    ],
)
def test_mcp_options_work_on_either_side_of_serve_and_without_it(
    exported: Export, option: list[str], name: str, expected: Any
) -> None:
    exported()
    assert _value([*option, "serve"], name) == _value(["serve", *option], name) == _value(option, name) == expected


def test_after_the_subcommand_wins_and_repeatable_options_add_up(exported: Export) -> None:
    exported()
    assert parse_args(["--port", "1", "serve", "--transport", "sse", "--port", "2"]).port == 2
    settings = settings_of(["--allow-path", "/srv/a", "serve", "--allow-path", "/srv/b"])
    assert settings.allow_paths == [Path("/srv/a"), Path("/srv/b")]
    assert settings_of(["--api-key", "k1", "api", "--api-key", "k2"]).all_api_keys() == ["k1", "k2"]
    plain = parse_args([])
    assert (plain.command, plain.transport, plain.host, plain.port) == (None, "stdio", "127.0.0.1", 8000)


@pytest.mark.parametrize(
    "argv",
    [
        ["--transport", "sse", "api"],
        ["--allow-path", "/srv/x", "api"],
    ],
)
def test_an_mcp_option_given_to_api_is_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(argv)
    assert info.value.code == 2
    assert "applies to the MCP server (serve), not to api" in capsys.readouterr().err


def test_an_mcp_option_after_api_is_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args(["api", "--transport", "sse"])
    assert info.value.code == 2
    assert "unrecognized arguments: --transport" in capsys.readouterr().err
