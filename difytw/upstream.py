"""The upstream HTTP agent of difyproxy and the treq client of its side calls.

``upstream_agent`` is what difyproxy relays through: Twisted's ``Agent`` on a persistent
pool, with nothing that reads or rewrites the body between upstream and the relay.  treq's
``HTTPClient`` always wraps its agent in ``ContentDecoderAgent(gzip)``, which advertises
gzip, inflates a gzip answer and drops its Content-Encoding, so a relay cannot go through
it (issue 3 item 3: bytes unchanged).  ``upstream_client`` puts treq over the same agent for
calls whose answers are read rather than relayed (stop calls, the replay passthrough).

- ``IdentityEncodingAgent``: upstream is asked for ``Accept-Encoding: identity``; an
  upstream that compresses anyway is relayed as it answered, coding header and all.
- ``NoCookieJar`` / ``NoCookies``: a shared proxy must never carry one client's upstream
  cookies into another client's request; the jar neither keeps nor sends any, and skips
  ``http.cookiejar``'s per-request header parsing since it would discard the result anyway.
- ``UpstreamEndpoints``: an IP-literal upstream (``http://127.0.0.1:5001/v1``, the usual
  sidecar deployment) is connected to directly.  Twisted's default ``HostnameEndpoint``
  resolves even a literal through the reactor's resolver, a thread-pool round trip on every
  new connection; a name still goes through ``HostnameEndpoint`` (happy eyeballs).
- ``upstream_headers`` / ``upload_body``: what goes upstream of a client's request (its
  filtered headers with the key, its spooled body read in slices).
- ``UpstreamPool``: a connection pool whose connection factory does not log
  "Starting factory"/"Stopping factory" for every upstream connection, whose
  connections decode a chunked answer read by read (``chunked.ChunkedDecoder``: one
  body delivery per socket read, not one per chunk), or, when chunk boundaries matter
  (``--record`` keeps them in fixtures), run each socket read inside the pool's
  ``relay.ReadScope`` (so a relay still writes one read's chunks with one write).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from http.cookiejar import Cookie, CookiePolicy
from typing import IO, Any, cast

from cryptography import x509
from OpenSSL.crypto import X509
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IAddress, IStreamClientEndpoint
from twisted.internet.ssl import Certificate, trustRootFromCertificates
from twisted.internet.task import Cooperator
from twisted.web._newclient import HTTP11ClientProtocol
from twisted.web.client import (
    URI,
    Agent,
    BrowserLikePolicyForHTTPS,
    HTTPConnectionPool,
    _HTTP11ClientFactory,
)
from twisted.web.error import SchemeNotSupported
from twisted.web.http import _DataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import (
    IAgent,
    IAgentEndpointFactory,
    IBodyProducer,
    IPolicyForHTTPS,
    IResponse,
)
from zope.interface import implementer

from difytw.chunked import ChunkedDecoder, ChunkedError
from difytw.errors import DifyError
from difytw.headers import upstream_request_headers
from difytw.relay import ReadScope
from difytw.uploadbody import UploadBody

# Idle pooled upstream connections kept per host; more are opened when streams overlap.
# A burst of N concurrent streams leaves N connections; keeping only a few meant the next
# burst paid a TCP connect (~90 us of proxy CPU) per request again.  Idle ones cost a
# socket each and close after the pool's cachedConnectionTimeout (240 s) or when upstream
# closes them.
POOL_IDLE_PER_HOST = 1024


@implementer(IAgent)
class IdentityEncodingAgent:
    """Asks upstream for unencoded bodies (``Accept-Encoding: identity``).

    The client's own Accept-Encoding is never forwarded, and no header at all would let
    upstream pick any coding (RFC 9110 section 12.5.3).  Under treq's client this also
    replaces the gzip that its ``ContentDecoderAgent`` advertises.
    """

    def __init__(self, agent: IAgent) -> None:
        self._agent = agent

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        headers = Headers() if headers is None else headers.copy()
        headers.setRawHeaders(b"Accept-Encoding", [b"identity"])
        return self._agent.request(method, uri, headers, bodyProducer)


class NoCookies(CookiePolicy):
    """treq's client keeps one cookie jar; a shared proxy must never carry one client's
    upstream cookies into another client's request, so the jar accepts and returns none."""

    netscape = True
    rfc2965 = False
    hide_cookie2 = True

    def set_ok(self, cookie: Cookie, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Cookie, request: Any) -> bool:
        return False

    def domain_return_ok(self, domain: str, request: Any) -> bool:
        return False

    def path_return_ok(self, path: str, request: Any) -> bool:
        return False


