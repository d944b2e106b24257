"""Forwarding one admitted request: upstream and back, streamed, with every failure answered.

The body goes upstream from Twisted's spool through ``uploadbody.UploadBody`` (no parse, no
second copy), the headers are filtered both ways (``headers``), and the answer's body is
relayed read by read (``relay.BodyRelay``) with the upstream socket as the client's
producer.  Everything that can go wrong has its own Dify-shaped answer (spec item 7): 502
``upstream_unavailable`` when upstream cannot be reached, 504 ``upstream_timeout`` when
upstream stays silent before its response head, and once a stream has started, a final
``error`` frame (``upstream_idle_timeout`` / ``upstream_disconnected`` /
``stream_duration_exceeded``) because the status line is gone (dify-contract.md section 9.13).

Every stream is watched on the side (``streamwatch``, fed after each write) and bounded by
``--max-stream-duration``.  When a stream ends before its terminal event because the client
left or the proxy gave up on it, the run is stopped upstream (``stopper``, issue 7) as the
user :func:`upstream_run` found; every finished stream leaves one usage line (``usage``).
With ``--record DIR`` every exchange is also teed into a fixture as it streams
(``recordfolder``, issue 4).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent

from difytw.access import AccessGate
from difytw.accesslog import ProxyExchange
from difytw.errors import error_frame
from difytw.headers import client_response_headers, is_event_stream
from difytw.recordfolder import RecordFolder, RecordingTap
from difytw.relay import BodyObserver, BodyRelay, ReadScope, RelayEnd
from difytw.stopper import (
    MAX_BODY_FOR_USER,
    RunRoute,
    StopClient,
    StopPolicy,
    UpstreamRun,
    body_user,
    query_user,
    run_route,
)
from difytw.upstream import upload_body, upstream_headers, upstream_timeout, upstream_unavailable
from difytw.usage import log_usage

# Named as before the forwarding moved out of ``proxy``, so log filters on it still match.
_log = Logger(namespace="difytw.proxy")

# Statuses whose responses carry no body, so no Content-Length (RFC 9110 section 8.6).
_BODYLESS = frozenset({204, 304})

ObserverFactory = Callable[[ProxyExchange, bool], BodyObserver | None]


class Forwarder:
    """Sends each admitted request upstream and relays the answer back; one per ``ProxyApp``."""

    def __init__(
        self,
        agent: IAgent,
        *,
        api_key: bytes,
        clock: IReactorTime,
        cooperator: Cooperator,
        gate: AccessGate,
        stopper: StopClient,
        stop_policy: StopPolicy,
        header_timeout: float,
        idle_timeout: float,
        max_stream_duration: float,
        observe: ObserverFactory | None = None,
        record: RecordFolder | None = None,
        reads: ReadScope | None = None,
    ) -> None:
        self._agent = agent
        self._reads = reads  # the upstream pool's read scope (relay.ReadScope)
        self._key = api_key
        self._clock = clock
        self._cooperator = cooperator
        self._gate = gate  # for the response head's CORS headers
        self._stopper = stopper
        self._stop_policy = stop_policy
        self._header_timeout = header_timeout
        self._idle_timeout = idle_timeout
        self._max_stream_duration = max_stream_duration
        self._observe = observe
        self._record = record  # --record DIR (issue 4): every exchange tees into a fixture

    def forward(self, request: ProxyExchange, url: bytes) -> Deferred[None]:
        """Send ``request`` to ``url`` upstream and relay the answer back to it; fires once
        the exchange is over (cancelling it ends the relay as a client that left)."""
        # The coroutine ends once the relay is set up: an open stream, idle for minutes,
        # then keeps no suspended frame (and the head's locals) alive, only the relay's
        # ``done`` and what its callback needs (issue 3 item 10, RSS per idle stream).
        return Deferred.fromCoroutine(self._send(request, url)).addCallback(_relaying)

    async def _send(self, request: ProxyExchange, url: bytes) -> _Relaying | None:
        """Up to the relay: the upstream request, its response head, the client's head."""
        run = upstream_run(request, url, now=self._clock.seconds())
        headers = upstream_headers(
            request.requestHeaders.getAllRawHeaders(),
            api_key=self._key,
            client=request.getClientAddress(),
            secure=request.isSecure(),
            # The access gate already removed the forwarding headers of a peer not in
            # --trusted-proxy; what is left came from a proxy this one trusts.
            trust_forwarding=True,
        )

        relay: BodyRelay | None = None
        timed_out = False
        left = False

        def header_timeout() -> None:
            nonlocal timed_out
            timed_out = True
            sending.cancel()

        # --header-timeout bounds silence, not size: each body slice upstream accepts
        # restarts it, so a 100 MB upload on a slow link is not a "timeout" while a
        # stalled one, or a head that never comes after the body, is.
        timer = self._clock.callLater(self._header_timeout, header_timeout)

        def uploaded_a_slice() -> None:
            if timer.active():
                timer.reset(self._header_timeout)

        # Made before the request leaves: a fixture's times count from the request.
        tap = (
            self._record.tap(
                request.method,
                url,
                request.requestHeaders.getAllRawHeaders(),
                request.content,
                user=run.user,
            )
            if self._record is not None
            else None
        )
        # An Agent follows no redirect (the client's business, with its own URL) and
        # hands the body over unread: the relay below gets upstream's bytes as they come.
        sending = self._agent.request(
            request.method,
            url,
            headers,
            upload_body(request.content, cooperator=self._cooperator, progress=uploaded_a_slice),
        )

        def client_left(reason: Failure) -> None:
            nonlocal left
            left = True
            if relay is None:
                sending.cancel()
            else:
                relay.stopProducing()  # spec item 6: upstream closes at once

        # Fires when the exchange is over either way; after client_left it holds None.
        finished = request.notifyFinish().addErrback(client_left)
        try:
            response = await sending
        except Exception as error:
            if left:
                request.outcome = RelayEnd.CLIENT_GONE.value
                return None
            if timed_out:
                raise upstream_timeout(self._header_timeout) from None
            _log.warn(
                "upstream unavailable: {kind} for {method} {url}",
                kind=type(error).__name__,
                method=request.method.decode("ascii"),
                url=url.partition(b"?")[0].decode("ascii"),
                failure=Failure(),
            )
            raise upstream_unavailable(error) from None
        finally:
            if timer.active():
                timer.cancel()

        stream = is_event_stream(response.headers.getRawHeaders(b"Content-Type"))
        request.setResponseCode(response.code, response.phrase)
        request.defaultContentType = None  # never invent a type upstream did not send
        for name, values in client_response_headers(
            response.headers.getAllRawHeaders(), stream=stream
        ):
            request.responseHeaders.setRawHeaders(name, values)
        self._gate.head(request)  # upstream's Access-Control-* out, this proxy's CORS in
        if (
            not stream
            and response.length is not UNKNOWN_LENGTH
            and response.code not in _BODYLESS
            and request.method != b"HEAD"
        ):
            request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % response.length])
        request.write(b"")  # the head goes out now, before the first event
        request.head_at = self._clock.seconds()
        observer = self._observer(request, stream, run)
        if tap is not None:
            # Upstream's own head (Set-Cookie is dropped by the tap), after the client's.
            tap.response(response.code, response.headers.getAllRawHeaders())
            observer = tap.observing(observer)  # each read, after its client write

        relay = BodyRelay(
            request.write,
            clock=self._clock,
            idle_timeout=self._idle_timeout,
            max_duration=self._max_stream_duration if stream else None,
            observer=observer,
            reads=self._reads,
        )
        request.registerProducer(relay, True)
        response.deliverBody(relay)
        # An open stream may idle for minutes: keep only what relaying it needs, not the
        # response or the upstream request's headers.  ``sending`` (which the closures
        # above still reference) keeps its result, so it is made to drop it.  Twisted's
        # client keeps the request it sent for as long as the response lasts; its headers,
        # written long ago, are emptied (issue 3 item 10, RSS per idle stream).
        sent = getattr(response.request, "headers", None)  # an agent's own answer may have none
        if isinstance(sent, Headers):
            for name, _ in list(sent.getAllRawHeaders()):
                sent.removeHeader(name)
        sending.addCallback(lambda _: None)
        return _Relaying(
            relay.done.addCallback(self._relayed, request, relay, run, stream, tap, finished)
        )

    def _relayed(
        self,
        end: RelayEnd,
        request: ProxyExchange,
        relay: BodyRelay,
        run: UpstreamRun,
        stream: bool,
        tap: RecordingTap | None,
        finished: Deferred[None],
    ) -> Deferred[None] | None:
        """The relay is over: end the exchange; the result fires when klein may finish it."""
        if tap is not None:
            tap.end(end)
        finished_cleanly = self._finish(request, end, stream)
        if stream:
            self._stream_over(run, relay, end)
        if not finished_cleanly:
            # klein finishes the request when this handler's Deferred fires; firing only
            # once the connection is gone keeps it from ending a cut body cleanly.
            return finished
        return None

    def _observer(
        self, request: ProxyExchange, stream: bool, run: UpstreamRun
    ) -> BodyObserver | None:
        """The stream's watch, as the relay's observer (with the test hook, if given)."""
        watching = run.watch.feed if stream else None
        extra = self._observe(request, stream) if self._observe is not None else None
        if extra is None or watching is None:
            return watching or extra

        def both(data: bytes) -> None:
            watching(data)
            extra(data)

        return both

    def _stream_over(self, run: UpstreamRun, relay: BodyRelay, end: RelayEnd) -> None:
        """Stop the run if it was abandoned (issue 7), and log the stream's usage."""
        stopping = self._stop_policy.wants_stop(run, end)
        if stopping:
            # After the upstream socket is closed, so Dify sees the reader gone first.
            relay.upstream_closed.addCallback(lambda _: self._stopper.stop(run))
        log_usage(
            run.watch,
            user=run.user,
            endpoint=run.endpoint,
            end=end.value,
            relayed=relay.relayed,
            duration=self._clock.seconds() - run.started,
            stop_call=stopping,
        )

    def _finish(self, request: ProxyExchange, end: RelayEnd, stream: bool) -> bool:
        """End the client's side of the exchange; False while its connection is closing."""
        request.outcome = end.value
        if end is RelayEnd.CLIENT_GONE:
            return False  # nothing to say to a client that is gone
        request.unregisterProducer()
        if end is RelayEnd.COMPLETED:
            request.finish()
            return True
        if stream:
            # The status line is long gone: Dify's way to fail a started stream is a final
            # error frame (dify-contract.md section 2.5), then a clean end.
            status = 504
            if end is RelayEnd.IDLE_TIMEOUT:
                message = f"The upstream Dify API sent nothing for {self._idle_timeout:g} seconds."
            elif end is RelayEnd.DURATION_EXCEEDED:
                message = (
                    f"The stream ran past the proxy's limit of "
                    f"{self._max_stream_duration:g} seconds."
                )
            else:
                status, message = 502, "The upstream Dify API closed the stream before it ended."
            request.write(error_frame(status, end.value, message))
            request.finish()
            return True
        # A non-stream body cut short: a clean end would pass off a truncated body as
        # whole, so the only honest signal is a dropped connection.
        request.loseConnection()
        return False


