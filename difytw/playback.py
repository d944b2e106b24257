"""Playback: one fixture's planned writes, sent to one request over time.

``Playback`` is the replay server's per-request writer: it sends the head and
each write of a ``Plan`` when due on the injected clock, pauses when the
client's transport pushes back (it is the request's push producer), ends as the
plan says, and can be stopped early the way Dify stops a task (a final
``message_end`` or ``workflow_finished`` with ``status: "stopped"``,
dify-contract.md 4).  It keeps at most one ``DelayedCall`` and cancels it the
moment the client leaves.  ``RunningPlaybacks`` finds the streams a stop call names.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.web.iweb import IRequest
from zope.interface import implementer

from difytw.blocking import frames
from difytw.faults import Plan
from difytw.fixture import Fixture
from difytw.journal import Journal, JournalEntry

# Recorded headers that describe the recorded connection, not the exchange.
CONNECTION_HEADERS = frozenset(
    {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}
)


def _reset(transport: Any) -> None:
    """End with a TCP RST, but only after the bytes already written are sent.

    ``abortConnection`` would discard Twisted's write buffer, losing the last
    chunks the fixture recorded before the reset; SO_LINGER 0 makes the close
    that follows the flush a reset instead of a FIN.
    """
    try:
        transport.getHandle().setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
    except (AttributeError, OSError):
        transport.abortConnection()
        return
    transport.loseConnection()


@implementer(IPushProducer)
class Playback:
    """Writes one ``Plan`` to one request, honouring the client's backpressure."""

    def __init__(
        self,
        request: IRequest,
        fixture: Fixture,
        plan: Plan,
        clock: IReactorTime,
        entry: JournalEntry,
        journal: Journal,
        user: str | None = None,
    ) -> None:
        self.request = request
        self.user = user
        self.on_end: list[Any] = []  # callables run once when the playback is over
        self.fixture = fixture
        self.plan = plan
        self.clock = clock
        self.entry = entry
        self.journal = journal
        self.started = clock.seconds()
        self.position = 0  # index of the next write
        self.head_sent = False
        self.paused = False
        self.pending: IDelayedCall | None = None
        self.shift = 0.0  # seconds lost to backpressure pauses
        self.paused_at = 0.0
        self.done: Deferred[bytes] = Deferred(self._cancel)
        self.task_id, self._envelope = _task(fixture)
        # Old Dify (json.dumps) and new Dify (orjson) frames differ; a stop
        # frame is written in the style of the stream it ends.
        self._spaced = b'{"event": "' in fixture.body()[:4096]

    def start(self) -> Deferred[bytes]:
        response = self.fixture.response
        self.request.setResponseCode(response.status)
        for name, value in response.headers:
            if name.lower() not in CONNECTION_HEADERS:
                self.request.responseHeaders.addRawHeader(name, value)
        if not response.is_stream and self.plan.end == "eof" and not self.entry.fault:
            size = sum(len(w.data) for w in self.plan.writes)
            self.request.setHeader(b"Content-Length", str(size).encode())
        self.entry.status = response.status
        self.request.registerProducer(self, True)  # type: ignore[attr-defined]
        self._step()
        return self.done

    def _due(self, at: float) -> float:
        return max(0.0, self.started + self.shift + at - self.clock.seconds())

    def _step(self) -> None:
        self.pending = None
        if self.paused:
            return
        writes = self.plan.writes
        if not self.head_sent:
            delay = self._due(self.plan.head_at)
            if delay > 0:
                self.pending = self.clock.callLater(delay, self._step)
                return
            self.head_sent = True
            self.request.write(b"")  # the status line and headers, now
        while self.position < len(writes):
            write = writes[self.position]
            delay = self._due(write.at)
            if delay > 0:
                self.pending = self.clock.callLater(delay, self._step)
                return
            self.position += 1
            self.request.write(write.data)
            self.entry.bytes_sent += len(write.data)
            if self.paused or self.done.called:
                return
        self._end()

    def _end(self) -> None:
        how = self.plan.end
        if how == "timeout":
            # A recorded stall: keep the connection open until the client leaves.
            self.entry.outcome = "timeout"
            return
        delay = self._due(self.plan.end_at)
        if delay > 0:
            self.pending = self.clock.callLater(delay, self._end)
            return
        self.pending = None
        self.request.unregisterProducer()  # type: ignore[attr-defined]
        self._over()
        if how == "reset":
            self.journal.close(self.entry, "reset", self.clock.seconds())
            _reset(self.request.transport)  # type: ignore[attr-defined]
            return
        self.journal.close(self.entry, "completed", self.clock.seconds())
        self.done.callback(b"")

    def _cancel(self, _: Deferred[bytes]) -> None:
        # The client left (klein cancels the endpoint's Deferred).
        if self.pending is not None and self.pending.active():
            self.pending.cancel()
        self.pending = None
        self._over()
        self.journal.close(self.entry, "client_closed", self.clock.seconds())

    def stop(self) -> bool:
        """Stop like Dify's stop endpoint: a final stopped frame, then the end.

        Returns False when there is nothing left to stop (already over).
        """
        if self.done.called or self.entry.ended_at is not None:
            return False
        if self.pending is not None and self.pending.active():
            self.pending.cancel()
        self.pending = None
        if not self.head_sent:
            self.head_sent = True
            self.request.write(b"")
        for frame in _stopped_frames(self._envelope, self._spaced):
            self.request.write(frame)
            self.entry.bytes_sent += len(frame)
        self._over()
        self.request.unregisterProducer()  # type: ignore[attr-defined]
        self.journal.close(self.entry, "stopped", self.clock.seconds())
        self.done.callback(b"")
        return True

    def _over(self) -> None:
        listeners, self.on_end = self.on_end, []
        for listener in listeners:
            listener(self)

    # IPushProducer: a slow client pauses the replay instead of piling bytes up.
    def pauseProducing(self) -> None:
        if self.paused:
            return
        self.paused = True
        self.paused_at = self.clock.seconds()
        if self.pending is not None and self.pending.active():
            self.pending.cancel()
        self.pending = None

    def resumeProducing(self) -> None:
        if not self.paused or self.done.called:
            return
        self.paused = False
        self.shift += self.clock.seconds() - self.paused_at
        self.pending = self.clock.callLater(0, self._step)

    def stopProducing(self) -> None:
        if self.pending is not None and self.pending.active():
            self.pending.cancel()
        self.pending = None


