"""A Podman engine for the docker provider's tests: the session's own rootful ``podman system
service`` (scripts/podman-engine), serving the Docker-compatible API on a socket under the
session's temp dir, its storage there too, stopped and deleted when the session ends.

The provider talks to it exactly as to dockerd (``DOCKER_HOST=unix://.../podman.sock``): this is
what "Podman's socket works unchanged" is tested on. The fixture is started only by the tests that
ask for it (the ``podman`` parameter of ``engine_host`` and of the contract suite's ``provider``).
Without podman it skips only where no ``apt-get`` could install it; elsewhere that is a failure,
as for docker (tests/docker/engine.py).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["podman_host"]

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "podman-engine"


@pytest.fixture(scope="session")
def podman_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``DOCKER_HOST`` of this session's Podman service."""
    if shutil.which("podman") is None:
        if shutil.which("apt-get") is None:
            pytest.skip("no podman, and no apt-get to install it with")
        pytest.fail("podman is missing: scripts/bootstrap --dev installs podman and catatonit")
    state = tmp_path_factory.mktemp("podman")
    started = subprocess.run([str(_SCRIPT), "start", str(state)], capture_output=True, text=True, timeout=60)
    try:
        if started.returncode != 0:
            pytest.fail(f"scripts/podman-engine start failed: {started.stderr[-2000:]}")
        yield started.stdout.strip()
    finally:
        subprocess.run([str(_SCRIPT), "stop", str(state)], capture_output=True, timeout=120)
