"""difyproxy's failure answers over loopback: each distinct, none a hang (spec item 7).

The proxy's timers run on a ``task.Clock`` where a timeout is under test, so nothing
waits for real seconds and "no DelayedCall left" can be checked exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.web.client import ResponseDone, ResponseFailed

from difytw.fixture import load
from difytw.proxy import ProxyApp, ProxyConfig
from tests.test_proxy_harness import (
    CHAT,
    FIXTURES,
    TEST_KEY,
    RunningProxy,
    data_frames,
    fetch,
    free_port,
    header,
    start_fetch,
    start_proxy,
    wait_for,
)

__all__ = ["start_proxy"]


@pytest.mark.parametrize("status", [400, 401, 404, 413, 429, 500, 503])
@pytest_twisted.ensureDeferred
async def test_upstream_http_errors_pass_through_untouched(
    status: int, replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1")
    fault = {"X-Replay-Fault": f"status={status}"}
    direct, direct_body, _ = await fetch(
        "POST",
        replay.url + "/v1/chat-messages",
        json=dict(CHAT, user="u"),
        headers=dict(fault, Authorization="Bearer app-test-key-not-a-secret"),
    )
    proxied, proxied_body, _ = await fetch(
        "POST", proxy.url + "/chat-messages", json=dict(CHAT, user="u"), headers=fault
    )
    assert proxied.code == direct.code == status
    assert proxied_body.body == direct_body.body
    assert header(proxied, "Content-Type") == header(direct, "Content-Type")
    assert json.loads(proxied_body.body)["status"] == status


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_502_upstream_unavailable(
    start_proxy: Callable[..., RunningProxy],
) -> None:
    proxy = start_proxy(f"http://127.0.0.1:{free_port()}/v1")
    response, collector, _ = await fetch("GET", proxy.url + "/parameters")
    assert response.code == 502
    body = json.loads(collector.body)
    assert body["code"] == "upstream_unavailable" and body["status"] == 502


class PlainTextServer(Protocol):
    """Answers anything, a TLS ClientHello included, with plain HTTP and hangs up."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
        self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_tls_failure_is_502(start_proxy: Callable[..., RunningProxy]) -> None:
    listening = reactor.listenTCP(0, Factory.forProtocol(PlainTextServer), interface="127.0.0.1")
    try:
        proxy = start_proxy(f"https://127.0.0.1:{listening.getHost().port}/v1")
        response, collector, _ = await fetch("GET", proxy.url + "/parameters")
    finally:
        await listening.stopListening()
    assert response.code == 502
    assert json.loads(collector.body)["code"] == "upstream_unavailable"


