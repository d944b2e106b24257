"""Stopping Dify's run when a stream is abandoned (issue 7), over loopback and in memory.

The wire tests put a real difyproxy in front of a real replay server, whose journal shows
both what the proxy did upstream (closed the stream: ``client_closed``) and the stop call
it made (``entry.stop``: task id and user).  The stop client's retry and outcomes are
tested in memory with a stub HTTP client and a ``task.Clock``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import REGISTRY
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock, deferLater
from twisted.python import usage
from twisted.web.client import Agent

from difytw.fixture import Chunk, Fixture, Request, end_for, load
from difytw.fixturewrite import dump
from difytw.proxy import ProxyConfig
from difytw.proxytap import Options
from difytw.relay import RelayEnd
from difytw.stopper import (
    RunKind,
    RunRoute,
    StopClient,
    StopOutcome,
    StopPolicy,
    UpstreamRun,
    body_user,
    query_user,
    run_route,
)
from difytw.streamwatch import StreamWatch
from tests.test_proxy_harness import (
    CHAT,
    FIXTURES,
    TEST_KEY,
    RunningProxy,
    client_pool,
    data_frames,
    events,
    fetch,
    free_port,
    start_fetch,
    start_proxy,
    wait_for,
)

__all__ = ["start_proxy"]

CHAT_SLOW = load(FIXTURES / "chat-slow.jsonl")
WORKFLOW = load(FIXTURES / "workflow-run.jsonl")
COMPLETION = load(FIXTURES / "completion-translate.jsonl")
CHATFLOW = load(FIXTURES / "chatflow-tts.jsonl")
CHAT_HELLO = load(FIXTURES / "chat-hello.jsonl")
# Issue 7: the upstream close and the stop call are both seen within this long.
PROMPT = 0.5


def task_of(fixture: Fixture) -> str:
    return next(f["task_id"] for f in data_frames(fixture.body()) if "task_id" in f)


def request_json(fixture: Fixture, user: str) -> dict[str, Any]:
    return dict(fixture.request.json, user=user)


def stop_count(outcome: str) -> float:
    value = REGISTRY.get_sample_value("difytw_stop_calls_total", {"outcome": outcome})
    return value or 0.0


async def abandon(
    proxy: RunningProxy, path: str, body: dict[str, Any] | None, fault: str | None = None
) -> float:
    """Start a stream (a GET without a body), hang up after its first read; returns when
    the client left."""
    headers = {"X-Replay-Fault": fault} if fault else {}
    method, content = ("GET", {}) if body is None else ("POST", {"json": body})
    _, collector = await start_fetch(method, proxy.url + path, headers=headers, **content)
    # A whole frame that names the task (some streams open with a ping).
    await wait_for(lambda: b'"task_id"' in collector.body and collector.body.endswith(b"\n\n"))
    assert collector.transport is not None
    left_at: float = reactor.seconds()
    collector.transport.stopProducing()
    return left_at


def stops(replay: Any) -> list[Any]:
    return [e for e in replay.journal.entries if e.stop is not None]


def serve(fixture: Fixture, folder: Path, start_replay: Callable[..., Any]) -> Any:
    """A replay server on ``fixture`` alone (written to ``folder``)."""
    dump(fixture, folder / f"{fixture.id}.jsonl")
    return start_replay(fixtures=folder)


def resumed(fixture: Fixture) -> Fixture:
    """``fixture``'s stream as GET /workflow/{run id}/events serves it (section 4)."""
    run_id = next(f["workflow_run_id"] for f in data_frames(fixture.body()))
    request = Request("GET", f"/v1/workflow/{run_id}/events")
    return replace(fixture, id=f"{fixture.id}-resumed", request=request)


