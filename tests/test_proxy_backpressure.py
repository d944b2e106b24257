"""Backpressure across real sockets (issue 3 item 4): a reader that stops stops upstream.

The relay's pause/resume logic is unit-tested in test_proxy_relay with fake producers;
here a real upstream floods a 200 MB SSE stream as fast as its socket takes it, through
the real proxy, to a client that does not read at first.  Upstream must get stuck once
the kernel and transport buffers on the way are full (a few MB), and once the client
reads, everything arrives byte for byte.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from zope.interface import implementer

from tests.rawhttp import RawClient, build_request
from tests.test_proxy_harness import CHAT, RunningProxy, start_proxy, wait_for

__all__ = ["start_proxy"]

FRAME_FILL = 64 * 1024  # one SSE frame ~64 KiB: a big agent_thought or file answer
TOTAL = 200 * 1024 * 1024
# What may sit in buffers between a paused client and a stuck upstream: the client's
# receive buffer, the proxy's send and receive buffers and its 64 KiB transport buffer,
# upstream's send buffer and transport buffer.  Linux autotunes loopback buffers up to
# ~4-6 MiB each, so up to ~20 MiB is still "stuck"; without backpressure it is all 200.
STUCK_BELOW = 32 * 1024 * 1024


def frame(index: int) -> bytes:
    """Frame ``index`` of the flood: numbered, so a lost or repeated frame changes the hash."""
    if index == TOTAL // FRAME_FILL - 1:
        return b'data: {"event":"message_end","id":"%d"}\n\n' % index
    return b'data: {"event":"message","id":"%d","answer":"%s"}\n\n' % (
        index,
        b"x" * FRAME_FILL,
    )


@implementer(IPushProducer)
class FloodUpstream(Protocol):
    """A fake Dify that answers any request with a chunked SSE stream, writing frames
    for as long as its transport does not pause it, and counting what it wrote."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state
        self.head = b""
        self.index = 0
        self.paused = False
        self.started = False

    def dataReceived(self, data: bytes) -> None:
        if self.started:
            return
        self.head += data
        if b"\r\n\r\n" not in self.head:
            return
        self.started = True
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = self.state["paused"] = False
        assert self.transport is not None
        frames = TOTAL // FRAME_FILL
        while not self.paused and self.index < frames:
            data = frame(self.index)
            self.index += 1
            self.state["written"] += len(data)
            self.state["sha"].update(data)
            # write() pauses us at once when the transport buffer passes 64 KiB.
            self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))
        if self.index == frames and not self.state["ended"]:
            self.state["ended"] = True
            self.transport.write(b"0\r\n\r\n")
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def pauseProducing(self) -> None:
        self.paused = self.state["paused"] = True
        self.state["pauses"] += 1

    def stopProducing(self) -> None:
        self.paused = True


class CountingClient(RawClient):
    """rawhttp's client, keeping a hash and a count instead of 200 MB of chunks."""

    def __init__(self, request: bytes) -> None:
        super().__init__(request, reactor)
        self.sha = hashlib.sha256()
        self.received = 0

    def connectionMade(self) -> None:
        super().connectionMade()
        assert self.transport is not None
        self.transport.pauseProducing()  # a reader that does not read (yet)

    def _chunk(self, data: bytes) -> None:
        self.sha.update(data)
        self.received += len(data)


@pytest_twisted.ensureDeferred
async def test_a_client_that_does_not_read_stops_a_real_upstream(
    start_proxy: Callable[..., RunningProxy],
) -> None:
    state: dict[str, Any] = {
        "written": 0,
        "paused": False,
        "pauses": 0,
        "ended": False,
        "sha": hashlib.sha256(),
    }
    upstream = reactor.listenTCP(
        0, Factory.forProtocol(lambda: FloodUpstream(state)), interface="127.0.0.1"
    )
    try:
        proxy = start_proxy(f"http://127.0.0.1:{upstream.getHost().port}/v1")
        body = json.dumps(dict(CHAT, user="u")).encode()
        client = CountingClient(
            build_request(
                "POST",
                "/dify/chat-messages",
                headers=[("Content-Type", "application/json")],
                body=body,
            )
        )
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", proxy.port), client)
        await wait_for(lambda: state["written"] > 0, seconds=8)
        # Let upstream write until it is stuck: paused by its own transport, and no new
        # byte over three looks in a row (a loaded machine may just be slow).
        quiet, last = 0, -1
        while quiet < 3 and not state["ended"]:
            quiet = quiet + 1 if state["written"] == last and state["paused"] else 0
            last = state["written"]
            await deferLater(reactor, 0.25, lambda: None)
        stuck_at = state["written"]
        assert stuck_at < STUCK_BELOW, f"upstream wrote {stuck_at} bytes to a paused client"
        assert state["pauses"] > 0 and not state["ended"]
        assert client.received < stuck_at

        assert client.transport is not None
        client.transport.resumeProducing()
        finished: Deferred[Any] = client.finished
        response = await finished
    finally:
        await upstream.stopListening()
    assert response.status == 200
    assert response.complete
    assert state["ended"]
    assert client.received == state["written"] > TOTAL * 0.99
    assert client.sha.digest() == state["sha"].digest()
