"""A regular (non-editable) install finds the twist plugins and ships the demo.

CI installs the project editable, which test_packaging covers.  This test builds
the wheel and installs it into a fresh virtual environment that sees the
dependencies of this one but not its editable hook, then runs the plugins from an
empty folder: proof that ``pip install .`` alone is enough.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    build = ["wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(work / "dist")]
    subprocess.run([sys.executable, "-m", "pip", *build, str(ROOT)], check=True, timeout=300)
    [wheel] = (work / "dist").glob("difytw-*.whl")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(work / "venv")], check=True)
    [target] = (work / "venv" / "lib").glob("python3*/site-packages")
    # A pure wheel unpacked into site-packages is an install; the dependencies come from
    # this environment through a plain path line, which (unlike a site dir) does not run
    # its .pth files, so the editable hook of the checkout is not seen.
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (target / "deps.pth").write_text("\n".join(deps) + "\n")
    return work / "venv" / "bin" / "python"


def run(python: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DIFY_API_KEY", "PYTHONPATH")}
    return subprocess.run(
        [str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_wheel_holds_package_plugin_and_demo_files(wheel_env: Path) -> None:
    [target] = (wheel_env.parent.parent / "lib").glob("python3*/site-packages")
    assert (target / "twisted" / "plugins" / "difytw_plugins.py").is_file()
    assert not (target / "twisted" / "__init__.py").exists()
    assert not (target / "twisted" / "plugins" / "__init__.py").exists()
    assert list((target / "difytw" / "demo_fixtures").glob("*.jsonl"))
    assert (target / "difytw" / "static" / "index.html").is_file()


@pytest.mark.parametrize("plugin", ["difyreplay", "difyproxy"])
def test_installed_wheel_runs_the_plugins_from_anywhere(
    wheel_env: Path, plugin: str, tmp_path: Path
) -> None:
    where = run(wheel_env, ["-c", "import difytw; print(difytw.__file__)"], tmp_path)
    assert str(wheel_env.parent.parent) in where.stdout, "difytw came from the wheel"
    result = run(wheel_env, ["-m", "twisted", plugin, "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--listen" in result.stdout
