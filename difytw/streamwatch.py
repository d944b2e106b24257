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
# What a read's whole frames are searched for, past the id hunt (which decodes the first
# frames, ``workflow_started`` among them).  A chat stream names no workflow at all, so a
# "workflow_" in one is decoded; a workflow's frames all carry "workflow_run_id", so there
# only its terminal names are searched for.  Fewer needles, fewer passes over each read.
_CHAT_NEEDLES = (b"message_end", b'"error"', b"workflow_")
_WORKFLOW_NEEDLES = (b"message_end", b'"error"', b"workflow_finished", b"workflow_paused")
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
        self._data_frames = 0  # dispatched blocks with data, while still hunting for ids
        self.terminal: str | None = None  # the terminal event's name, once seen
        self.last_event: str | None = None
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.workflow = False
        self.workflow_status: str | None = None
        self.workflow_tokens: int | None = None
        self.broken: str | None = None  # why watching stopped early, if it did
        # Whether everything fed so far ended exactly at a frame boundary (a blank line),
        # and whether it ended in LF (a boundary split between two reads).
        self._at_boundary = True
        self._ends_lf = False

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
        if self._decoder is None or not data:
            return
        if b"\r" in data:
            # Lines end with CR, which Dify never sends and the skipping below does not
            # follow: decode it all.
            self._decode(data)
            return
        if self._hunting:
            # Every frame is decoded while the ids are wanted, one frame at a time so
            # that the rest of a long read can be skipped once they are known.
            at = 0
            while self._hunting and self._decoder is not None:
                blank = data.find(b"\n\n", at)
                if blank < 0:
                    self._decode(data[at:])
                    return
                self._decode(data[at : blank + 2])
                at = blank + 2
            if at == len(data) or self._decoder is None:
                return
            data = data[at:]
        # Mid-stream, a read is the end of a frame the decoder holds, whole frames, and
        # the start of the next.  The two ends are decoded; the whole frames in between
        # are only searched for the few names we act on (C substring scans) and skipped
        # when they name none: the decoder, at a frame boundary there, loses no state.
        # On a fast stream that is the bulk of every read (the bench: ~2 of ~4 us per
        # event went to decoding frames nobody needed).
        start = 0
        if not self._at_boundary:
            if self._ends_lf and data[0] == 0x0A:
                start = 1
            else:
                blank = data.find(b"\n\n")
                if blank < 0:
                    self._decode(data)  # all of it inside the one frame
                    return
                start = blank + 2
            self._decode(data[:start])
        end = data.rfind(b"\n\n", start) + 2
        if end > 1:  # a whole frame, or more, from ``start`` on
            first = -1
            for name in _WORKFLOW_NEEDLES if self.workflow else _CHAT_NEEDLES:
                at = data.find(name, start, end)
                if at >= 0 and (first < 0 or at < first):
                    first = at
            # Frames before the first one that names something are skipped all the same.
            skip = data.rfind(b"\n\n", start, first) + 2 if first >= 0 else end
            if skip > 1:
                start = skip
            if start < end:
                self._decode(data[start:end])
            start = end
        if start < len(data):
            self._decode(data[start:])
        else:
            self._at_boundary, self._ends_lf = True, True

    def _decode(self, data: bytes) -> None:
        """Run ``data`` through the SSE decoder, for the frames it completes."""
        if self._decoder is None:  # watching gave up earlier in this read
            return
        try:
            items = self._decoder.feed(data)
        except SSEError as e:
            # Watching is best effort; the relay goes on untouched.
            self.broken = str(e)
            self._decoder = None
            return
        # A boundary may be split between reads: "...\n" then "\n".
        self._at_boundary = data.endswith(b"\n\n") or (data == b"\n" and self._ends_lf)
        self._ends_lf = data.endswith(b"\n")
        for item in items:
            if isinstance(item, Event):
                self._event(item)

    def _event(self, event: Event) -> None:
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