@pytest_twisted.ensureDeferred
async def test_no_head_in_time_is_504_upstream_timeout(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    clock = Clock()
    proxy = start_proxy(replay.url + "/v1", clock=clock, header_timeout=60.0)
    answer = Deferred.fromCoroutine(
        fetch(
            "POST",
            proxy.url + "/chat-messages",
            json=dict(CHAT, user="u"),
            headers={"X-Replay-Fault": "stall=30@0"},  # no head for 30 s
        )
    )
    await wait_for(lambda: bool(replay.journal.entries))
    ended = replay.journal.next_end()
    clock.advance(59)
    assert not answer.called
    clock.advance(1)
    response, collector, _ = await answer
    assert response.code == 504
    body = json.loads(collector.body)
    assert body["code"] == "upstream_timeout" and body["status"] == 504
    entry = await ended  # the upstream request was abandoned, not left running
    assert entry.outcome == "client_closed"
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_silent_stream_ends_with_idle_timeout_frame(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    clock = Clock()
    proxy = start_proxy(replay.url + "/v1", clock=clock, idle_timeout=300.0)
    response, collector = await start_fetch(
        "POST",
        proxy.url + "/chat-messages",
        json=dict(CHAT, user="u"),
        headers={"X-Replay-Fault": "stall=60@1"},  # one event, then silence
    )
    await collector.first_read
    await wait_for(lambda: b"\n\n" in collector.body)
    ended = replay.journal.next_end()
    clock.advance(300)
    await collector.done
    assert collector.reason is not None and collector.reason.check(ResponseDone)  # clean end
    frames = data_frames(collector.body)
    assert len(frames) == 2
    assert frames[-1] == {
        "event": "error",
        "code": "upstream_idle_timeout",
        "status": 504,
        "message": frames[-1]["message"],
    }
    assert (await ended).outcome == "client_closed"  # upstream closed by the proxy
    assert clock.getDelayedCalls() == []
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_upstream_reset_mid_stream_ends_with_disconnected_frame(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1")
    response, collector, reason = await fetch(
        "POST",
        proxy.url + "/chat-messages",
        json=dict(CHAT, user="u"),
        headers={"X-Replay-Fault": "reset-after=2"},
    )
    assert reason.check(ResponseDone)
    frames = data_frames(collector.body)
    assert [f["event"] for f in frames[:2]] == ["message", "message"]
    assert frames[-1]["event"] == "error"
    assert frames[-1]["code"] == "upstream_disconnected"
    assert response.code == 200


@pytest_twisted.ensureDeferred
async def test_clean_cut_passes_through_as_a_clean_end(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    # cut-after ends upstream's chunked body properly: nothing went wrong on the wire,
    # so the proxy adds nothing (a stream without a terminal event is Dify's own doing).
    proxy = start_proxy(replay.url + "/v1")
    _, collector, reason = await fetch(
        "POST",
        proxy.url + "/chat-messages",
        json=dict(CHAT, user="u"),
        headers={"X-Replay-Fault": "cut-after=2"},
    )
    assert reason.check(ResponseDone)
    assert [f["event"] for f in data_frames(collector.body)] == ["message", "message"]


@pytest_twisted.ensureDeferred
async def test_non_stream_body_cut_short_drops_the_connection(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1")
    _, collector, reason = await fetch(
        "GET", proxy.url + "/parameters?user=u", headers={"X-Replay-Fault": "reset-after=0"}
    )
    # Never a clean end that would pass a truncated JSON body off as whole.
    assert reason.check(ResponseFailed)
    full = load(FIXTURES / "parameters-get.jsonl").body()
    assert collector.body != full


@pytest_twisted.ensureDeferred
async def test_client_disconnect_closes_upstream_at_once(
    start_replay: Callable[..., Any], start_proxy: Callable[..., RunningProxy]
) -> None:
    replay = start_replay(speed=1.0)
    clock = Clock()
    proxy = start_proxy(replay.url + "/v1", clock=clock)
    _, collector = await start_fetch(
        "POST", proxy.url + "/chat-messages", json=dict(CHAT, user="u")
    )
    await collector.first_read
    ended = replay.journal.next_end()
    assert collector.transport is not None
    left_at = reactor.seconds()
    collector.transport.stopProducing()  # the client hangs up mid-stream
    entry = await ended
    assert entry.outcome == "client_closed"
    assert entry.ended_at is not None and entry.ended_at - left_at < 0.1
    assert clock.getDelayedCalls() == []  # no idle timer, no header timer


class BrokenRecorder:
    """A ``--record`` folder whose tap fails: a bug in a collaborator, not a DifyError."""

    def tap(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("recorder bug: secret-internal-detail")


async def chat_with_app(replay: Any, **collaborators: Any) -> Any:
    """One chat through a ``ProxyApp`` built with ``collaborators`` (e.g. a broken one)."""
    app = ProxyApp(
        ProxyConfig(upstream=replay.url + "/v1", api_key=TEST_KEY),
        reactor=reactor,
        **collaborators,
    )
    listening = reactor.listenTCP(0, app.site(), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{listening.getHost().port}/dify/chat-messages"
        return await fetch("POST", url, json=dict(CHAT, user="u"))
    finally:
        await listening.stopListening()
        await app.close()


@pytest_twisted.ensureDeferred
async def test_a_bug_before_the_head_is_difys_json_500_and_a_logged_failure(
    replay: Any, logged: list[Any]
) -> None:
    response, collector, _ = await chat_with_app(replay, record=BrokenRecorder())
    assert response.code == 500
    assert header(response, "Content-Type") == [b"application/json"]
    body = json.loads(collector.body)
    assert body == {
        "code": "internal_server_error",
        "message": "The proxy failed to handle this request.",
        "status": 500,
    }
    assert b"secret-internal-detail" not in collector.body
    [failure] = [e for e in logged if "log_failure" in e]
    assert failure["log_failure"].check(RuntimeError)
    [line] = [e for e in logged if e.get("log_namespace") == "difytw.access"]
    assert (line["status"], line["outcome"]) == (500, "internal_server_error")


@pytest_twisted.ensureDeferred
async def test_a_bug_after_the_head_cuts_the_connection(replay: Any, logged: list[Any]) -> None:
    def observe(request: Any, stream: bool) -> None:
        raise RuntimeError("observer bug")

    response, _, reason = await chat_with_app(replay, observe=observe)
    assert response.code == 200  # the head had gone out before the bug
    assert not reason.check(ResponseDone)  # not passed off as a whole answer
    [failure] = [e for e in logged if "log_failure" in e]
    assert failure["log_failure"].check(RuntimeError)
    [line] = [e for e in logged if e.get("log_namespace") == "difytw.access"]
    assert line["outcome"] == "internal_server_error"