# -- over loopback -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("speed", "fault"),
    [(1.0, None), (0.0, "stall=60@2")],
    ids=["chat-slow-at-speed-1", "stall-fault"],
)
@pytest_twisted.ensureDeferred
async def test_client_abort_closes_upstream_and_stops_the_run(
    speed: float,
    fault: str | None,
    start_replay: Callable[..., Any],
    start_proxy: Callable[..., RunningProxy],
) -> None:
    replay = start_replay(speed=speed)
    proxy = start_proxy(replay.url + "/v1", clock=Clock())
    before = stop_count("stopped")
    left_at = await abandon(proxy, "/chat-messages", dict(CHAT, user="alice"), fault)
    await wait_for(lambda: bool(stops(replay)) and stops(replay)[0].ended_at is not None)
    stream, stop = replay.journal.entries
    assert stream.path == "/v1/chat-messages"
    assert stream.outcome == "client_closed"
    assert stream.ended_at - left_at < PROMPT
    task = task_of(CHAT_SLOW)
    assert stop.path == f"/v1/chat-messages/{task}/stop"
    assert stop.auth == "ok"  # with the app key
    assert stop.stop["task_id"] == task and stop.stop["user"] == "alice"
    assert stop.ended_at - left_at < PROMPT
    # The upstream read was closed before the stop went out, so the replay server found
    # no stream left to stop: Dify had already seen its reader go.
    assert stop.time >= stream.ended_at and stop.stop["stopped"] == []
    assert stop_count("stopped") == before + 1


@pytest.mark.parametrize(
    ("fixture", "stop_path"),
    [
        (WORKFLOW, "/v1/workflows/tasks/{task}/stop"),
        (COMPLETION, "/v1/completion-messages/{task}/stop"),
        (CHATFLOW, "/v1/chat-messages/{task}/stop"),  # chatflows stop through chat-messages
    ],
    ids=["workflow", "completion", "chatflow"],
)
@pytest_twisted.ensureDeferred
async def test_each_run_is_stopped_at_its_own_endpoint(
    fixture: Fixture, stop_path: str, replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url)  # upstream without /v1: the client names it
    left_at = await abandon(proxy, fixture.request.path, request_json(fixture, "bob"), "stall=60@2")
    await wait_for(lambda: bool(stops(replay)) and stops(replay)[0].ended_at is not None)
    stream, stop = replay.journal.entries
    assert (stream.fixture, stream.outcome) == (fixture.id, "client_closed")
    assert stop.path == stop_path.format(task=task_of(fixture))
    assert stop.stop["user"] == "bob"
    assert stop.ended_at - left_at < PROMPT


@pytest.mark.parametrize("fixture", [CHAT_HELLO, COMPLETION], ids=["chat", "completion"])
@pytest_twisted.ensureDeferred
async def test_a_run_that_opens_with_many_pings_is_stopped(
    fixture: Fixture,
    tmp_path: Path,
    start_replay: Callable[..., Any],
    start_proxy: Callable[..., RunningProxy],
) -> None:
    # Dify pings every 10 s until the first token (contract 2.3): 12 pings are two minutes
    # of a slow model, the expensive runs most worth stopping.
    pings = 12
    first = fixture.chunks[0].t
    chunks = (*(Chunk(first, b"event: ping\n\n") for _ in range(pings)), *fixture.chunks)
    body = b"".join(chunk.data for chunk in chunks)
    slow = replace(fixture, chunks=chunks, end=end_for(body, fixture.end.t))
    replay = serve(slow, tmp_path, start_replay)
    proxy = start_proxy(replay.url)
    body_json = request_json(fixture, "gus")
    # The stream stalls right after its first data frame, and the client leaves there.
    await abandon(proxy, fixture.request.path, body_json, f"stall=60@{pings + 1}")
    await wait_for(lambda: bool(stops(replay)) and stops(replay)[0].ended_at is not None)
    stream, stop = replay.journal.entries
    assert stream.outcome == "client_closed"
    kind = "chat-messages" if fixture is CHAT_HELLO else "completion-messages"
    assert stop.path == f"/v1/{kind}/{task_of(fixture)}/stop"
    assert stop.stop["user"] == "gus"


