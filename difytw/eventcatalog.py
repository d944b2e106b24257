"""Dify's event stream as the fixture toolbox reads it (dify-contract.md 2.1-2.6).

This module owns the contract knowledge that ``show``, ``lint`` and the importers share: how a
body divides into frames, how recorded reads decode item by item, which app family a request
path talks to, which events each family emits and which of them end a stream, and what a frame
adds to the answer text.  Pure: stdlib and ``difytw.sse`` only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

from difytw.sse import Comment, Decoder, Event

# 2.2: Werkzeug's text/event-stream with the charset it appends to text/* types.
STREAM_TYPE = "text/event-stream; charset=utf-8"
CHAT = "chat"
AGENT = "agent-chat"
CHATFLOW = "advanced-chat"
COMPLETION = "completion"
WORKFLOW = "workflow"

# 2.6 "Workflow": every payload of these is nested under ``data`` (chatflow emits them too).
WORKFLOW_EVENTS = frozenset(
    {
        "workflow_started",
        "node_started",
        "node_finished",
        "node_retry",
        "iteration_started",
        "iteration_next",
        "iteration_completed",
        "loop_started",
        "loop_next",
        "loop_completed",
        "parallel_branch_started",
        "parallel_branch_finished",
        "text_chunk",
        "text_replace",
        "agent_log",
        "reasoning_chunk",
        "workflow_finished",
        "workflow_paused",
        "human_input_required",
        "human_input_form_filled",
        "human_input_form_timeout",
    }
)
MESSAGE_EVENTS = frozenset({"message", "message_end", "message_replace", "message_file"})
AGENT_EVENTS = frozenset({"agent_message", "agent_thought"})
# 2.6: TTS frames are the only ones that may trail the terminal event.
TRAILING = frozenset({"tts_message", "tts_message_end"})

# 2.6 "Terminal events" (``error`` is terminal for every family and handled apart).
TERMINAL: dict[str | None, frozenset[str]] = {
    CHAT: frozenset({"message_end"}),
    AGENT: frozenset({"message_end"}),
    COMPLETION: frozenset({"message_end"}),
    CHATFLOW: frozenset({"workflow_finished", "workflow_paused"}),
    WORKFLOW: frozenset({"workflow_finished", "workflow_paused"}),
    None: frozenset({"message_end", "workflow_finished", "workflow_paused"}),
}
# 2.1 key order / 2.5 error envelopes: the ids every frame of a family carries.
ENVELOPE: dict[str | None, tuple[str, ...]] = {
    CHAT: ("conversation_id", "message_id", "created_at"),
    AGENT: ("conversation_id", "message_id", "created_at"),
    CHATFLOW: ("conversation_id", "message_id", "created_at"),
    COMPLETION: ("message_id", "created_at"),
    WORKFLOW: ("workflow_run_id",),
    None: (),
}
# Events a family never emits: a text generator has no workflow or agent, a workflow app
# streams text_chunk instead of message frames (2.6).
FOREIGN: dict[str | None, frozenset[str]] = {
    COMPLETION: WORKFLOW_EVENTS | AGENT_EVENTS,
    WORKFLOW: MESSAGE_EVENTS | AGENT_EVENTS,
}
# The ids that name one run; a stream that mixes two of a kind is two recordings spliced.
RUN_IDS = ("task_id", "conversation_id", "message_id", "workflow_run_id")

_WORKFLOW_PATH = re.compile(r"/workflows(?:/[^/]+)?/run$|/workflow/[^/]+/events$")
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+\Z")
_BLANK = (b"\n", b"\r", b"\r\n")


def family(path: str, names: Iterable[str]) -> str | None:
    """The app family a stream came from: by route (1.2), then by the events it carries."""
    if _WORKFLOW_PATH.search(path):
        return WORKFLOW
    if path.endswith("/completion-messages"):
        return COMPLETION
    if path.endswith("/chat-messages"):
        seen = set(names)
        if "workflow_started" in seen:
            return CHATFLOW
        return AGENT if seen & AGENT_EVENTS else CHAT
    return None


def split_frames(body: bytes) -> list[bytes]:
    """Cut a body after each blank line that ends a block; the pieces join back to ``body``.

    Line ends are LF, CR or CRLF (WHATWG 9.2.6).  A last piece without its blank line is a
    frame the stream never finished.  Blank lines before any field stay with the next frame.
    """
    frames, tail, _ = _split(body)
    return [*frames, tail] if tail else frames


def unfinished(body: bytes) -> int:
    """Bytes of a frame the body started but never ended with a blank line (else 0)."""
    _, tail, filled = _split(body)
    return len(tail) if filled else 0


def _split(body: bytes) -> tuple[list[bytes], bytes, bool]:
    frames: list[bytes] = []
    start = 0
    filled = False
    for match in _LINE.finditer(body):
        if match.group() in _BLANK:
            if filled:
                frames.append(body[start : match.end()])
                start, filled = match.end(), False
        else:
            filled = True
    return frames, body[start:], filled


def decode_reads(reads: Iterable[bytes]) -> Iterator[tuple[int, Event | Comment]]:
    """``(read index, item)`` for each event and comment, as each read completes it.

    Pings are kept (``dispatch_empty``): Dify's keep-alive is a block with no data line (2.1).
    """
    decoder = Decoder(dispatch_empty=True, comments=True)
    for index, data in enumerate(reads):
        for item in decoder.feed(data):
            yield index, item


def payload(event: Event) -> dict[str, Any] | None:
    """The JSON object a data event carries, or None when the data is something else."""
    try:
        value = json.loads(event.data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def event_name(item: Event | Comment) -> str:
    """How a reviewer names an item: the JSON ``event`` of a data frame, else the SSE name."""
    if isinstance(item, Comment):
        return ":"
    if item.event == "message":
        data = payload(item)
        if data is not None and isinstance(data.get("event"), str):
            return str(data["event"])
    return item.event


def answer_delta(frame: dict[str, Any]) -> tuple[str, bool] | None:
    """``(text, replaces)`` a frame adds to the answer, or None if it adds nothing.

    2.6: ``message``/``agent_message`` answers and workflow ``text_chunk`` texts concatenate;
    ``message_replace`` / ``text_replace`` replace everything so far (output moderation).
    """
    name = frame.get("event")
    if name in ("message", "agent_message", "message_replace"):
        text = frame.get("answer")
    elif name in ("text_chunk", "text_replace"):
        data = frame.get("data")
        text = data.get("text") if isinstance(data, dict) else None
    else:
        return None
    if not isinstance(text, str):
        return None
    return text, name in ("message_replace", "text_replace")
