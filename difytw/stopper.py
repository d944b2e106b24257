"""Stopping Dify's work when nobody is left to read it (issue 7, dify-contract.md section 4).

A Dify run goes on generating, and spending tokens, after its HTTP client leaves: only the
stop endpoint sets the flag its worker checks (section 4).  This module owns what the proxy
needs for that:

- ``run_route``: which requests carry a stoppable run, and the stop endpoint of each
  (chat-messages and chatflows -> ``/chat-messages/{task_id}/stop``, completion-messages ->
  ``/completion-messages/{task_id}/stop``, workflow runs -> ``/workflows/tasks/{task_id}/stop``),
  including a run's resumed stream (``GET /workflow/{id}/events``), stopped like its start;
- ``UpstreamRun``: what the proxy knows of one run it carries, including the ``user`` it
  forwarded -- the field issue 6's identity enforcement sets;
- ``StopPolicy``: whether a stream that ended before its terminal event has its run stopped;
- ``StopClient``: the stop call, retried once on a network error, logged and counted in
  ``difytw_stop_calls_total{outcome}``.
"""

from __future__ import annotations

import enum
import json
import re
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, quote

from prometheus_client import Counter
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger, LogLevel
from twisted.web.http_headers import Headers

from difytw.relay import RelayEnd
from difytw.streamwatch import StreamWatch

_log = Logger()

# The run-starting routes (dify-contract.md 1.2), matched at the end of the upstream path so
# that an upstream base with or without /v1 works alike.  A chatflow runs through
# /chat-messages, so it is stopped there too (section 4).
_RUN_PATH = re.compile(
    rb"^(?P<base>.*?)(?P<route>/chat-messages|/completion-messages|/workflows/run"
    rb"|/workflows/[^/]+/run)$"
)
# A workflow's or chatflow's stream resumed after a disconnect (section 4): its frames carry
# the run's task_id, so leaving it abandons the run as much as leaving the POST that began it.
_RESUME_PATH = re.compile(rb"^(?P<base>.*?)/workflow/[^/]+/events$")
# Dify's user values are short ids; a body larger than this is not parsed on the reactor
# thread just to find one (the run then cannot be stopped, and that is counted).
MAX_BODY_FOR_USER = 1024 * 1024
STOP_TIMEOUT = 10.0  # seconds per attempt
RETRY_DELAY = 0.25  # seconds before the one retry after a network error
# Where the proxy, or its client, gave up on a stream whose run Dify may still be working on.
ABANDONED = frozenset({RelayEnd.CLIENT_GONE, RelayEnd.DURATION_EXCEEDED, RelayEnd.IDLE_TIMEOUT})


class RunKind(enum.Enum):
    """A stoppable run, by the stop endpoint that halts it (value: its path segment)."""

    CHAT = "chat-messages"
    COMPLETION = "completion-messages"
    WORKFLOW = "workflows/tasks"


class StopOutcome(enum.Enum):
    """How a stop attempt ended; the value is the counter's ``outcome`` label."""

    # 200: Dify answers the same for a stop that was a no-op (finished task, other user).
    STOPPED = "stopped"
    REFUSED = "refused"  # any other status; not retried, it would be refused again
    UNREACHABLE = "unreachable"  # a network error (or timeout) on both attempts
    NO_TASK_ID = "no_task_id"  # the caller left before any frame named the task
    NO_USER = "no_user"  # no `user` is known, and Dify requires one (section 1.2)


STOP_CALLS = Counter(
    "difytw_stop_calls_total",
    "Stop calls difyproxy made, or could not make, for abandoned streams, by outcome.",
    ["outcome"],
)
for _outcome in StopOutcome:  # every outcome is exported from the start, at zero
    STOP_CALLS.labels(outcome=_outcome.value)


