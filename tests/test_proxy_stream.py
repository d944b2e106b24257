"""difyproxy over loopback against the real replay server: streaming and headers.

Every test here crosses real sockets: client (treq) -> difyproxy -> difyreplay.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH

from difytw.fixture import load
from difytw.proxy import ProxyApp, ProxyConfig
from difytw.sse import Decoder, Event

TEST_KEY = "app-test-key-not-a-secret"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CHAT = {"inputs": {}, "query": "Count slowly from one to five", "response_mode": "streaming"}


@dataclass
class RunningProxy:
    url: str  # e.g. "http://127.0.0.1:5555/dify"
    app: ProxyApp
    listening: IListeningPort = field(repr=False)


@pytest.fixture
def start_proxy() -> Iterator[Callable[..., RunningProxy]]:
    started: list[RunningProxy] = []

    def start(upstream: str, *, clock: Any = None, **config: Any) -> RunningProxy:
        config.setdefault("api_key", TEST_KEY)
        app = ProxyApp(ProxyConfig(upstream=upstream, **config), reactor=reactor, clock=clock)
        listening = reactor.listenTCP(0, app.site(), interface="127.0.0.1")
        port = listening.getHost().port
        running = RunningProxy(
            f"http://127.0.0.1:{port}{app.route.prefix.decode()}", app, listening
        )
        started.append(running)
        return running

    yield start
    for running in started:
        pytest_twisted.blockon(running.listening.stopListening())
        pytest_twisted.blockon(running.app.close())


class Collector(Protocol):
    """Keeps each read with the time it arrived; ``done`` fires with the end reason."""

    def __init__(self) -> None:
        self.reads: list[tuple[float, bytes]] = []
        self.reason: Failure | None = None
        self.done: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.reads.append((reactor.seconds(), data))

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.reason = reason
        self.done.callback(None)

    @property
    def body(self) -> bytes:
        return b"".join(data for _, data in self.reads)


def client_pool() -> HTTPConnectionPool:
    return HTTPConnectionPool(reactor, persistent=False)


async def fetch(method: str, url: str, **kwargs: Any) -> tuple[Any, Collector, Failure]:
    kwargs.setdefault("pool", client_pool())
    response = await treq.request(method, url, unbuffered=True, **kwargs)
    collector = Collector()
    response.deliverBody(collector)
    await collector.done
    assert collector.reason is not None
    return response, collector, collector.reason


def events(body: bytes) -> list[Event]:
    return [item for item in Decoder().feed(body) if isinstance(item, Event)]


def header(response: Any, name: str) -> list[bytes]:
    values: list[bytes] = response.headers.getRawHeaders(name.encode(), [])
    return values


def journal_headers(entry: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in entry.headers:
        out.setdefault(name.lower(), []).append(value)
    return out


@pytest_twisted.ensureDeferred
async def test_stream_is_relayed_unbuffered_and_byte_exact(
    start_replay: Callable[..., Any], start_proxy: Callable[..., RunningProxy]
) -> None:
    replay = start_replay(speed=1.0)
    proxy = start_proxy(replay.url + "/v1")
    response, collector, reason = await fetch(
        "POST", proxy.url + "/chat-messages", json=dict(CHAT, user="u1")
    )
    ended = reactor.seconds()
    assert reason.check(ResponseDone)
    assert collector.body == load(FIXTURES / "chat-slow.jsonl").body()
    first_event_at = next(t for t, data in collector.reads if b"data:" in data)
    # Events are 1000 ms apart upstream: a buffering proxy would deliver event 1 at the end.
    assert ended - first_event_at > 0.5
    assert len(collector.reads) >= 5  # one client read per upstream event, roughly
    assert response.code == 200
    assert [json.loads(e.data)["event"] for e in events(collector.body)][-1] == "message_end"


@pytest_twisted.ensureDeferred
async def test_stream_answer_headers(replay: Any, start_proxy: Callable[..., RunningProxy]) -> None:
    proxy = start_proxy(replay.url + "/v1")
    response, collector, _ = await fetch(
        "POST", proxy.url + "/chat-messages", json=dict(CHAT, user="u1")
    )
    assert header(response, "Content-Type") == [b"text/event-stream; charset=utf-8"]
    assert header(response, "Cache-Control") == [b"no-cache"]
    assert header(response, "X-Accel-Buffering") == [b"no"]
    assert header(response, "X-Version") == [b"1.9.2"]  # upstream headers pass on
    assert response.length is UNKNOWN_LENGTH  # chunked, never a Content-Length
    assert collector.body
    # treq's own client invents an empty Content-Encoding; a bare Agent shows the wire.
    bare = await Agent(reactor, pool=client_pool()).request(
        b"GET", (proxy.url + "/parameters?user=u").encode()
    )
    await treq.content(bare)
    assert not bare.headers.hasHeader(b"Content-Encoding")


@pytest_twisted.ensureDeferred
async def test_non_stream_answer_keeps_upstream_content_length(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1")
    response, collector, reason = await fetch("GET", proxy.url + "/parameters?user=u9")
    assert reason.check(ResponseDone)
    assert response.code == 200
    assert header(response, "Content-Type") == [b"application/json"]
    assert response.length == len(collector.body) > 0
    assert header(response, "X-Accel-Buffering") == []
    assert collector.body == load(FIXTURES / "parameters-get.jsonl").body()


@pytest_twisted.ensureDeferred
async def test_stream_or_not_is_decided_by_the_answer_not_response_mode(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1")
    # Asked to stream, answered with Dify's JSON error: no stream headers, length kept.
    response, collector, _ = await fetch(
        "POST",
        proxy.url + "/chat-messages",
        json=dict(CHAT, user="u1"),
        headers={"X-Replay-Fault": "status=429"},
    )
    assert response.code == 429
    assert json.loads(collector.body)["code"] == "too_many_requests"
    assert header(response, "X-Accel-Buffering") == []
    assert response.length == len(collector.body)
    # Asked for blocking from a streaming recording: JSON again.
    response, collector, _ = await fetch(
        "POST", proxy.url + "/chat-messages", json=dict(CHAT, user="u1", response_mode="blocking")
    )
    assert response.code == 200
    assert header(response, "Content-Type")[0].startswith(b"application/json")
    assert header(response, "Cache-Control") == []
    assert json.loads(collector.body)["answer"]


@pytest_twisted.ensureDeferred
async def test_what_upstream_sees(replay: Any, start_proxy: Callable[..., RunningProxy]) -> None:
    proxy = start_proxy(replay.url + "/v1")
    await fetch(
        "POST",
        proxy.url + "/chat-messages?trace=1",
        json=dict(CHAT, user="u1"),
        headers={
            "Authorization": "Bearer client-own-token",
            "Cookie": "session=abc",
            "Accept-Encoding": "gzip, br",
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Proto": "gopher",
            "Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "X-Trace-Id": "trace-42",
            "Connection": "keep-alive",
        },
    )
    [entry] = replay.journal.entries
    assert entry.auth == "ok"  # the proxy's key replaced the client's Authorization
    assert entry.query == "trace=1"
    seen = journal_headers(entry)
    assert seen["x-forwarded-for"] == ["203.0.113.9, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]
    assert seen["x-forwarded-host"] == [proxy.url.split("/")[2]]
    assert seen["traceparent"] == ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
    assert seen["x-trace-id"] == ["trace-42"]
    assert seen["accept-encoding"] == ["identity"]  # the client's gzip never travels
    assert "connection" not in seen  # the client's hop-by-hop value stays on its hop


@pytest_twisted.ensureDeferred
async def test_names_listed_in_connection_are_dropped(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1")
    await fetch(
        "GET",
        proxy.url + "/parameters?user=u",
        headers={"Connection": "X-Trace-Id", "X-Trace-Id": "hop-only", "Traceparent": "kept"},
    )
    [entry] = replay.journal.entries
    seen = journal_headers(entry)
    assert "x-trace-id" not in seen
    assert seen["traceparent"] == ["kept"]
