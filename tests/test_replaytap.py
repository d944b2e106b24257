"""``twist difyreplay`` options and service."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from twisted.application.service import IService, MultiService
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent
from twisted.python import usage

from difytw import replaytap
from difytw.passthrough import RecordMode
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
        (["--speed", "nan"], "--speed must be 0 .* got 'nan'"),
        (["--speed", "inf"], "--speed must be 0 .* got 'inf'"),
        (["--speed", "-inf"], "--speed must be 0"),
        (["--fixtures", "/nonexistent/dir"], "not a directory"),
        (["--bogus"], "bogus"),
        (["--listen", "garbage"], "^--listen garbage: not a usable endpoint"),
        (["--listen", "tcp:99999"], "^--listen tcp:99999: port 99999 is not 0-65535"),
    ],
)
def test_bad_flags_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError, match=message):
        parse("--fixtures", str(FIXTURES), *argv)


def test_a_deeply_nested_fixture_line_is_a_file_line_problem(tmp_path: Path) -> None:
    lines = (FIXTURES / "chat-hello.jsonl").read_text().splitlines()
    lines[1] = '{"type":"request","json":' + "[" * 100_000 + "]" * 100_000 + "}"
    (tmp_path / "deep.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(usage.UsageError, match=r"deep\.jsonl:2: JSON nested deeper than"):
        parse("--fixtures", str(tmp_path))


def test_malformed_fixture_names_file_and_line(tmp_path: Path) -> None:
    good = (FIXTURES / sorted(p.name for p in FIXTURES.glob("*.jsonl"))[0]).read_text()
    lines = good.splitlines()
    lines[2] = '{"type": "response", "t": 0, "status": "two hundred", "headers": []}'
    (tmp_path / "broken.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(usage.UsageError, match=r"broken\.jsonl:3: "):
        parse("--fixtures", str(tmp_path))


def copy_fixture(folder: Path, name: str, source: str = "chat-hello") -> Path:
    target = folder / f"{name}.jsonl"
    target.write_text((FIXTURES / f"{source}.jsonl").read_text(encoding="utf-8"))
    return target


def test_duplicate_fixture_ids_refuse_to_start(tmp_path: Path) -> None:
    first, second = copy_fixture(tmp_path, "a"), copy_fixture(tmp_path, "b")
    with pytest.raises(usage.UsageError) as refused:
        parse("--fixtures", str(tmp_path))
    assert str(refused.value) == (
        f"{second}:1: duplicate fixture id 'chat-hello': {first} and {second}"
    )


def test_ambiguous_fixtures_are_logged_at_startup(tmp_path: Path, logged: list[LogEvent]) -> None:
    first = copy_fixture(tmp_path, "chat-hello")
    text = first.read_text().replace('"id":"chat-hello"', '"id":"twin"', 1)
    assert '"id":"twin"' in text
    (tmp_path / "twin.jsonl").write_text(text)
    options = parse("--fixtures", str(tmp_path), "--listen", "tcp:0:interface=127.0.0.1")
    replaytap.makeService(options, reactor=Clock())
    lines = [formatEvent(event) for event in logged]
    assert any(
        line.startswith(f"fixture problem: {tmp_path / 'twin.jsonl'}:1: ambiguous: 'twin'")
        for line in lines
    ), lines
    [event] = [e for e in logged if e.get("problem", "").startswith("ambiguous: 'twin'")]
    assert (event["path"], event["line"]) == (str(tmp_path / "twin.jsonl"), 1)


def test_make_service_listens_on_the_endpoint() -> None:
    options = parse("--fixtures", str(FIXTURES), "--listen", "tcp:0:interface=127.0.0.1")
    service = replaytap.makeService(options, reactor=Clock())
    assert IService.providedBy(service)


# -- recording modes (issue 4 item 2) ---------------------------------------------------------

REAL_KEY = "app-real0key0for0recording0only"
UPSTREAM = ["--upstream", "http://dify.internal"]


def parse_recording(
    folder: Path, *argv: str, environ: dict[str, str] | None = None
) -> replaytap.Options:
    options = replaytap.Options(environ={"DIFY_API_KEY": REAL_KEY} if environ is None else environ)
    options.parseOptions(["--fixtures", str(folder), *argv])
    return options


def test_record_mode_defaults_to_none_and_needs_nothing(tmp_path: Path) -> None:
    options = parse_recording(tmp_path, environ={})
    assert options.record_mode is RecordMode.NONE


def test_record_missing_is_new_episodes(tmp_path: Path) -> None:
    options = parse_recording(tmp_path, "--record-missing", *UPSTREAM)
    assert options.record_mode is RecordMode.NEW_EPISODES
    assert options.upstream_key == REAL_KEY


@pytest.mark.parametrize("mode", ["once", "new_episodes", "all"])
def test_every_mode_is_known(tmp_path: Path, mode: str) -> None:
    assert parse_recording(tmp_path, "--record-mode", mode, *UPSTREAM).record_mode.value == mode


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["--record-mode", "once"], None, "--record-mode once needs --upstream URL"),
        (["--record-missing"], None, "--record-mode new_episodes needs --upstream URL"),
        (["--record-mode", "all", *UPSTREAM], {}, r"needs the real Dify app key in \$DIFY_API_KEY"),
        (["--record-mode", "all", *UPSTREAM], {"DIFY_API_KEY": "a b"}, "DIFY_API_KEY"),
        (["--record-mode", "sometimes"], None, "--record-mode must be none, once"),
        (["--record-missing", "--record-mode", "all"], None, "--record-missing means"),
        (["--record-mode", "all", "--upstream", "ftp://x"], None, "--upstream: upstream must"),
        (["--record-mode", "all", "--upstream", "http://x/v1"], None, "without /v1"),
        (["--scrub", "no-equals-sign"], None, "--scrub needs REGEX=PLACEHOLDER"),
        (["--scrub", "(=x"], None, "bad regular expression"),
    ],
)
def test_recording_usage_errors_name_the_flag(
    tmp_path: Path, argv: list[str], environ: dict[str, str] | None, message: str
) -> None:
    with pytest.raises(usage.UsageError, match=message):
        parse_recording(tmp_path, *argv, environ=environ)


@pytest.mark.parametrize(
    "listen",
    ["tcp:8081", "tcp:8081:interface=0.0.0.0", "tcp6:8081:interface=\\:\\:"],
)
def test_recording_beyond_loopback_needs_this_servers_own_key(tmp_path: Path, listen: str) -> None:
    # Anyone who reaches the port would spend the real DIFY_API_KEY (issue 4 item 2).
    argv = ["--record-missing", *UPSTREAM, "--listen", listen]
    with pytest.raises(usage.UsageError) as refused:
        parse_recording(tmp_path, *argv)
    message = str(refused.value)
    assert "--api-key" in message and "non-loopback" in message and "\n" not in message
    guarded = parse_recording(tmp_path, *argv, "--api-key", "app-guard")
    assert guarded.record_mode is RecordMode.NEW_EPISODES
    from_env = {"DIFY_API_KEY": REAL_KEY, "DIFY_REPLAY_API_KEY": "app-guard"}
    assert parse_recording(tmp_path, *argv, environ=from_env)["api-key"] == "app-guard"
    assert parse_recording(tmp_path, "--listen", listen).record_mode is RecordMode.NONE


@pytest.mark.parametrize(
    "listen", ["tcp:0:interface=127.0.0.1", "tcp6:0:interface=\\:\\:1", "unix:/tmp/x.sock"]
)
def test_recording_on_loopback_needs_no_key_of_its_own(tmp_path: Path, listen: str) -> None:
    options = parse_recording(tmp_path, "--record-missing", *UPSTREAM, "--listen", listen)
    assert options.record_mode is RecordMode.NEW_EPISODES and options["api-key"] is None


def test_an_empty_api_key_is_a_usage_error() -> None:
    with pytest.raises(usage.UsageError, match="--api-key must not be empty"):
        parse("--fixtures", str(FIXTURES), "--api-key", " ")


def test_scrub_rules_are_collected(tmp_path: Path) -> None:
    options = parse_recording(tmp_path, "--scrub", "sk-[a-z]+=SK", "--scrub", "x=y")
    assert [rule.placeholder for rule in options.scrub_rules] == [b"SK", b"y"]


def unwritable_folder(tmp_path: Path) -> Path:
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    # root writes through any mode bits; sysfs refuses new files even to root.
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no unwritable folder for root here")
    return Path("/sys/kernel")


def test_an_unwritable_folder_refuses_to_start_and_says_why(tmp_path: Path) -> None:
    folder = unwritable_folder(tmp_path)
    with pytest.raises(usage.UsageError, match=f"--fixtures {folder}: cannot write there"):
        parse_recording(folder, "--record-mode", "new_episodes", *UPSTREAM)
    # Replaying alone needs no write access.
    assert parse_recording(folder).record_mode is RecordMode.NONE


def test_make_service_for_a_recording_replay(tmp_path: Path) -> None:
    options = parse_recording(
        tmp_path, "--record-missing", *UPSTREAM, "--listen", "tcp:0:interface=127.0.0.1"
    )
    service = replaytap.makeService(options, reactor=Clock())
    assert isinstance(service, MultiService)
    assert len(list(service)) == 2  # the listener, and the upstream pool's closer