@pytest.mark.parametrize(
    ("fixture", "resume_workflows", "stop_path"),
    [
        (WORKFLOW, False, "/v1/workflows/tasks/{task}/stop"),
        (CHATFLOW, False, "/v1/chat-messages/{task}/stop"),  # only chat-messages stops it
        (WORKFLOW, True, None),
        (CHATFLOW, True, None),
    ],
    ids=["workflow", "chatflow", "workflow-resume-on", "chatflow-resume-on"],
)
@pytest_twisted.ensureDeferred
async def test_an_abandoned_resumed_stream_is_stopped_unless_resuming_is_on(
    fixture: Fixture,
    resume_workflows: bool,
    stop_path: str | None,
    tmp_path: Path,
    start_replay: Callable[..., Any],
    start_proxy: Callable[..., RunningProxy],
) -> None:
    resume = resumed(fixture)
    replay = serve(resume, tmp_path, start_replay)
    proxy = start_proxy(replay.url, resume_workflows=resume_workflows)
    left_at = await abandon(proxy, resume.request.path + "?user=ida", None, "stall=60@2")
    if stop_path is None:
        await wait_for(lambda: replay.journal.entries[0].ended_at is not None)
        await deferLater(reactor, 0.2, lambda: None)  # time enough for a wrong stop to arrive
        assert stops(replay) == []
        return
    await wait_for(lambda: bool(stops(replay)) and stops(replay)[0].ended_at is not None)
    stream, stop = replay.journal.entries
    assert (stream.path, stream.outcome) == (resume.request.path, "client_closed")
    assert stop.path == stop_path.format(task=task_of(fixture))
    assert stop.stop["user"] == "ida"
    assert stop.ended_at - left_at < PROMPT


