"""``twist difyreplay`` options and service."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.application.service import IService
from twisted.internet.task import Clock
from twisted.python import usage

from difytw import replaytap
from tests.conftest import FIXTURES


def parse(*argv: str) -> replaytap.Options:
    options = replaytap.Options()
    options.parseOptions(list(argv))
    return options


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DIFY_REPLAY_API_KEY", raising=False)
    options = parse("--fixtures", str(FIXTURES))
    assert options.speed == 1.0
    assert options["listen"].startswith("tcp:8081:interface=127.0.0.1")
    assert options["api-key"] is None
    assert options.index.fixtures


def test_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIFY_REPLAY_API_KEY", "app-from-env")
    assert parse("--fixtures", str(FIXTURES))["api-key"] == "app-from-env"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--speed", "fast"], "--speed must be a number"),
        (["--speed", "-1"], "--speed must be 0"),
        (["--fixtures", "/nonexistent/dir"], "not a directory"),
        (["--bogus"], "bogus"),
    ],
)
def test_bad_flags_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError, match=message):
        parse("--fixtures", str(FIXTURES), *argv)


def test_malformed_fixture_names_file_and_line(tmp_path: Path) -> None:
    good = (FIXTURES / sorted(p.name for p in FIXTURES.glob("*.jsonl"))[0]).read_text()
    lines = good.splitlines()
    lines[2] = '{"type": "response", "t": 0, "status": "two hundred", "headers": []}'
    (tmp_path / "broken.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(usage.UsageError, match=r"broken\.jsonl:3: "):
        parse("--fixtures", str(tmp_path))


def test_make_service_listens_on_the_endpoint() -> None:
    options = parse("--fixtures", str(FIXTURES), "--listen", "tcp:0:interface=127.0.0.1")
    service = replaytap.makeService(options, reactor=Clock())
    assert IService.providedBy(service)
