"""difyreplay's way to the real Dify: forward a request, relay the answer, record it (issue 4).

When difyreplay records (``--record-mode once|new_episodes|all``), a request it has no
fixture for -- every request, in ``all`` -- goes to ``--upstream`` with the real key
(``DIFY_API_KEY``), and the answer is relayed read by read while a ``RecordingTap`` tees it
into a new fixture.  The pieces are the proxy's: ``upstream.upstream_client`` (no cookies, no
redirects, identity encoding), ``headers.upstream_request_headers`` (the client's
Authorization and Cookie never travel) and ``relay.BodyRelay``.  What differs is the end:
the replay plays Dify, so an upstream body that is cut is a client connection that is cut
-- which is what the recorded fixture's ``reset`` end replays later -- where difyproxy
would add an error frame.

Faults (``X-Replay-Fault``) shape replays only; a forwarded request goes as it came, minus
that header.  The clock and HTTP client are parameters.
"""

from __future__ import annotations

import enum
from functools import partial
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IRequest

from difytw.faults import FAULT_HEADER
from difytw.headers import client_response_headers, is_event_stream
from difytw.journal import Journal, JournalEntry
from difytw.recordfolder import RecordFolder, RecordingTap
from difytw.relay import BodyRelay, RelayEnd
from difytw.upstream import (
    upload_body,
    upstream_headers,
    upstream_timeout,
    upstream_unavailable,
)

_log = Logger()

# The journal's names for how a forwarded exchange ended (the same as a replay's).
_OUTCOME = {
    RelayEnd.COMPLETED: "completed",
    RelayEnd.CLIENT_GONE: "client_closed",
    RelayEnd.IDLE_TIMEOUT: "timeout",
}
_NOT_FORWARDED = FAULT_HEADER.lower().encode("ascii")
_BODYLESS = frozenset({204, 304})  # RFC 9110 section 8.6: no Content-Length on these


class RecordMode(enum.Enum):
    """pytest-recording's record modes (VCR.py's names), applied to a fixture directory."""

    NONE = "none"  # replay only: a miss is a 404 and upstream is never contacted
    ONCE = "once"  # record misses only when the directory held no fixture at startup
    NEW_EPISODES = "new_episodes"  # replay what matches, forward and record the rest
    ALL = "all"  # forward and record every request, replay nothing

    def resolved(self, has_fixtures: bool) -> RecordMode:
        """``once`` is ``new_episodes`` into an empty directory, else ``none``."""
        if self is RecordMode.ONCE:
            return RecordMode.NONE if has_fixtures else RecordMode.NEW_EPISODES
        return self


