from __future__ import annotations

import pytest

from container_mcp.errors import InvalidPath
from container_mcp.paths import normalize_path


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("a.txt", "/mnt/data/a.txt"),
        ("dir/sub/a.txt", "/mnt/data/dir/sub/a.txt"),
        ("/mnt/data/a.txt", "/mnt/data/a.txt"),
        ("./a//b/./c.txt", "/mnt/data/a/b/c.txt"),
        ("ünïcødé файл.txt", "/mnt/data/ünïcødé файл.txt"),
        ("x" * 255, "/mnt/data/" + "x" * 255),
    ],
)
def test_accepts_plain_paths(given: str, expected: str) -> None:
    assert normalize_path(given) == expected


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("../etc/passwd", "'..'"),
        ("a/../../x", "'..'"),
        ("/mnt/data/../etc/shadow", "'..'"),
        ("/etc/passwd", "outside /mnt/data"),
        ("/mnt/database/x", "outside /mnt/data"),
        ("/mnt/data", "itself"),
        ("/mnt/data/", "directory"),
        ("a\x00b", "NUL"),
        ("a\nb", "control"),
        ("..\\..\\windows", "backslash"),
        ("a\\b", "backslash"),
        ("dir/", "directory"),
        ("x" * 256, "255 bytes"),
        ("é" * 128, "255 bytes"),
        ("/".join(["d" * 200] * 6), "1024 bytes"),
        ("\udcff.txt", "UTF-8"),
    ],
)
def test_rejects_escapes_and_malformed(given: str, says: str) -> None:
    with pytest.raises(InvalidPath) as info:
        normalize_path(given)
    assert says in info.value.message
    assert info.value.param == "path"


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("a/./b/../c.txt", "/mnt/data/a/c.txt"),
        ("a/b/../../c.txt", "/mnt/data/c.txt"),
        ("/mnt/data/a/../b", "/mnt/data/b"),
        ("./x/./y", "/mnt/data/x/y"),
        ("a/../a/../a/f", "/mnt/data/a/f"),
        ("a//b/./../c", "/mnt/data/a/c"),
    ],
)
def test_dot_segments_are_resolved_before_confinement(given: str, canonical: str) -> None:
    assert normalize_path(given) == canonical


@pytest.mark.parametrize(
    "given",
    ["a/../../x", "a/b/../../../c", "/mnt/data/a/../../etc/passwd", "..", "./../x", "a/../..", "x/../../mnt/data/y"],
)
def test_climbing_out_after_normalisation_stays_refused(given: str) -> None:
    with pytest.raises(InvalidPath, match="climbs out"):
        normalize_path(given)


@pytest.mark.parametrize("given", ["a/..", "./.", "a/b/../.."])
def test_dot_segments_that_land_on_mnt_data_name_no_file(given: str) -> None:
    with pytest.raises(InvalidPath, match="itself"):
        normalize_path(given)
