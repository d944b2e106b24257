"""difyproxy --record (issue 4 items 1 and 3), over loopback: client -> proxy -> replay.

The replay server is the real upstream; every exchange through the proxy must land in one
``sse-fixture/1`` file of the record folder while the client's stream stays as it was.
"""

from __future__ import annotations

import io
import json
import os
import resource
import signal
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort
from twisted.logger import globalLogPublisher
from twisted.python import usage
from twisted.web.client import ResponseDone

from difytw.fixture import Request, Response, load
from difytw.fixturewrite import FixtureWriter
from difytw.proxy import ProxyApp, ProxyConfig
from difytw.proxytap import Options
from difytw.recordfolder import RecordFolder, RecordingTap
from difytw.relay import RelayEnd
from difytw.scrub import Rule
from tests.conftest import FIXTURES, TEST_KEY, RunningReplay
from tests.test_proxy_harness import CHAT, fetch, start_fetch, wait_for
from tests.test_record_miss import secret_upstream

HELLO = load(FIXTURES / "chat-hello.jsonl")


@dataclass
class RecordingProxy:
    url: str  # e.g. http://127.0.0.1:5555/dify
    folder: Path

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.jsonl"))


@pytest.fixture
def start_recording_proxy(tmp_path: Path) -> Iterator[Callable[..., RecordingProxy]]:
    started: list[tuple[IListeningPort, ProxyApp]] = []

    def start(upstream: RunningReplay, rules: tuple[Rule, ...] = ()) -> RecordingProxy:
        folder = tmp_path / "recorded"
        folder.mkdir()
        record = RecordFolder(folder, now=reactor.seconds, rules=rules, api_key=TEST_KEY)
        app = ProxyApp(
            ProxyConfig(upstream=upstream.url + "/v1", api_key=TEST_KEY),
            reactor=reactor,
            record=record,
        )
        listening = reactor.listenTCP(0, app.site(), interface="127.0.0.1")
        started.append((listening, app))
        return RecordingProxy(f"http://127.0.0.1:{listening.getHost().port}/dify", folder)

    yield start
    for listening, app in started:
        pytest_twisted.blockon(listening.stopListening())
        pytest_twisted.blockon(app.close())


def paced_upstream(tmp_path: Path) -> Path:
    """A fixture with a read every ~100 ms, one of them ending inside a UTF-8 character."""
    folder = tmp_path / "paced"
    folder.mkdir()
    reads = [
        b'data: {"event":"message","task_id":"t1","answer":"Hel"}\n\n',
        b"event: ping\n\n",
        b'data: {"event":"message","task_id":"t1","answer":"lo \xe4\xbd',
        b'\xa0"}\n\n',
        b'data: {"event":"message","task_id":"t1","answer":" \xf0\x9f\x98\x80"}\n\n',
        b'data: {"event":"message_end","task_id":"t1","metadata":{}}\n\n',
    ]
    with open(folder / "paced.jsonl", "w", encoding="utf-8") as out:
        writer = FixtureWriter(
            out,
            "paced",
            "authored for test_record_proxy",
            HELLO.request,
            Response(50, 200, (("Content-Type", "text/event-stream; charset=utf-8"),)),
        )
        for i, read in enumerate(reads, 1):
            writer.chunk(100.0 * i, read)
        writer.end(100.0 * len(reads) + 5)
    return folder


async def ask_hello(proxy: RecordingProxy, **headers: str) -> tuple[Any, bytes]:
    response, collector, reason = await fetch(
        "POST",
        proxy.url + "/chat-messages",
        json=dict(HELLO.request.json, user="alice-1234"),
        headers=headers,
    )
    assert reason.check(ResponseDone)
    return response, collector.body


@pytest_twisted.ensureDeferred
async def test_a_fixture_recorded_through_the_proxy_is_equal_to_itself(
    tmp_path: Path,
    start_replay: Callable[..., RunningReplay],
    start_recording_proxy: Callable[..., RecordingProxy],
) -> None:
    folder = paced_upstream(tmp_path)
    original = load(folder / "paced.jsonl")
    proxy = start_recording_proxy(start_replay(fixtures=folder, speed=1.0))
    _, body = await ask_hello(proxy)
    assert body == original.body()

    [path] = proxy.files()
    recorded = load(path)
    assert [c.data for c in recorded.chunks] == [c.data for c in original.chunks]
    for mine, theirs in zip(recorded.chunks, original.chunks, strict=True):
        assert abs(mine.t - theirs.t) < 250, (mine.t, theirs.t)  # ms; generous on purpose
    assert (recorded.response.status, recorded.response.content_type) == (
        200,
        "text/event-stream; charset=utf-8",
    )
    assert (recorded.end.how, recorded.end.incomplete) == ("eof", False)
    assert recorded.request.path == "/v1/chat-messages"  # upstream's path, not /dify's
    assert recorded.request.json == dict(HELLO.request.json, user="scrubbed-user")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest_twisted.ensureDeferred
