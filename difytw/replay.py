"""The replay server: a fake Dify that serves recorded exchanges faithfully.

``ReplayApp`` is a klein application.  For each request it checks the key the
way Dify does (dify-contract.md 1.1), finds the fixture that matches
(``FixtureIndex``), and replays it: the recorded status and headers, then
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

import hashlib
import hmac
import json
import re
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes, urlencode

from klein import Klein
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from difytw import blocking, uploads
from difytw.errors import JSON_CONTENT_TYPE, DifyError
from difytw.faults import FAULT_HEADER, FAULT_QUERY_PARAM, FaultError, Faults, plan_writes
from difytw.fixture import Fixture
from difytw.fixtureindex import FixtureIndex, Incoming, NoMatch
from difytw.journal import Journal, JournalEntry, allowed_headers
from difytw.passthrough import Passthrough, RecordMode
from difytw.playback import Playback
from difytw.recordfolder import RecordingTap
from difytw.uri import RequestTarget

log = Logger()

# Routes that take `response_mode` (dify-contract.md 1.2); Dify streams only
# when the value is exactly "streaming", so absent means blocking.
MODE_ROUTES = ("/chat-messages", "/completion-messages", "/workflows/run")
# The three stop endpoints (dify-contract.md 1.2 and 4).
STOP_ROUTE = re.compile(
    r"^/v1/(?:chat-messages|completion-messages|workflows/tasks)/(?P<task>[^/]+)/stop$"
)
# The largest body read for matching; a JSON route refuses a bigger one with 413 rather
# than match it as empty (Dify's own nginx stops far smaller bodies, contract 3).
MAX_BODY = 16 << 20
TOO_LARGE = "The data value transmitted exceeds the capacity limit."  # Werkzeug's 413
# Werkzeug's UnsupportedMediaType from get_json() on another Content-Type.
NOT_JSON = (
    "Did not attempt to load JSON data because the request Content-Type was not 'application/json'."
)
# Statuses a `status=CODE` fault answers with, as Dify names them (section 3).
FAULT_CODES = {
    400: ("invalid_param", "Injected fault: invalid parameter."),
    401: ("unauthorized", "Access token is invalid"),
    403: ("forbidden", "The app's API service has been disabled."),
    404: ("not_found", "Conversation Not Exists."),
    413: ("file_too_large", "File size exceeded."),
    415: ("unsupported_file_type", "File type not allowed."),
    429: ("too_many_requests", "Too many requests. Please try again later."),
    500: ("internal_server_error", "Internal Server Error, please contact support."),
    502: ("bad_gateway", "Bad Gateway"),
    503: ("service_unavailable", "Service Unavailable"),
    504: ("gateway_timeout", "Gateway Timeout"),
}


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
        # Streams in flight by task id, so a stop call can find them.
        self.playbacks: dict[str, list[Playback]] = {}
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
        content = request.content
        assert content is not None
        content.seek(0, 2)
        length = content.tell()
        content.seek(0)
        digest = hashlib.sha256()
        while block := content.read(1 << 20):
            digest.update(block)
        content.seek(0)
        entry = self.journal.open(
            time=self.clock.seconds(),
            method=request.method.decode("latin-1"),
            path=raw_path,
            query=raw_query,
            headers=allowed_headers(request.requestHeaders.getAllRawHeaders()),
            authorization_values=len(request.requestHeaders.getRawHeaders(b"authorization", [])),
            cookie=request.requestHeaders.hasHeader(b"cookie"),
            auth="missing",  # until _check_key says otherwise
            body_sha256=digest.hexdigest(),
            body_bytes=length,
        )
        try:
            return self._answer(request, entry, raw_path, raw_query, length)
        except DifyError as error:
            return self._error(request, entry, error)

    def _answer(
        self, request: IRequest, entry: JournalEntry, path: str, query: str, length: int
    ) -> Any:
        entry.auth = self._check_key(request)
        faults, query = self._faults(request, query)
        entry.fault = faults.spec
        assert request.content is not None
        json_route = self._json_route(request.method, path)
        body = b""
        if length <= MAX_BODY:
            body = request.content.read()
            request.content.seek(0)
        elif json_route:
            raise DifyError(413, "request_entity_too_large", TOO_LARGE)
        payload = _json_body(request.getHeader(b"content-type"), body) if json_route else None
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
        _check_generation(path, payload)
        if faults.status is not None:
            code, message = FAULT_CODES.get(faults.status, ("injected_fault", "Injected fault."))
            raise DifyError(faults.status, code, message)
        if fixture.response.is_stream and _wants_blocking(path, payload):
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
        if playback.task_id is not None:
            running = self.playbacks.setdefault(playback.task_id, [])
            running.append(playback)
            playback.on_end.append(self._forget)
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

    def _forget(self, playback: Playback) -> None:
        assert playback.task_id is not None
        running = self.playbacks.get(playback.task_id, [])
        if playback in running:
            running.remove(playback)
        if not running:
            self.playbacks.pop(playback.task_id, None)

    def _stop(self, request: IRequest, entry: JournalEntry, task_id: str, payload: Any) -> bytes:
        # Dify: `user` is required; a stop for an unknown task or another
        # user's task is silently a no-op that still answers success
        # (dify-contract.md 4), so only the journal tells the difference.
        user = payload.get("user") if isinstance(payload, dict) else None
        if not isinstance(user, str) or not user:
            raise DifyError(400, "invalid_param", "Arg user must be provided.")
        stopped = [
            p.entry.id for p in list(self.playbacks.get(task_id, [])) if p.user == user and p.stop()
        ]
        entry.stop = {"task_id": task_id, "user": user, "stopped": stopped}
        body = json.dumps({"result": "success"}).encode()
        return self._send_json(request, entry, 200, body)

    def _json_route(self, method: bytes, path: str) -> bool:
        if method == b"POST" and (path.endswith(MODE_ROUTES) or STOP_ROUTE.match(path)):
            return True
        return self.index.expects_json(method.decode("latin-1"), path)

    def _check_key(self, request: IRequest) -> str:
        # Dify's validate_and_get_api_token (dify-contract.md 1.1).  Real Dify never
        # answers without a well-formed Bearer, so neither does its stand-in: a client
        # that forgets the header must fail here, not first in production.
        header = request.getHeader(b"authorization")
        if header is None or b" " not in header:
            raise DifyError(
                401, "unauthorized", "Authorization header must be provided and start with 'Bearer'"
            )
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            raise DifyError(401, "unauthorized", "Authorization scheme must be 'Bearer'")
        # Twisted strips header values, so a token here is never empty.
        if self.api_key is None:
            return "unchecked"  # no --api-key: any key is one this fake knows
        if not hmac.compare_digest(token.strip(), self.api_key.encode("utf-8")):
            raise DifyError(401, "unauthorized", "Access token is invalid")
        return "ok"

    def _faults(self, request: IRequest, query: str) -> tuple[Faults, str]:
        spec = (request.getHeader(FAULT_HEADER.encode()) or b"").decode("latin-1")
        if FAULT_QUERY_PARAM in query:
            pairs = parse_qsl(query, keep_blank_values=True)
            spec = ",".join([spec, *(v for k, v in pairs if k == FAULT_QUERY_PARAM)])
            query = urlencode([(k, v) for k, v in pairs if k != FAULT_QUERY_PARAM])
        try:
            return Faults.parse(spec), query
        except FaultError as e:
            raise DifyError(400, "invalid_param", f"Bad {FAULT_HEADER}: {e}") from None

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


def _json_body(content_type: bytes | None, body: bytes) -> Any:
    """The body of a JSON route, read as Flask's ``get_json()`` does (dify-contract.md 1.1)."""
    mimetype = (content_type or b"").partition(b";")[0].strip().lower()
    if not (
        mimetype == b"application/json"
        or (mimetype.startswith(b"application/") and mimetype.endswith(b"+json"))
    ):
        raise DifyError(415, "unsupported_media_type", NOT_JSON)
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        message = "Invalid JSON payload received or JSON payload is empty."
        raise DifyError(400, "invalid_param", message) from None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


