"""``twist difyreplay``: options and service for the replay server.

Fixtures are loaded and validated while the options are parsed, so a broken
fixture stops startup with ``file:line: problem`` and a non-zero exit before
anything listens.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from twisted.application.service import IService
from twisted.application.strports import service as endpointService
from twisted.python import usage
from twisted.web.server import Site

from difytw.fixture import FixtureError
from difytw.fixtureindex import FixtureIndex
from difytw.replay import ReplayApp

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
            "(default: $DIFY_REPLAY_API_KEY, else any request is accepted).",
        ],
    ]

    index: FixtureIndex
    speed: float

    def postOptions(self) -> None:
        try:
            self.speed = float(self["speed"])
        except ValueError:
            raise usage.UsageError(f"--speed must be a number, got {self['speed']!r}") from None
        if self.speed < 0:
            raise usage.UsageError("--speed must be 0 (as fast as possible) or more")
        folder = Path(self["fixtures"])
        if not folder.is_dir():
            raise usage.UsageError(f"--fixtures {folder}: not a directory")
        try:
            self.index = FixtureIndex.from_directory(folder)
        except FixtureError as e:
            raise usage.UsageError(str(e)) from None
        if self["api-key"] is None:
            self["api-key"] = os.environ.get("DIFY_REPLAY_API_KEY") or None


def makeService(options: Options, reactor: Any = None) -> IService:
    if reactor is None:
        from twisted.internet import reactor
    app = ReplayApp(options.index, clock=reactor, speed=options.speed, api_key=options["api-key"])
    site = Site(app.resource())
    site.displayTracebacks = False
    svc: IService = endpointService(options["listen"], site, reactor=reactor)
    return svc
