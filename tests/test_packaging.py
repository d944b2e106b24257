"""The twist plugins are found from anywhere, and their plugin cache is never tracked.

Builds nothing: runs ``python -m twisted <plugin> --help`` with this interpreter from an
empty temporary folder, so the plugins must come from the installed package, not the
working directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

PLUGINS = {
    "difyproxy": [
        "--upstream",
        "--listen",
        "--prefix",
        "--api-key-file",
        "--ca-bundle",
        "--max-body",
        "--header-timeout",
        "--idle-timeout",
        "--connect-timeout",
        "DIFY_API_KEY",
    ],
    "difyreplay": ["--fixtures", "--listen", "--speed"],
}


def twisted_help(plugin: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DIFY_API_KEY", "PYTHONPATH")}
    return subprocess.run(
        [sys.executable, "-m", "twisted", plugin, "--help"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
def test_help_from_a_foreign_folder_names_the_flags(plugin: str, tmp_path: Path) -> None:
    result = twisted_help(plugin, tmp_path)
    assert result.returncode == 0, result.stderr
    for flag in PLUGINS[plugin]:
        assert flag in result.stdout, flag
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran


def test_help_needs_no_key(tmp_path: Path) -> None:
    # --help must work before any configuration exists; the key check is for startup.
    result = twisted_help("difyproxy", tmp_path)
    assert "needs the Dify app key" not in result.stdout + result.stderr


def test_plugin_cache_is_not_tracked() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked, "not a git checkout?"
    assert not [path for path in tracked if path.endswith("dropin.cache")]
