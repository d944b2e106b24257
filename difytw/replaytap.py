"""``twist difyreplay``: options and service for the replay server.

Fixtures are loaded and validated while the options are parsed, so a broken
fixture, or two with one id, stops startup with ``file:line: problem`` and a
non-zero exit before anything listens.  So does a recording mode (issue 4 item 2) that lacks its
``--upstream`` or ``DIFY_API_KEY``, a fixture folder it cannot write to, or an
``--api-key`` of its own when it listens beyond loopback.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.python import usage
from twisted.web.client import HTTPConnectionPool

from difytw.authconfig import listens_on_loopback
from difytw.fixture import FixtureError
from difytw.fixtureindex import FixtureIndex
from difytw.listening import ListeningService, check_listen
from difytw.optionvalues import KEY_ENV  # the real key, for recording only; never a flag value
from difytw.passthrough import Passthrough, RecordMode
from difytw.recordfolder import FolderError, RecordFolder
from difytw.replay import ReplayApp
from difytw.scrub import Rule, RuleError, parse_rule
from difytw.upstream import tls_policy, upstream_client
from difytw.uri import normalize_upstream

DEFAULT_LISTEN = "tcp:8081:interface=127.0.0.1:backlog=1024"


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve recorded Dify exchanges (sse-fixture/1 files) as a fake Dify API: each recorded "
        "chunk is written with its own write at its recorded offset, faults are chosen per request "
        "with an X-Replay-Fault header, and GET /_replay/journal shows what arrived."
    )
    optParameters = [
        ["fixtures", "f", "fixtures", "Directory of *.jsonl fixtures to serve."],
        ["listen", "l", DEFAULT_LISTEN, "Endpoint to listen on (Twisted endpoint syntax)."],
        ["speed", "s", "1", "Replay speed factor: 2 = twice as fast, 0 = as fast as possible."],
        [
            "api-key",
            "k",
            None,
            "Require exactly this Dify app key in 'Authorization: Bearer' "
            "(default: $DIFY_REPLAY_API_KEY, else any Bearer key is accepted; like Dify, "
            "a request without one always gets 401).",
        ],
        [
            "record-mode",
            None,
            "none",
            "none|once|new_episodes|all, as in pytest-recording.  none: replay only.  "
            "new_episodes: replay what matches, forward what does not to --upstream and record "
            "it into --fixtures.  once: new_episodes if --fixtures holds no fixture at startup, "
            "else none.  all: forward and record every request.",
        ],
        [
            "upstream",
            None,
            None,
            "Syntax: URL.  The real Dify server root to record from, e.g. https://api.dify.ai; "
            f"the request path (/v1/...) is appended as it came.  The key is ${KEY_ENV}.",
        ],
    ]
    optFlags = [
        ["record-missing", None, "The same as --record-mode new_episodes."],
    ]

    index: FixtureIndex
    speed: float
    record_mode: RecordMode
    upstream_key: str

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._environ = dict(os.environ) if environ is None else environ
        self.scrub_rules: list[Rule] = []

    def opt_scrub(self, spec: str) -> None:
        """REGEX=PLACEHOLDER: also replace matches of REGEX in recordings (repeatable; the
        defaults scrub Dify app and dataset keys, Bearer tokens and the request's user)."""
        try:
            self.scrub_rules.append(parse_rule(spec))
        except RuleError as error:
            raise usage.UsageError(str(error)) from None

    def postOptions(self) -> None:
        check_listen(self["listen"])
        try:
            self.speed = float(self["speed"])
        except ValueError:
            raise usage.UsageError(f"--speed must be a number, got {self['speed']!r}") from None
        if not math.isfinite(self.speed) or self.speed < 0:
            # nan would compare false everywhere and inf divide every delay to 0 unasked.
            raise usage.UsageError(
                f"--speed must be 0 (as fast as possible) or a finite number above, "
                f"got {self['speed']!r}"
            )
        folder = Path(self["fixtures"])
        if not folder.is_dir():
            raise usage.UsageError(f"--fixtures {folder}: not a directory")
        try:
            self.index = FixtureIndex.from_directory(folder)
        except FixtureError as e:
            raise usage.UsageError(str(e)) from None
        duplicates = [str(problem) for problem in self.index.findings if problem.fatal]
        if duplicates:
            raise usage.UsageError("\n".join(duplicates))
        if self["api-key"] is None:
            self["api-key"] = self._environ.get("DIFY_REPLAY_API_KEY") or None
        elif not self["api-key"].strip():
            raise usage.UsageError("--api-key must not be empty (omit it to accept any key)")
        self._recording(folder)

    def _recording(self, folder: Path) -> None:
        mode = self["record-mode"]
        if self["record-missing"]:
            if mode not in ("none", "new_episodes"):
                raise usage.UsageError(
                    f"--record-missing means --record-mode new_episodes, not {mode}"
                )
            mode = "new_episodes"
        try:
            self.record_mode = RecordMode(mode)
        except ValueError:
            raise usage.UsageError(
                f"--record-mode must be none, once, new_episodes or all, got {mode!r}"
            ) from None
        if self.record_mode is RecordMode.NONE:
            return
        upstream = self["upstream"]
        if not upstream:
            raise usage.UsageError(
                f"--record-mode {mode} needs --upstream URL, the real Dify server root "
                "(e.g. https://api.dify.ai)"
            )
        try:
            normalize_upstream(upstream)
        except (ValueError, UnicodeEncodeError) as error:
            raise usage.UsageError(f"--upstream: {error}") from None
        if urlsplit(upstream).path.rstrip("/").endswith("/v1"):
            # Requests arrive as /v1/...: a base that ends in /v1 would send /v1/v1/...
            raise usage.UsageError(
                f"--upstream is the server root, without /v1 (the path brings it): {upstream}"
            )
        key = self._environ.get(KEY_ENV, "").strip()
        if not key or not all(33 <= ord(c) <= 126 for c in key):
            raise usage.UsageError(
                f"--record-mode {mode} needs the real Dify app key in ${KEY_ENV} (sent "
                "upstream only; --api-key still guards this server)"
            )
        self.upstream_key = key
        if not self["api-key"] and not listens_on_loopback(self["listen"]):
            # Every forwarded request spends the real key: off loopback, only callers
            # that hold this server's own key may make it do that.
            raise usage.UsageError(
                f"--record-mode {mode} on a non-loopback --listen ({self['listen']}) lets anyone "
                f"who reaches the port spend ${KEY_ENV}: set --api-key (or "
                "$DIFY_REPLAY_API_KEY) for this server, or listen on 127.0.0.1"
            )
        try:
            RecordFolder.check(folder, "--fixtures")
        except FolderError as error:
            raise usage.UsageError(str(error)) from None


class UpstreamPoolCloser(Service):
    """Closes the recording client's idle upstream connections when ``twist`` stops."""

    def __init__(self, pool: HTTPConnectionPool) -> None:
        self.pool = pool

    def stopService(self) -> Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]
        closing: Deferred[None] = self.pool.closeCachedConnections()
        return closing


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    passthrough = None
    top = MultiService()
    if options.record_mode is not RecordMode.NONE:
        folder = RecordFolder(
            Path(options["fixtures"]),
            now=reactor.seconds,
            rules=options.scrub_rules,
            api_key=options.upstream_key,
        )
        pool = HTTPConnectionPool(reactor, persistent=True)
        client = upstream_client(reactor, pool, connect_timeout=10.0, tls=tls_policy(None))
        passthrough = Passthrough(
            options["upstream"], options.upstream_key, client=client, clock=reactor, folder=folder
        )
        UpstreamPoolCloser(pool).setServiceParent(top)  # type: ignore[no-untyped-call]
    app = ReplayApp(
        options.index,
        clock=reactor,
        speed=options.speed,
        api_key=options["api-key"],
        record_mode=options.record_mode,
        passthrough=passthrough,
    )
    # A port in use ends startup with one line naming it (not a traceback).
    listening = ListeningService(reactor, options["listen"], app.site())
    listening.setServiceParent(top)  # type: ignore[no-untyped-call]
    return top