async def test_recording_adds_no_buffering(
    start_replay: Callable[..., RunningReplay],
    start_recording_proxy: Callable[..., RecordingProxy],
) -> None:
    upstream = start_replay(speed=1.0)
    proxy = start_recording_proxy(upstream)
    _, collector = await start_fetch(
        "POST", proxy.url + "/chat-messages", json=dict(CHAT, user="u1")
    )
    await collector.first_read
    # chat-slow writes an event a second: the client holds event 1 before event 2 is written.
    [entry] = upstream.journal.entries
    first = collector.body
    assert first.startswith(b"data: ") and entry.bytes_sent == len(first)
    await collector.done
    slow = load(FIXTURES / "chat-slow.jsonl")
    assert collector.body == slow.body()
    [path] = proxy.files()
    assert [c.data for c in load(path).chunks] == [c.data for c in slow.chunks]


@pytest_twisted.ensureDeferred
async def test_credentials_and_cookies_never_reach_the_file(
    tmp_path: Path,
    start_replay: Callable[..., RunningReplay],
    start_recording_proxy: Callable[..., RecordingProxy],
) -> None:
    proxy = start_recording_proxy(start_replay(fixtures=secret_upstream(tmp_path)))
    response, body = await ask_hello(
        proxy,
        Authorization="Bearer app-" + "the0clients0own0token",  # key-shaped, made up
        Cookie="client=c00kie",
    )
    assert TEST_KEY.encode() in body  # the client's answer is untouched
    assert response.headers.getRawHeaders(b"Set-Cookie") == [b"session=s3cr3t-cookie; HttpOnly"]
    [path] = proxy.files()
    raw = path.read_bytes()
    for secret in (TEST_KEY, "app-the0clients0own0token", "c00kie", "s3cr3t", "tok3n"):
        assert secret.encode() not in raw, secret
    lowered = raw.lower()
    assert b"authorization" not in lowered and b'"cookie"' not in lowered
    assert b"set-cookie" not in lowered
    assert [name for name, _ in load(path).request.headers] == ["Content-Type"]


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_leaves_a_loadable_cut_fixture(
    start_replay: Callable[..., RunningReplay],
    start_recording_proxy: Callable[..., RecordingProxy],
) -> None:
    upstream = start_replay(speed=1.0)
    proxy = start_recording_proxy(upstream)
    _, collector = await start_fetch(
        "POST", proxy.url + "/chat-messages", json=dict(CHAT, user="u1")
    )
    await collector.first_read
    ended = upstream.journal.next_end()
    assert collector.transport is not None
    collector.transport.stopProducing()  # the client hangs up after event 1
    assert (await ended).outcome == "client_closed"
    [path] = proxy.files()
    # The final end flushes the held-back reads; the provisional one has no chunk yet.
    await wait_for(lambda: bool(load(path).chunks))
    cut = load(path)
    assert (cut.end.how, cut.end.incomplete) == ("reset", True)
    assert cut.body() == collector.body


@pytest_twisted.ensureDeferred
async def test_a_write_error_leaves_the_stream_whole_and_the_fixture_incomplete(
    tmp_path: Path,
    start_replay: Callable[..., RunningReplay],
    start_recording_proxy: Callable[..., RecordingProxy],
) -> None:
    """A full disk, as the file size limit makes it: writes past it fail (EFBIG)."""
    folder = tmp_path / "big"
    folder.mkdir()
    reads = [b'data: {"event":"message","task_id":"t","answer":"%s"}\n\n' % (b"x" * 900)] * 120
    with open(folder / "big.jsonl", "w", encoding="utf-8") as out:
        writer = FixtureWriter(out, "big", "test", HELLO.request, Response(0, 200, ()))
        for i, read in enumerate(reads):
            writer.chunk(2.0 * i, read)  # apart, so that the first reads fit under the limit
        writer.end(2.0 * len(reads))
    proxy = start_recording_proxy(start_replay(fixtures=folder, speed=1.0))
    errors: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "recording" in str(event.get("log_format", "")):
            errors.append(event)

    limit = 40_000  # bytes: the head and a few dozen chunk lines fit, the rest does not
    previous = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
    globalLogPublisher.addObserver(observe)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, previous[1]))
    try:
        _, body = await ask_hello(proxy)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous)
        signal.signal(signal.SIGXFSZ, handler)
        globalLogPublisher.removeObserver(observe)
    assert body == b"".join(reads)  # the live stream never noticed
    [path] = proxy.files()
    cut = load(path)  # still loadable, and says it is not the whole body
    assert (cut.end.how, cut.end.incomplete) == ("reset", True)
    assert 0 < len(cut.chunks) < len(reads) and path.stat().st_size <= limit
    assert [event["log_level"].name for event in errors] == ["error"]


