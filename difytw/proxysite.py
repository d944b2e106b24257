"""The Site difyproxy listens with, and what it refuses before any route runs.

``ProxySite`` serves ``ProxyRequest`` (``accesslog``) over ``ProxyChannel``, which answers
requests Twisted cannot parse with Dify's JSON 400/431 instead of a bare 400 or a silent
close; ``TargetGate`` refuses unsafe request-targets before klein (werkzeug) decodes or
redirects them.  Each refusal is logged with its Dify error code as the outcome.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.interfaces import IReactorTime
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from difytw.accesslog import ProxyExchange, ProxyRequest, ProxyRequestFactory, answer_error
from difytw.errors import DifyError
from difytw.uri import RequestTarget


class ProxyChannel(http.HTTPChannel):
    """Twisted's HTTP/1.1 channel, with Dify's JSON (and an access line) for bad requests.

    Twisted answers a request it cannot parse -- a bad Content-Length, Content-Length with
    Transfer-Encoding, a method that is not a token, too many or too large headers -- with
    a bare ``400 Bad Request`` and no log line, and a line over ``MAX_LENGTH`` with a
    silent close.  Every one of them goes through ``_respondToBadRequestAndDisconnect``
    or ``lineLengthExceeded``, so those two answer through ``ProxyRequest.refuse``
    instead; what went wrong is read from the channel's own counters.
    """

    _refusing = False
    _bad_framing = False

    # Once refused, nothing more is parsed: a second error must not answer twice, and a
    # request after it must not be served on a connection that is closing.
    def dataReceived(self, data: bytes) -> None:
        if not self._refusing:
            super().dataReceived(data)  # type: ignore[no-untyped-call]

    def lineReceived(self, line: bytes) -> None:
        if not self._refusing:
            super().lineReceived(line)  # type: ignore[no-untyped-call]

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refusing:
            super().rawDataReceived(data)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse(
            DifyError(
                431,
                "request_header_fields_too_large",
                f"A request line or header field is longer than {self.MAX_LENGTH} bytes.",
            )
        )

    def _failChooseTransferDecoder(self) -> bool:
        self._bad_framing = True
        return super()._failChooseTransferDecoder()

    def _respondToBadRequestAndDisconnect(self) -> None:
        self._refuse(self._what_was_wrong())

    def _what_was_wrong(self) -> DifyError:
        if self._receivedHeaderCount > self.maxHeaders:
            message = f"The request has more than {self.maxHeaders} header fields."
            return DifyError(431, "request_header_fields_too_large", message)
        if self._receivedHeaderSize > self.totalHeadersSize:
            message = f"The request's header section is larger than {self.totalHeadersSize} bytes."
            return DifyError(431, "request_header_fields_too_large", message)
        if self._bad_framing:
            message = (
                "The request's Content-Length or Transfer-Encoding is invalid, or both are "
                "given (RFC 9112 section 6)."
            )
        elif not hasattr(self, "_command"):
            message = "The request line is not 'METHOD TARGET HTTP/1.1' with a token METHOD."
        else:
            message = "The request is not valid HTTP/1.1 (a header field or the chunked body)."
        return DifyError(400, "bad_request", message)

    def _refuse(self, error: DifyError) -> None:
        if self._refusing:
            return
        self._refusing = True
        requests: list[Any] = self.requests
        if not requests:  # refused before its request line was complete
            requests.append(self.requestFactory(self))
        request = requests[-1]
        if isinstance(request, ProxyRequest):
            request.refuse(error)
        else:  # another request class: Twisted's own answer
            super()._respondToBadRequestAndDisconnect()  # type: ignore[no-untyped-call]


class ProxySite(Site):
    """A ``Site`` whose requests are ``ProxyRequest``; its own access log replaces Site's.

    Site's combined-log line is not structured and would duplicate the one
    ``ProxyRequest`` emits, so ``log`` is a no-op here.  Connections are
    ``ProxyChannel`` (HTTP/1.1 only: difyproxy does not negotiate HTTP/2).
    """

    # Twisted's default wraps the channel for HTTP/2 negotiation, which is never used
    # here; the annotation names that private wrapper, so it is ignored.
    protocol = ProxyChannel  # type: ignore[assignment]

    def log(self, request: http.Request) -> None:
        pass


def proxy_site(root: IResource, *, reactor: Any, clock: IReactorTime, max_body: int) -> ProxySite:
    """A ``ProxySite`` serving ``root``, every request a ``ProxyRequest`` (body limit, one
    access-log line) on ``clock``."""
    factory = ProxyRequestFactory(clock=clock, max_body=max_body)
    # parsePOSTFormSubmission=False: Twisted would otherwise read a whole multipart
    # body into memory (request.args) before the proxy sees the request.
    return ProxySite(  # type: ignore[no-untyped-call]
        root, requestFactory=factory, reactor=reactor, parsePOSTFormSubmission=False
    )


class TargetGate(Resource):
    """Refuses unsafe request-targets before klein (werkzeug) decodes or redirects them."""

    isLeaf = True

    def __init__(self, inner: IResource) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._inner = inner

    def render(self, request: IRequest) -> Any:
        try:
            RequestTarget.parse(request.uri)
        except DifyError as error:
            return answer_error(cast(ProxyExchange, request), error)
        return self._inner.render(request)