@pytest_twisted.ensureDeferred
async def test_no_stop_once_the_terminal_event_has_passed(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1")
    # Stall right after message_end: the run is over, only the connection is still open.
    names = [json.loads(e.data)["event"] if e.data else e.event for e in events(CHAT_HELLO.body())]
    through_end = names.index("message_end") + 1
    _, collector = await start_fetch(
        "POST",
        proxy.url + "/chat-messages",
        json=request_json(CHAT_HELLO, "carol"),
        headers={"X-Replay-Fault": f"stall=60@{through_end}"},
    )
    await wait_for(lambda: b'"message_end"' in collector.body and collector.body.endswith(b"\n\n"))
    assert collector.transport is not None
    collector.transport.stopProducing()
    await wait_for(lambda: replay.journal.entries[0].ended_at is not None)
    await deferLater(reactor, 0.2, lambda: None)  # time enough for a wrong stop to arrive
    assert [e.outcome for e in replay.journal.entries] == ["client_closed"]


@pytest_twisted.ensureDeferred
async def test_no_stop_for_a_stream_that_completed(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1")
    _, collector, _ = await fetch("POST", proxy.url + "/chat-messages", json=dict(CHAT, user="u"))
    assert data_frames(collector.body)[-1]["event"] == "message_end"
    await deferLater(reactor, 0.2, lambda: None)
    assert [e.outcome for e in replay.journal.entries] == ["completed"]


@pytest_twisted.ensureDeferred
async def test_no_stop_on_disconnect_makes_no_stop_call(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1", stop_on_disconnect=False)
    await abandon(proxy, "/chat-messages", dict(CHAT, user="u"), "stall=60@2")
    await wait_for(lambda: replay.journal.entries[0].ended_at is not None)
    await deferLater(reactor, 0.2, lambda: None)
    assert [e.outcome for e in replay.journal.entries] == ["client_closed"]


@pytest.mark.parametrize(
    ("fixture", "stopped"),
    [(WORKFLOW, False), (CHATFLOW, False), (COMPLETION, True)],
    ids=["workflow-left", "chatflow-left", "completion-stopped"],
)
@pytest_twisted.ensureDeferred
async def test_resume_workflows_leaves_workflow_runs_going(
    fixture: Fixture, stopped: bool, replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url, resume_workflows=True)
    await abandon(proxy, fixture.request.path, request_json(fixture, "dan"), "stall=60@2")
    await wait_for(lambda: replay.journal.entries[0].ended_at is not None)
    if stopped:
        await wait_for(lambda: bool(stops(replay)))
    else:
        await deferLater(reactor, 0.2, lambda: None)
    assert bool(stops(replay)) is stopped
    assert replay.journal.entries[0].outcome == "client_closed"


class ClosedPortFirst:
    """A real HTTP client whose first request goes to a port nobody listens on."""

    def __init__(self, client: HTTPClient, real_base: bytes, dead_base: bytes) -> None:
        self.client = client
        self.real_base = real_base
        self.dead_base = dead_base
        self.urls: list[bytes] = []

    def request(self, method: str, url: bytes, **kwargs: Any) -> Deferred[Any]:
        if not self.urls:
            url = url.replace(self.real_base, self.dead_base)
        self.urls.append(url)
        return self.client.request(method, url, **kwargs)


@pytest_twisted.ensureDeferred
async def test_a_network_error_is_retried_once_over_the_wire(replay: Any) -> None:
    real = replay.url.encode()
    dead = f"http://127.0.0.1:{free_port()}".encode()
    client = ClosedPortFirst(HTTPClient(Agent(reactor, pool=client_pool())), real, dead)
    stopper = StopClient(client, TEST_KEY.encode(), clock=reactor, retry_delay=0.01)  # type: ignore[arg-type]
    outcome = await stopper.stop(watched_run(real + b"/v1", "erin"))
    assert outcome is StopOutcome.STOPPED
    assert [url.startswith(dead) for url in client.urls] == [True, False]
    (stop,) = replay.journal.entries
    assert stop.stop == {"task_id": "t-1", "user": "erin", "stopped": []}


# -- the stop client in memory -----------------------------------------------------------


def watched_run(base: bytes, user: str | None, kind: RunKind = RunKind.CHAT) -> UpstreamRun:
    run = UpstreamRun("/dify/chat-messages", RunRoute(kind, base), user, 0.0)
    run.watch.feed(b'data: {"event":"message","task_id":"t-1","answer":"a"}\n\n')
    return run


class Answer:
    def __init__(self, code: int) -> None:
        self.code = code

    def content(self) -> Deferred[bytes]:
        return succeed(b'{"result": "success"}')


class StubClient:
    """Answers each request with the next scripted result (an exception, a status, or
    None for a request that never answers)."""

    def __init__(self, *script: Exception | int | None) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, bytes, Any, Any]] = []

    def request(self, method: str, url: bytes, *, headers: Any, data: bytes) -> Deferred[Any]:
        self.calls.append((method, url, headers, data))
        step = self.script.pop(0)
        if step is None:
            return Deferred()
        if isinstance(step, Exception):
            failed: Deferred[Any] = Deferred()
            failed.errback(step)
            return failed
        return succeed(Answer(step))


def stop_with(client: StubClient, run: UpstreamRun) -> tuple[list[StopOutcome], Clock]:
    clock = Clock()
    stopper = StopClient(client, b"app-k", clock=clock, timeout=10.0, retry_delay=0.25)  # type: ignore[arg-type]
    outcomes: list[StopOutcome] = []
    stopper.stop(run).addCallback(outcomes.append)
    return outcomes, clock


def test_the_stop_request_names_the_task_and_user_with_the_key() -> None:
    client = StubClient(200)
    outcomes, _ = stop_with(client, watched_run(b"https://api.dify.ai/v1", "fay"))
    assert outcomes == [StopOutcome.STOPPED]
    [(method, url, headers, data)] = client.calls
    assert (method, url) == ("POST", b"https://api.dify.ai/v1/chat-messages/t-1/stop")
    assert headers.getRawHeaders(b"Authorization") == [b"Bearer app-k"]
    assert headers.getRawHeaders(b"Content-Type") == [b"application/json"]
    assert data == b'{"user": "fay"}'


def test_a_network_error_is_retried_once_after_a_delay() -> None:
    client = StubClient(ConnectionRefusedError(), 200)
    before = stop_count("stopped")
    outcomes, clock = stop_with(client, watched_run(b"http://d/v1", "u"))
    assert outcomes == [] and len(client.calls) == 1
    clock.advance(0.25)
    assert outcomes == [StopOutcome.STOPPED] and len(client.calls) == 2
    assert clock.getDelayedCalls() == []
    assert stop_count("stopped") == before + 1


def test_two_network_errors_are_unreachable_and_not_retried_again() -> None:
    client = StubClient(ConnectionRefusedError(), ConnectionRefusedError())
    before = stop_count("unreachable")
    outcomes, clock = stop_with(client, watched_run(b"http://d/v1", "u"))
    clock.advance(0.25)
    assert outcomes == [StopOutcome.UNREACHABLE] and len(client.calls) == 2
    assert stop_count("unreachable") == before + 1


def test_a_silent_upstream_times_out_and_counts_as_a_network_error() -> None:
    client = StubClient(None, 200)
    outcomes, clock = stop_with(client, watched_run(b"http://d/v1", "u"))
    clock.advance(9.9)
    assert outcomes == [] and len(client.calls) == 1
    clock.advance(0.1)  # the attempt times out...
    clock.advance(0.25)  # ...and the retry goes out after its delay
    assert outcomes == [StopOutcome.STOPPED] and len(client.calls) == 2
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("status", [400, 401, 404, 500])
def test_an_http_error_is_refused_and_not_retried(status: int) -> None:
    client = StubClient(status)
    before = stop_count("refused")
    outcomes, _ = stop_with(client, watched_run(b"http://d/v1", "u"))
    assert outcomes == [StopOutcome.REFUSED] and len(client.calls) == 1
    assert stop_count("refused") == before + 1


def test_without_a_task_id_or_a_user_nothing_is_sent() -> None:
    client = StubClient()
    no_task = UpstreamRun("/dify/chat-messages", RunRoute(RunKind.CHAT, b"http://d"), "u", 0.0)
    no_user = watched_run(b"http://d", None)
    before = (stop_count("no_task_id"), stop_count("no_user"))
    assert stop_with(client, no_task)[0] == [StopOutcome.NO_TASK_ID]
    assert stop_with(client, no_user)[0] == [StopOutcome.NO_USER]
    assert client.calls == []
    assert (stop_count("no_task_id"), stop_count("no_user")) == (before[0] + 1, before[1] + 1)


def test_drain_waits_for_calls_in_flight() -> None:
    client = StubClient(None, None)
    clock = Clock()
    stopper = StopClient(client, b"k", clock=clock)  # type: ignore[arg-type]
    stopper.stop(watched_run(b"http://d", "u"))
    drained: list[object] = []
    stopper.drain().addCallback(drained.append)
    assert drained == []
    clock.advance(10.0)  # the first attempt times out
    clock.advance(0.25)  # the retry goes out, and never answers either
    assert drained == []
    clock.advance(10.0)
    assert len(drained) == 1


# -- pure rules --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "expected"),
    [
        (b"POST", b"https://x/v1/chat-messages", (RunKind.CHAT, b"https://x/v1")),
        (b"POST", b"https://x/v1/chat-messages?user=a", (RunKind.CHAT, b"https://x/v1")),
        (b"POST", b"http://x/completion-messages", (RunKind.COMPLETION, b"http://x")),
        (b"POST", b"http://x/v1/workflows/run", (RunKind.WORKFLOW, b"http://x/v1")),
        (b"POST", b"http://x/v1/workflows/wf-9/run", (RunKind.WORKFLOW, b"http://x/v1")),
        (b"GET", b"http://x/v1/chat-messages", None),
        (b"POST", b"http://x/v1/chat-messages/t/stop", None),
        (b"POST", b"http://x/v1/workflows/tasks/t/stop", None),
        (b"POST", b"http://x/v1/files/upload", None),
        (b"GET", b"http://x/v1/workflow/r-1/events?user=a", (RunKind.WORKFLOW, b"http://x/v1")),
        (b"GET", b"http://x/workflow/r-1/events", (RunKind.WORKFLOW, b"http://x")),
        (b"POST", b"http://x/v1/workflow/r-1/events", None),
        (b"GET", b"http://x/v1/workflow/r-1/events/more", None),
        (b"GET", b"http://x/v1/workflows/run", None),
        (b"POST", b"http://x/v1/chat-messagesX", None),
    ],
)
def test_run_routes(method: bytes, url: bytes, expected: tuple[RunKind, bytes] | None) -> None:
    route = run_route(method, url)
    assert (None if route is None else (route.kind, route.base)) == expected


