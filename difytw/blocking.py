"""Fold a recorded Dify stream into the blocking answer Dify would send (pure).

A client that asks for ``response_mode: "blocking"`` (or leaves it out: Dify
streams only when the value is exactly ``"streaming"``, dify-contract.md 1.2)
gets one JSON document built from the same run.  The shapes follow
dify-contract.md 1.3:

- chat family: ``event, task_id, id, message_id, conversation_id, mode,
  answer, metadata, created_at`` with the joined answer and ``message_end``'s
  metadata (completion drops ``conversation_id``);
- workflow: ``task_id, workflow_run_id, data`` with ``workflow_finished.data``;
- agent apps do not support blocking: 400 (section 1.3);
- an ``error`` frame becomes the JSON error with the frame's status.
"""

from __future__ import annotations

import json
from typing import Any

from difytw.errors import error_body
from difytw.sse import Decoder, Event

AGENT_EVENTS = frozenset({"agent_message", "agent_thought"})


def frames(body: bytes) -> list[dict[str, Any]]:
    """The JSON objects of a Dify stream's data events, in order."""
    decoder = Decoder()
    items = decoder.feed(body) + decoder.close()
    result: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, Event):
            continue
        try:
            payload = json.loads(item.data)
        except ValueError:
            continue  # Dify only sends JSON data; anything else is not ours to fold
        if isinstance(payload, dict):
            result.append(payload)
    return result


def fold(body: bytes) -> tuple[int, bytes]:
    """``(status, JSON body)`` of the blocking answer for a streamed run."""
    events = frames(body)
    names = [str(e.get("event", "")) for e in events]
    for event in events:
        if event.get("event") == "error":
            status = event.get("status")
            status = status if isinstance(status, int) and 400 <= status <= 599 else 500
            code = str(event.get("code", "internal_server_error"))
            return status, error_body(status, code, str(event.get("message", "")))
    if AGENT_EVENTS.intersection(names):
        # Section 1.3: agent-chat raised ValueError -> invalid_param.
        message = "Agent Chat App does not support blocking mode"
        return 400, error_body(400, "invalid_param", message)
    if "message_end" in names:
        return 200, _dump(_fold_message(events, names))
    if "workflow_finished" in names:
        finished = events[names.index("workflow_finished")]
        return 200, _dump(
            {
                "task_id": finished.get("task_id"),
                "workflow_run_id": finished.get("workflow_run_id"),
                "data": finished.get("data", {}),
            }
        )
    message = "The stream ended without a terminal event."
    return 500, error_body(500, "internal_server_error", message)


def _fold_message(events: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    answer = ""
    for event in events:
        if event.get("event") == "message":
            answer += str(event.get("answer", ""))
        elif event.get("event") == "message_replace":
            answer = str(event.get("answer", ""))
    end = events[names.index("message_end")]
    first = next((e for e in events if e.get("event") == "message"), end)
    if "workflow_started" in names:
        mode = "advanced-chat"
    elif "conversation_id" not in end:
        mode = "completion"
    else:
        mode = "chat"
    folded: dict[str, Any] = {
        "event": "message",
        "task_id": end.get("task_id", first.get("task_id")),
        "id": end.get("id", end.get("message_id")),
        "message_id": end.get("message_id", end.get("id")),
    }
    if mode != "completion":
        folded["conversation_id"] = end.get("conversation_id")
    folded.update(
        mode=mode,
        answer=answer,
        metadata=end.get("metadata", {}),
        created_at=first.get("created_at", end.get("created_at")),
    )
    return folded


def _dump(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")