# -- twist difyproxy --record / --scrub -----------------------------------------------------


def parse(argv: list[str]) -> Options:
    options = Options(environ={"DIFY_API_KEY": TEST_KEY})
    options.parseOptions(["--upstream", "http://dify.internal/v1", *argv])
    return options


def test_record_and_scrub_options(tmp_path: Path) -> None:
    options = parse(["--record", str(tmp_path), "--scrub", "sk-[a-z]+=SK"])
    assert options.record_dir == tmp_path
    assert [rule.name for rule in options.scrub_rules] == ["custom:SK"]
    assert parse([]).record_dir is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--record", "/nonexistent/folder"], "--record /nonexistent/folder: not a directory"),
        (["--scrub", "nothing-to-split"], "--scrub needs REGEX=PLACEHOLDER"),
        (["--scrub", "=x"], "--scrub needs REGEX=PLACEHOLDER"),
    ],
)
def test_bad_record_options_are_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError, match=message):
        parse(argv)


def test_an_unwritable_record_folder_refuses_to_start(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
    elif Path("/sys/kernel").is_dir():
        folder = Path("/sys/kernel")  # sysfs refuses new files even to root
    else:
        pytest.skip("no unwritable folder for root here")
    with pytest.raises(usage.UsageError, match=f"--record {folder}: cannot write there"):
        parse(["--record", str(folder)])


def test_the_request_record_keeps_the_json_body(tmp_path: Path) -> None:
    # What the tap stores for a JSON body: the parsed value, the user scrubbed.
    folder = RecordFolder(tmp_path, now=lambda: 1.0)
    body = json.dumps({"query": "hi", "user": "zed-42"}).encode()
    tap = folder.tap(
        b"POST",
        b"http://dify/v1/chat-messages?x=1",
        [(b"Content-Type", [b"application/json"]), (b"Authorization", [b"Bearer k"])],
        io.BytesIO(body),
    )
    request: Request = tap.recorder.request
    assert (request.path, request.query) == ("/v1/chat-messages", "x=1")
    assert request.json == {"query": "hi", "user": "scrubbed-user"}
    assert request.headers == (("Content-Type", "application/json"),)


def tap_for(folder: Path) -> RecordingTap:
    return RecordFolder(folder, now=lambda: 1.0).tap(b"GET", b"http://dify/v1/parameters", [], None)


def test_a_failing_watcher_beside_the_tap_makes_the_fixture_incomplete(tmp_path: Path) -> None:
    tap = tap_for(tmp_path)
    tap.response(200, [(b"Content-Type", [b"application/json"])])

    def broken(data: bytes) -> None:
        raise ValueError("side parser bug")

    observer = tap.observing(broken)
    with pytest.raises(ValueError):
        observer(b'{"a":1}')  # BodyRelay logs this and detaches the observer
    tap.end(RelayEnd.COMPLETED)
    recorded = load(tap.path)
    assert recorded.body() == b'{"a":1}'
    assert (recorded.end.how, recorded.end.incomplete) == ("reset", True)


def test_a_tap_that_never_saw_a_head_leaves_no_file(tmp_path: Path) -> None:
    tap = tap_for(tmp_path)
    heard: list[object] = []
    tap.on_end.append(heard.append)
    tap.end(RelayEnd.CLIENT_GONE)
    assert list(tmp_path.iterdir()) == [] and heard == []


@pytest.mark.parametrize(
    ("end", "how"),
    [
        (RelayEnd.COMPLETED, "eof"),
        (RelayEnd.UPSTREAM_DISCONNECTED, "reset"),
        (RelayEnd.CLIENT_GONE, "reset"),
        (RelayEnd.IDLE_TIMEOUT, "timeout"),
        (RelayEnd.DURATION_EXCEEDED, "reset"),
    ],
)
def test_how_each_relay_end_is_recorded(tmp_path: Path, end: RelayEnd, how: str) -> None:
    tap = tap_for(tmp_path)
    heard: list[Any] = []
    tap.on_end.append(heard.append)
    tap.response(200, [(b"Set-Cookie", [b"a=b"]), (b"Content-Length", [b"2"])])
    tap.chunk(b"{}")
    tap.end(end)
    [fixture] = heard
    assert (fixture.end.how, fixture.end.incomplete) == (how, how != "eof")
    assert fixture.response.headers == ()  # Set-Cookie and Content-Length are not kept
