"""A regular (non-editable) install finds the twist plugins and ships the demo.

CI installs the project editable, which test_packaging covers.  This test builds
the wheel and installs it into a fresh virtual environment that sees the
dependencies of this one but not its editable hook, then runs the plugins from an
empty folder: proof that ``pip install .`` alone is enough.  The demo is then run
from that install (issue 5 item 1): page served, one chat streamed through the proxy.
"""

from __future__ import annotations

import json
import os
import re
import signal
import site
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from difytw.fixture import load
from difytw.sse import Decoder, Event

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


def clean_env() -> dict[str, str]:
    """This environment without a key or a path that could reach the checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("DIFY_API_KEY", "PYTHONPATH")}


def run(python: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=120
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


@pytest.fixture
def installed_demo(wheel_env: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``python -m twisted difyproxy --demo`` from the wheel, run from an empty folder;
    yields (the page URL it printed, its site-packages).  Always stopped, then killed."""
    output = tmp_path / "demo.log"
    # twist logs JSON when its output is not a terminal; text is what users see.
    twist = [str(wheel_env), "-m", "twisted", "--log-format", "text", "difyproxy"]
    with output.open("wb") as log:
        # Port 0: the kernel picks a free one and the demo prints its URL (no bind race).
        process = subprocess.Popen(
            [*twist, "--demo", "--listen", "tcp:0:interface=127.0.0.1"],
            cwd=tmp_path,
            env=clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60  # a cold start on a loaded machine
        url = None
        while url is None:
            found = re.search(r"open (http://127\.0\.0\.1:\d+/) in a browser", output.read_text())
            if found:
                url = found.group(1)
            elif process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the demo did not start:\n{output.read_text()}")
            else:
                time.sleep(0.1)
        [target] = (wheel_env.parent.parent / "lib").glob("python3*/site-packages")
        yield url, target
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
    assert "Traceback" not in output.read_text()


def test_installed_demo_serves_the_page_and_streams_a_chat(
    installed_demo: tuple[str, Path],
) -> None:
    url, target = installed_demo
    with urllib.request.urlopen(url, timeout=30) as page:
        assert page.status == 200
        assert page.headers.get_content_type() == "text/html"
        assert page.read() == (target / "difytw" / "static" / "index.html").read_bytes()

    question = {"inputs": {}, "query": "Say hello", "response_mode": "streaming", "user": "me"}
    request = urllib.request.Request(
        url + "dify/v1/chat-messages",
        data=json.dumps(question).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    reads: list[tuple[float, bytes]] = []
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 200
        assert answer.headers.get_content_type() == "text/event-stream"
        assert answer.headers["Content-Length"] is None
        while data := answer.read1(65536):
            reads.append((time.monotonic(), data))
    body = b"".join(data for _, data in reads)
    # The bundled fixture, byte for byte, as the wheel ships it.
    assert body == load(target / "difytw" / "demo_fixtures" / "5-chat-hello.jsonl").body()
    frames = [json.loads(e.data) for e in Decoder().feed(body) if isinstance(e, Event) and e.data]
    assert frames[-1]["event"] == "message_end"
    # Streamed, not buffered: the fixture spreads its events over ~3.5 s, so the first
    # one is read well before the last (a buffering proxy delivers them together).
    first = next(t for t, data in reads if b"data:" in data)
    assert reads[-1][0] - first > 0.5
