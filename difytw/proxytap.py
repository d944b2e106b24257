"""``twist difyproxy``: the command line and the service of the streaming proxy.

Everything is checked while the options are parsed, so a wrong flag stops ``twist`` with a
usage error before anything listens.  The app key is never a flag value (``ps`` would show
it to every user of the machine): it comes from ``DIFY_API_KEY`` or ``--api-key-file``.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from difytw.accessoptions import AccessOptions
from difytw.authconfig import listens_on_loopback
from difytw.listening import BACKLOG, ListeningService, check_listen, with_backlog
from difytw.optionvalues import KEY_ENV, parse_duration, parse_size, read_key
from difytw.proxy import ProxyApp, ProxyConfig
from difytw.proxyservices import ProxyServices, UpstreamPoolCloser
from difytw.recordfolder import FolderError, RecordFolder
from difytw.scrub import Rule, RuleError, parse_rule
from difytw.uri import normalize_prefix, normalize_upstream
from difytw.web import demo_service

DEFAULT_LISTEN = f"tcp:8080:interface=127.0.0.1:backlog={BACKLOG}"


class Options(AccessOptions):  # + --auth, --user-template, --allow, limits, CORS
    synopsis = "--upstream URL [--listen ENDPOINT] [--prefix PATH] [options]"
    longdesc = (
        "Serve the Dify API from your own server: requests to {prefix}{rest} go to "
        "{upstream}{rest} with the raw query kept byte for byte, the client's Authorization "
        "and Cookie replaced by 'Authorization: Bearer <app key>', and answers relayed "
        "unbuffered (each upstream read is one write to the client; SSE gets "
        "'Cache-Control: no-cache' and 'X-Accel-Buffering: no').  GET /healthz answers 200.  "
        f"The key comes from ${KEY_ENV} or --api-key-file, never from a flag value.  "
        "Sizes take k/M/G (1024-based, as nginx) or KiB/MiB/GiB, KB/MB/GB; durations take "
        "ms/s/m/h (plain numbers are seconds).  Example: "
        f"{KEY_ENV}=app-... twist difyproxy --upstream https://api.dify.ai/v1"
    )
    optParameters = [
        [
            "upstream",
            "u",
            None,
            "Syntax: URL (http or https; required).  The Dify API base that {prefix} maps to, "
            "e.g. https://api.dify.ai/v1 or http://dify.internal/v1.  https certificates are "
            "verified.",
        ],
        [
            "listen",
            "l",
            DEFAULT_LISTEN,
            "Syntax: ENDPOINT (Twisted endpoint string, e.g. tcp:8080:interface=0.0.0.0).  "
            f"backlog={BACKLOG} is added when a tcp/ssl/unix endpoint names none.",
        ],
        [
            "prefix",
            "p",
            "/dify",
            "Syntax: PATH.  Only paths under it are proxied (others answer 404 not_found); "
            "'/' proxies every path.",
        ],
        [
            "api-key-file",
            None,
            None,
            f"Syntax: FILE.  Read the Dify app key from FILE instead of ${KEY_ENV}.",
        ],
        [
            "ca-bundle",
            None,
            None,
            "Syntax: FILE (PEM).  Trust only these CA certificates for an https upstream "
            "(for private CAs); default: the system's trust store.",
        ],
        [
            "max-body",
            None,
            "100M",
            "Syntax: SIZE.  Larger request bodies (Content-Length or chunked) answer 413 "
            "request_entity_too_large before upstream is contacted.",
        ],
        [
            "header-timeout",
            None,
            "60s",
            "Syntax: DURATION.  Upstream silent this long before its response head "
            "answers 504 upstream_timeout; every request-body slice upstream accepts "
            "restarts the count, so big uploads are not cut.",
        ],
        [
            "idle-timeout",
            None,
            "300s",
            "Syntax: DURATION.  An upstream body silent this long ends the answer: a stream "
            "with a final upstream_idle_timeout error event, other bodies by closing.",
        ],
        [
            "connect-timeout",
            None,
            "10s",
            "Syntax: DURATION.  Connecting to upstream longer than this answers 502 "
            "upstream_unavailable.",
        ],
        [
            "max-stream-duration",
            None,
            "30m",
            "Syntax: DURATION.  A stream open this long ends with a final "
            "stream_duration_exceeded error event (status 504) and a clean close, and its "
            "run is stopped upstream as when the client leaves.",
        ],
        [
            "record",
            None,
            None,
            "Syntax: DIR (must exist and be writable).  Tee every exchange into its own "
            "sse-fixture/1 file in DIR as it streams (mode 0600, never overwritten), for "
            "difyreplay.  Authorization, Cookie and Set-Cookie are never kept; Dify keys, "
            "Bearer tokens and the request's user are scrubbed (add rules with --scrub).",
        ],
    ]

    optFlags = [
        [
            "demo",
            None,
            "Run the offline demo: a chat page at / streaming from an in-process replay "
            "server through this proxy.  Needs no key and no network; takes only "
            "--listen (on loopback).",
        ],
        [
            "no-stop-on-disconnect",
            None,
            "Leave Dify's run going when a stream ends before its last event (the client "
            "left, or the idle or duration limit ended it).  By default the proxy calls the "
            "run's stop endpoint with the run's user, so it spends no more tokens.",
        ],
        [
            "resume-workflows",
            None,
            "Leave workflow and chatflow runs going when their stream is abandoned, for the "
            "client to resume with GET /workflow/{run id}/events; chat, agent and completion "
            "runs are still stopped.",
        ],
    ]

    config: ProxyConfig
    record_dir: Path | None = None

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        super().__init__()
        self._environ = dict(os.environ) if environ is None else environ
        self.scrub_rules: list[Rule] = []
        # Every option's value before parsing, to tell which ones were given (--demo).
        self._unset = {name: copy.copy(value) for name, value in self.items()}

    def _check_demo(self) -> None:
        """The demo brings its own upstream (the replay server), key and settings: a flag
        it would ignore is refused rather than silently dropped, and having no auth, it
        listens on loopback only."""
        given = [
            f"--{name}"
            for name, value in self.items()
            if name not in ("demo", "listen") and value != self._unset.get(name)
        ]
        if self.scrub_rules:
            given.append("--scrub")
        if given:
            raise usage.UsageError(
                f"{', '.join(sorted(given))}: not used by --demo, which runs its own "
                "upstream with fixed settings (only --listen applies)"
            )
        if not listens_on_loopback(self["listen"]):
            raise usage.UsageError(
                f"--demo --listen {self['listen']}: the demo has no auth, so it listens "
                "on loopback only; use e.g. --listen tcp:8080:interface=127.0.0.1"
            )

    def opt_api_key(self, value: str) -> None:
        """Refused: ps shows flag values to every user.  Use $DIFY_API_KEY or --api-key-file."""
        # An explicit option, not just an absent one: getopt would otherwise take
        # --api-key as an abbreviation of --api-key-file, and the key would then be echoed
        # as a file name.  The value is never repeated.
        raise usage.UsageError(
            "--api-key is not accepted: a flag value is visible to every user of the "
            f"machine (ps).  export {KEY_ENV}=app-... or pass --api-key-file FILE naming "
            "a file that holds just the key."
        )

    def opt_scrub(self, spec: str) -> None:
        """REGEX=PLACEHOLDER: with --record, also replace what REGEX matches (repeatable)."""
        try:
            self.scrub_rules.append(parse_rule(spec))
        except RuleError as error:
            raise usage.UsageError(str(error)) from None

    def postOptions(self) -> None:
        check_listen(self["listen"])
        if self["demo"]:
            self._check_demo()
            return
        if not self["upstream"]:
            raise usage.UsageError("--upstream URL is required, e.g. https://api.dify.ai/v1")
        try:
            normalize_upstream(self["upstream"])
            normalize_prefix(self["prefix"])
            max_body = parse_size(self["max-body"])
            timeouts = {
                name: parse_duration(self[name])
                for name in (
                    "header-timeout",
                    "idle-timeout",
                    "connect-timeout",
                    "max-stream-duration",
                )
            }
        except (ValueError, UnicodeEncodeError) as error:
            raise usage.UsageError(str(error)) from None
        ca_bundle = self["ca-bundle"]
        if ca_bundle is not None and not os.path.isfile(ca_bundle):
            raise usage.UsageError(f"--ca-bundle {ca_bundle}: no such file")
        if self["record"] is not None:
            self.record_dir = Path(self["record"])
            try:
                RecordFolder.check(self.record_dir, "--record")
            except FolderError as error:
                raise usage.UsageError(str(error)) from None
        self["listen"] = with_backlog(self["listen"])
        access = self.access_policy(self["listen"])
        self.config = ProxyConfig(
            upstream=self["upstream"],
            api_key=read_key(self["api-key-file"], self._environ),
            prefix=self["prefix"],
            max_body=max_body,
            header_timeout=timeouts["header-timeout"],
            idle_timeout=timeouts["idle-timeout"],
            connect_timeout=timeouts["connect-timeout"],
            ca_bundle=ca_bundle,
            max_stream_duration=timeouts["max-stream-duration"],
            stop_on_disconnect=not self["no-stop-on-disconnect"],
            resume_workflows=bool(self["resume-workflows"]),
            access=access,
        )


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    if options["demo"]:
        return demo_service(reactor, options["listen"])
    record = None
    if options.record_dir is not None:
        record = RecordFolder(
            options.record_dir,
            now=reactor.seconds,
            rules=options.scrub_rules,
            api_key=options.config.api_key,
        )
    try:
        app = ProxyApp(options.config, reactor=reactor, record=record)
    except (OSError, ValueError) as error:  # e.g. an unreadable or empty --ca-bundle
        raise usage.UsageError(str(error)) from None
    site = app.site()
    site.displayTracebacks = False
    top = ProxyServices()  # type: ignore[no-untyped-call]
    ListeningService(reactor, options["listen"], site).setServiceParent(top)  # type: ignore[no-untyped-call]
    UpstreamPoolCloser(app).setServiceParent(top)  # type: ignore[no-untyped-call]
    return top
