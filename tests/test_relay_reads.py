"""One upstream socket read, one client write: ``relay.ReadScope`` with ``BodyRelay``, in
memory (every way to group chunks into reads) and over loopback (through the proxy)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone

from difytw.relay import BodyRelay, ReadScope, RelayEnd
from tests.rawhttp import build_request, fetch
from tests.test_proxy_harness import CHAT, RunningProxy, start_proxy

__all__ = ["start_proxy"]

# A socket read is a run of HTTP chunks the client parser hands over one by one.
reads_of_chunks = st.lists(st.lists(st.binary(min_size=1, max_size=32), max_size=8), max_size=8)


def relay_in(reads: ReadScope) -> tuple[BodyRelay, list[bytes], list[bytes], StringTransport]:
    writes: list[bytes] = []
    seen: list[bytes] = []
    relay = BodyRelay(
        writes.append, clock=Clock(), idle_timeout=30.0, observer=seen.append, reads=reads
    )
    upstream = StringTransport()
    relay.makeConnection(upstream)
    return relay, writes, seen, upstream


@given(reads_of_chunks)
def test_a_read_is_one_write_of_its_chunks_and_the_observer_sees_each(
    reads: list[list[bytes]],
) -> None:
    scope = ReadScope()
    relay, writes, seen, _ = relay_in(scope)
    for chunks in reads:
        before = len(writes)

        def deliver(_: bytes, chunks: list[bytes] = chunks, before: int = before) -> None:
            for chunk in chunks:
                relay.dataReceived(chunk)
            assert len(writes) == before  # nothing goes out until the read ends

        scope.read(deliver, b"")
        assert writes[before:] == ([b"".join(chunks)] if chunks else [])
    assert seen == [chunk for chunks in reads for chunk in chunks]
    assert relay.relayed == sum(len(c) for chunks in reads for c in chunks)


def test_outside_a_read_each_chunk_is_its_own_write() -> None:
    relay, writes, _, _ = relay_in(ReadScope())
    relay.dataReceived(b"a")
    relay.dataReceived(b"b")
    assert writes == [b"a", b"b"]


def test_the_end_in_the_same_read_goes_out_after_the_last_chunks() -> None:
    scope = ReadScope()
    relay, writes, _, _ = relay_in(scope)
    ended: list[RelayEnd] = []
    relay.done.addCallback(ended.append)

    def deliver(_: bytes) -> None:
        relay.dataReceived(b"data: 1\n\n")
        relay.dataReceived(b"data: 2\n\n")
        relay.connectionLost(Failure(ResponseDone()))
        assert writes == [b"data: 1\n\ndata: 2\n\n"] and ended == [RelayEnd.COMPLETED]

    scope.read(deliver, b"")
    assert writes == [b"data: 1\n\ndata: 2\n\n"]


def test_a_client_gone_mid_read_gets_nothing_more() -> None:
    scope = ReadScope()
    relay, writes, _, upstream = relay_in(scope)

    def deliver(_: bytes) -> None:
        relay.dataReceived(b"data: 1\n\n")
        relay.stopProducing()
        relay.dataReceived(b"data: 2\n\n")

    scope.read(deliver, b"")
    assert writes == [] and relay.ended is RelayEnd.CLIENT_GONE
    assert upstream.producerState == "stopped"


def test_one_relay_failing_does_not_hold_back_another() -> None:
    scope = ReadScope()
    good, writes, _, _ = relay_in(scope)

    def broken(data: bytes) -> None:
        raise RuntimeError("client write failed")

    bad = BodyRelay(broken, clock=Clock(), idle_timeout=None, reads=scope)
    bad.makeConnection(StringTransport())

    def deliver(_: bytes) -> None:
        bad.dataReceived(b"x")
        good.dataReceived(b"y")

    scope.read(deliver, b"")
    assert writes == [b"y"]


# -- over loopback ---------------------------------------------------------------------------

FRAMES = [b'data: {"event":"message","answer":"%d"}\n\n' % i for i in range(60)]
FRAMES.append(b'data: {"event":"message_end"}\n\n')


class BurstUpstream(Protocol):
    """A fake Dify that sends its whole chunked answer, one HTTP chunk per event, in one
    socket write: the proxy's client parser sees many chunks in one read."""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if b"\r\n\r\n" not in data:
            return
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(frame), frame) for frame in FRAMES)
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks + b"0\r\n\r\n"
        )
        self.transport.loseConnection()


async def chat_through_proxy(
    upstream_protocol: type[Protocol], start_proxy: Callable[..., RunningProxy]
) -> Any:
    """A chat through a proxy in front of a loopback upstream speaking ``upstream_protocol``."""
    upstream = reactor.listenTCP(0, Factory.forProtocol(upstream_protocol), interface="127.0.0.1")
    try:
        proxy = start_proxy(f"http://127.0.0.1:{upstream.getHost().port}/v1")
        body = json.dumps(dict(CHAT, user="u")).encode()
        request = build_request(
            "POST", "/dify/chat-messages", headers=[("Content-Type", "application/json")], body=body
        )
        _, finished = fetch(reactor, proxy.port, request)
        return await finished
    finally:
        await upstream.stopListening()


@pytest_twisted.ensureDeferred
async def test_chunks_read_together_leave_the_proxy_together(
    start_proxy: Callable[..., RunningProxy],
) -> None:
    response = await chat_through_proxy(BurstUpstream, start_proxy)
    assert response.status == 200 and response.complete
    assert response.body == b"".join(FRAMES)
    # One write per upstream read: the 61 chunks of one read are not 61 client chunks (a
    # busy machine may split the read, so a few are allowed).
    assert len(response.chunks) <= 8, len(response.chunks)


class BrokenChunkingUpstream(Protocol):
    """A fake Dify whose chunked answer breaks its framing after two good events."""

    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        if b"\r\n\r\n" not in data:
            return
        good = b"".join(b"%x\r\n%s\r\n" % (len(frame), frame) for frame in FRAMES[:2])
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + good + b"zz\r\nnot a chunk\r\n"
        )
        # Left open: only the proxy giving up on the framing can end this exchange.


@pytest_twisted.ensureDeferred
async def test_broken_chunking_ends_with_the_good_events_then_a_disconnected_frame(
    start_proxy: Callable[..., RunningProxy],
) -> None:
    response = await chat_through_proxy(BrokenChunkingUpstream, start_proxy)
    assert response.status == 200 and response.complete
    assert response.body.startswith(FRAMES[0] + FRAMES[1])
    last = json.loads(response.body[len(FRAMES[0] + FRAMES[1]) :].removeprefix(b"data: "))
    assert last["event"] == "error" and last["code"] == "upstream_disconnected"
