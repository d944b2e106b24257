"""difyproxy over loopback against the real replay server: streaming and headers.

Every test here crosses real sockets: client (treq) -> difyproxy -> difyreplay.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.client import Agent, ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.resource import Resource
from twisted.web.server import Site

from difytw.access import AccessPolicy
from difytw.authconfig import parse_networks, parse_tokens, token_line
from difytw.fixture import load
from difytw.proxy import ProxyApp, ProxyConfig
from difytw.relay import BodyRelay
from tests.rawhttp import build_request
from tests.rawhttp import fetch as raw_fetch
from tests.test_proxy_harness import (
    CHAT,
    FIXTURES,
    TEST_KEY,
    RunningProxy,
    client_pool,
    events,
    fetch,
    header,
    journal_headers,
    start_proxy,
)

__all__ = ["start_proxy"]  # the fixture, re-exported so pytest finds it here


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
    # Behind a trusted proxy (the test client, as far as difyproxy can tell): only then is
    # a forwarded chain extended, and only an authenticating mode serves forwarded calls.
    access = AccessPolicy(
        auth=parse_tokens([token_line(b"client-own-token", "u1")], "tokens"),
        trusted_proxies=parse_networks(["127.0.0.1/32"]),
    )
    proxy = start_proxy(replay.url + "/v1", access=access)
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


@pytest_twisted.ensureDeferred
async def test_observer_hook_sees_the_stream_and_the_relay_is_the_producer(
    replay: Any,
) -> None:
    """The issue-7 hook: an observer per stream sees every byte the client got, and the
    upstream side is registered as the client request's streaming producer."""
    seen: list[bytes] = []
    producers: list[tuple[Any, bool]] = []

    def observe(request: Any, stream: bool) -> Callable[[bytes], None] | None:
        if not stream:
            return None

        def chunk(data: bytes) -> None:
            producers.append((request.producer, request.streamingProducer))
            seen.append(data)

        return chunk

    app = ProxyApp(
        ProxyConfig(upstream=replay.url + "/v1", api_key=TEST_KEY), reactor=reactor, observe=observe
    )
    listening = reactor.listenTCP(0, app.site(), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{listening.getHost().port}/dify"
        _, collector, _ = await fetch("POST", url + "/chat-messages", json=dict(CHAT, user="u"))
        _, plain, _ = await fetch("GET", url + "/parameters?user=u")
    finally:
        await listening.stopListening()
        await app.close()
    assert b"".join(seen) == collector.body
    assert plain.body and plain.body not in b"".join(seen)
    assert producers and all(
        isinstance(producer, BodyRelay) and streaming for producer, streaming in producers
    )


class GzipAnyway(Resource):
    """An upstream that compresses whatever the request asked for, and notes what it asked."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self.body = body
        self.content_type = content_type
        self.asked: list[list[bytes] | None] = []

    def render(self, request: Any) -> bytes:
        self.asked.append(request.requestHeaders.getRawHeaders(b"Accept-Encoding"))
        request.setHeader(b"Content-Type", self.content_type)
        request.setHeader(b"Content-Encoding", b"gzip")
        return self.body


@pytest.mark.parametrize(
    "content_type", [b"application/json", b"text/event-stream"], ids=["json", "sse"]
)
@pytest_twisted.ensureDeferred
async def test_a_gzip_answer_is_relayed_compressed_and_unchanged(
    content_type: bytes, start_proxy: Callable[..., RunningProxy]
) -> None:
    body = gzip.compress(b'data: {"event": "message", "answer": "hi"}\n\n' * 50, mtime=0)
    upstream = GzipAnyway(body, content_type)
    listening = reactor.listenTCP(0, Site(upstream), interface="127.0.0.1")
    try:
        proxy = start_proxy(f"http://127.0.0.1:{listening.getHost().port}/v1")
        _, answered = raw_fetch(
            reactor,
            proxy.port,
            build_request("GET", "/dify/parameters", headers=[("Accept-Encoding", "gzip")]),
        )
        answer = await answered
    finally:
        await listening.stopListening()
    assert upstream.asked == [[b"identity"]]  # the proxy asks for no compression...
    assert answer.status == 200
    assert answer.header("content-encoding") == "gzip"  # ...and passes what came untouched
    assert answer.body == body