@dataclass(frozen=True)
class RunRoute:
    """A run-starting request: its kind, and the upstream base its stop endpoint hangs off."""

    kind: RunKind
    base: bytes  # the upstream URL before the route, e.g. b"https://api.dify.ai/v1"
    resumed: bool = False  # GET /workflow/{id}/events: a workflow or a chatflow, resumed

    def stop_kind(self, watch: StreamWatch) -> RunKind:
        """The stop endpoint for the run ``watch`` saw on this route.

        A resumed stream may be a chatflow's: ``/workflows/tasks/{task_id}/stop`` serves
        workflow apps only, chatflows stop through ``/chat-messages/{task_id}/stop`` (sections
        1.2 and 4).  Chatflow frames are chat-family and name the conversation, a workflow
        app's never do (section 2.6).
        """
        if self.resumed and "conversation_id" in watch.ids:
            return RunKind.CHAT
        return self.kind

    def stop_url(self, task_id: str, kind: RunKind | None = None) -> bytes:
        # The task id comes from upstream's stream; quoted so it stays one path segment.
        segment = quote(task_id, safe="").encode("ascii")
        path = (kind or self.kind).value.encode("ascii")
        return self.base + b"/" + path + b"/" + segment + b"/stop"


def run_route(method: bytes, url: bytes) -> RunRoute | None:
    """The run a request to upstream ``url`` starts or resumes, or None if neither."""
    path = url.partition(b"?")[0]
    if method == b"GET":
        resume = _RESUME_PATH.match(path)
        return (
            None
            if resume is None
            else RunRoute(RunKind.WORKFLOW, resume.group("base"), resumed=True)
        )
    if method != b"POST":
        return None
    match = _RUN_PATH.match(path)
    if match is None:
        return None
    route = match.group("route")
    if route == b"/chat-messages":
        kind = RunKind.CHAT
    elif route == b"/completion-messages":
        kind = RunKind.COMPLETION
    else:
        kind = RunKind.WORKFLOW
    return RunRoute(kind, match.group("base"))


def body_user(content_type: bytes | None, body: bytes) -> str | None:
    """The ``user`` of a JSON request body, as Dify reads it (dify-contract.md 1.1).

    Dify takes ``request.get_json().get("user")`` and ``str()``s a non-string; an absent or
    empty one has no owner a stop call could name.
    """
    if content_type is None or not content_type.lower().startswith(b"application/json"):
        return None
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    user = payload.get("user") if isinstance(payload, dict) else None
    if isinstance(user, bool) or not isinstance(user, str | int | float):
        return None
    text = user if isinstance(user, str) else str(user)
    return text or None


def query_user(query: bytes | None) -> str | None:
    """The ``user`` of a query string, where Dify reads it on GET routes (section 1.2)."""
    if not query or b"user=" not in query:
        return None
    values = parse_qs(query.decode("latin-1"), encoding="utf-8", errors="replace").get("user")
    return values[0] if values else None


@dataclass
class UpstreamRun:
    """One proxied request that may carry a Dify stream, and the run behind it.

    ``user`` is the ``user`` the request was forwarded with, which a stop call must repeat
    (section 4) and the usage line reports.  Until issue 6's identity enforcement exists it
    is the one in the request (JSON body, or query); that code sets the enforced value here
    before the request goes upstream.  ``route`` is None for requests that carry no
    stoppable run.
    """

    endpoint: str  # the request's path as the client sent it, without the query
    route: RunRoute | None
    user: str | None
    started: float
    watch: StreamWatch = field(default_factory=StreamWatch)


@dataclass(frozen=True)
class StopPolicy:
    """Which abandoned runs are stopped (``--no-stop-on-disconnect``, ``--resume-workflows``)."""

    enabled: bool = True
    # Workflow and chatflow runs can be resumed with GET /workflow/{id}/events (section 4),
    # so with resuming on they are left running for the client to come back to (issue 7),
    # also when the stream abandoned was itself a resumed one.  With it off, an abandoned
    # resumed stream is stopped like the POST that started the run.
    resume_workflows: bool = False

    def wants_stop(self, run: UpstreamRun, end: RelayEnd) -> bool:
        if not self.enabled or run.route is None or end not in ABANDONED or run.watch.finished:
            return False
        resumable = run.route.kind is RunKind.WORKFLOW or run.watch.workflow
        return not (self.resume_workflows and resumable)