class NoCookieJar(IndexableCookieJar):
    """treq's jar, empty for good: ``NoCookies`` refuses every cookie, and the two calls
    treq's ``CookieAgent`` makes per request (send, then extract ``Set-Cookie``) are skipped
    because their answer under that policy is always "nothing"."""

    def __init__(self) -> None:
        super().__init__(policy=NoCookies())

    def add_cookie_header(self, request: Any) -> None:
        pass

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass

    def set_cookie(self, cookie: Cookie) -> None:
        pass  # nor may a caller's ``cookies=`` argument seed it


@implementer(IAgentEndpointFactory)
class UpstreamEndpoints:
    """Agent endpoints: IP literals connect directly, names resolve; https adds TLS."""

    def __init__(self, reactor: Any, *, tls: IPolicyForHTTPS, connect_timeout: float) -> None:
        self._reactor = reactor
        self._tls = tls
        self._timeout = connect_timeout

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        try:
            host = uri.host.decode("ascii")
        except UnicodeDecodeError:
            raise ValueError(f"upstream host {uri.host!r} is not ASCII") from None
        endpoint: IStreamClientEndpoint
        if isIPAddress(host):
            endpoint = TCP4ClientEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        else:
            endpoint = HostnameEndpoint(self._reactor, host, uri.port, timeout=self._timeout)
        if uri.scheme == b"http":
            return endpoint
        if uri.scheme == b"https":
            # Certificates are checked against the URL's host, literal or name, as Agent does.
            creator = self._tls.creatorForNetloc(uri.host, uri.port)
            return wrapClientTLS(creator, endpoint)
        raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")


class ReadChunkedDecoder:
    """Twisted's body-decoder interface over ``chunked.ChunkedDecoder``.

    ``HTTPClientParser`` builds its decoder as ``decoder(dataCallback, finishCallback)``
    and ends it with ``noMoreData``, which must raise ``_DataLoss`` for a cut body: any
    other exception there is swallowed by Twisted and the response would never end.
    """

    def __init__(
        self, dataCallback: Callable[[bytes], object], finishCallback: Callable[[bytes], object]
    ) -> None:
        self._decoder = ChunkedDecoder(dataCallback, finishCallback)
        self.dataReceived = self._decoder.feed

    def noMoreData(self) -> None:
        try:
            self._decoder.close()
        except ChunkedError as cut:
            raise _DataLoss(str(cut)) from None


_READ_DECODERS = {b"chunked": ReadChunkedDecoder}


class _ReadDecodingHTTP11ClientProtocol(HTTP11ClientProtocol):
    """Decodes each chunked response one socket read at a time (``ReadChunkedDecoder``)."""

    def request(self, request: Any) -> Deferred[IResponse]:
        before = self._parser
        sending: Deferred[IResponse] = super().request(request)
        parser = self._parser
        if parser is not None and parser is not before:
            # Twisted picks the decoder from this table once the head has arrived.
            parser._transferDecoders = _READ_DECODERS  # type: ignore[assignment]
        return sending


class _ScopedHTTP11ClientProtocol(HTTP11ClientProtocol):
    """Runs each socket read inside ``reads`` (see ``relay.ReadScope``)."""

    def __init__(self, quiescentCallback: Callable[..., object], reads: ReadScope) -> None:
        super().__init__(quiescentCallback)  # type: ignore[no-untyped-call]
        self._reads = reads

    def dataReceived(self, data: bytes) -> None:
        self._reads.read(super().dataReceived, data)


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    # One factory per upstream connection: two log lines each would cost more than the
    # request's own access line.
    noisy = False
    reads: ReadScope | None = None

    def buildProtocol(self, addr: IAddress | None) -> HTTP11ClientProtocol:
        if self.reads is None:
            return _ReadDecodingHTTP11ClientProtocol(self._quiescentCallback)  # type: ignore[no-untyped-call]
        return _ScopedHTTP11ClientProtocol(self._quiescentCallback, self.reads)


