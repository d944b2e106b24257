"""Watching a Dify stream on the side, without touching its bytes (pure).

The proxy relays every upstream read unchanged and *also* feeds it here, so
it knows what it is carrying: the ``task_id`` it needs to call a stop
endpoint when the caller leaves, the run's other ids, whether the terminal
event has passed, and ``message_end.metadata.usage`` for accounting
(issue 7).  The client's bytes are never held back for this: ``feed`` only
reads.

Cost matters (it runs on every read of every stream): the SSE decoder does
the framing, but JSON is parsed only while an id is still unknown or when a
frame's text names an event we act on.  Pings never end the hunt for the
ids: Dify pings every 10 s before the first token (contract 2.3), so a slow
run may open with dozens of them, and its ``task_id`` must still be caught.
"""

from __future__ import annotations

import json
from typing import Any

from difytw.sse import Decoder, Event, SSEError

# dify-contract.md 2.6: what ends a run.  `message_end` ends chat, completion
# and agent runs; a chatflow goes on to `workflow_finished`, so once
# `workflow_started` was seen only the workflow events count as terminal.
WORKFLOW_TERMINAL = ("workflow_finished", "workflow_paused", "error")
MESSAGE_TERMINAL = ("message_end", "error")
_NOTABLE = ("message_end", "workflow_finished", "workflow_paused", '"error"', "workflow_started")
IDS = ("task_id", "workflow_run_id", "conversation_id", "message_id")
# Data frames (pings and comments do not count) decoded in full at the start, where the
# ids are.  Until a frame names ``task_id``, the one id a stop call needs, every data
# frame is decoded: all Dify frames but ``error`` and ``ping`` carry it (contract 2.6).
ID_FRAMES = 8
# A watched frame larger than this stops the watching (not the stream).
MAX_WATCHED_EVENT = 16 * 1024 * 1024


class StreamWatch:
    """What a relay has seen of one Dify SSE stream so far."""

    def __init__(self, max_event_size: int = MAX_WATCHED_EVENT) -> None:
        self._decoder: Decoder | None = Decoder(max_event_size=max_event_size, dispatch_empty=True)
        self.ids: dict[str, str] = {}
        self.frames = 0  # dispatched SSE blocks, pings included
        self._data_frames = 0  # dispatched blocks with data, while still hunting for ids
        self.terminal: str | None = None  # the terminal event's name, once seen
        self.last_event: str | None = None
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.workflow = False
        self.workflow_status: str | None = None
        self.workflow_tokens: int | None = None
        self.broken: str | None = None  # why watching stopped early, if it did
        # True while everything fed so far ended exactly at an event boundary.
        self._at_boundary = True

    @property
    def task_id(self) -> str | None:
        return self.ids.get("task_id")

    @property
    def finished(self) -> bool:
        return self.terminal is not None

    @property
    def total_tokens(self) -> int | None:
        if self.usage is not None and isinstance(self.usage.get("total_tokens"), int):
            tokens: int = self.usage["total_tokens"]
            return tokens
        return self.workflow_tokens

    @property
    def _hunting(self) -> bool:
        """Whether every data frame is still decoded for the ids (it only ever turns off)."""
        if "task_id" not in self.ids:
            return True
        return len(self.ids) < len(IDS) and self._data_frames < ID_FRAMES

    def feed(self, data: bytes) -> None:
        if self._decoder is None:
            return
        if (
            self._at_boundary
            and not self._hunting
            and data.endswith(b"\n\n")
            and b"message_end" not in data
            and b"workflow_" not in data
            and b'"error"' not in data
        ):
            # Fast path, the common case mid-stream: reads of whole events that name
            # nothing we act on.  The decoder holds nothing pending, so skipping it loses
            # no state; only the frame count moves (Dify sends no runs of blank lines).
            # A few substring tests in C cost a fraction of decoding (the bench: ~3 us
            # of ~10 us per event went to watching before this).
            self.frames += data.count(b"\n\n")
            return
        self._at_boundary = data.endswith(b"\n\n") or (self._at_boundary and not data)
        try:
            items = self._decoder.feed(data)
        except SSEError as e:
            # Watching is best effort; the relay goes on untouched.
            self.broken = str(e)
            self._decoder = None
            return
        for item in items:
            if isinstance(item, Event):
                self._event(item)

    def _event(self, event: Event) -> None:
        self.frames += 1
        if event.event == "ping" or not event.data:
            return
        text = event.data
        wanted = self._hunting
        if wanted:
            self._data_frames += 1
        if not wanted and not any(name in text for name in _NOTABLE):
            return
        try:
            frame = json.loads(text)
        except ValueError:
            return
        if not isinstance(frame, dict):
            return
        name = frame.get("event")
        self.last_event = name if isinstance(name, str) else None
        for key in IDS:
            value = frame.get(key)
            if key not in self.ids and isinstance(value, str) and value:
                self.ids[key] = value
        if name == "workflow_started":
            self.workflow = True
        elif name == "message_end":
            metadata = frame.get("metadata")
            if isinstance(metadata, dict) and isinstance(metadata.get("usage"), dict):
                self.usage = metadata["usage"]
        elif name == "workflow_finished":
            data = frame.get("data")
            if isinstance(data, dict):
                status, tokens = data.get("status"), data.get("total_tokens")
                self.workflow_status = status if isinstance(status, str) else None
                self.workflow_tokens = tokens if isinstance(tokens, int) else None
        elif name == "error":
            self.error = {k: frame.get(k) for k in ("code", "status", "message")}
        terminal = WORKFLOW_TERMINAL if self.workflow else MESSAGE_TERMINAL
        if name in terminal and self.terminal is None:
            self.terminal = name
