"""Listening endpoints: checking a ``--listen`` string, listening on it, serving while running.

Shared by ``twist difyproxy`` (and its ``--demo``) and ``twist difyreplay``: an endpoint
string that could never listen is a usage error while options are parsed
(:func:`check_listen`); a tcp/ssl/unix endpoint that names no backlog gets a large one
(:func:`with_backlog`); one that cannot be used at startup (the port is taken) ends
``twist`` with one clear line (:func:`listen_or_exit`); :class:`ListeningService` serves a
factory while the service runs.  Each service that starts routes library log records into
``twisted.logger`` first (:func:`route_library_logs`).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from difytw.authconfig import listen_fields
from difytw.writethrough import WriteThroughReactor

log = Logger()

BACKLOG = 1024  # Twisted's default of 50 overflows when ~1000 clients connect at once
# Endpoint types whose listen() takes a backlog.
_BACKLOG_TYPES = ("tcp", "tcp6", "ssl", "unix")


def cannot_listen_message(error: CannotListenError) -> str:
    """One line for a port that cannot be used, naming it and how to choose another."""
    reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
    where = f"{error.interface or '0.0.0.0'}:{error.port}"
    return (
        f"difytw: cannot listen on {where} ({reason}); choose another port, e.g. "
        f"--listen tcp:{_example_port(error.port)}:interface=127.0.0.1"
    )


def _example_port(port: int) -> int:
    return port + 1 if 0 < port < 65535 else 8090


_library_log = Logger(namespace="difytw.library")


class _DebugToTwistedLog(logging.Handler):
    """A stdlib ``logging`` handler that hands each record to ``twisted.logger`` at debug."""

    def emit(self, record: logging.LogRecord) -> None:
        _library_log.debug("{library}: {message}", library=record.name, message=record.getMessage())


def route_library_logs() -> None:
    """Send python-multipart's stdlib log records to ``twisted.logger`` at debug level.

    It warns through ``logging`` about every malformed body it parses (the proxy's upload
    user check, the replay server's uploads); unhandled, those reach stderr, which
    ``twist`` logs at error level, so any client could flood the error log.  Done when a
    service starts, not at import, and only once.
    """
    logger = logging.getLogger("python_multipart")
    if not any(isinstance(handler, _DebugToTwistedLog) for handler in logger.handlers):
        logger.addHandler(_DebugToTwistedLog())
    logger.propagate = False


def check_listen(listen: str, flag: str = "--listen") -> None:
    """Refuse, with one line, an endpoint string that could never listen.

    Run while options are parsed (difyproxy, difyreplay), so ``tcp:99999`` or ``garbage``
    is a usage error rather than a traceback from the reactor once ``twist`` has started.
    Twisted's own parser decides what the string means (it builds the endpoint and does
    not listen); the port range, which it leaves to ``bind()``, is checked here.
    """
    example = f"e.g. {flag} tcp:8080:interface=127.0.0.1"
    try:
        serverFromString(None, listen)
    except (ValueError, TypeError, LookupError, OSError) as error:
        raise usage.UsageError(
            f"{flag} {listen}: not a usable endpoint ({error}); {example}"
        ) from None
    kind, options, positional = listen_fields(listen)
    if kind in ("tcp", "tcp6", "ssl"):
        port = int(options.get("port") or positional[0])  # the parse above proved it is one
        if not 0 <= port <= 65535:
            raise usage.UsageError(f"{flag} {listen}: port {port} is not 0-65535; {example}")


def listen_or_exit(reactor: Any, listen: str, factory: Any) -> Deferred[IListeningPort]:
    """Listen on ``listen``; a port that cannot be used ends startup with one clear line.

    TCP endpoints fail synchronously, so ``twist`` is still starting up: raising
    ``SystemExit`` there exits non-zero with the message instead of a traceback and a server
    that serves nothing.  Endpoint types that fail later are logged.
    """
    # TCP connections send at once when nothing is queued (``writethrough``).
    endpoint = serverFromString(WriteThroughReactor(reactor), listen)
    listening: Deferred[IListeningPort] = endpoint.listen(factory)
    failures: list[Failure] = []
    starting = True

    def failed(failure: Failure) -> None:
        if starting:
            failures.append(failure)
        else:
            log.failure("cannot listen on {listen}", failure, listen=listen)

    listening.addErrback(failed)
    starting = False
    if failures:
        error = failures[0].value
        if isinstance(error, CannotListenError):
            raise SystemExit(cannot_listen_message(error))
        failures[0].raiseException()
    return listening


class ListeningService(Service):
    """Serves ``factory`` on ``listen`` while running (with :func:`listen_or_exit`), with
    library log records routed (:func:`route_library_logs`)."""

    def __init__(self, reactor: Any, listen: str, factory: Any) -> None:
        self.reactor = reactor
        self.listen = listen
        self.factory = factory
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        route_library_logs()
        listen_or_exit(self.reactor, self.listen, self.factory).addCallback(self._listening)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()  # type: ignore[no-untyped-call]
        port, self.port = self.port, None
        return maybeDeferred(port.stopListening) if port is not None else None


def with_backlog(endpoint: str) -> str:
    """Add ``backlog=1024`` to a listening endpoint that takes one and names none."""
    kind = endpoint.split(":", 1)[0].lower()
    if kind in _BACKLOG_TYPES and not re.search(r"(^|:)backlog=", endpoint):
        return f"{endpoint}:backlog={BACKLOG}"
    return endpoint