class UpstreamPool(HTTPConnectionPool):
    """A persistent pool that keeps ``POOL_IDLE_PER_HOST`` idle connections, whose
    connections open and close without a log line each, and decode chunked answers read
    by read, or, given ``reads``, keep Twisted's chunk-by-chunk decoding inside ``reads``."""

    maxPersistentPerHost = POOL_IDLE_PER_HOST

    def __init__(self, reactor: Any, reads: ReadScope | None = None) -> None:
        super().__init__(reactor, persistent=True)  # type: ignore[no-untyped-call]
        self.reads = reads
        # The pool builds a factory per connection from a class: this pool's reads ride on it.
        factory = type("ScopedFactory", (_QuietHTTP11ClientFactory,), {"reads": reads})
        self._factory = cast("type[_QuietHTTP11ClientFactory]", factory)


def upstream_pool(reactor: Any, reads: ReadScope | None = None) -> HTTPConnectionPool:
    """The proxy's persistent, quiet upstream connection pool (see ``UpstreamPool``)."""
    return UpstreamPool(reactor, reads)


def tls_policy(ca_bundle: str | None) -> IPolicyForHTTPS:
    """Verify upstream certificates against the system roots, or only ``ca_bundle``'s."""
    if ca_bundle is None:
        return BrowserLikePolicyForHTTPS()
    with open(ca_bundle, "rb") as pem:
        certificates = x509.load_pem_x509_certificates(pem.read())
    return BrowserLikePolicyForHTTPS(
        trustRoot=trustRootFromCertificates(
            [Certificate(X509.from_cryptography(cert)) for cert in certificates]
        )
    )


def upstream_agent(
    reactor: Any,
    pool: HTTPConnectionPool,
    *,
    connect_timeout: float,
    tls: IPolicyForHTTPS,
) -> IAgent:
    """The agent difyproxy relays through: pooled, follows no redirect, keeps no cookie,
    asks for identity and leaves the answer's body and headers as upstream sent them."""
    endpoints = UpstreamEndpoints(reactor, tls=tls, connect_timeout=connect_timeout)
    return IdentityEncodingAgent(Agent.usingEndpointFactory(reactor, endpoints, pool=pool))


def upstream_client(
    reactor: Any,
    pool: HTTPConnectionPool,
    *,
    connect_timeout: float,
    tls: IPolicyForHTTPS,
) -> HTTPClient:
    """treq over ``upstream_agent``, for answers that are read, not relayed byte for byte."""
    return cookieless_client(
        upstream_agent(reactor, pool, connect_timeout=connect_timeout, tls=tls)
    )


def cookieless_client(agent: IAgent) -> HTTPClient:
    """treq's client over ``agent`` with a jar that keeps no cookie."""
    return HTTPClient(agent, cookiejar=NoCookieJar())


def upstream_headers(
    raw: Iterable[tuple[bytes, Sequence[bytes]]],
    *,
    api_key: bytes,
    client: object,
    secure: bool,
    trust_forwarding: bool = False,
) -> Headers:
    """The headers a client's request goes upstream with (``headers.upstream_request_headers``:
    its credentials replaced by the key, hop-by-hop ones dropped, X-Forwarded-* added)."""
    address = getattr(client, "host", None)
    headers = Headers()
    for name, values in upstream_request_headers(
        raw,
        api_key=api_key,
        client_address=address.encode("ascii") if isinstance(address, str) else None,
        scheme=b"https" if secure else b"http",
        trust_forwarding=trust_forwarding,
    ):
        headers.setRawHeaders(name, values)
    return headers


def upload_body(
    content: IO[bytes] | None, *, cooperator: Cooperator, progress: Callable[[], object]
) -> IBodyProducer | None:
    """The spooled request body as the upstream request's producer; None when empty."""
    if content is None:
        return None
    content.seek(0, 2)
    if content.tell() == 0:
        return None
    content.seek(0)
    return UploadBody(content, cooperator=cooperator, progress=progress)


def upstream_timeout(seconds: float) -> DifyError:
    """504 for an upstream that sent no response head in time (difyproxy and passthrough)."""
    message = f"The upstream Dify API sent no response for {seconds:g} seconds."
    return DifyError(504, "upstream_timeout", message)


def upstream_unavailable(error: BaseException) -> DifyError:
    """502 for an upstream that could not be reached: connect, DNS or TLS failure."""
    kind = type(error).__name__
    return DifyError(
        502, "upstream_unavailable", f"The upstream Dify API could not be reached ({kind})."
    )
