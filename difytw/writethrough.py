"""Server sockets that send at once when nothing is queued (Twisted glue).

Twisted's TCP transport never sends from ``write``: it queues the bytes, asks the reactor
to watch the socket for writability, and sends on the reactor's next pass, after every other
socket that was ready in this pass has been served.  For a stream proxy that is the wrong
moment: an SSE event read from upstream waits behind the whole batch of ready sockets, so
at 1,000 busy streams the added latency is the reactor's pass time, and each event costs
two extra ``epoll_ctl`` calls and a second dispatch (issue 3 item 4: "each upstream read
goes to the client with its own write, at once"; item 10: latency at 1,000 streams).

``WriteThroughServer`` sends in ``write`` itself when its queue is empty, as nginx does,
and queues only what the kernel did not take (then Twisted's own machinery runs as before:
writability, producer pausing, ``loseConnection`` after the queue drains).  Bytes are never
reordered (nothing is sent past a non-empty queue), and a pull producer (``streaming=False``,
e.g. a static file) keeps Twisted's path, since it is resumed from ``doWrite``.

``WriteThroughReactor`` hands ``serverFromString`` a reactor whose ``listenTCP`` makes such
sockets; every other call goes to the real reactor (TLS and UNIX listeners are unchanged).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IListeningPort


class WriteThroughServer(tcp.Server):
    """A server connection that sends in ``write`` while its send queue is empty."""

    def _idle_queue(self) -> bool:
        return bool(
            not self._tempDataBuffer
            and len(self.dataBuffer) == self.offset
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnected
            and (self.producer is None or self.streamingProducer)
        )

    def write(self, data: bytes) -> None:
        if data.__class__ is bytes and data and self._idle_queue():
            sent = self.writeSomeData(data)
            if isinstance(sent, int) and sent > 0:
                if sent == len(data):
                    return
                data = data[sent:]
            # A failed send (the peer is gone) is queued like any write: the reactor's
            # next pass over this socket meets the error and closes it the usual way.
        super().write(data)  # type: ignore[no-untyped-call]

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        if self._idle_queue():
            # One send for the lot (Twisted's HTTP server writes a chunk as four pieces).
            # join refuses str as Twisted's own check does.
            self.write(b"".join(iovec))
            return
        super().writeSequence(iovec)  # type: ignore[no-untyped-call]


class WriteThroughPort(tcp.Port):
    """A TCP listening port whose connections are ``WriteThroughServer``."""

    transport = WriteThroughServer


class WriteThroughReactor:
    """``reactor`` for ``serverFromString``, with ``listenTCP`` making write-through sockets."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> IListeningPort:
        listening = WriteThroughPort(port, factory, backlog, interface, self._reactor)
        listening.startListening()
        return listening
