"""One structured access-log line per proxied request, and the request that keeps its facts.

``ProxyRequest`` is difyproxy's ``twisted.web.server.Request``: it timestamps the request,
refuses oversized bodies before anything is spooled or sent upstream (spec item 5), and
when the exchange ends -- finished, refused, or the client gone -- emits exactly one
``twisted.logger`` event with the method, path (never the query: it carries user ids),
status (nginx's 499 when the client left before any response head), body bytes, time to
the response head, duration, outcome and whether the client left early.  No header is
logged, so neither the app key nor a client's Authorization can reach a log.

``answer_error`` gives Dify's JSON error as a route's complete answer; ``ProxyRequest.refuse``
answers before any route runs (the 413 above, and ``proxysite``'s refusals), each logged
with its Dify error code as the outcome.
"""

from __future__ import annotations

from typing import IO, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITCPTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.http_headers import Headers
from twisted.web.iweb import INonQueuedRequestFactory
from twisted.web.server import Request
from zope.interface import implementer

from difytw.errors import JSON_CONTENT_TYPE, DifyError

access_log = Logger(namespace="difytw.access")

# After a 413 the client may still be sending its body; closing with unread bytes makes
# the kernel send RST, which can destroy the 413 before the client reads it.  So the
# write side is shut first and the rest is read and dropped for at most this long.
LINGER_SECONDS = 2.0
# nginx's non-standard status for a client that left before any response was sent.
CLIENT_CLOSED_REQUEST = 499


class ProxyExchange(Protocol):
    """The typed surface of ``ProxyRequest`` that the proxy uses.

    Twisted's ``Request`` is untyped; the proxy talks to this instead so that mypy
    --strict checks every call it makes.
    """

    method: bytes
    uri: bytes
    code: int
    content: IO[bytes] | None
    requestHeaders: Headers
    responseHeaders: Headers
    defaultContentType: bytes | None
    clock: IReactorTime
    head_at: float | None
    outcome: str

    def getClientAddress(self) -> object: ...
    def isSecure(self) -> bool: ...
    def setResponseCode(self, code: int, message: bytes | None = None) -> None: ...
    def write(self, data: bytes) -> None: ...
    def finish(self) -> None: ...
    def loseConnection(self) -> None: ...
    def notifyFinish(self) -> Deferred[None]: ...
    def unsetComponent(self, interfaceClass: object) -> None: ...
    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


