"""The difyproxy klein application: Dify's API behind your server, key injected, streamed.

This module routes; ``forward`` relays.  Per request: the raw target is vetted before any
router sees it (``proxysite.TargetGate``, with ``uri``), ``GET /healthz`` is answered here,
a path outside the prefix answers Dify's 404 ``not_found``, the access gate admits or
refuses the caller (``access``, issue 6), and what it admits goes to
``forward.Forwarder``.  A ``DifyError`` raised on the way is answered as Dify's JSON error;
any other exception as Dify's JSON 500 (the traceback to the log only).

The reactor, clock and upstream agent are parameters; nothing here imports the global reactor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

from klein import Klein
from klein.interfaces import IKleinRequest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IAgent, IRequest
from twisted.web.resource import IResource
from werkzeug.exceptions import HTTPException

from difytw.access import AccessGate, AccessPolicy
from difytw.accesslog import ProxyExchange, answer_error
from difytw.errors import JSON_CONTENT_TYPE, DifyError
from difytw.forward import Forwarder, ObserverFactory
from difytw.proxysite import ProxySite, TargetGate, proxy_site
from difytw.recordfolder import RecordFolder
from difytw.relay import ReadScope
from difytw.stopper import StopClient, StopPolicy
from difytw.upstream import cookieless_client, tls_policy, upstream_agent, upstream_pool
from difytw.uri import RequestTarget, UpstreamRoute

__all__ = ["ProxyApp", "ProxyConfig"]

_log = Logger()

HEALTHZ = b"/healthz"
# Werkzeug's snake-cased name, which is what Dify itself answers for an unexpected
# exception (dify-contract.md section 3), so clients switch on one code whoever failed.
INTERNAL_ERROR = "internal_server_error"


@dataclass(frozen=True)
class ProxyConfig:
    """What ``twist difyproxy`` was told; the key is kept out of ``repr``."""

    upstream: str
    api_key: str = field(repr=False)
    prefix: str = "/dify"
    max_body: int = 100 * 1024 * 1024
    header_timeout: float = 60.0
    idle_timeout: float = 300.0
    connect_timeout: float = 10.0
    ca_bundle: str | None = None  # PEM file of private CA certificates for https upstreams
    max_stream_duration: float = 30 * 60.0
    stop_on_disconnect: bool = True  # call Dify's stop endpoint for abandoned runs
    resume_workflows: bool = False  # ...except workflow and chatflow runs, left to resume
    # Who may call, as which Dify user, which routes, how often, from which origins.
    access: AccessPolicy = field(default_factory=AccessPolicy)


class ProxyApp:
    """The klein app of ``twist difyproxy``; ``site()`` is what to listen with."""

    app = Klein()

    def __init__(
        self,
        config: ProxyConfig,
        *,
        reactor: Any,
        clock: IReactorTime | None = None,
        agent: IAgent | None = None,
        cooperator: Cooperator | None = None,
        observe: ObserverFactory | None = None,
        record: RecordFolder | None = None,
    ) -> None:
        self.config = config
        self.route = UpstreamRoute(config.prefix, config.upstream)
        self._key = config.api_key.encode("ascii")
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor
        # Each upstream read reaches its relay as one delivery (``chunked``), and leaves
        # as one write.  A recording keeps Dify's own chunks instead, so under --record
        # Twisted decodes chunk by chunk and the relays join each read's chunks inside a
        # shared scope (``relay.ReadScope``): still one write per read.
        self._reads = ReadScope() if record is not None else None
        self._pool = upstream_pool(reactor, self._reads)
        # The relay goes through the agent itself, not treq (see ``upstream``): treq
        # would inflate a gzip answer and drop its Content-Encoding.
        self._agent = (
            agent
            if agent is not None
            else upstream_agent(
                reactor,
                self._pool,
                connect_timeout=config.connect_timeout,
                tls=tls_policy(config.ca_bundle),
            )
        )
        # Request bodies are fed upstream in slices by a cooperator on *this* reactor.
        self._cooperator = (
            cooperator
            if cooperator is not None
            else Cooperator(scheduler=partial(reactor.callLater, 0))
        )
        self._gate = AccessGate(
            config.access,
            upstream=config.upstream,
            prefix=self.route.prefix,
            clock=self._clock,
            cooperator=self._cooperator,
        )
        # Stop calls run on the reactor's time: they outlive the exchange the clock times.
        self._stopper = StopClient(cookieless_client(self._agent), self._key, clock=reactor)
        self._forwarder = Forwarder(
            self._agent,
            api_key=self._key,
            clock=self._clock,
            cooperator=self._cooperator,
            gate=self._gate,
            stopper=self._stopper,
            stop_policy=StopPolicy(config.stop_on_disconnect, config.resume_workflows),
            header_timeout=config.header_timeout,
            idle_timeout=config.idle_timeout,
            max_stream_duration=config.max_stream_duration,
            observe=observe,
            record=record,
            reads=self._reads,
        )

    def close(self) -> Deferred[None]:
        """Let stop calls in flight end, then close idle pooled upstream connections."""
        closing: Deferred[None] = self._stopper.drain().addCallback(
            lambda _: self._pool.closeCachedConnections()
        )
        return closing

    def resource(self) -> IResource:
        return TargetGate(self.app.resource())

    def site(self) -> ProxySite:
        return proxy_site(
            self.resource(),
            reactor=self._reactor,
            clock=self._clock,
            max_body=self.config.max_body,
        )

    @app.handle_errors(DifyError)
    def _dify_error(self, request: IRequest, failure: Failure) -> bytes:
        error = failure.value
        assert isinstance(error, DifyError)
        return answer_error(cast(ProxyExchange, request), error)

    @app.handle_errors(Exception)
    def _unexpected(self, request: IRequest, failure: Failure) -> bytes | Deferred[None]:
        """Any other exception is a bug here: Dify's JSON 500, never Twisted's HTML page
        (or a traceback); the traceback goes to the log only."""
        if failure.check(HTTPException):
            failure.raiseException()  # werkzeug routing's own answers (a redirect) stay klein's
        exchange = cast(ProxyExchange, request)
        _log.failure(
            "unexpected error answering {method} {path}",
            failure,
            method=exchange.method.decode("latin-1"),
            path=exchange.uri.partition(b"?")[0].decode("latin-1"),
        )
        if getattr(request, "startedWriting", False):
            # The status line is gone and the body is not whole: as for a cut body in
            # Forwarder._finish, only a dropped connection says so (a clean end would not).
            exchange.outcome = INTERNAL_ERROR
            exchange.loseConnection()
            return exchange.notifyFinish().addErrback(lambda _: None)
        error = DifyError(500, INTERNAL_ERROR, "The proxy failed to handle this request.")
        return answer_error(exchange, error)

    @app.route("/", branch=True)
    def _dispatch(self, irequest: IRequest) -> bytes | Deferred[bytes | None]:
        request = cast(ProxyExchange, irequest)  # served by site(): a ProxyRequest
        # Routed: klein's per-request adapter and its URL map binding are done with, but
        # the request would keep them for an open stream's whole life (issue 3 item 10).
        request.unsetComponent(IKleinRequest)
        target = RequestTarget.parse(request.uri)  # cheap; TargetGate already vetted it
        if target.path == HEALTHZ:
            return self._healthz(request)
        url = self.route.url_for(target)
        if url is None:
            # Werkzeug's NotFound text, which is what Dify itself answers for unknown routes.
            raise DifyError(
                404,
                "not_found",
                "The requested URL was not found on the server. If you entered the URL "
                "manually please check your spelling and try again.",
            )
        # Chained rather than awaited: an open stream keeps no suspended handler
        # coroutine alive for its whole life (issue 3 item 10, RSS per idle stream).
        admitting = Deferred.fromCoroutine(self._gate.admit(request, target))
        return admitting.addCallback(self._forward, request, url)

    def _forward(
        self, admitted: RequestTarget | None, request: ProxyExchange, url: bytes
    ) -> Deferred[bytes | None]:
        """Forward what the gate admitted (refusals raised DifyError)."""
        if admitted is None:
            return succeed(b"")  # answered by the gate itself (a CORS preflight)
        forwarding = self._forwarder.forward(request, self.route.url_for(admitted) or url)
        return cast("Deferred[bytes | None]", forwarding)

    def _healthz(self, request: ProxyExchange) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            raise DifyError(405, "method_not_allowed", "Use GET for /healthz.")
        body = b'{"status":"ok"}'
        request.responseHeaders.setRawHeaders(b"Content-Type", [JSON_CONTENT_TYPE])
        request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
        request.head_at = self._clock.seconds()
        return body
