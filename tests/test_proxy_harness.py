"""Shared harness for the difyproxy wire tests (holds no tests itself).

``start_proxy`` puts a real difyproxy on a loopback port in front of a real replay server
(``start_replay`` / ``replay`` from conftest); ``fetch`` is a treq client that keeps every
read with its arrival time.  Requests no HTTP library would send (escapes, absolute-form,
hand-made chunking) go through ``tests.rawhttp``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from difytw.proxy import ProxyApp, ProxyConfig
from difytw.sse import Decoder, Event
from difytw.writethrough import WriteThroughReactor

TEST_KEY = "app-test-key-not-a-secret"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
CHAT = {"inputs": {}, "query": "Count slowly from one to five", "response_mode": "streaming"}


@dataclass
class RunningProxy:
    url: str  # e.g. "http://127.0.0.1:5555/dify"
    port: int
    app: ProxyApp
    listening: IListeningPort = field(repr=False)


@pytest.fixture
def start_proxy() -> Iterator[Callable[..., RunningProxy]]:
    """Factory: ``start_proxy(upstream_url, clock=None, **ProxyConfig fields)``."""
    started: list[RunningProxy] = []

    def start(upstream: str, *, clock: Any = None, **config: Any) -> RunningProxy:
        config.setdefault("api_key", TEST_KEY)
        app = ProxyApp(ProxyConfig(upstream=upstream, **config), reactor=reactor, clock=clock)
        # As `twist difyproxy` listens (listening.listen_or_exit): write-through sockets.
        listening = WriteThroughReactor(reactor).listenTCP(0, app.site(), interface="127.0.0.1")
        port = listening.getHost().port
        url = f"http://127.0.0.1:{port}{app.route.prefix.decode()}"
        running = RunningProxy(url, port, app, listening)
        started.append(running)
        return running

    yield start
    for running in started:
        pytest_twisted.blockon(running.listening.stopListening())
        pytest_twisted.blockon(running.app.close())


class Collector(Protocol):
    """Keeps each read with the time it arrived; ``done`` fires once the body ends."""

    def __init__(self) -> None:
        self.reads: list[tuple[float, bytes]] = []
        self.reason: Failure | None = None
        self.done: Deferred[None] = Deferred()
        self.first_read: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.reads.append((reactor.seconds(), data))
        if not self.first_read.called:
            self.first_read.callback(None)

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self.reason = reason
        self.done.callback(None)

    @property
    def body(self) -> bytes:
        return b"".join(data for _, data in self.reads)


def client_pool() -> HTTPConnectionPool:
    return HTTPConnectionPool(reactor, persistent=False)


async def fetch(method: str, url: str, **kwargs: Any) -> tuple[Any, Collector, Failure]:
    """One request with treq; returns the response, its collected body and end reason."""
    kwargs.setdefault("pool", client_pool())
    response = await treq.request(method, url, unbuffered=True, **kwargs)
    collector = Collector()
    response.deliverBody(collector)
    await collector.done
    assert collector.reason is not None
    return response, collector, collector.reason


async def start_fetch(method: str, url: str, **kwargs: Any) -> tuple[Any, Collector]:
    """Like ``fetch`` but returns as soon as the head is in, the body still arriving."""
    kwargs.setdefault("pool", client_pool())
    response = await treq.request(method, url, unbuffered=True, **kwargs)
    collector = Collector()
    response.deliverBody(collector)
    return response, collector


def events(body: bytes) -> list[Event]:
    return [item for item in Decoder().feed(body) if isinstance(item, Event)]


def data_frames(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(event.data) for event in events(body) if event.data]


def header(response: Any, name: str) -> list[bytes]:
    values: list[bytes] = response.headers.getRawHeaders(name.encode(), [])
    return values


def journal_headers(entry: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in entry.headers:
        out.setdefault(name.lower(), []).append(value)
    return out


async def wait_for(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll the real reactor until ``predicate()``; fail instead of hanging."""
    deadline = reactor.seconds() + seconds
    while not predicate():
        assert reactor.seconds() < deadline, "condition never became true"
        await deferLater(reactor, 0.005, lambda: None)


def free_port() -> int:
    """A loopback port with nothing listening (bound, read, released)."""
    listening = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    port: int = listening.getHost().port
    listening.stopListening()
    return port
