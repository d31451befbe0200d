"""``scripts/serve`` and ``scripts/bootstrap`` on an installed clone: no pip, no apt, works offline.

Each test runs the real scripts in a copy of the clone whose ``.venv`` holds recording stand-ins
(``python`` logs every call, so "pip ran" is observable; ``container-mcp`` prints its argv), and
with ``apt-get``/``sudo`` stand-ins on PATH that log and fail. Nothing is installed for real.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from ..envs import clean_env

REPO = Path(__file__).resolve().parents[2]
CLOSED_INDEX = "http://127.0.0.1:9/simple"  # nothing listens on port 9: any index request fails


def _script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    root = tmp_path / "clone"
    (root / "scripts").mkdir(parents=True)
    for name in ("bootstrap", "serve", "test"):
        shutil.copy2(REPO / "scripts" / name, root / "scripts" / name)
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    venv = root / ".venv" / "bin"
    venv.mkdir(parents=True)
    log = tmp_path / "calls.log"
    _script(venv / "python", f'echo "python $*" >> {log}\nexit "${{FAKE_PIP_STATUS:-0}}"\n')
    _script(venv / "container-mcp", 'echo "container-mcp $*"\n')
    _script(venv / "pytest", "exit 0\n")
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("apt-get", "sudo"):
        _script(tools / name, f'echo "{name} $*" >> {log}\nexit 1\n')
    _script(tools / "bwrap", "exit 0\n")
    return root


def _run(clone: Path, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    tools = clone.parent / "tools"
    path = f"{tools}:{clean_env()['PATH']}"
    return subprocess.run(
        [str(clone / "scripts" / argv[0]), *argv[1:]],
        env=clean_env(PATH=path, PIP_INDEX_URL=CLOSED_INDEX, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _calls(clone: Path) -> list[str]:
    log = clone.parent / "calls.log"
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return calls


def test_an_installed_clone_starts_offline_without_pip_or_apt(clone: Path) -> None:
    first = _run(clone, "bootstrap")
    assert first.returncode == 0, first.stderr
    assert any("pip install -q -e ." in c for c in _calls(clone))  # no stamp yet: installed once
    served = _run(clone, "serve", "--transport", "sse", "--port", "0", FAKE_PIP_STATUS="1")
    assert served.returncode == 0, served.stderr
    assert served.stdout == "container-mcp --transport sse --port 0\n"
    assert _calls(clone) == []  # neither pip (nor python at all) nor apt ran


def test_a_changed_pyproject_reinstalls(clone: Path) -> None:
    assert _run(clone, "bootstrap").returncode == 0
    _calls(clone)
    with (clone / "pyproject.toml").open("a") as f:
        f.write("\n# a new dependency would go here\n")
    assert _run(clone, "bootstrap").returncode == 0
    assert any("pip install" in c for c in _calls(clone))
    assert _run(clone, "bootstrap").returncode == 0
    assert _calls(clone) == []


def test_dev_extras_are_installed_once_and_serve_a_plain_start(clone: Path) -> None:
    assert _run(clone, "bootstrap").returncode == 0
    _calls(clone)
    assert _run(clone, "bootstrap", "--dev").returncode == 0
    assert any("pip install -q -e .[dev]" in c for c in _calls(clone))
    assert _run(clone, "bootstrap", "--dev").returncode == 0
    assert _run(clone, "bootstrap").returncode == 0
    assert _calls(clone) == []


def test_a_failed_install_leaves_no_stamp(clone: Path) -> None:
    failed = _run(clone, "bootstrap", FAKE_PIP_STATUS="1")
    assert failed.returncode != 0
    assert not (clone / ".venv" / ".bootstrap-stamp").exists()
    assert _run(clone, "bootstrap").returncode == 0  # the next start installs again
    assert any("pip install" in c for c in _calls(clone))