class RunningPlaybacks:
    """The streams in flight by task id, so a stop call can find them (contract 4)."""

    def __init__(self) -> None:
        self._by_task: dict[str, list[Playback]] = {}

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._by_task

    def __len__(self) -> int:
        return len(self._by_task)

    def add(self, playback: Playback) -> None:
        """Track ``playback`` until it ends; one without a task id cannot be stopped."""
        if playback.task_id is None:
            return
        self._by_task.setdefault(playback.task_id, []).append(playback)
        playback.on_end.append(self._forget)

    def stop(self, task_id: str, user: str) -> list[int]:
        """Stop ``user``'s streams of ``task_id``; the journal ids of those it stopped."""
        running = list(self._by_task.get(task_id, []))
        return [p.entry.id for p in running if p.user == user and p.stop()]

    def _forget(self, playback: Playback) -> None:
        assert playback.task_id is not None
        running = self._by_task.get(playback.task_id, [])
        if playback in running:
            running.remove(playback)
        if not running:
            self._by_task.pop(playback.task_id, None)


def _task(fixture: Fixture) -> tuple[str | None, list[dict[str, Any]]]:
    """The task id of a streamed run and its frames (for building a stop)."""
    if not fixture.response.is_stream:
        return None, []
    events = frames(fixture.body())
    task_id = next((e["task_id"] for e in events if isinstance(e.get("task_id"), str)), None)
    return task_id, events


def _stopped_frames(events: list[dict[str, Any]], spaced: bool) -> list[bytes]:
    """The frames Dify sends when a task is stopped (dify-contract.md 4).

    Chat, completion and agent runs end with ``message_end`` (the partial
    answer stands); workflows with ``workflow_finished`` and
    ``status: "stopped"``; a chatflow sends both.
    """
    by_name = {str(e.get("event")): e for e in events}
    first = next((e for e in events if "task_id" in e), {})
    result: list[dict[str, Any]] = []
    if "message" in by_name or "agent_message" in by_name or "message_end" in by_name:
        end = dict(by_name.get("message_end", {}))
        if not end:
            end = {
                k: first[k] for k in ("conversation_id", "message_id", "created_at") if k in first
            }
            end = {"event": "message_end", **end, "task_id": first.get("task_id")}
            end["id"] = first.get("message_id")
            end["metadata"] = {"usage": {}}
        result.append(end)
    if "workflow_started" in by_name:
        started = by_name["workflow_started"]
        finished = dict(by_name.get("workflow_finished", {}))
        data = dict(finished.get("data") or started.get("data") or {})
        data.update(status="stopped", error="Stopped by user.")
        envelope = {k: v for k, v in started.items() if k not in ("event", "data")}
        result.append({"event": "workflow_finished", **envelope, "data": data})
    if spaced:
        encoded = [json.dumps(r) for r in result]
    else:
        encoded = [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in result]
    return [b"data: " + text.encode("utf-8") + b"\n\n" for text in encoded]