class _Relaying:
    """What ``Forwarder._send`` hands over once a body is relaying: the Deferred that fires
    when the exchange is over (a coroutine cannot return a Deferred itself)."""

    __slots__ = ("over",)

    def __init__(self, over: Deferred[None]) -> None:
        self.over = over


def _relaying(sent: _Relaying | None) -> Deferred[None] | None:
    return sent.over if sent is not None else None


def upstream_run(request: ProxyExchange, url: bytes, *, now: float) -> UpstreamRun:
    """What this request may start upstream, and the ``user`` it goes with."""
    route = run_route(request.method, url)
    path, _, query = request.uri.partition(b"?")
    user = getattr(request, "dify_user", None)  # set by the access gate (issue 6)
    if not isinstance(user, str):
        # Only without the gate's user is it worth reading the query or parsing the
        # body (up to 1 MiB of JSON, a second parse after the gate's) for the caller's.
        user = caller_user(request, route, query)
    elif route is not None and request.content is not None:
        request.content.seek(0)  # where the body is read from next, as after a parse
    return UpstreamRun(path.decode("latin-1"), route, user, now)


def caller_user(request: ProxyExchange, route: RunRoute | None, query: bytes) -> str | None:
    """The ``user`` the caller named, in the body for a run route, else the query.

    A resumed run (``GET /workflow/{id}/events``) names it in the query (contract 1.2).
    """
    user = query_user(query)
    content = request.content
    if route is not None and not route.resumed and content is not None:
        content.seek(0, 2)
        if content.tell() <= MAX_BODY_FOR_USER:
            content.seek(0)
            content_type = request.requestHeaders.getRawHeaders(b"Content-Type", [None])[0]
            user = body_user(content_type, content.read())
        content.seek(0)
    return user
