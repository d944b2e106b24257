"""Shared test fixtures: a real replay server on a loopback port.

Everything that crosses the wire is tested over real sockets, and the replay
server is the fake Dify every such test talks to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import settings
from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import IListeningPort
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

# Hypothesis's per-example deadline is a timing assert in disguise: on a loaded 2-core CI
# machine a correct example can take longer than 200 ms.  Properties here assert results.
settings.register_profile("difytw", deadline=None)
settings.load_profile("difytw")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"
TEST_KEY = "app-test-key-not-a-secret"


@dataclass
class RunningReplay:
    """A replay server listening on 127.0.0.1 for one test."""

    url: str  # e.g. "http://127.0.0.1:54321" (no trailing slash, no /v1)
    port: int
    app: Any  # difytw.replay.ReplayApp
    journal: Any  # difytw.replay.Journal
    listening: IListeningPort = field(repr=False)


@pytest.fixture
def start_replay() -> Iterator[Callable[..., RunningReplay]]:
    """Factory: ``start_replay(fixtures=FIXTURES, speed=0.0, api_key=TEST_KEY, clock=reactor)``."""
    from difytw.fixtureindex import FixtureIndex
    from difytw.replay import ReplayApp
    from difytw.writethrough import WriteThroughReactor

    started: list[RunningReplay] = []

    def start(
        fixtures: Path = FIXTURES,
        speed: float = 0.0,
        api_key: str | None = TEST_KEY,
        clock: Any = None,
    ) -> RunningReplay:
        index = FixtureIndex.from_directory(fixtures)
        app = ReplayApp(
            index, clock=clock if clock is not None else _reactor, speed=speed, api_key=api_key
        )
        site = app.site()
        # As `twist difyreplay` listens (listening.listen_or_exit): write-through sockets.
        listening = WriteThroughReactor(_reactor).listenTCP(0, site, interface="127.0.0.1")
        port = listening.getHost().port
        running = RunningReplay(f"http://127.0.0.1:{port}", port, app, app.journal, listening)
        started.append(running)
        return running

    yield start
    for running in started:
        pytest_twisted.blockon(running.listening.stopListening())


@pytest.fixture
def replay(start_replay: Callable[..., RunningReplay]) -> RunningReplay:
    """A replay server on all of fixtures/, as fast as possible, requiring TEST_KEY."""
    return start_replay()


@pytest.fixture
def logged() -> Iterator[list[LogEvent]]:
    """Every log event of the test; afterwards, none of them may contain the key."""
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)
    for event in events:
        assert TEST_KEY not in repr(event)
        assert TEST_KEY not in (formatEvent(event) or "")
