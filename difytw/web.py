"""The offline demo: the chat page, difyproxy, and an in-process replay server as "Dify".

``twist difyproxy --demo`` calls :func:`demo_service`.  It starts a replay server on an
ephemeral loopback port with the demo fixtures bundled in the package (``demo_fixtures/``,
matched loosely so any question gets an answer), points a :class:`~difytw.proxy.ProxyApp` at
it with a made-up app key, and serves on one listening port:

- ``/`` -- the chat page (``static/``), with no-cache and a same-origin-only CSP;
- ``/dify/...`` -- the proxy, exactly as ``twist difyproxy`` serves it;
- ``/_demo/journal`` -- the replay server's journal (``DELETE`` clears it), so a test or a
  curious user can see what reached "Dify" and how each exchange ended.

Nothing needs a key or the network, and the fixtures ship inside the wheel, so this works after
``pip install`` from any folder.  ``python -m difytw.web`` runs the same thing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage
from twisted.web import pages
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from twisted.web.static import File

from difytw.access import AccessPolicy
from difytw.errors import JSON_CONTENT_TYPE
from difytw.fixtureindex import FixtureIndex
from difytw.listening import check_listen, listen_or_exit, route_library_logs
from difytw.proxy import ProxyApp, ProxyConfig
from difytw.proxysite import proxy_site
from difytw.replay import ReplayApp

log = Logger()

# Package data, next to this module; hatch installs it as plain files in the wheel.
DEMO_FIXTURES = Path(__file__).resolve().parent / "demo_fixtures"
STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
# The key the proxy injects and the replay server demands: proves the injection works
# without a real key anywhere.  Not a secret.
DEMO_KEY = "app-difytw-demo-key-not-a-secret"
# The demo has no login: every visitor is this one Dify end user (the bundled fixtures'
# own), whatever ``user`` the page sends; the proxy writes it in (auth none, loopback).
DEMO_USER = "demo-user"
# Same-origin only: the page loads nothing from the network, and a browser enforces it.
PAGE_POLICY = (
    b"default-src 'self'; img-src 'self' data: blob:; base-uri 'none'; "
    b"form-action 'self'; frame-ancestors 'none'"
)


class PageAssets(File):
    """The static chat page: explicit types, revalidated on every load.

    The types are fixed here rather than read from the host's mime.types, which differs
    between machines (``.js`` must be a JavaScript type or the browser refuses the module).
    """

    contentTypes = {
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".png": "image/png",
        ".svg": "image/svg+xml",
        ".ico": "image/x-icon",
    }

    # pages.notFound escapes what it shows; File's default is deprecated for not doing so.
    childNotFound = pages.notFound()  # type: ignore[assignment]

    def render(self, request: IRequest) -> Any:
        # no-cache: revalidate, so an upgraded package's page is never mixed with a stale file.
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        request.setHeader(b"Content-Security-Policy", PAGE_POLICY)
        return super().render(request)  # type: ignore[no-untyped-call]

    def directoryListing(self) -> IResource:
        return self.childNotFound


class DemoRoutes(Resource):
    """``/_demo/``: what the demo adds beside the page and the proxy."""

    def __init__(self, replay: ReplayApp) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.putChild(b"journal", JournalPage(replay))

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        return pages.notFound()


class JournalPage(Resource):
    """``/_demo/journal``: the in-process replay server's journal as JSON."""

    isLeaf = True

    def __init__(self, replay: ReplayApp) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.replay = replay

    def render_GET(self, request: IRequest) -> bytes:
        request.setHeader(b"Content-Type", JSON_CONTENT_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        return json.dumps(self.replay.journal.as_json(), ensure_ascii=False).encode("utf-8")

    def render_DELETE(self, request: IRequest) -> bytes:
        self.replay.journal.clear()
        request.setResponseCode(204)
        return b""


def demo_index(folder: Path = DEMO_FIXTURES) -> FixtureIndex:
    """The bundled demo fixtures; a broken or ambiguous set is a packaging bug, so it raises."""
    index = FixtureIndex.from_directory(folder)
    if not index.fixtures or index.problems:
        raise ValueError(f"demo fixtures in {folder}: {list(index.problems) or 'none found'}")
    return index


@dataclass
class Demo:
    """The running parts of the demo; ``site`` is not listening yet."""

    replay: ReplayApp
    replay_port: IListeningPort
    proxy: ProxyApp
    site: Site

    def close(self) -> Deferred[Any]:
        return DeferredList([maybeDeferred(self.replay_port.stopListening), self.proxy.close()])


def start_demo(reactor: Any, *, speed: float = 1.0) -> Demo:
    """Start the replay server on 127.0.0.1 (any free port) and build the page + proxy site."""
    replay = ReplayApp(demo_index(), clock=reactor, speed=speed, api_key=DEMO_KEY)
    replay_site = replay.site()
    replay_port: IListeningPort = reactor.listenTCP(0, replay_site, interface="127.0.0.1")
    upstream = f"http://127.0.0.1:{replay_port.getHost().port}"  # type: ignore[attr-defined]
    config = ProxyConfig(
        upstream=upstream, api_key=DEMO_KEY, access=AccessPolicy.fixed_user(DEMO_USER)
    )
    proxy = ProxyApp(config, reactor=reactor)
    root = PageAssets(str(STATIC))
    root.putChild(config.prefix.strip("/").encode("ascii"), proxy.resource())
    root.putChild(b"_demo", DemoRoutes(replay))
    # The proxy's request class (body limit, one access-log line per exchange) for every
    # request, page files included, as ProxyApp.site() does for the proxy alone.
    site = proxy_site(root, reactor=reactor, clock=reactor, max_body=config.max_body)
    site.displayTracebacks = False
    log.info("demo Dify (replay server) on {upstream}", upstream=upstream)
    return Demo(replay, replay_port, proxy, site)


def page_url(port: IListeningPort) -> str:
    address = port.getHost()
    host = getattr(address, "host", "127.0.0.1")
    if host in ("0.0.0.0", "::", ""):
        host = "localhost"  # listening everywhere: this machine is one of the places
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{getattr(address, 'port', 0)}/"


class DemoService(Service):
    """Runs the demo while started; ``url`` is the page's address once listening."""

    def __init__(self, reactor: Any, listen: str = DEFAULT_LISTEN, *, speed: float = 1.0) -> None:
        self.reactor = reactor
        self.listen = listen
        self.speed = speed
        self.demo: Demo | None = None
        self.port: IListeningPort | None = None
        self.url: str | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        route_library_logs()
        self.demo = start_demo(self.reactor, speed=self.speed)
        try:
            listen_or_exit(self.reactor, self.listen, self.demo.site).addCallback(self._listening)
        except SystemExit:
            self.demo.close()
            self.demo = None
            raise

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        self.url = page_url(port)
        log.info("difytw demo: open {url} in a browser (no key, no network needed)", url=self.url)

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        stopping: list[Deferred[Any]] = []
        if self.port is not None:
            stopping.append(maybeDeferred(self.port.stopListening))
            self.port = None
        if self.demo is not None:
            stopping.append(self.demo.close())
            self.demo = None
        return DeferredList(stopping) if stopping else None


def demo_service(reactor: Any, listen: str = DEFAULT_LISTEN, *, speed: float = 1.0) -> IService:
    """The service ``twist difyproxy --demo`` runs (see the module docstring)."""
    return DemoService(reactor, listen, speed=speed)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m difytw.web [--listen ENDPOINT] [--speed F]``: run the demo in the foreground."""
    parser = argparse.ArgumentParser(
        prog="python -m difytw.web", description="The difytw chat demo, offline and keyless."
    )
    parser.add_argument("--listen", default=DEFAULT_LISTEN, help="Twisted endpoint to serve on")
    parser.add_argument("--speed", type=float, default=1.0, help="replay speed factor (0: instant)")
    args = parser.parse_args(argv)
    try:
        check_listen(args.listen)
    except usage.UsageError as error:
        parser.error(str(error))

    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    service = demo_service(reactor, args.listen, speed=args.speed)
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main()
