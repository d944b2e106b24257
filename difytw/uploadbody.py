"""The client's request body on its way upstream: ``UploadBody``.

The body is already spooled by Twisted (``request.content``); it is fed to the upstream
connection slice by slice, with no parse, no re-encode and no second full copy in memory
(issue 3 item 5), and with a call after each slice so the proxy can tell a slow upload
from a stalled one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IProducer
from twisted.internet.task import Cooperator, TaskDone
from twisted.web.client import FileBodyProducer
from zope.interface import implementer


@implementer(IConsumer)
class _ReportingConsumer:
    """Passes writes on, then reports that upstream accepted one more slice."""

    def __init__(self, consumer: IConsumer, progress: Callable[[], object]) -> None:
        self._consumer = consumer
        self._progress = progress

    def write(self, data: bytes) -> None:
        self._consumer.write(data)
        self._progress()

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._consumer.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._consumer.unregisterProducer()


class UploadBody(FileBodyProducer):
    """A spooled request body for the upstream request, read in slices (no second copy).

    ``progress`` is called after each slice is handed to the upstream connection, which
    only takes more while upstream keeps reading (the HTTP client pauses this producer).
    """

    def __init__(
        self,
        spool: IO[bytes],
        *,
        cooperator: Cooperator,
        progress: Callable[[], object],
        read_size: int = 2**16,
    ) -> None:
        super().__init__(  # type: ignore[no-untyped-call]
            spool, cooperator=cooperator, readSize=read_size
        )
        self._progress = progress

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        started: Deferred[None] = super().startProducing(  # type: ignore[no-untyped-call]
            _ReportingConsumer(consumer, self._progress)
        )
        return started.addCallback(self._uploaded)

    def _uploaded(self, result: None) -> None:
        # Twisted's client request keeps its body producer for as long as the response
        # lasts, a stream's whole life: let go of the finished task (its generator and
        # Deferreds) and of the progress callback (issue 3 item 10, RSS per idle stream).
        self._task = _UPLOADED
        self._progress = _no_progress
        return result


def _no_progress() -> None:
    """Stands in for an upload's progress callback once the upload is done."""


class _Uploaded:
    """Stands in for an upload's finished ``CooperativeTask``, refusing as it would."""

    __slots__ = ()

    def pause(self) -> None:
        raise TaskDone()

    def resume(self) -> None:
        raise TaskDone()

    def stop(self) -> None:
        raise TaskDone()


_UPLOADED = _Uploaded()
