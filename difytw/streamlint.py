"""Lint of one recorded event stream: SSE grammar and the Dify contract (pure).

This module owns the stream half of ``difytw-fixture lint``: the bytes against WHATWG HTML
9.2.6 and dify-contract.md 2.1 (LF only, no BOM, one ``data: {json}`` line per frame, pings
without data), then the frames against the event catalog of the app type the request talks to
(2.4-2.6: envelope ids, ``task_id`` everywhere but ``error``, one run per stream, a terminal
event with only TTS frames after it).  Problems come back as ``(file line, problem)``.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from difytw.eventcatalog import (
    COMPLETION,
    ENVELOPE,
    FOREIGN,
    RUN_IDS,
    STREAM_TYPE,
    TERMINAL,
    TRAILING,
    WORKFLOW,
    WORKFLOW_EVENTS,
    decode_reads,
    family,
    payload,
    unfinished,
)
from difytw.fixture import Fixture
from difytw.sse import Comment

Problem = tuple[int, str]
Frame = tuple[int, dict[str, Any]]  # (file line, JSON payload)

WORKFLOW_STATUSES = ("succeeded", "failed", "partial-succeeded", "stopped")
_KINDS: dict[type, str] = {str: "a string", dict: "an object", int: "an integer"}
_LINE = re.compile(rb"([^\r\n]*)(\r\n|\r|\n|\Z)")


@dataclass(frozen=True)
class Lines:
    """The file line of each record of a fixture that loaded (blank lines are skipped)."""

    numbers: tuple[int, ...]

    @classmethod
    def of(cls, text: str) -> Lines:
        # The same split as fixture.loads: LF only, blank lines skipped.
        lines = enumerate(text.split("\n"), 1)
        return cls(tuple(number for number, line in lines if line.strip()))

    @property
    def head(self) -> int:
        return self.numbers[0]

    @property
    def request(self) -> int:
        return self.numbers[1]

    @property
    def response(self) -> int:
        return self.numbers[2]

    @property
    def end(self) -> int:
        return self.numbers[-1]

    def chunk(self, index: int) -> int:
        return self.numbers[3 + index]


def stream_problems(fixture: Fixture, lines: Lines) -> list[Problem]:
    response = fixture.response
    problems: list[Problem] = []
    if response.status != 200:
        problems.append(
            (lines.response, f"stream status {response.status}: a stream answers 200 (2.2)")
        )
    if response.content_type != STREAM_TYPE:
        problems.append(
            (lines.response, f"Content-Type {response.content_type!r}: Dify sends {STREAM_TYPE!r}")
        )
    starts = [0]
    for chunk in fixture.chunks:
        starts.append(starts[-1] + len(chunk.data))

    def line_at(offset: int) -> int:
        index = bisect.bisect_right(starts, offset) - 1
        return lines.chunk(index) if index < len(fixture.chunks) else lines.end

    problems.extend(_grammar(fixture.body(), line_at))
    frames: list[Frame] = []
    for index, item in decode_reads(chunk.data for chunk in fixture.chunks):
        problem, frame = _frame(item)
        if problem:
            problems.append((lines.chunk(index), problem))
        if frame is not None:
            frames.append((lines.chunk(index), frame))
    problems.extend(_contract(fixture, frames, lines))
    return problems


def _grammar(body: bytes, line_at: Any) -> Iterator[Problem]:
    if body.startswith(b"\xef\xbb\xbf"):
        yield line_at(0), "the body starts with a BOM; Dify sends none (2.1)"
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        yield line_at(e.start), f"the body is not UTF-8 at byte {e.start} (9.2.6 reads UTF-8)"
    cr = False
    for match in _LINE.finditer(body):
        if match.start() == len(body):
            break
        content, ending = match.groups()
        if ending in (b"\r\n", b"\r") and not cr:
            cr = True  # once per stream: one CR usually means all of them
            yield line_at(match.start()), "CR line end: Dify ends lines with LF only (2.1)"
        if not content or content.startswith(b":"):
            continue  # blank line, or a comment (9.2.6 ignores it; proxies send keep-alives)
        name, _, value = content.partition(b":")
        shown = name.decode("utf-8", "replace")
        if name not in (b"data", b"event", b"id", b"retry"):
            problem = f"unknown SSE field {shown!r}: every parser ignores the line (9.2.6)"
        elif name in (b"id", b"retry"):
            problem = f"{shown!r} line: Dify never sends id or retry (2.1)"
        elif name == b"data" and not value.startswith(b" "):
            # Dify's own web client cuts exactly 'data: ' (6 characters) off each line (7).
            problem = "'data' line without 'data: ' (colon and one space, 2.1)"
        else:
            continue
        yield line_at(match.start()), problem


def _frame(item: Any) -> tuple[str | None, dict[str, Any] | None]:
    """A problem with one decoded item, and its payload when it is a Dify data frame."""
    if isinstance(item, Comment):
        return None, None
    if item.event == "ping":
        if item.data:
            return "ping carries data: Dify's keep-alive is a bare 'event: ping' block (2.1)", None
        return None, None
    if item.event != "message":
        return f"'event: {item.event}' line: Dify names data frames inside the JSON (2.1)", None
    if "\n" in item.data:
        return "several data lines in one frame: Dify writes one JSON line per frame (2.1)", None
    frame = payload(item)
    if frame is None:
        return "data is not a JSON object: every Dify frame is one (2.1)", None
    if not isinstance(frame.get("event"), str):
        return "the JSON has no string 'event' field (2.6)", None
    return None, frame


def _contract(fixture: Fixture, frames: list[Frame], lines: Lines) -> Iterator[Problem]:
    names = [frame["event"] for _, frame in frames]
    kind = family(fixture.request.path, names)
    for line, frame in frames:
        for problem in _shape(frame, kind):
            yield line, problem
    yield from _one_run(frames)
    if not fixture.end.incomplete:
        yield from _ending(fixture, frames, kind, lines)


def _shape(frame: dict[str, Any], kind: str | None) -> Iterator[str]:
    name = frame["event"]
    if name in FOREIGN.get(kind, ()):
        yield f"{name!r} in a {kind} stream: that app type never sends it (2.6)"
    if name == "error" and "task_id" in frame:
        yield "an error frame carries no task_id (2.5)"
    elif name != "error" and "task_id" not in frame:
        yield f"{name!r} has no task_id (2.4: every frame but error carries it)"
    envelope = () if (kind == WORKFLOW and name == "agent_log") else ENVELOPE[kind]
    missing = [key for key in envelope if key not in frame]
    if missing:
        yield f"{name!r} lacks {', '.join(missing)}: every {kind} frame carries them (2.1)"
    if kind == COMPLETION and "conversation_id" in frame:
        yield f"{name!r} has a conversation_id: completion frames carry none (2.1)"
    data = frame.get("data")
    expected: list[tuple[str, Any, type]] = []
    if name in ("message", "agent_message", "message_replace"):
        expected.append(("answer", frame.get("answer"), str))
    elif name == "message_end":
        expected.append(("metadata", frame.get("metadata"), dict))
    elif name == "error":
        expected += [(key, frame.get(key), str) for key in ("code", "message")]
        expected.append(("status", frame.get("status"), int))
    elif name in WORKFLOW_EVENTS:
        expected.append(("data", data, dict))
    for key, value, want in expected:
        if not isinstance(value, want) or isinstance(value, bool):
            yield f"{name!r}: {key!r} is missing or not {_KINDS[want]} (2.6)"
    if isinstance(data, dict):
        if name == "text_chunk" and not isinstance(data.get("text"), str):
            yield "'text_chunk': 'data.text' is missing or not a string (2.6)"
        if name == "workflow_finished" and data.get("status") not in WORKFLOW_STATUSES:
            yield f"'workflow_finished': data.status {data.get('status')!r} is not a run status"


def _one_run(frames: list[Frame]) -> Iterator[Problem]:
    """2.4: one task, message, conversation and run per stream; two means a splice."""
    for key in RUN_IDS:
        first: Any = None
        for line, frame in frames:
            if key not in frame:
                continue
            if first is None:
                first = frame[key]
            elif frame[key] != first:
                yield line, f"{key} {frame[key]!r} is not the stream's first {key} {first!r}"
                break


def _ending(
    fixture: Fixture, frames: list[Frame], kind: str | None, lines: Lines
) -> Iterator[Problem]:
    tail = unfinished(fixture.body())
    hint = "(or mark the end record incomplete)"
    if tail:
        yield (
            lines.end,
            f"the stream stops inside a frame ({tail} bytes after the last blank line) {hint}",
        )
    names = [frame["event"] for _, frame in frames]
    if "error" in names:
        first = names.index("error")
        if first != len(names) - 1:
            yield frames[first][0], "an error frame must be the stream's last frame (2.5)"
        return
    terminal = TERMINAL[kind]
    ends = [i for i, name in enumerate(names) if name in terminal]
    if not ends:
        wanted = " or ".join(sorted(terminal))
        yield (
            lines.end,
            f"no terminal event: a {kind or 'Dify'} stream ends with {wanted} or error"
            f" (2.6) {hint}",
        )
        return
    last = ends[-1]
    for line, frame in frames[last + 1 :]:
        if frame["event"] not in TRAILING:
            yield (
                line,
                f"{frame['event']!r} after the terminal {names[last]!r}:"
                " only TTS frames follow it (2.6)",
            )
