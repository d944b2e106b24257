"""``--max-stream-duration``: every stream is bounded (issue 7, item 3).

In memory, ``BodyRelay``'s deadline on a ``task.Clock``; over loopback, a real proxy (its
timers on a ``task.Clock``) in front of a real replay server: past the limit the client gets
a final ``stream_duration_exceeded`` error frame and a clean end, the upstream stream is
closed and its run stopped, and no ``DelayedCall`` is left.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed

from difytw.fixture import load
from difytw.relay import BodyRelay, RelayEnd
from tests.test_proxy_harness import (
    CHAT,
    FIXTURES,
    RunningProxy,
    data_frames,
    fetch,
    start_fetch,
    start_proxy,
    wait_for,
)

__all__ = ["start_proxy"]

LIMIT = 60.0
IDLE = 30.0


def relay_on(
    clock: Clock, limit: float | None = LIMIT, idle: float | None = IDLE
) -> tuple[BodyRelay, StringTransport]:
    relay = BodyRelay(lambda data: None, clock=clock, idle_timeout=idle, max_duration=limit)
    upstream = StringTransport()
    relay.makeConnection(upstream)
    return relay, upstream


def ended(relay: BodyRelay) -> RelayEnd | None:
    assert relay.done.called is (relay.ended is not None)  # done fires with the end
    return relay.ended


# -- in memory ---------------------------------------------------------------------------


def test_the_deadline_ends_a_busy_stream_and_closes_upstream() -> None:
    clock = Clock()
    relay, upstream = relay_on(clock)
    for _ in range(int(LIMIT) - 1):  # reads keep the idle timer quiet, not the deadline
        clock.advance(1)
        relay.dataReceived(b"data: {}\n\n")
    assert ended(relay) is None
    clock.advance(1)
    assert ended(relay) is RelayEnd.DURATION_EXCEEDED
    assert upstream.producerState == "stopped"
    assert clock.getDelayedCalls() == []


def test_time_paused_by_a_slow_client_counts() -> None:
    clock = Clock()
    relay, _ = relay_on(clock)
    relay.pauseProducing()
    clock.advance(LIMIT)
    assert ended(relay) is RelayEnd.DURATION_EXCEEDED
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("done", RelayEnd.COMPLETED),
        ("cut", RelayEnd.UPSTREAM_DISCONNECTED),
        ("client", RelayEnd.CLIENT_GONE),
        ("idle", RelayEnd.IDLE_TIMEOUT),
    ],
)
def test_any_other_end_cancels_the_deadline(how: str, expected: RelayEnd) -> None:
    clock = Clock()
    relay, _ = relay_on(clock)
    clock.advance(1)
    if how == "done":
        relay.connectionLost(Failure(ResponseDone()))
    elif how == "cut":
        relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
    elif how == "client":
        relay.stopProducing()
    else:
        clock.advance(IDLE)
    assert ended(relay) is expected
    assert clock.getDelayedCalls() == []


def test_no_limit_means_no_deadline() -> None:
    clock = Clock()
    relay, _ = relay_on(clock, limit=None)
    relay.pauseProducing()  # drops the idle timer: nothing may be left
    assert clock.getDelayedCalls() == []


def test_upstream_closed_fires_when_the_socket_goes_even_after_the_end() -> None:
    clock = Clock()
    relay, _ = relay_on(clock, idle=None)
    relay.dataReceived(b"abc")
    relay.dataReceived(b"de")
    assert relay.relayed == 5
    clock.advance(LIMIT)
    assert ended(relay) is RelayEnd.DURATION_EXCEEDED
    assert not relay.upstream_closed.called  # stopProducing asked; the socket is not gone
    relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
    assert relay.upstream_closed.called
    assert ended(relay) is RelayEnd.DURATION_EXCEEDED


# -- over loopback -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_past_the_limit_the_client_gets_a_final_frame_and_the_run_is_stopped(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    clock = Clock()
    proxy = start_proxy(replay.url + "/v1", clock=clock, max_stream_duration=5.0)
    response, collector = await start_fetch(
        "POST",
        proxy.url + "/chat-messages",
        json=dict(CHAT, user="gus"),
        headers={"X-Replay-Fault": "stall=600@2"},  # two events, then a long silence
    )
    await wait_for(lambda: collector.body.count(b"\n\n") == 2)
    clock.advance(4.9)
    assert not collector.done.called
    clock.advance(0.1)
    await collector.done
    assert collector.reason is not None and collector.reason.check(ResponseDone)  # clean end
    assert response.code == 200
    frames = data_frames(collector.body)
    assert [f["event"] for f in frames] == ["message", "message", "error"]
    assert frames[-1] == {
        "event": "error",
        "code": "stream_duration_exceeded",
        "status": 504,
        "message": "The stream ran past the proxy's limit of 5 seconds.",
    }
    await wait_for(lambda: len(replay.journal.entries) == 2)
    stream, stop = replay.journal.entries
    assert stream.outcome == "client_closed"  # the proxy closed the upstream stream
    assert stop.stop is not None and stop.stop["user"] == "gus"
    assert stop.path == f"/v1/chat-messages/{frames[0]['task_id']}/stop"
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_a_stream_that_ends_in_time_leaves_no_timer(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    clock = Clock()
    proxy = start_proxy(replay.url + "/v1", clock=clock, max_stream_duration=5.0)
    _, collector, _ = await fetch("POST", proxy.url + "/chat-messages", json=dict(CHAT, user="u"))
    assert data_frames(collector.body)[-1]["event"] == "message_end"
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_other_bodies_are_not_bounded(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    # A JSON answer dripping in over real time while the proxy's clock runs far past the
    # limit: only streams are bounded, other bodies have the idle timeout.
    clock = Clock()
    proxy = start_proxy(replay.url + "/v1", clock=clock, max_stream_duration=1.0)
    _, collector = await start_fetch(
        "GET", proxy.url + "/parameters?user=u", headers={"X-Replay-Fault": "drip=64"}
    )
    await collector.first_read
    clock.advance(10.0)
    await collector.done
    assert collector.reason is not None and collector.reason.check(ResponseDone)
    assert collector.body == load(FIXTURES / "parameters-get.jsonl").body()
