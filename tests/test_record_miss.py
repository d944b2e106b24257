"""difyreplay recording its misses (issue 4 item 2), over loopback.

A second replay server plays the real Dify: the recording replay forwards to it with the
upstream key, and its journal shows what reached "Dify".  The recording replay has its
own, different key, which only guards the fake.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort
from twisted.logger import LogEvent, LogLevel, formatEvent, globalLogPublisher
from twisted.web.client import HTTPConnectionPool, ResponseDone
from twisted.web.server import Site

from difytw.fixture import end_for, load
from difytw.fixtureindex import FixtureIndex
from difytw.passthrough import Passthrough, RecordMode
from difytw.recordfolder import RecordFolder
from difytw.replay import ReplayApp
from difytw.scrub import parse_rule
from difytw.upstream import tls_policy, upstream_client
from tests.conftest import FIXTURES, TEST_KEY, RunningReplay
from tests.test_proxy_harness import CHAT, fetch, free_port, start_fetch, wait_for

GUARD_KEY = "app-guard0of0the0fake0replay"  # the recording replay's own --api-key
GUARD = {"Authorization": f"Bearer {GUARD_KEY}"}
HELLO = load(FIXTURES / "chat-hello.jsonl")


@dataclass
class Recording:
    url: str  # e.g. http://127.0.0.1:5555 (requests go to url + "/v1/...")
    app: ReplayApp
    folder: Path

    def files(self) -> list[Path]:
        return sorted(self.folder.glob("*.jsonl"))


@pytest.fixture
def start_recording(tmp_path: Path) -> Iterator[Callable[..., Recording]]:
    """Factory: a recording replay on ``folder`` in ``mode``, forwarding to ``upstream``."""
    cleanup: list[tuple[IListeningPort, HTTPConnectionPool]] = []

    def start(
        mode: RecordMode, upstream: str, folder: Path | None = None, **folder_args: Any
    ) -> Recording:
        folder = folder if folder is not None else tmp_path / "recorded"
        folder.mkdir(exist_ok=True)
        pool = HTTPConnectionPool(reactor, persistent=False)
        client = upstream_client(reactor, pool, connect_timeout=5.0, tls=tls_policy(None))
        records = RecordFolder(folder, now=reactor.seconds, api_key=TEST_KEY, **folder_args)
        passthrough = Passthrough(upstream, TEST_KEY, client=client, clock=reactor, folder=records)
        app = ReplayApp(
            FixtureIndex.from_directory(folder),
            clock=reactor,
            speed=0.0,
            api_key=GUARD_KEY,
            record_mode=mode,
            passthrough=passthrough,
        )
        listening = reactor.listenTCP(0, Site(app.resource()), interface="127.0.0.1")
        cleanup.append((listening, pool))
        return Recording(f"http://127.0.0.1:{listening.getHost().port}", app, folder)

    yield start
    for listening, pool in cleanup:
        pytest_twisted.blockon(listening.stopListening())
        pytest_twisted.blockon(pool.closeCachedConnections())


@pytest.fixture
def logged_errors() -> Iterator[list[str]]:
    """Errors and criticals logged during a test (e.g. Twisted's "Producer was not
    unregistered" when a request is finished twice)."""
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") in (LogLevel.error, LogLevel.critical):
            failure = event.get("log_failure")
            seen.append(str(failure.value) if failure is not None else formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


async def ask_hello(recording: Recording, **headers: str) -> tuple[Any, bytes]:
    response, collector, reason = await fetch(
        "POST",
        recording.url + "/v1/chat-messages",
        json=dict(HELLO.request.json, user="alice-1234"),
        headers={**GUARD, **headers},
    )
    assert reason.check(ResponseDone)
    return response, collector.body


@pytest_twisted.ensureDeferred
async def test_a_miss_is_recorded_once_then_replayed(
    replay: RunningReplay, start_recording: Callable[..., Recording]
) -> None:
    recording = start_recording(RecordMode.NEW_EPISODES, replay.url)
    first, first_body = await ask_hello(recording)
    second, second_body = await ask_hello(recording)

    assert first.code == second.code == 200
    assert first_body == second_body == HELLO.body()
    assert len(replay.journal.entries) == 1  # "Dify" saw one request for two
    assert replay.journal.entries[0].auth == "ok"  # with the upstream key, not the guard's
    [path] = recording.files()
    recorded = load(path)
    assert recorded.body() == HELLO.body() and recorded.end.how == "eof"
    assert recorded.request.path == "/v1/chat-messages"
    assert recorded.request.json["user"] == "scrubbed-user"
    forwarded, replayed = recording.app.journal.entries
    assert forwarded.fixture == replayed.fixture == recorded.id
    assert (forwarded.outcome, replayed.outcome) == ("completed", "completed")
    assert forwarded.bytes_sent == len(HELLO.body())


@pytest_twisted.ensureDeferred
async def test_a_plain_json_answer_is_recorded_and_the_user_scrubbed(
    replay: RunningReplay, start_recording: Callable[..., Recording]
) -> None:
    recording = start_recording(RecordMode.NEW_EPISODES, replay.url)
    answers = []
    for user in ("alice-1234", "bob-5678"):  # matching ignores the user, as Dify scopes by it
        response, collector, _ = await fetch(
            "GET", recording.url + f"/v1/parameters?user={user}", headers=GUARD
        )
        assert response.code == 200
        answers.append(collector.body)
    assert answers[0] == answers[1] == load(FIXTURES / "parameters-get.jsonl").body()
    assert len(replay.journal.entries) == 1
    [path] = recording.files()
    text = path.read_text()
    assert "alice-1234" not in text
    assert load(path).request.query == "user=scrubbed-user"


def secret_upstream(tmp_path: Path) -> Path:
    """A "Dify" whose answer carries the upstream key, a Bearer token and a cookie."""
    folder = tmp_path / "upstream"
    folder.mkdir()
    head = [json.loads(line) for line in (FIXTURES / "chat-hello.jsonl").read_text().splitlines()]
    head[2]["t"] = 0
    head[2]["headers"].append(["Set-Cookie", "session=s3cr3t-cookie; HttpOnly"])
    head[2]["headers"].append(["X-Echo", f"Bearer {TEST_KEY}"])
    body = f'data: {{"event":"message","answer":"{TEST_KEY} / Bearer tok3n-abcdefgh"}}\n\n'
    end = end_for(body.encode(), 6)
    records = [
        *head[:3],
        {"type": "chunk", "t": 5, "text": body},
        {"type": "end", "t": 6, "how": "eof", "bytes": end.bytes, "sha256": end.sha256},
    ]
    (folder / "echo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest_twisted.ensureDeferred
async def test_no_key_cookie_or_token_reaches_a_recorded_file(
    tmp_path: Path,
    start_replay: Callable[..., RunningReplay],
    start_recording: Callable[..., Recording],
) -> None:
    upstream = start_replay(fixtures=secret_upstream(tmp_path))
    # (A rule's name, its regex, goes into the file: so no literal secret in it.)
    rule = parse_rule("s[0-9]cr[0-9]t-[a-z]+=COOKIE")
    recording = start_recording(RecordMode.NEW_EPISODES, upstream.url, rules=[rule])
    response, body = await ask_hello(recording, Cookie="client=c00kie")
    assert TEST_KEY.encode() in body  # the live answer is untouched...
    assert response.headers.getRawHeaders(b"Set-Cookie")  # ...headers included
    [path] = recording.files()
    raw = path.read_bytes()
    for secret in (TEST_KEY, GUARD_KEY, "tok3n-abcdefgh", "s3cr3t", "c00kie", "alice-1234"):
        assert secret.encode() not in raw, secret
    assert b"set-cookie" not in raw.lower() and b"authorization" not in raw.lower()
    fixture = load(path)
    assert b"app-scrubbed / Bearer scrubbed" in fixture.body()
    # Only the rules that matched something recorded: the custom one only ever saw the
    # Set-Cookie header, which is not recorded.
    assert fixture.scrubbed == ("bearer-token", "user", "upstream-key")


@pytest_twisted.ensureDeferred
async def test_mode_none_never_contacts_upstream(
    replay: RunningReplay, start_recording: Callable[..., Recording]
) -> None:
    recording = start_recording(RecordMode.NONE, replay.url)
    response, collector, _ = await fetch(
        "POST", recording.url + "/v1/chat-messages", json=HELLO.request.json, headers=GUARD
    )
    assert response.code == 404
    assert json.loads(collector.body)["code"] == "not_found"
    assert replay.journal.entries == [] and recording.files() == []


@pytest_twisted.ensureDeferred
async def test_mode_all_always_forwards_and_records(
    tmp_path: Path, replay: RunningReplay, start_recording: Callable[..., Recording]
) -> None:
    folder = tmp_path / "has-hello"
    folder.mkdir()
    shutil.copy(FIXTURES / "chat-hello.jsonl", folder)
    recording = start_recording(RecordMode.ALL, replay.url, folder=folder)
    for _ in range(2):
        _, body = await ask_hello(recording)
        assert body == HELLO.body()
    assert len(replay.journal.entries) == 2
    assert len(recording.files()) == 3  # the one it had, and two new recordings


@pytest_twisted.ensureDeferred
async def test_mode_once_records_into_an_empty_folder(
    replay: RunningReplay, start_recording: Callable[..., Recording]
) -> None:
    recording = start_recording(RecordMode.ONCE, replay.url)
    assert recording.app.record_mode is RecordMode.NEW_EPISODES
    for _ in range(2):
        await ask_hello(recording)
    assert len(replay.journal.entries) == 1 and len(recording.files()) == 1


@pytest_twisted.ensureDeferred
async def test_mode_once_only_replays_a_folder_that_has_fixtures(
    tmp_path: Path, replay: RunningReplay, start_recording: Callable[..., Recording]
) -> None:
    folder = tmp_path / "has-parameters"
    folder.mkdir()
    shutil.copy(FIXTURES / "parameters-get.jsonl", folder)
    recording = start_recording(RecordMode.ONCE, replay.url, folder=folder)
    response, _, _ = await fetch(
        "POST", recording.url + "/v1/chat-messages", json=HELLO.request.json, headers=GUARD
    )
    assert response.code == 404
    assert replay.journal.entries == [] and len(recording.files()) == 1


@pytest_twisted.ensureDeferred
async def test_the_fakes_own_key_still_guards_it(
    replay: RunningReplay, start_recording: Callable[..., Recording]
) -> None:
    recording = start_recording(RecordMode.ALL, replay.url)
    response, _, _ = await fetch(
        "POST",
        recording.url + "/v1/chat-messages",
        json=HELLO.request.json,
        headers={"Authorization": f"Bearer {TEST_KEY}"},  # the upstream key is not this one
    )
    assert response.code == 401
    assert replay.journal.entries == [] and recording.files() == []


@pytest_twisted.ensureDeferred
async def test_a_stop_for_a_forwarded_run_goes_upstream_unrecorded(
    replay: RunningReplay, start_recording: Callable[..., Recording]
) -> None:
    recording = start_recording(RecordMode.NEW_EPISODES, replay.url)
    response, collector, _ = await fetch(
        "POST",
        recording.url + "/v1/chat-messages/task-42/stop",
        json={"user": "alice-1234"},
        headers=GUARD,
    )
    assert response.code == 200 and json.loads(collector.body) == {"result": "success"}
    [entry] = replay.journal.entries
    assert entry.path == "/v1/chat-messages/task-42/stop" and entry.stop is not None
    assert recording.files() == []


@pytest_twisted.ensureDeferred
async def test_an_unreachable_upstream_is_a_502_and_no_file(
    start_recording: Callable[..., Recording],
) -> None:
    recording = start_recording(RecordMode.NEW_EPISODES, f"http://127.0.0.1:{free_port()}")
    response, collector, _ = await fetch(
        "POST", recording.url + "/v1/chat-messages", json=HELLO.request.json, headers=GUARD
    )
    assert response.code == 502
    assert json.loads(collector.body)["code"] == "upstream_unavailable"
    assert recording.files() == []
    [entry] = recording.app.journal.entries
    assert entry.status == 502


@pytest_twisted.ensureDeferred
async def test_an_upstream_cut_is_passed_on_and_recorded_as_reset(
    tmp_path: Path,
    start_replay: Callable[..., RunningReplay],
    start_recording: Callable[..., Recording],
    logged_errors: list[str],
) -> None:
    folder = tmp_path / "cut"
    folder.mkdir()
    head = [json.loads(line) for line in (FIXTURES / "chat-hello.jsonl").read_text().splitlines()]
    head[2]["t"] = 0
    part = 'data: {"event":"message","task_id":"t","answer":"Hel"}\n\n'
    end = end_for(part.encode(), 20, "reset", incomplete=True)
    records = [
        *head[:3],
        {"type": "chunk", "t": 10, "text": part},
        {"type": "end", "t": 20, "how": "reset", "bytes": end.bytes, "sha256": end.sha256},
    ]
    (folder / "cut.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    recording = start_recording(RecordMode.NEW_EPISODES, start_replay(fixtures=folder).url)
    _, collector, reason = await fetch(
        "POST", recording.url + "/v1/chat-messages", json=HELLO.request.json, headers=GUARD
    )
    assert not reason.check(ResponseDone)  # cut upstream, cut here: no clean end
    assert collector.body == part.encode()
    [entry] = recording.app.journal.entries
    assert entry.outcome == "reset"
    [path] = recording.files()
    recorded = load(path)
    assert (recorded.end.how, recorded.end.incomplete) == ("reset", True)
    assert recorded.body() == part.encode()
    assert logged_errors == []


async def leave_after_first_read(upstream: RunningReplay, recording: Recording) -> bytes:
    """Ask for the slow chat, leave after its first read; what arrived until then."""
    _, collector = await start_fetch(
        "POST", recording.url + "/v1/chat-messages", json=dict(CHAT, user="u1"), headers=GUARD
    )
    await collector.first_read
    upstream_ended = upstream.journal.next_end()
    assert collector.transport is not None
    collector.transport.stopProducing()
    assert (await upstream_ended).outcome == "client_closed"  # upstream let go at once
    entry = recording.app.journal.entries[-1]
    await wait_for(lambda: entry.outcome != "pending")
    assert entry.outcome == "client_closed"
    return bytes(collector.body)


@pytest_twisted.ensureDeferred
async def test_a_client_that_leaves_a_forwarded_stream_closes_upstream_and_the_file(
    start_replay: Callable[..., RunningReplay],
    start_recording: Callable[..., Recording],
    logged_errors: list[str],
    logged: list[LogEvent],
) -> None:
    upstream = start_replay(speed=1.0)
    recording = start_recording(RecordMode.NEW_EPISODES, upstream.url)
    received = await leave_after_first_read(upstream, recording)
    [path] = recording.files()
    cut = load(path)
    assert (cut.end.how, cut.end.incomplete) == ("reset", True)
    assert cut.body() == received
    # A cut recording is no answer: it stays out of the index, and the same request is
    # forwarded (and recorded) again instead of replaying the truncated stream for ever.
    assert recording.app.index.fixtures == ()
    await leave_after_first_read(upstream, recording)
    assert len(upstream.journal.entries) == 2
    assert len(recording.files()) == 2
    # A restart skips them too, and says so, naming each file.
    restarted = ReplayApp(FixtureIndex.from_directory(recording.folder), clock=reactor)
    assert restarted.index.fixtures == ()
    assert {f.source for f in restarted.index.incomplete} == {str(f) for f in recording.files()}
    warnings = [formatEvent(e) for e in logged if e.get("log_level") == LogLevel.warn]
    for file in recording.files():
        assert f"loaded {file}: an incomplete recording (end: reset), never replayed" in warnings
    assert logged_errors == []