@pytest.mark.parametrize(
    ("kind", "task", "url"),
    [
        (RunKind.CHAT, "t-1", b"http://x/v1/chat-messages/t-1/stop"),
        (RunKind.COMPLETION, "t-1", b"http://x/v1/completion-messages/t-1/stop"),
        (RunKind.WORKFLOW, "t-1", b"http://x/v1/workflows/tasks/t-1/stop"),
        (
            RunKind.CHAT,
            "../../admin?x=1",
            b"http://x/v1/chat-messages/..%2F..%2Fadmin%3Fx%3D1/stop",
        ),
    ],
)
def test_stop_urls(kind: RunKind, task: str, url: bytes) -> None:
    assert RunRoute(kind, b"http://x/v1").stop_url(task) == url


WORKFLOW_FRAME = b'data: {"event":"workflow_started","task_id":"t","workflow_run_id":"r"}\n\n'
CHATFLOW_FRAME = (
    b'data: {"event":"workflow_started","conversation_id":"c","message_id":"m",'
    b'"task_id":"t","workflow_run_id":"r"}\n\n'
)


@pytest.mark.parametrize(
    ("frames", "kind"),
    [(WORKFLOW_FRAME, RunKind.WORKFLOW), (CHATFLOW_FRAME, RunKind.CHAT)],
    ids=["workflow", "chatflow"],
)
def test_a_resumed_stream_is_stopped_where_its_run_started(frames: bytes, kind: RunKind) -> None:
    route = run_route(b"GET", b"https://api.dify.ai/v1/workflow/r/events?user=u")
    assert route is not None and route.resumed
    run = UpstreamRun("/dify/workflow/r/events", route, "u", 0.0)
    run.watch.feed(frames)
    assert route.stop_kind(run.watch) is kind
    client = StubClient(200)
    outcomes, _ = stop_with(client, run)
    assert outcomes == [StopOutcome.STOPPED]
    [(_, url, _, data)] = client.calls
    assert url == f"https://api.dify.ai/v1/{kind.value}/t/stop".encode()
    assert data == b'{"user": "u"}'