class Passthrough:
    """Forwards replay requests to ``upstream`` (a Dify server root; the path is appended
    as it arrived, ``/v1`` included) and records into ``folder``."""

    def __init__(
        self,
        upstream: str,
        api_key: str,
        *,
        client: HTTPClient,
        clock: IReactorTime,
        folder: RecordFolder,
        header_timeout: float = 60.0,
        idle_timeout: float = 300.0,
    ) -> None:
        self.upstream = upstream.rstrip("/").encode("ascii")
        self.folder = folder
        self._key = api_key.encode("ascii")
        self._client = client
        self._clock = clock
        self._header_timeout = header_timeout
        self._idle_timeout = idle_timeout
        # Request bodies go upstream in slices, scheduled on the injected clock.
        self._cooperator = Cooperator(scheduler=partial(clock.callLater, 0))

    def url_for(self, path: str, query: str) -> bytes:
        url = self.upstream + path.encode("latin-1")
        return url + b"?" + query.encode("latin-1") if query else url

    def tap(self, request: IRequest, url: bytes) -> RecordingTap:
        """A recording of the exchange ``forward`` is about to start."""
        return self.folder.tap(request.method, url, self._headers_of(request), request.content)

    async def forward(
        self,
        request: IRequest,
        url: bytes,
        *,
        entry: JournalEntry,
        journal: Journal,
        tap: RecordingTap | None,
    ) -> None:
        """Answer ``request`` with upstream's answer to it, as it streams."""
        timed_out = False

        def header_timeout() -> None:
            nonlocal timed_out
            timed_out = True
            sending.cancel()

        timer = self._clock.callLater(self._header_timeout, header_timeout)
        sending = self._client.request(
            request.method.decode("ascii"),
            url,
            headers=self._upstream_headers(request),
            data=self._body(request, timer),
            allow_redirects=False,  # a redirect is the client's to follow, as from Dify
            unbuffered=True,
        )
        try:
            response = await sending
        except CancelledError:
            if not timed_out:
                journal.close(entry, "client_closed", self._clock.seconds())
                raise  # the client left before the head: klein cancelled us
            raise upstream_timeout(self._header_timeout) from None
        except Exception as error:
            _log.warn(
                "record: upstream unavailable: {kind} for {method} {path}",
                kind=type(error).__name__,
                method=entry.method,
                path=entry.path,
                failure=Failure(),
            )
            raise upstream_unavailable(error) from None
        finally:
            if timer.active():
                timer.cancel()

        stream = is_event_stream(response.headers.getRawHeaders(b"Content-Type"))
        request.setResponseCode(response.code, response.phrase)
        raw = list(response.headers.getAllRawHeaders())
        for name, values in client_response_headers(raw, stream=False):
            if name.lower() != b"content-length":
                request.responseHeaders.setRawHeaders(name, values)
        request.defaultContentType = None  # type: ignore[attr-defined]
        if (
            not stream
            and response.length is not UNKNOWN_LENGTH
            and response.code not in _BODYLESS
            and request.method != b"HEAD"
        ):
            request.setHeader(b"Content-Length", b"%d" % response.length)
        request.write(b"")  # the head now, before the first event
        entry.status = response.code
        if tap is not None:
            tap.response(response.code, raw)

        relay = BodyRelay(
            request.write,
            clock=self._clock,
            idle_timeout=self._idle_timeout,
            observer=tap.observing(None) if tap is not None else None,
        )
        # On the relay's own Deferred: it fires however the exchange ends, even once klein
        # has cancelled this coroutine because the client left.
        relay.done.addCallback(self._ended, relay, tap, entry, journal)
        finished: Deferred[None] = request.notifyFinish()  # type: ignore[attr-defined]
        finished.addErrback(lambda _: None)
        request.registerProducer(relay, True)  # type: ignore[attr-defined]
        response.deliverBody(relay)
        end = await relay.done
        if end is RelayEnd.COMPLETED:
            request.unregisterProducer()  # type: ignore[attr-defined]
            request.finish()
            return
        if end is not RelayEnd.CLIENT_GONE:
            # Cut upstream, cut here: the client sees what Dify's client saw.
            request.unregisterProducer()  # type: ignore[attr-defined]
            request.loseConnection()  # type: ignore[attr-defined]
        # klein finishes the request when this returns: only once the connection is gone
        # (the transport stops the relay before the request hears of it).
        await finished

    def _ended(
        self,
        end: RelayEnd,
        relay: BodyRelay,
        tap: RecordingTap | None,
        entry: JournalEntry,
        journal: Journal,
    ) -> RelayEnd:
        if tap is not None:
            tap.end(end)
        entry.bytes_sent = relay.relayed
        journal.close(entry, _OUTCOME.get(end, "reset"), self._clock.seconds())
        return end

    def _headers_of(self, request: IRequest) -> list[tuple[bytes, list[bytes]]]:
        return [
            (name, list(values))
            for name, values in request.requestHeaders.getAllRawHeaders()
            if name.lower() != _NOT_FORWARDED
        ]

    def _upstream_headers(self, request: IRequest) -> Headers:
        return upstream_headers(
            self._headers_of(request),
            api_key=self._key,
            client=request.getClientAddress(),
            secure=request.isSecure(),
        )

    def _body(self, request: IRequest, timer: Any) -> IBodyProducer | None:
        def uploaded_a_slice() -> None:
            # The header timeout bounds silence, not size (as in difyproxy).
            if timer.active():
                timer.reset(self._header_timeout)

        return upload_body(request.content, cooperator=self._cooperator, progress=uploaded_a_slice)
