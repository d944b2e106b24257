"""difytw.relay.BodyRelay in memory: one read, one write; pause, idle, ends."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock, Cooperator
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http import PotentialDataLoss

from difytw.relay import BodyRelay, RelayEnd
from difytw.uploadbody import UploadBody

IDLE = 30.0


class Recorder:
    """Stands in for ``request.write``; keeps the very objects it was given."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def __call__(self, data: bytes) -> None:
        self.writes.append(data)


def connected(
    idle: float | None = IDLE, observer: object = None
) -> tuple[BodyRelay, StringTransport, Recorder, Clock]:
    clock = Clock()
    sink = Recorder()
    relay = BodyRelay(sink, clock=clock, idle_timeout=idle, observer=observer)  # type: ignore[arg-type]
    upstream = StringTransport()
    relay.makeConnection(upstream)
    return relay, upstream, sink, clock


def outcome(relay: BodyRelay) -> RelayEnd:
    results: list[RelayEnd] = []
    relay.done.addCallback(results.append)
    assert results, "relay has not ended"
    return results[0]


@given(st.lists(st.binary(min_size=1, max_size=64), max_size=20))
def test_each_read_is_one_write_of_the_same_object(chunks: list[bytes]) -> None:
    relay, _, sink, _ = connected()
    for chunk in chunks:
        relay.dataReceived(chunk)
    assert len(sink.writes) == len(chunks)
    assert all(a is b for a, b in zip(sink.writes, chunks, strict=True))


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        (ResponseDone(), RelayEnd.COMPLETED),
        (PotentialDataLoss(), RelayEnd.COMPLETED),
        (ResponseFailed([Failure(ConnectionLost())]), RelayEnd.UPSTREAM_DISCONNECTED),
        (ConnectionLost(), RelayEnd.UPSTREAM_DISCONNECTED),
    ],
)
def test_end_of_body_is_classified(reason: Exception, expected: RelayEnd) -> None:
    relay, upstream, _, clock = connected()
    relay.connectionLost(Failure(reason))
    assert outcome(relay) is expected
    assert clock.getDelayedCalls() == []
    assert upstream.producerState == "producing"  # upstream ended by itself


def test_idle_upstream_ends_the_relay_and_closes_upstream() -> None:
    relay, upstream, sink, clock = connected()
    clock.advance(IDLE - 1)
    assert not relay.done.called
    clock.advance(1)
    assert outcome(relay) is RelayEnd.IDLE_TIMEOUT
    assert upstream.producerState == "stopped"
    relay.dataReceived(b"late")  # still buffered in the parser: goes nowhere
    assert sink.writes == []
    relay.connectionLost(Failure(ResponseFailed([Failure(ConnectionLost())])))
    assert relay.ended is RelayEnd.IDLE_TIMEOUT
    assert clock.getDelayedCalls() == []


def test_each_read_restarts_the_idle_clock() -> None:
    relay, _, _, clock = connected()
    for _ in range(5):
        clock.advance(IDLE - 1)
        relay.dataReceived(b"data: {}\n\n")
    assert not relay.done.called
    clock.advance(IDLE)
    assert outcome(relay) is RelayEnd.IDLE_TIMEOUT


def test_time_paused_by_a_slow_client_is_not_idle() -> None:
    relay, upstream, _, clock = connected()
    relay.pauseProducing()
    assert upstream.producerState == "paused"
    assert clock.getDelayedCalls() == []
    clock.advance(IDLE * 10)
    assert not relay.done.called
    relay.resumeProducing()
    assert upstream.producerState == "producing"
    clock.advance(IDLE - 1)
    assert not relay.done.called
    clock.advance(1)
    assert outcome(relay) is RelayEnd.IDLE_TIMEOUT


