"""The replay server: a fake Dify that serves recorded exchanges faithfully.

``ReplayApp`` is a klein application.  For each request it runs the checks Dify
runs (the key, the JSON body: ``difytw.replaychecks``), finds the fixture that
matches (``FixtureIndex``), and replays it: the recorded status and headers, then
every recorded chunk with its own ``request.write`` at its recorded offset
divided by ``speed``, ending as recorded (clean EOF, a TCP reset, or a stall).
Faults from ``X-Replay-Fault`` reshape that plan (``difytw.faults``).  A
blocking request answered from a streaming fixture gets the folded JSON
(``difytw.blocking``); uploads get a file object built from the real body.

In a recording mode (``difytw.passthrough.RecordMode``, issue 4) a request with no
fixture -- or every request, in ``all`` -- is forwarded to the real Dify instead and
recorded as it streams; the new fixture joins the live index, so the same request is
replayed from then on.  A recording cut short (its ``end`` says incomplete) does not:
the index never matches one, so the next identical request is forwarded again.

The clock is injected; a client that leaves cancels its pending write at once,
so no ``DelayedCall`` outlives its connection.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_to_bytes

from klein import Klein
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from difytw import blocking, uploads
from difytw.errors import JSON_CONTENT_TYPE, DifyError
from difytw.faults import FAULT_HEADER, plan_writes
from difytw.fixture import Fixture
from difytw.fixtureindex import FixtureIndex, Incoming, NoMatch
from difytw.journal import Journal, JournalEntry
from difytw.passthrough import Passthrough, RecordMode
from difytw.playback import Playback, RunningPlaybacks
from difytw.recordfolder import RecordingTap
from difytw.replaychecks import (
    STOP_ROUTE,
    body_is_read,
    check_generation,
    check_key,
    fault_error,
    faults_of,
    is_json_route,
    json_body,
    wants_blocking,
)
from difytw.uri import RequestTarget

log = Logger()


class ReplayApp:
    app = Klein()

    def __init__(
        self,
        index: FixtureIndex,
        *,
        clock: IReactorTime,
        speed: float = 1.0,
        api_key: str | None = None,
        journal: Journal | None = None,
        record_mode: RecordMode = RecordMode.NONE,
        passthrough: Passthrough | None = None,
    ) -> None:
        self.index = index
        self.clock = clock
        self.speed = speed
        self.api_key = api_key
        self.journal = journal if journal is not None else Journal()
        self.playbacks = RunningPlaybacks()
        # `once` is settled by what the directory held at startup (VCR.py's rule).
        self.record_mode = record_mode.resolved(bool(index.fixtures))
        if self.record_mode is not RecordMode.NONE and passthrough is None:
            raise ValueError(f"record mode {record_mode.value!r} needs an upstream to record")
        self.passthrough = passthrough
        for problem in index.findings:
            # Ambiguous fixtures and extra fallbacks still serve (the first in file-name
            # order answers), but a test author must hear which file never will.
            log.warn(  # noqa: G010 (twisted.logger.Logger has no .warning)
                "fixture problem: {path}:{line}: {problem}",
                path=problem.path,
                line=problem.line,
                problem=problem.problem,
            )
        for fixture in index.incomplete:
            _warn_incomplete(fixture, "loaded")

    def site(self) -> Site:
        """A Site for this app: no tracebacks to clients, uploads not parsed into memory."""
        site = Site(self.resource(), parsePOSTFormSubmission=False)
        site.displayTracebacks = False
        return site

    def resource(self) -> IResource:
        return _Utf8Gate(self.app.resource(), self)

    @app.route("/_replay/journal", methods=["GET"])
    def journal_get(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", JSON_CONTENT_TYPE)
        return json.dumps(self.journal.as_json(), ensure_ascii=False).encode("utf-8")

    @app.route("/_replay/journal", methods=["DELETE"])
    def journal_delete(self, request: IRequest) -> bytes:
        self.journal.clear()
        request.setResponseCode(204)
        return b""

    @app.route("/", branch=True)
    def dify(self, request: IRequest) -> Any:
        # The raw request target, not klein's decoded path: a fixture records
        # what was on the wire.
        raw_path, _, raw_query = request.uri.decode("latin-1").partition("?")
        entry = self.journal.open_request(request, raw_path, raw_query, self.clock.seconds())
        try:
            return self._answer(request, entry, raw_path, raw_query, entry.body_bytes)
        except DifyError as error:
            return self._error(request, entry, error)

    def _answer(
        self, request: IRequest, entry: JournalEntry, path: str, query: str, length: int
    ) -> Any:
        entry.auth = check_key(request.getHeader(b"authorization"), self.api_key)
        fault_spec = (request.getHeader(FAULT_HEADER.encode()) or b"").decode("latin-1")
        faults, query = faults_of(fault_spec, query)
        entry.fault = faults.spec
        assert request.content is not None
        json_route = is_json_route(request.method, path, self.index)
        body = b""
        if body_is_read(length, json_route=json_route):
            body = request.content.read()
            request.content.seek(0)
        payload = json_body(request.getHeader(b"content-type"), body) if json_route else None
        stop = STOP_ROUTE.match(path)
        if stop is not None and request.method == b"POST":
            if self.record_mode is not RecordMode.NONE and stop.group("task") not in self.playbacks:
                # A run this server forwarded lives upstream: stop it there (a stop's
                # answer is not worth a fixture, and replayed stops are answered here).
                return self._forward(request, entry, path, query, record=False)
            return self._stop(request, entry, stop.group("task"), payload)
        if self.record_mode is RecordMode.ALL:
            return self._forward(request, entry, path, query, record=True)
        incoming = Incoming(request.method.decode("latin-1"), path, query, payload, body)
        try:
            fixture = self.index.match(incoming)
        except NoMatch as miss:
            if self.record_mode is RecordMode.NEW_EPISODES:
                return self._forward(request, entry, path, query, record=True)
            if path.endswith("/files/upload") and request.method == b"POST":
                raw_type = request.getHeader(b"content-type") or b""  # boundary is case-sensitive
                return self._upload(request, entry, raw_type, length)
            raise DifyError(
                404, "not_found", miss.message, nearest=[list(pair) for pair in miss.nearest]
            ) from None
        entry.fixture = fixture.id
        check_generation(path, payload)
        if faults.status is not None:
            raise fault_error(faults.status)
        if fixture.response.is_stream and wants_blocking(path, payload):
            status, folded = blocking.fold(fixture.body())
            return self._send_json(request, entry, status, folded)
        plan = plan_writes(
            [(chunk.t, chunk.data) for chunk in fixture.chunks],
            head_ms=fixture.response.t,
            end_ms=fixture.end.t,
            end=fixture.end.how,
            speed=self.speed,
            faults=faults,
        )
        user = payload.get("user") if isinstance(payload, dict) else None
        playback = Playback(
            request, fixture, plan, self.clock, entry, self.journal, user=_text(user)
        )
        self.playbacks.add(playback)
        return playback.start()

    def _forward(
        self, request: IRequest, entry: JournalEntry, path: str, query: str, *, record: bool
    ) -> Deferred[bytes | None]:
        assert self.passthrough is not None
        RequestTarget.parse(request.uri)  # the real key goes with it: only safe targets
        url = self.passthrough.url_for(path, query)
        tap = self.passthrough.tap(request, url) if record else None
        if tap is not None:
            entry.fixture = tap.recorder.fixture_id
            tap.on_end.append(self._recorded)
        return ensureDeferred(self._forwarding(request, entry, url, tap))

    async def _forwarding(
        self, request: IRequest, entry: JournalEntry, url: bytes, tap: RecordingTap | None
    ) -> bytes | None:
        assert self.passthrough is not None
        try:
            await self.passthrough.forward(request, url, entry=entry, journal=self.journal, tap=tap)
        except DifyError as error:
            return self._error(request, entry, error)
        return None

    def _recorded(self, fixture: Fixture) -> None:
        if fixture.end.incomplete:
            # A cut recording is no answer: the same request is forwarded and recorded again.
            _warn_incomplete(fixture, "recorded")
            return
        # Issue 4 item 2: the same request replays from now on, without a restart.
        self.index = FixtureIndex.from_fixtures([*self.index.loaded, fixture])
        log.info(
            "recorded {fixture} for {method} {path}",
            fixture=fixture.id,
            method=fixture.request.method,
            path=fixture.request.path,
        )

    def _stop(self, request: IRequest, entry: JournalEntry, task_id: str, payload: Any) -> bytes:
        # Dify: `user` is required; a stop for an unknown task or another
        # user's task is silently a no-op that still answers success
        # (dify-contract.md 4), so only the journal tells the difference.
        user = payload.get("user") if isinstance(payload, dict) else None
        if not isinstance(user, str) or not user:
            raise DifyError(400, "invalid_param", "Arg user must be provided.")
        stopped = self.playbacks.stop(task_id, user)
        entry.stop = {"task_id": task_id, "user": user, "stopped": stopped}
        body = json.dumps({"result": "success"}).encode()
        return self._send_json(request, entry, 200, body)

    def _upload(
        self, request: IRequest, entry: JournalEntry, content_type: bytes, length: int
    ) -> bytes:
        assert request.content is not None
        upload, fields = uploads.read_upload(content_type, request.content, length)
        now = int(self.clock.seconds())
        body = json.dumps(uploads.file_object(upload, fields.get("user", ""), now)).encode()
        entry.fixture = None
        return self._send_json(request, entry, 201, body)

    def _send_json(self, request: IRequest, entry: JournalEntry, status: int, body: bytes) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"Content-Type", JSON_CONTENT_TYPE)
        request.setHeader(b"Content-Length", str(len(body)).encode())
        entry.status = status
        entry.bytes_sent = len(body)
        self.journal.close(entry, "completed", self.clock.seconds())
        return body

    def _error(self, request: IRequest, entry: JournalEntry, error: DifyError) -> bytes:
        if error.status == 401:
            request.setHeader(b"WWW-Authenticate", b'Bearer realm="api"')
            entry.auth = "missing" if request.getHeader(b"authorization") is None else "wrong"
        log.info(
            "replay refused {method} {path}: {status} {code}",
            method=entry.method,
            path=entry.path,
            status=error.status,
            code=error.code,
        )
        return self._send_json(request, entry, error.status, error.body())


class _Utf8Gate(Resource):
    """Answers a request-target that is not UTF-8 with Dify's JSON 400.

    klein would answer it itself, in plain text, before any route runs.
    """

    isLeaf = True

    def __init__(self, inner: IResource, app: ReplayApp) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._inner = inner
        self._app = app

    def render(self, request: IRequest) -> Any:
        try:
            unquote_to_bytes(request.uri.split(b"?", 1)[0]).decode("utf-8")
        except UnicodeDecodeError:
            request.setResponseCode(400)
            request.setHeader(b"Content-Type", JSON_CONTENT_TYPE)
            return DifyError(400, "invalid_param", "The request path is not UTF-8.").body()
        return self._inner.render(request)


def _warn_incomplete(fixture: Fixture, how: str) -> None:
    log.warn(  # noqa: G010 (twisted.logger.Logger has no .warning)
        "{how} {path}: an incomplete recording (end: {end}), never replayed",
        how=how,
        path=fixture.source,
        end=fixture.end.how,
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
