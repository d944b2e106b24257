"""Moving one upstream response body to the client, with backpressure.

``BodyRelay`` is both ends of the pipe: the ``Protocol`` that treq's response delivers
body bytes to (``response.deliverBody(relay)``), and the ``IPushProducer`` registered
with the client's request (``request.registerProducer(relay, True)``).  Each upstream
read becomes exactly one ``write`` of the same bytes object: no buffer, no re-framing, so
an SSE event leaves as soon as Dify sends it (dify-contract.md section 9.1-9.2).  When
the client's socket is full, Twisted pauses the relay, which pauses the upstream socket,
so a slow reader holds kernel buffers only.

The relay decides nothing about HTTP: it reports how the body ended (``done``) and the
proxy turns that into a finish, a final error frame or a dropped connection.

``ReadScope`` marks one upstream socket read.  Twisted's own chunked decoder hands a body
each chunk of a chunked response on its own, so one 64 KiB read of a fast stream is hundreds
of ``dataReceived`` calls; a relay fed inside a read scope joins them and writes once when
the read ends, before the reactor does anything else.  That is "each upstream read goes to
the client with its own write" (issue 3 item 4) as nginx (``proxy_buffering off``) and
Twisted's own proxy do it: bytes, order and latency are unchanged, the write calls and chunk
headers per event are gone.  The observer still sees every chunk on its own (recordings keep
Dify's chunking).  Outside ``--record``, difyproxy decodes with ``chunked.ChunkedDecoder``,
which delivers each read at once by itself: there the relay has no scope.

The other direction, the client's request body, is ``uploadbody.UploadBody``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IPushProducer,
    IReactorTime,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from zope.interface import implementer

_log = Logger()

BodyObserver = Callable[[bytes], object]


class RelayEnd(enum.Enum):
    """How a relayed body ended; the value is the access log's ``outcome``."""

    COMPLETED = "completed"
    UPSTREAM_DISCONNECTED = "upstream_disconnected"
    IDLE_TIMEOUT = "upstream_idle_timeout"
    DURATION_EXCEEDED = "stream_duration_exceeded"
    CLIENT_GONE = "client_closed"


def _discard(data: bytes) -> None:
    """Stands in for the client write once the relay has ended."""


class ReadScope:
    """One upstream socket read at a time; see the module docstring.

    The upstream connection runs each read through ``read``; a relay that gets body bytes
    while ``reading`` holds them and asks, once per read, to be flushed when it ends.
    """

    def __init__(self) -> None:
        self.reading = False
        self._flushes: list[Callable[[], None]] = []

    def read(self, deliver: Callable[[bytes], object], data: bytes) -> None:
        if self.reading:  # re-entered (never seen): the outer read flushes
            deliver(data)
            return
        self.reading = True
        try:
            deliver(data)
        finally:
            self.reading = False
            flushes, self._flushes = self._flushes, []
            for flush in flushes:
                try:
                    flush()
                except Exception:
                    # One relay's failure must not keep the others' bytes back.
                    _log.failure("relay flush failed")

    def after_read(self, flush: Callable[[], None]) -> None:
        self._flushes.append(flush)