def test_a_write_that_pauses_does_not_trip_the_timer() -> None:
    clock = Clock()
    upstream = StringTransport()
    relay: BodyRelay

    def write_and_fill_up(data: bytes) -> None:
        relay.pauseProducing()  # what Twisted does when the client's buffer fills

    relay = BodyRelay(write_and_fill_up, clock=clock, idle_timeout=IDLE)
    relay.makeConnection(upstream)
    relay.dataReceived(b"x")
    assert upstream.producerState == "paused"
    assert clock.getDelayedCalls() == []


def test_client_gone_closes_upstream_and_leaves_nothing() -> None:
    relay, upstream, _, clock = connected()
    relay.stopProducing()
    assert outcome(relay) is RelayEnd.CLIENT_GONE
    assert upstream.producerState == "stopped"
    assert clock.getDelayedCalls() == []
    relay.pauseProducing()
    relay.resumeProducing()
    assert upstream.producerState == "stopped"


def test_cancelling_done_is_client_gone() -> None:
    relay, upstream, _, clock = connected()
    relay.done.cancel()
    assert relay.ended is RelayEnd.CLIENT_GONE
    assert upstream.producerState == "stopped"
    assert clock.getDelayedCalls() == []


def test_pause_and_stop_before_the_body_arrives() -> None:
    clock = Clock()
    relay = BodyRelay(Recorder(), clock=clock, idle_timeout=IDLE)
    relay.pauseProducing()
    upstream = StringTransport()
    relay.makeConnection(upstream)
    assert upstream.producerState == "paused"
    assert clock.getDelayedCalls() == []

    relay = BodyRelay(Recorder(), clock=clock, idle_timeout=IDLE)
    relay.stopProducing()
    upstream = StringTransport()
    relay.makeConnection(upstream)
    assert upstream.producerState == "stopped"
    assert clock.getDelayedCalls() == []


def test_no_idle_timeout_means_no_timer() -> None:
    relay, _, _, clock = connected(idle=None)
    relay.dataReceived(b"x")
    assert clock.getDelayedCalls() == []


def test_observer_sees_every_chunk_after_the_client_does() -> None:
    order: list[str] = []
    seen: list[bytes] = []

    def observe(data: bytes) -> None:
        order.append("observer")
        seen.append(data)

    clock = Clock()
    relay = BodyRelay(
        lambda data: order.append("client"), clock=clock, idle_timeout=IDLE, observer=observe
    )
    relay.makeConnection(StringTransport())
    relay.dataReceived(b"a")
    relay.dataReceived(b"b")
    assert seen == [b"a", b"b"]
    assert order == ["client", "observer", "client", "observer"]


def test_a_failing_observer_is_detached_and_the_stream_goes_on() -> None:
    calls: list[bytes] = []

    def broken(data: bytes) -> None:
        calls.append(data)
        raise ValueError("parser bug")

    relay, _, sink, _ = connected(observer=broken)
    relay.dataReceived(b"a")
    relay.dataReceived(b"b")
    assert sink.writes == [b"a", b"b"]
    assert calls == [b"a"]


class SliceSink:
    """An IConsumer that keeps what it was given."""

    def __init__(self) -> None:
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.data.append(data)

    def registerProducer(self, producer: object, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass


@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=700))
def test_upload_body_hands_over_every_byte_and_reports_each_slice(
    body: bytes, read_size: int
) -> None:
    work: list[Callable[[], None]] = []
    cooperator = Cooperator(scheduler=work.append, terminationPredicateFactory=lambda: lambda: True)
    reports: list[int] = []
    sink = SliceSink()
    upload = UploadBody(
        BytesIO(body),
        cooperator=cooperator,
        progress=lambda: reports.append(1),
        read_size=read_size,
    )
    assert upload.length == len(body)
    done = upload.startProducing(sink)  # type: ignore[arg-type]
    while work:
        work.pop(0)()
    assert done.called
    assert b"".join(sink.data) == body
    assert len(reports) == len(sink.data) == -(-len(body) // read_size)
