"""``twist difyproxy`` options and service (difytw.proxytap), in memory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.application.service import IService, MultiService
from twisted.logger import LogEvent, LogLevel
from twisted.python import usage

from difytw.listening import ListeningService
from difytw.proxy import ProxyConfig
from difytw.proxytap import (
    DEFAULT_LISTEN,
    Options,
    makeService,
    parse_duration,
    parse_size,
    with_backlog,
)
from tests.certs import self_signed
from tests.rawhttp import build_request
from tests.rawhttp import fetch as raw_fetch

KEY = "app-0123456789abcdef"
UPSTREAM = ["--upstream", "https://api.dify.ai/v1"]


def parse(argv: list[str], environ: dict[str, str] | None = None) -> Options:
    options = Options(environ={"DIFY_API_KEY": KEY} if environ is None else environ)
    options.parseOptions(argv)
    return options


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1048576", 1048576),
        ("100M", 100 * 1024**2),
        ("100m", 100 * 1024**2),
        ("20MiB", 20 * 1024**2),
        ("512k", 512 * 1024),
        ("1G", 1024**3),
        ("5MB", 5_000_000),
        ("3KB", 3000),
        ("7b", 7),
        (" 2 GiB ", 2 * 1024**3),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "M", "1.5M", "-1", "10X", "10 MiBs", "ten"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("60", 60.0), ("60s", 60.0), ("500ms", 0.5), ("5m", 300.0), ("1h", 3600.0), ("1.5s", 1.5)],
)
def test_parse_duration(text: str, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "0", "0s", "-5", "5d", "s", "1e3"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("tcp:9000", "tcp:9000:backlog=1024"),
        ("tcp:9000:interface=0.0.0.0", "tcp:9000:interface=0.0.0.0:backlog=1024"),
        ("tcp:9000:backlog=10", "tcp:9000:backlog=10"),
        ("unix:/run/difyproxy.sock", "unix:/run/difyproxy.sock:backlog=1024"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ],
)
def test_with_backlog(endpoint: str, expected: str) -> None:
    assert with_backlog(endpoint) == expected


def test_defaults() -> None:
    options = parse(UPSTREAM)
    assert options["listen"] == DEFAULT_LISTEN
    assert "backlog=1024" in DEFAULT_LISTEN and "interface=127.0.0.1" in DEFAULT_LISTEN
    assert options.config == ProxyConfig(
        upstream="https://api.dify.ai/v1",
        api_key=KEY,
        prefix="/dify",
        max_body=100 * 1024**2,
        header_timeout=60.0,
        idle_timeout=300.0,
        connect_timeout=10.0,
        ca_bundle=None,
    )
    assert KEY not in repr(options.config)


def test_every_flag() -> None:
    options = parse(
        [
            *UPSTREAM,
            "--listen",
            "tcp:9999:interface=127.0.0.1",
            "--prefix",
            "/api/dify/",
            "--max-body",
            "20MiB",
            "--header-timeout",
            "5s",
            "--idle-timeout",
            "2m",
            "--connect-timeout",
            "1500ms",
        ]
    )
    config = options.config
    assert options["listen"] == "tcp:9999:interface=127.0.0.1:backlog=1024"
    assert (config.prefix, config.max_body) == ("/api/dify/", 20 * 1024**2)
    assert (config.header_timeout, config.idle_timeout, config.connect_timeout) == (5, 120, 1.5)


def test_missing_key_refuses_and_says_how_to_give_one() -> None:
    with pytest.raises(usage.UsageError) as caught:
        parse(UPSTREAM, environ={})
    message = str(caught.value)
    assert "DIFY_API_KEY" in message and "--api-key-file" in message


SECRET = "app-SECRETsecret0123"


@pytest.mark.parametrize(
    "argv",
    [
        ["--api-key", SECRET],
        [f"--api-key={SECRET}"],
        ["--api-key-f", SECRET],  # an abbreviation of --api-key-file, naming no file
        ["--api-key-file", SECRET],
        ["--api-key-file", f"{SECRET}/x"],
    ],
)
def test_a_key_given_as_a_flag_is_refused_without_echoing_it(argv: list[str]) -> None:
    with pytest.raises(usage.UsageError) as caught:
        parse([*UPSTREAM, *argv], environ={})
    message = str(caught.value)
    assert "SECRET" not in message
    assert "DIFY_API_KEY" in message and "--api-key-file" in message


def test_key_file_is_read_and_beats_the_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("app-from-file\n")
    options = parse([*UPSTREAM, "--api-key-file", str(key_file)])
    assert options.config.api_key == "app-from-file"


@pytest.mark.parametrize("content", ["", "  \n", "app key with spaces", "app-\x00x"])
def test_unusable_key_file_is_refused(tmp_path: Path, content: str) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(content)
    with pytest.raises(usage.UsageError) as caught:
        parse([*UPSTREAM, "--api-key-file", str(key_file)], environ={})
    assert content.strip() == "" or content not in str(caught.value)  # never echo the key


def test_missing_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError, match="api-key-file: no such file"):
        parse([*UPSTREAM, "--api-key-file", str(tmp_path / "nope")])


def test_unreadable_key_file_names_the_file_and_why(tmp_path: Path) -> None:
    with pytest.raises(usage.UsageError) as caught:
        parse([*UPSTREAM, "--api-key-file", str(tmp_path)])  # a directory
    assert str(caught.value) == f"--api-key-file {tmp_path}: Is a directory"


def test_a_key_file_that_is_not_text_is_refused_without_quoting_it(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_bytes(b"app-SECRET\xff\xfe")
    with pytest.raises(usage.UsageError) as caught:
        parse([*UPSTREAM, "--api-key-file", str(key_file)])
    assert str(caught.value).endswith(": not UTF-8 text")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--upstream", "ftp://x/v1"],
        ["--upstream", "https://user:pw@api.dify.ai/v1"],
        [*UPSTREAM, "--prefix", "dify"],
        [*UPSTREAM, "--prefix", "/a/../b"],
        [*UPSTREAM, "--max-body", "lots"],
        [*UPSTREAM, "--header-timeout", "0"],
        [*UPSTREAM, "--idle-timeout", "forever"],
        [*UPSTREAM, "--ca-bundle", "/nonexistent/ca.pem"],
        [*UPSTREAM, "--no-such-flag"],
        [*UPSTREAM, "extra-argument"],
    ],
)
def test_bad_flags_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(usage.UsageError):
        parse(argv)


def test_make_service_returns_a_service() -> None:
    service = makeService(parse(UPSTREAM))
    assert IService.providedBy(service)
    assert isinstance(service, MultiService)
    assert len(list(service)) == 2  # the listener and the pool closer


@pytest_twisted.ensureDeferred
async def test_service_listens_and_stops() -> None:
    service = makeService(parse([*UPSTREAM, "--listen", "tcp:0:interface=127.0.0.1"]))
    service.startService()
    assert service.running
    await service.stopService()
    assert not service.running


def test_ca_bundle_is_loaded(tmp_path: Path) -> None:
    bundle, _ = self_signed(tmp_path)
    options = parse([*UPSTREAM, "--ca-bundle", str(bundle)])
    assert options.config.ca_bundle == str(bundle)
    assert IService.providedBy(makeService(options))


def test_garbage_ca_bundle_is_a_usage_error(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate\n")
    with pytest.raises(usage.UsageError):
        makeService(parse([*UPSTREAM, "--ca-bundle", str(bundle)]))


def test_demo_needs_no_key_and_no_upstream() -> None:
    from difytw.proxytap import makeService
    from difytw.web import DemoService

    options = parse(["--demo"], environ={})
    service = makeService(options)
    assert isinstance(service, DemoService)
    assert options["listen"].startswith("tcp:8080:interface=127.0.0.1")


def test_port_in_use_is_one_clear_line() -> None:
    import socket

    from twisted.internet import reactor

    from difytw.proxytap import makeService

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        options = parse(
            ["--upstream", "http://127.0.0.1:9", "--listen", f"tcp:{port}:interface=127.0.0.1"],
            environ={"DIFY_API_KEY": "app-x"},
        )
        service = makeService(options, reactor=reactor)
        with pytest.raises(SystemExit) as exit_info:
            service.startService()
        message = str(exit_info.value)
        assert f"127.0.0.1:{port}" in message and "--listen tcp:" in message
        assert "\n" not in message
    finally:
        taken.close()
        service.stopService()  # nothing listened; closes the idle upstream pool


BAD_LISTEN = ["garbage", "tcp:99999", "tcp:port=-1", "tcp:abc", "tcp", "tcp:80:nonsense=1"]


@pytest.mark.parametrize("listen", BAD_LISTEN)
@pytest.mark.parametrize("mode", [UPSTREAM, ["--demo"]], ids=["proxy", "demo"])
def test_an_endpoint_that_cannot_listen_is_one_line_usage_error(
    listen: str, mode: list[str]
) -> None:
    with pytest.raises(usage.UsageError) as caught:
        parse([*mode, "--listen", listen])
    message = str(caught.value)
    assert message.startswith(f"--listen {listen}: ") and "\n" not in message


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (UPSTREAM, "--upstream"),
        (["--max-body", "1M"], "--max-body"),
        (["--auth", "jwt"], "--auth"),
        (["--allow", "/workflows/logs"], "--allow"),
        (["--no-stop-on-disconnect"], "--no-stop-on-disconnect"),
        (["--scrub", "x=y"], "--scrub"),
        (["--api-key-file", "/etc/hostname"], "--api-key-file"),
    ],
)
def test_flags_the_demo_does_not_use_are_refused(argv: list[str], named: str) -> None:
    with pytest.raises(usage.UsageError) as caught:
        parse(["--demo", *argv], environ={})
    message = str(caught.value)
    assert named in message and "--demo" in message and "\n" not in message


@pytest.mark.parametrize(
    "listen", ["tcp:8080", "tcp:8080:interface=0.0.0.0", "tcp6:8080:interface=\\:\\:"]
)
def test_the_demo_refuses_to_listen_beyond_loopback(listen: str) -> None:
    with pytest.raises(usage.UsageError) as caught:
        parse(["--demo", "--listen", listen], environ={})
    message = str(caught.value)
    assert "no auth" in message and "loopback" in message and "\n" not in message


@pytest.mark.parametrize(
    "listen", ["tcp:0:interface=127.0.0.1", "tcp6:0:interface=\\:\\:1", "unix:/tmp/demo.sock"]
)
def test_the_demo_listens_where_asked_on_loopback(listen: str) -> None:
    assert parse(["--demo", "--listen", listen], environ={})["listen"] == listen


@pytest_twisted.ensureDeferred
async def test_multipart_parser_warnings_go_to_the_debug_log_not_stderr(
    replay: Any, logged: list[LogEvent]
) -> None:
    import logging

    from twisted.internet import reactor

    class Collect(logging.Handler):
        def __init__(self, level: int) -> None:
            super().__init__(level)
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    # What reaches the root logger is what Python's last-resort handler prints to stderr.
    root = Collect(logging.WARNING)
    logging.getLogger().addHandler(root)

    service = makeService(
        parse(["--upstream", replay.url + "/v1", "--listen", "tcp:0:interface=127.0.0.1"]),
        reactor=reactor,
    )
    service.startService()
    try:
        [listener] = [s for s in service if isinstance(s, ListeningService)]
        assert listener.port is not None
        port = listener.port.getHost().port  # type: ignore[attr-defined]
        # A space in a part's header name: python-multipart warns before it raises.
        body = b"--XX\r\nbad header: x\r\n\r\ndata\r\n--XX--\r\n"
        request = build_request(
            "POST",
            "/dify/files/upload",
            headers=[("Content-Type", "multipart/form-data; boundary=XX")],
            body=body,
        )
        _, answered = raw_fetch(reactor, port, request)
        await answered
    finally:
        await service.stopService()
        logging.getLogger().removeHandler(root)
    library = [e for e in logged if e.get("log_namespace") == "difytw.library"]
    assert library and all(e["log_level"] == LogLevel.debug for e in library)
    assert library[0]["library"].startswith("python_multipart")
    assert [r for r in root.records if r.name.startswith("python_multipart")] == []