class StopClient:
    """Calls Dify's stop endpoint for an abandoned run, with the app key.

    The clock times the attempts and the retry.  It should be the reactor's own time, not
    an exchange clock: the call outlives the exchange that caused it.
    """

    def __init__(
        self,
        client: HTTPClient,
        api_key: bytes,
        *,
        clock: IReactorTime,
        timeout: float = STOP_TIMEOUT,
        retry_delay: float = RETRY_DELAY,
    ) -> None:
        self._client = client
        self._key = api_key
        self._clock = clock
        self._timeout = timeout
        self._retry_delay = retry_delay
        self._pending: set[Deferred[StopOutcome]] = set()

    def stop(self, run: UpstreamRun) -> Deferred[StopOutcome]:
        """Stop ``run``; the Deferred fires with the outcome and never fails."""
        calling = ensureDeferred(self._stop(run))
        self._pending.add(calling)
        calling.addBoth(self._settled, calling)
        return calling

    def drain(self) -> Deferred[Any]:
        """Fires once the stop calls in flight have ended (for service stop)."""
        return DeferredList(list(self._pending))

    def _settled(self, outcome: StopOutcome, calling: Deferred[StopOutcome]) -> StopOutcome:
        self._pending.discard(calling)
        return outcome

    async def _stop(self, run: UpstreamRun) -> StopOutcome:
        task_id, user, route = run.watch.task_id, run.user, run.route
        assert route is not None  # StopPolicy.wants_stop stops only runs with a route
        kind = route.stop_kind(run.watch)
        outcome, status, attempts = StopOutcome.NO_TASK_ID, None, 0
        if task_id is not None and user is None:
            outcome = StopOutcome.NO_USER
        elif task_id is not None and user is not None:
            url = route.stop_url(task_id, kind)
            body = json.dumps({"user": user}, ensure_ascii=False).encode("utf-8")
            outcome = StopOutcome.UNREACHABLE
            while attempts < 2 and outcome is StopOutcome.UNREACHABLE:
                if attempts:
                    await deferLater(self._clock, self._retry_delay, lambda: None)
                attempts += 1
                status = await self._attempt(url, body, task_id)
                if status is not None:
                    outcome = StopOutcome.STOPPED if status == 200 else StopOutcome.REFUSED
        STOP_CALLS.labels(outcome=outcome.value).inc()
        # The user is left out: the usage line carries it, joined by task_id.
        level = LogLevel.info if outcome is StopOutcome.STOPPED else LogLevel.warn
        _log.emit(
            level,
            "stop {endpoint} task {task_id}: {outcome} after {attempts} attempt(s)",
            endpoint=kind.value,
            task_id=task_id,
            outcome=outcome.value,
            status=status,
            attempts=attempts,
        )
        return outcome

    async def _attempt(self, url: bytes, body: bytes, task_id: str) -> int | None:
        """One stop request: Dify's status, or None on a network error or timeout."""
        attempt = ensureDeferred(self._exchange(url, body))
        attempt.addTimeout(self._timeout, self._clock)
        try:
            return await attempt
        except Exception as error:
            _log.info(
                "stop call for task {task_id} failed: {kind}",
                task_id=task_id,
                kind=type(error).__name__,
            )
            return None

    async def _exchange(self, url: bytes, body: bytes) -> int:
        headers = Headers()
        headers.setRawHeaders(b"Authorization", [b"Bearer " + self._key])
        headers.setRawHeaders(b"Content-Type", [b"application/json"])
        response = await self._client.request("POST", url, headers=headers, data=body)
        status: int = response.code
        # Read to the end so the connection can be reused; a failure here changes nothing,
        # the status is in and Dify has seen the stop.
        with suppress(Exception):
            await response.content()
        return status