# A fake Dify's stand-in for "Query or prefix prompt is too long": real apps hit the
# model's context limit; a question this long has no business in a chat box.
MAX_QUERY_CHARS = 20_000
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _check_generation(path: str, payload: Any) -> None:
    """What Dify refuses before it starts a run (answered as JSON, never a stream)."""
    if not isinstance(payload, dict) or not path.endswith(MODE_ROUTES):
        return
    query = payload.get("query", "")
    if not isinstance(query, str):
        raise DifyError(400, "invalid_param", "query must be a string.")
    if _CONTROL.search(query):
        # Dify stores the query in PostgreSQL text columns, which refuse NUL outright.
        raise DifyError(400, "invalid_param", "query must not contain control characters.")
    if len(query) > MAX_QUERY_CHARS:
        raise DifyError(
            400,
            "completion_request_error",
            "Query or prefix prompt is too long, you can reduce the prefix prompt, or shrink "
            "the max token, or switch to a llm with a larger token limit size.",
        )
    if "inputs" in payload and not isinstance(payload["inputs"], dict):
        raise DifyError(400, "invalid_param", "inputs must be an object.")


def _wants_blocking(path: str, payload: Any) -> bool:
    if not isinstance(payload, dict) or not path.endswith(MODE_ROUTES):
        return False
    return payload.get("response_mode") != "streaming"
