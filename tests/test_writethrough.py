"""``writethrough``: server sockets that send in ``write`` while nothing is queued, over
real loopback sockets (a plain blocking client socket reads what the server wrote)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPullProducer, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from difytw.writethrough import WriteThroughReactor, WriteThroughServer


class Held(Protocol):
    """A server protocol that only reports its connection."""

    def __init__(self, made: Deferred[Held]) -> None:
        self.made = made

    def connectionMade(self) -> None:
        self.made.callback(self)


class Pair:
    """A write-through server connection and the plain socket at its other end."""

    def __init__(self, server: Held, client: socket.socket) -> None:
        self.server = server
        self.client = client
        assert server.transport is not None
        self.transport = server.transport

    def ready_now(self) -> bytes:
        """What the client can read right now, without letting the reactor run."""
        self.client.setblocking(False)
        got = b""
        try:
            while chunk := self.client.recv(1 << 20):
                got += chunk
        except BlockingIOError:
            pass
        return got


@pytest.fixture
def connected() -> Iterator[Pair]:
    made: Deferred[Held] = Deferred()
    port = WriteThroughReactor(reactor).listenTCP(
        0, Factory.forProtocol(lambda: Held(made)), interface="127.0.0.1"
    )
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    server = pytest_twisted.blockon(made)
    yield Pair(server, client)
    client.close()
    server.transport.abortConnection()  # type: ignore[union-attr]
    pytest_twisted.blockon(port.stopListening())


def test_connections_are_write_through(connected: Pair) -> None:
    assert isinstance(connected.transport, WriteThroughServer)


def test_a_write_to_an_empty_queue_is_sent_before_the_reactor_runs(connected: Pair) -> None:
    connected.transport.write(b"data: one\n\n")
    connected.transport.writeSequence([b"5\r\n", b"hello", b"\r\n"])
    # Twisted's own transport would still hold both until the reactor's next pass.
    assert connected.ready_now() == b"data: one\n\n5\r\nhello\r\n"


@pytest_twisted.ensureDeferred
async def test_what_the_kernel_does_not_take_is_queued_in_order(connected: Pair) -> None:
    big = bytes(range(256)) * (64 * 1024)  # 16 MiB: more than the socket buffers hold
    connected.transport.write(big)
    connected.transport.write(b"after")  # behind a non-empty queue: queued, not sent first
    received = bytearray(connected.ready_now())
    assert 0 < len(received) < len(big)  # sent at once, up to what the kernel took
    for _ in range(4000):  # the reactor sends the rest as the client reads (20 s at most)
        if len(received) == len(big) + 5:
            break
        await _tick()
        received.extend(connected.ready_now())
    assert bytes(received) == big + b"after"


def _tick() -> Deferred[None]:
    tick: Deferred[None] = Deferred()
    reactor.callLater(0.005, tick.callback, None)  # type: ignore[attr-defined]
    return tick


@implementer(IPushProducer)
class Pushed:
    def __init__(self) -> None:
        self.paused = 0

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def test_a_streaming_producer_is_still_paused_when_the_queue_fills(connected: Pair) -> None:
    producer = Pushed()
    connected.transport.registerProducer(producer, True)
    connected.transport.write(b"x" * 100)
    assert producer.paused == 0 and connected.ready_now() == b"x" * 100
    connected.transport.write(b"y" * (16 * 1024 * 1024))
    assert producer.paused == 1  # backpressure as before: the relay stops reading upstream
    connected.transport.unregisterProducer()


@implementer(IPullProducer)
class Pulled:
    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def test_a_pull_producer_keeps_twisteds_queue(connected: Pair) -> None:
    # A pull producer is asked for more from doWrite, once the queue drains: its writes
    # must go through the queue, or it would never be asked again.
    connected.transport.registerProducer(Pulled(), False)
    connected.transport.write(b"from a file")
    assert connected.ready_now() == b""
    connected.transport.unregisterProducer()


@pytest_twisted.ensureDeferred
async def test_after_lose_connection_writes_are_queued_and_still_delivered(
    connected: Pair,
) -> None:
    connected.transport.write(b"first ")
    connected.transport.loseConnection()
    connected.transport.write(b"last")
    assert connected.ready_now() == b"first "
    await _tick()
    assert connected.ready_now() == b"last"
    connected.client.setblocking(True)
    connected.client.settimeout(5)
    assert connected.client.recv(100) == b""  # then the close