def test_a_started_run_is_stopped_by_its_route_kind_whatever_its_frames() -> None:
    watch = StreamWatch()
    watch.feed(CHATFLOW_FRAME)
    assert RunRoute(RunKind.WORKFLOW, b"http://x").stop_kind(watch) is RunKind.WORKFLOW


@pytest.mark.parametrize(
    ("content_type", "body", "user"),
    [
        (b"application/json", b'{"user": "abc"}', "abc"),
        (b"Application/JSON; charset=utf-8", b'{"user": "\\u00e9"}', "\u00e9"),
        (b"application/json", b'{"user": 42}', "42"),  # Dify str()s a non-string
        (b"application/json", b'{"user": ""}', None),
        (b"application/json", b'{"user": true}', None),
        (b"application/json", b'{"user": {"id": 1}}', None),
        (b"application/json", b'{"query": "hi"}', None),
        (b"application/json", b'["user"]', None),
        (b"application/json", b"{not json", None),
        (b"text/plain", b'{"user": "abc"}', None),
        (None, b'{"user": "abc"}', None),
    ],
)
def test_body_user(content_type: bytes | None, body: bytes, user: str | None) -> None:
    assert body_user(content_type, body) == user


@pytest.mark.parametrize(
    ("query", "user"),
    [
        (None, None),
        (b"", None),
        (b"user=a%20b", "a b"),
        (b"x=1&user=z&user=y", "z"),
        (b"user=", None),
    ],
)
def test_query_user(query: bytes | None, user: str | None) -> None:
    assert query_user(query) == user