class ProxyRequest(Request):
    """A request that knows when it started, how it ended, and how much body it may have.

    ``outcome`` is set by whoever ends the exchange (``"completed"`` unless told
    otherwise); ``head_at`` by whoever sends the response head.
    """

    # An open stream's request lives as long as the stream.  CPython shares one key table
    # among a class's instance dicts only while they hold at most 29 keys (3.11); Twisted's
    # Request sets ~30 and the access gate one more, so every request had its own ~1.5 KiB
    # table.  Slots take this class's own facts out of the dict, and a few of Twisted's
    # attributes that have no class-level default (so an unset slot reads exactly like a
    # missing dict key) keep it well under the limit.
    __slots__ = (
        "_body_seen",
        "_linger",
        "_logged",
        "_refused",
        "channel",
        "clock",
        "dify_user",
        "head_at",
        "max_body",
        "notifications",
        "outcome",
        "requestHeaders",
        "responseHeaders",
        "started",
        "transport",
    )

    def __init__(self, channel: Any, *, clock: IReactorTime, max_body: int) -> None:
        super().__init__(channel)  # type: ignore[no-untyped-call]
        self.clock = clock
        self.max_body = max_body
        self.started = clock.seconds()
        self.head_at: float | None = None
        self.outcome = "completed"
        self._body_seen = 0
        self._refused = False
        self._linger: IDelayedCall | None = None
        self._logged = False

    # -- body limit (spec item 5) ------------------------------------------------------

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self._refuse_body()
            return
        super().gotLength(length)  # type: ignore[no-untyped-call]

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_seen += len(data)
        if self._body_seen > self.max_body:  # chunked bodies announce no length
            self._refuse_body()
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return  # the 413 has gone out; this request never reaches a resource
        super().requestReceived(command, path, version)  # type: ignore[no-untyped-call]

    def _refuse_body(self) -> None:
        if self.content is not None:
            self.content.close()
            self.content = None
        # Twisted answers "Expect: 100-continue" right after gotLength; it must not
        # invite the body we are refusing.
        self.requestHeaders.removeHeader(b"expect")
        self.refuse(
            DifyError(
                413,
                "request_entity_too_large",
                f"The request body is larger than the limit of {self.max_body} bytes.",
            )
        )

    def refuse(self, error: DifyError) -> None:
        """Answer ``error`` before the request reaches any resource, log it, and close."""
        if self._refused:
            return
        self._refused = True
        body = error.body()
        headers = Headers()
        headers.setRawHeaders(b"Content-Type", [JSON_CONTENT_TYPE])
        headers.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
        headers.setRawHeaders(b"Connection", [b"close"])
        channel = self.channel
        # The request line is known only to the channel until the body is complete.
        self.method = getattr(channel, "_command", b"-")
        self.uri = self.path = getattr(channel, "_path", b"-")
        self.code = error.status
        self.head_at = self.clock.seconds()
        reason = http.RESPONSES.get(error.status, b"Error")
        channel.writeHeaders(b"HTTP/1.1", b"%d" % error.status, reason, headers)
        channel.write(body)
        self.sentLength = len(body)
        self.outcome = error.code
        transport = channel.transport
        if ITCPTransport.providedBy(transport):
            transport.loseWriteConnection()
            self._linger = self.clock.callLater(LINGER_SECONDS, transport.abortConnection)
        else:
            channel.loseConnection()
        self._log_access(None)

    # -- the access log ------------------------------------------------------------------

    def process(self) -> None:
        self.notifyFinish().addBoth(self._log_access)
        super().process()  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure) -> None:
        linger, self._linger = self._linger, None
        if linger is not None and linger.active():
            linger.cancel()
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def _log_access(self, result: Failure | None) -> None:
        if self._logged:
            return
        self._logged = True
        status = self.code
        if isinstance(result, Failure):
            if self.outcome == "completed":
                self.outcome = "client_closed"
            if not self.startedWriting:
                # No status was ever sent, so self.code (200 by default) would be a lie;
                # 499 is nginx's "client closed request", what log tooling expects.
                status = CLIENT_CLOSED_REQUEST
        now = self.clock.seconds()
        path = self.uri.partition(b"?")[0]
        access_log.info(
            "{method} {path} {status} {bytes} bytes ttfb={ttfb}s duration={duration}s {outcome}",
            method=self.method.decode("latin-1"),
            path=path.decode("latin-1"),
            status=status,
            bytes=self.sentLength,
            ttfb=None if self.head_at is None else round(self.head_at - self.started, 4),
            duration=round(now - self.started, 4),
            outcome=self.outcome,
            client_left_early=self.outcome == "client_closed",
        )


@implementer(INonQueuedRequestFactory)
class ProxyRequestFactory:
    """Builds ``ProxyRequest`` objects for a ``Site`` with one clock and body limit."""

    def __init__(self, *, clock: IReactorTime, max_body: int) -> None:
        self.clock = clock
        self.max_body = max_body

    def __call__(self, channel: Any) -> ProxyRequest:
        return ProxyRequest(channel, clock=self.clock, max_body=self.max_body)


def answer_error(request: ProxyExchange, error: DifyError) -> bytes:
    """Dify's JSON error body, as the complete answer to ``request``."""
    body = error.body()
    request.setResponseCode(error.status)
    request.responseHeaders.setRawHeaders(b"Content-Type", [JSON_CONTENT_TYPE])
    request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
    request.head_at = request.clock.seconds()
    request.outcome = error.code
    return body