@implementer(IPushProducer)
class BodyRelay(Protocol):
    """Relays body bytes from upstream to ``write``; see the module docstring.

    ``idle_timeout`` (seconds, or None for none) ends the relay when upstream sends
    nothing for that long while the client is keeping up; time spent paused by a slow
    client does not count.  ``max_duration`` (seconds, or None) ends the relay that long
    after it was made, however busy the stream (``--max-stream-duration``).  ``observer``,
    when given, sees every chunk after it was written: the hook for side-parsing a stream
    (e.g. for ``task_id``) without delaying it.  ``relayed`` counts the bytes passed on.
    """

    def __init__(
        self,
        write: Callable[[bytes], object],
        *,
        clock: IReactorTime,
        idle_timeout: float | None,
        max_duration: float | None = None,
        observer: BodyObserver | None = None,
        reads: ReadScope | None = None,
    ) -> None:
        self.done: Deferred[RelayEnd] = Deferred(self._cancelled)
        self._upstream_closed: Deferred[None] | None = None  # made when first asked for
        self._upstream_gone = False
        self.ended: RelayEnd | None = None
        self._write = write
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._idle_seconds = idle_timeout or 0.0  # what reset() needs, without a None check
        self._observer = observer
        self._reads = reads
        self._held: list[bytes] | None = None  # chunks of the current read, not yet written
        self._idle: IDelayedCall | None = None
        self._upstream: IPushProducer | None = None
        self._paused = False
        self.relayed = 0
        self._deadline: IDelayedCall | None = None
        if max_duration is not None:
            self._deadline = clock.callLater(max_duration, self._duration_exceeded)

    @property
    def upstream_closed(self) -> Deferred[None]:
        """Fires once the upstream connection is really gone, which can be after ``done``.

        Made on first use: only a stream whose run is stopped asks, and a Deferred per
        open stream is memory an idle one would hold for nothing (issue 3 item 10).
        """
        closed = self._upstream_closed
        if closed is None:
            closed = self._upstream_closed = Deferred()
            if self._upstream_gone:
                closed.callback(None)
        return closed

    # -- Protocol: the upstream side ------------------------------------------------

    def connectionMade(self) -> None:
        # treq hands the body protocol a TransportProxyProducer: pausing it stops reading
        # the upstream socket, stopping it closes that connection.
        self._upstream = IPushProducer(self.transport)
        if self.ended is not None:
            self._stop_upstream()
        elif self._paused:
            assert self._upstream is not None
            self._upstream.pauseProducing()
        else:
            self._arm()

    def dataReceived(self, data: bytes) -> None:
        reads = self._reads
        if reads is not None and reads.reading:
            held = self._held
            if held is None:
                self._held = [data]
                reads.after_read(self._flush)
            else:
                held.append(data)
            return
        self._relay(data, (data,))

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held:
            self._relay(held[0] if len(held) == 1 else b"".join(held), held)

    def _relay(self, data: bytes, chunks: Sequence[bytes]) -> None:
        self._write(data)
        self.relayed += len(data)
        observer = self._observer
        if observer is not None:
            try:
                for chunk in chunks:
                    observer(chunk)
            except Exception:
                # A broken side-parser must never break the stream it watches.
                _log.failure("body observer failed; detaching it")
                self._observer = None
        # Read after the write: the write may have paused us, which drops the timer.
        idle = self._idle
        if idle is not None:
            idle.reset(self._idle_seconds)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.ended is None:
            self._flush()  # the end came in the same read as the last chunks
        if not self._upstream_gone:
            self._upstream_gone = True
            if self._upstream_closed is not None:
                self._upstream_closed.callback(None)
        if self.ended is not None:
            return
        # PotentialDataLoss is how a body without Content-Length or chunking ends: by
        # close.  Anything else (short Content-Length, broken chunking, reset) is a cut.
        if reason.check(ResponseDone, PotentialDataLoss):
            self._end(RelayEnd.COMPLETED, stop_upstream=False)
        else:
            self._end(RelayEnd.UPSTREAM_DISCONNECTED, stop_upstream=False)

    # -- IPushProducer: the client side ---------------------------------------------

    def pauseProducing(self) -> None:
        if self.ended is not None or self._paused:
            return
        self._paused = True
        self._disarm()
        if self._upstream is not None:
            self._upstream.pauseProducing()

    def resumeProducing(self) -> None:
        if self.ended is not None or not self._paused:
            return
        self._paused = False
        if self._upstream is not None:
            self._upstream.resumeProducing()
            self._arm()

    def stopProducing(self) -> None:
        """The client went away: close upstream now (spec item 6)."""
        self._end(RelayEnd.CLIENT_GONE, stop_upstream=True)

    # -- internals --------------------------------------------------------------------

    def _cancelled(self, done: Deferred[RelayEnd]) -> None:
        # Whoever awaited the relay gave up (klein cancels a handler whose client left).
        self._end(RelayEnd.CLIENT_GONE, stop_upstream=True)

    def _arm(self) -> None:
        if self._idle_timeout is not None and self._idle is None:
            self._idle = self._clock.callLater(self._idle_timeout, self._idle_expired)

    def _disarm(self) -> None:
        idle, self._idle = self._idle, None
        if idle is not None and idle.active():
            idle.cancel()

    def _idle_expired(self) -> None:
        self._idle = None
        self._end(RelayEnd.IDLE_TIMEOUT, stop_upstream=True)

    def _duration_exceeded(self) -> None:
        self._deadline = None
        self._end(RelayEnd.DURATION_EXCEEDED, stop_upstream=True)

    def _stop_upstream(self) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.stopProducing()

    def _end(self, outcome: RelayEnd, *, stop_upstream: bool) -> None:
        if self.ended is not None:
            return
        self.ended = outcome
        # Bytes the upstream parser still holds after this point have nowhere to go.
        self._write = _discard
        self._observer = None
        self._held = None
        self._disarm()
        deadline, self._deadline = self._deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()
        if stop_upstream:
            self._stop_upstream()
        else:
            self._upstream = None
        self.done.callback(outcome)