def policy_run(kind: RunKind, frames: bytes = b"") -> UpstreamRun:
    run = UpstreamRun("/p", RunRoute(kind, b"http://x"), "u", 0.0, StreamWatch())
    run.watch.feed(frames)
    return run


CHATFLOW_START = b'data: {"event":"workflow_started","task_id":"t","data":{}}\n\n'


@pytest.mark.parametrize("end", list(RelayEnd))
@pytest.mark.parametrize("kind", list(RunKind))
def test_stop_policy(end: RelayEnd, kind: RunKind) -> None:
    abandoned = end in (RelayEnd.CLIENT_GONE, RelayEnd.IDLE_TIMEOUT, RelayEnd.DURATION_EXCEEDED)
    assert StopPolicy().wants_stop(policy_run(kind), end) is abandoned
    assert StopPolicy(enabled=False).wants_stop(policy_run(kind), end) is False
    resuming = StopPolicy(resume_workflows=True)
    assert resuming.wants_stop(policy_run(kind), end) is (
        abandoned and kind is not RunKind.WORKFLOW
    )
    # A chat-messages run that turned out to be a chatflow can be resumed too.
    assert resuming.wants_stop(policy_run(kind, CHATFLOW_START), end) is False
    finished = policy_run(kind, b'data: {"event":"message_end","task_id":"t"}\n\n')
    assert StopPolicy().wants_stop(finished, end) is False


@pytest.mark.parametrize("end", list(RelayEnd))
def test_stop_policy_for_a_resumed_stream(end: RelayEnd) -> None:
    abandoned = end in (RelayEnd.CLIENT_GONE, RelayEnd.IDLE_TIMEOUT, RelayEnd.DURATION_EXCEEDED)
    route = run_route(b"GET", b"http://x/v1/workflow/r/events?user=u")
    for frames in (WORKFLOW_FRAME, CHATFLOW_FRAME):
        run = UpstreamRun("/dify/workflow/r/events", route, "u", 0.0)
        run.watch.feed(frames)
        assert StopPolicy().wants_stop(run, end) is abandoned
        # Issue 7: with --resume-workflows the run is left for the client to come back to.
        assert StopPolicy(resume_workflows=True).wants_stop(run, end) is False


def test_stop_policy_needs_a_run_route() -> None:
    run = UpstreamRun("/dify/workflow/r/events", None, "u", 0.0)
    assert StopPolicy().wants_stop(run, RelayEnd.CLIENT_GONE) is False


# -- twist difyproxy options -------------------------------------------------------------


def parse(argv: list[str]) -> Options:
    options = Options(environ={"DIFY_API_KEY": "app-k"})
    options.parseOptions(["--upstream", "https://api.dify.ai/v1", *argv])
    return options


def test_defaults_stop_runs_and_bound_streams_at_30_minutes() -> None:
    config = parse([]).config
    assert config.max_stream_duration == 1800.0
    assert config.stop_on_disconnect is True and config.resume_workflows is False
    assert ProxyConfig(upstream="http://x", api_key="k").max_stream_duration == 1800.0


def test_the_new_flags_reach_the_config() -> None:
    config = parse(
        ["--no-stop-on-disconnect", "--resume-workflows", "--max-stream-duration", "90s"]
    ).config
    assert config.max_stream_duration == 90.0
    assert config.stop_on_disconnect is False and config.resume_workflows is True


@pytest.mark.parametrize("value", ["0", "-1m", "forever", "5d"])
def test_a_bad_max_stream_duration_is_a_usage_error(value: str) -> None:
    with pytest.raises(usage.UsageError):
        parse(["--max-stream-duration", value])


def test_help_documents_the_new_flags() -> None:
    text = str(Options())
    for flag in ("--max-stream-duration", "--no-stop-on-disconnect", "--resume-workflows"):
        assert flag in text
    assert "stream_duration_exceeded" in text and "[default: 30m]" in text
