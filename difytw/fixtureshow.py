"""``difytw-fixture show``: one fixture as a timeline a reviewer can read (pure).

This module owns the review rendering: the request, then each SSE item with its time, the gap
since the previous line (Δt), its Dify event name (the JSON ``event``, dify-contract.md 2.1) and
what it carries (answer text, node titles, statuses, error codes), pings and comments marked;
then the joined answer and how the exchange ended.  Non-stream bodies are shown as text.
"""

from __future__ import annotations

import json
from typing import Any

from difytw.eventcatalog import (
    TERMINAL,
    answer_delta,
    decode_reads,
    event_name,
    family,
    payload,
    unfinished,
)
from difytw.fixture import Fixture
from difytw.sse import Comment, Event

_DETAIL_WIDTH = 72


class Timeline:
    """Rows of ``t``, ``Δt``, label and detail; Δt is measured from the previous row."""

    def __init__(self) -> None:
        self.rows: list[str] = [f"{'t ms':>10} {'Δt ms':>10}  event"]
        self._last = 0.0

    def add(self, t: float, label: str, detail: str = "") -> None:
        delta = t - self._last
        self._last = t
        row = f"{t:>10.1f} {delta:>+10.1f}  {label:<18} {detail}"
        self.rows.append(row.rstrip())


def render(fixture: Fixture) -> str:
    request, response, end = fixture.request, fixture.response, fixture.end
    target = request.path + (f"?{request.query}" if request.query else "")
    out = [f"{fixture.id}: {request.method} {target}"]
    if request.has_json:
        out.append(f"  body: {_clip(json.dumps(request.json, ensure_ascii=False))}")
    out.append(f"  provenance: {fixture.provenance}")
    if fixture.notes:
        out.append(f"  notes: {fixture.notes}")
    timeline = Timeline()
    timeline.add(response.t, f"[response {response.status}]", response.content_type)
    answer = ""
    names: list[str] = []
    last_error = ""
    if response.is_stream:
        for index, item in decode_reads(chunk.data for chunk in fixture.chunks):
            name = event_name(item)
            data = payload(item) if isinstance(item, Event) and name != "ping" else None
            timeline.add(fixture.chunks[index].t, _label(item, name), _detail(item, data))
            if data is None:
                continue
            names.append(name)
            delta = answer_delta(data)
            if delta is not None:
                answer = delta[0] if delta[1] else answer + delta[0]
            if name == "error":
                last_error = (
                    f"error {data.get('code')} ({data.get('status')}): {data.get('message')}"
                )
        tail = unfinished(fixture.body())
        if tail:
            timeline.add(end.t, "[unfinished]", f"{tail} bytes of a frame never ended")
    else:
        for chunk in fixture.chunks:
            timeline.add(chunk.t, "[body]", _clip(chunk.data.decode("utf-8", "replace")))
    state = f"{end.how}{', incomplete' if end.incomplete else ''}"
    timeline.add(end.t, f"[end {state}]", f"{end.bytes} bytes, sha256 {end.sha256[:12]}...")
    out.extend(timeline.rows)
    if response.is_stream:
        out.append(f"answer: {answer!r}" if answer else "answer: (none)")
        out.append(f"ended: {_ending(fixture, names, last_error)}")
    else:
        out.append(f"ended: HTTP {response.status} {response.content_type}, {end.how}")
        out.append("body:")
        out.extend(f"  {line}" for line in fixture.body().decode("utf-8", "replace").split("\n"))
    return "\n".join(out) + "\n"


def _label(item: Event | Comment, name: str) -> str:
    if isinstance(item, Comment):
        return "[comment]"
    if name == "ping":
        return "[ping]" if not item.data else "[ping with data]"
    if item.event != "message":
        return f"[event: {item.event}]"
    return name


def _detail(item: Event | Comment, data: dict[str, Any] | None) -> str:
    if isinstance(item, Comment):
        return repr(item.text)
    if data is None:
        return _clip(item.data) if item.event != "ping" else ""
    delta = answer_delta(data)
    if delta is not None:
        return ("replace " if delta[1] else "") + repr(delta[0])
    nested = data.get("data")
    inner: dict[str, Any] = nested if isinstance(nested, dict) else {}
    facts = [
        f"{key}={value}"
        for key, value in (
            ("title", inner.get("title")),
            ("status", inner.get("status") or data.get("status")),
            ("tool", data.get("tool")),
            ("code", data.get("code")),
            ("message", data.get("message")),
        )
        if value not in (None, "")
    ]
    return _clip(" ".join(facts))


def _ending(fixture: Fixture, names: list[str], error: str) -> str:
    how = f"then {fixture.end.how}" + (
        " (recording marked incomplete)" if fixture.end.incomplete else ""
    )
    if error:
        return f"{error}, {how}"
    terminal = TERMINAL[family(fixture.request.path, names)]
    ends = [name for name in names if name in terminal]
    if ends:
        return f"{ends[-1]}, {how}"
    return f"no terminal event, {how}"


def _clip(text: str) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= _DETAIL_WIDTH else text[: _DETAIL_WIDTH - 3] + "..."
