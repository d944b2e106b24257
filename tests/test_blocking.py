"""Folding a stream into Dify's blocking answer, in memory."""

from __future__ import annotations

import json

from difytw.blocking import fold


def frames(*events: dict[str, object]) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)


ENVELOPE = {"conversation_id": "c", "message_id": "m", "created_at": 5}


def test_chat_joins_answers_and_keeps_message_end_metadata() -> None:
    body = b"event: ping\n\n" + frames(
        {"event": "message", **ENVELOPE, "task_id": "t", "id": "m", "answer": "Hel"},
        {"event": "message", **ENVELOPE, "task_id": "t", "id": "m", "answer": "lo"},
        {"event": "message_end", **ENVELOPE, "task_id": "t", "id": "m", "metadata": {"u": 1}},
        {"event": "tts_message_end", **ENVELOPE, "task_id": "t", "audio": ""},
    )
    status, raw = fold(body)
    answer = json.loads(raw)
    assert status == 200
    assert list(answer) == [
        "event",
        "task_id",
        "id",
        "message_id",
        "conversation_id",
        "mode",
        "answer",
        "metadata",
        "created_at",
    ]
    assert answer["answer"] == "Hello" and answer["mode"] == "chat"
    assert answer["metadata"] == {"u": 1} and answer["created_at"] == 5


def test_message_replace_replaces_the_answer_so_far() -> None:
    body = frames(
        {"event": "message", **ENVELOPE, "task_id": "t", "answer": "bad words"},
        {"event": "message_replace", **ENVELOPE, "task_id": "t", "answer": "***"},
        {"event": "message", **ENVELOPE, "task_id": "t", "answer": "!"},
        {"event": "message_end", **ENVELOPE, "task_id": "t", "id": "m"},
    )
    assert json.loads(fold(body)[1])["answer"] == "***!"


def test_completion_has_no_conversation_id() -> None:
    body = frames(
        {"event": "message", "message_id": "m", "created_at": 1, "task_id": "t", "answer": "x"},
        {"event": "message_end", "message_id": "m", "created_at": 1, "task_id": "t", "id": "m"},
    )
    answer = json.loads(fold(body)[1])
    assert answer["mode"] == "completion" and "conversation_id" not in answer


def test_chatflow_mode() -> None:
    body = frames(
        {"event": "workflow_started", **ENVELOPE, "task_id": "t", "data": {}},
        {"event": "message", **ENVELOPE, "task_id": "t", "answer": "a"},
        {"event": "message_end", **ENVELOPE, "task_id": "t", "id": "m"},
        {"event": "workflow_finished", **ENVELOPE, "task_id": "t", "data": {"status": "ok"}},
    )
    assert json.loads(fold(body)[1])["mode"] == "advanced-chat"


def test_workflow_returns_the_finished_data() -> None:
    data = {"id": "r", "status": "succeeded", "outputs": {"text": "hi"}}
    body = frames(
        {"event": "workflow_started", "workflow_run_id": "r", "task_id": "t", "data": {}},
        {"event": "workflow_finished", "workflow_run_id": "r", "task_id": "t", "data": data},
    )
    status, raw = fold(body)
    assert status == 200
    assert json.loads(raw) == {"task_id": "t", "workflow_run_id": "r", "data": data}


def test_agent_apps_refuse_blocking() -> None:
    body = frames({"event": "agent_message", **ENVELOPE, "task_id": "t", "answer": "a"})
    status, raw = fold(body)
    assert status == 400 and json.loads(raw)["code"] == "invalid_param"


def test_error_frame_becomes_the_json_error() -> None:
    body = frames(
        {"event": "message", **ENVELOPE, "task_id": "t", "answer": "a"},
        {
            "event": "error",
            **ENVELOPE,
            "code": "completion_request_error",
            "status": 400,
            "message": "model down",
        },
    )
    status, raw = fold(body)
    assert status == 400
    assert json.loads(raw) == {
        "code": "completion_request_error",
        "message": "model down",
        "status": 400,
    }


def test_no_terminal_event_is_a_500() -> None:
    status, raw = fold(frames({"event": "message", **ENVELOPE, "answer": "a"}))
    assert status == 500 and json.loads(raw)["code"] == "internal_server_error"
