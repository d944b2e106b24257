"""The usage line: one ``difytw.usage`` event per finished stream (issue 7, item 4).

``usage_fields`` is checked in memory on the recorded fixtures (and at every chunking of
one); over loopback, the proxy's events are captured with a ``twisted.logger`` observer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.logger import LogEvent, formatEvent

from difytw.fixture import Fixture, load
from difytw.streamwatch import StreamWatch
from difytw.usage import usage_fields
from tests.test_proxy_harness import (
    CHAT,
    FIXTURES,
    RunningProxy,
    data_frames,
    fetch,
    start_fetch,
    start_proxy,
    wait_for,
)

__all__ = ["start_proxy"]

CHAT_HELLO = load(FIXTURES / "chat-hello.jsonl")
AGENT = load(FIXTURES / "agent-chat-tools.jsonl")
WORKFLOW = load(FIXTURES / "workflow-run.jsonl")
ERROR = load(FIXTURES / "chat-error-midstream.jsonl")
KEYS = {
    "user",
    "endpoint",
    "task_id",
    "workflow_run_id",
    "conversation_id",
    "message_id",
    "terminal",
    "workflow_status",
    "error_code",
    "total_tokens",
    "prompt_tokens",
    "completion_tokens",
    "total_price",
    "currency",
    "latency",
    "bytes",
    "duration",
    "end",
    "stopped_early",
    "stop_call",
    "watch_broken",
}


def watched(body: bytes, chunks: list[int] | None = None) -> StreamWatch:
    watch = StreamWatch()
    at = 0
    for size in chunks or []:
        watch.feed(body[at : at + size])
        at += size
    watch.feed(body[at:])
    return watch


def fields_of(fixture: Fixture, body: bytes | None = None) -> dict[str, Any]:
    body = fixture.body() if body is None else body
    return usage_fields(
        watched(body),
        user="u-1",
        endpoint="/dify/x",
        end="completed",
        relayed=len(body),
        duration=1.23456,
        stop_call=False,
    )


# -- in memory ---------------------------------------------------------------------------


def test_chat_usage_comes_from_message_end() -> None:
    fields = fields_of(CHAT_HELLO)
    assert set(fields) == KEYS
    assert fields["terminal"] == "message_end"
    assert (fields["prompt_tokens"], fields["completion_tokens"], fields["total_tokens"]) == (
        12,
        18,
        30,
    )
    assert (fields["total_price"], fields["currency"]) == ("0.0000126", "USD")
    assert fields["task_id"] and fields["conversation_id"] and fields["message_id"]
    assert fields["workflow_run_id"] is None and fields["workflow_status"] is None
    assert fields["user"] == "u-1" and fields["endpoint"] == "/dify/x"
    assert fields["bytes"] == len(CHAT_HELLO.body()) and fields["duration"] == 1.2346
    assert fields["stopped_early"] is False and fields["stop_call"] is False


def test_agent_usage() -> None:
    fields = fields_of(AGENT)
    assert fields["terminal"] == "message_end"
    assert fields["total_tokens"] == 2034 and fields["total_price"] == "0.0003686"
    assert fields["latency"] == 25.6453


def test_workflow_usage_comes_from_workflow_finished() -> None:
    fields = fields_of(WORKFLOW)
    assert fields["terminal"] == "workflow_finished"
    assert fields["workflow_status"] == "succeeded"
    assert fields["total_tokens"] == 71
    assert fields["workflow_run_id"] == "4462ebfc-5f91-4ef0-9cfb-ac6e7687a66e"
    assert fields["total_price"] is None  # a workflow's stream carries no price


def test_an_error_event_is_the_terminal_and_names_its_code() -> None:
    fields = fields_of(ERROR)
    assert fields["terminal"] == "error"
    assert fields["error_code"]
    assert fields["stopped_early"] is False


def test_a_stream_cut_short_is_marked_and_has_no_usage() -> None:
    body = CHAT_HELLO.body()
    fields = fields_of(CHAT_HELLO, body[: len(body) // 2])
    assert fields["terminal"] is None and fields["stopped_early"] is True
    assert fields["total_tokens"] is None and fields["total_price"] is None
    assert fields["task_id"]  # the ids of what did arrive are still reported


@given(st.data())
def test_the_fields_do_not_depend_on_how_the_stream_was_read(data: st.DataObject) -> None:
    body = AGENT.body()
    sizes = data.draw(st.lists(st.integers(min_value=1, max_value=len(body)), max_size=40))
    assert usage_fields(
        watched(body, sizes),
        user=None,
        endpoint="/e",
        end="completed",
        relayed=0,
        duration=0.0,
        stop_call=False,
    ) == usage_fields(
        watched(body),
        user=None,
        endpoint="/e",
        end="completed",
        relayed=0,
        duration=0.0,
        stop_call=False,
    )


# -- over loopback -----------------------------------------------------------------------


def usage_lines(events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if e.get("log_namespace") == "difytw.usage"]


@pytest.mark.parametrize(
    ("fixture", "tokens", "terminal"),
    [
        (CHAT_HELLO, 30, "message_end"),
        (AGENT, 2034, "message_end"),
        (WORKFLOW, 71, "workflow_finished"),
    ],
    ids=["chat", "agent", "workflow"],
)
@pytest_twisted.ensureDeferred
async def test_one_usage_line_per_finished_stream(
    fixture: Fixture,
    tokens: int,
    terminal: str,
    replay: Any,
    start_proxy: Callable[..., RunningProxy],
    logged: list[LogEvent],
) -> None:
    proxy = start_proxy(replay.url)
    path = "/dify" + fixture.request.path
    _, collector, _ = await fetch(
        "POST", proxy.url + fixture.request.path, json=dict(fixture.request.json, user="hana")
    )
    await fetch("GET", proxy.url + "/v1/parameters?user=hana")  # not a stream: no line
    [line] = usage_lines(logged)
    assert set(line) >= KEYS
    assert (line["user"], line["endpoint"], line["end"]) == ("hana", path, "completed")
    assert (line["terminal"], line["total_tokens"]) == (terminal, tokens)
    assert line["task_id"] == next(
        f["task_id"] for f in data_frames(fixture.body()) if "task_id" in f
    )
    assert line["bytes"] == len(collector.body) == len(fixture.body())
    assert line["duration"] >= 0
    assert line["stopped_early"] is False and line["stop_call"] is False
    text = formatEvent(line)
    assert path in text and "user=hana" in text and f"tokens={tokens}" in text


@pytest_twisted.ensureDeferred
async def test_an_abandoned_stream_is_logged_as_stopped_early(
    start_replay: Callable[..., Any],
    start_proxy: Callable[..., RunningProxy],
    logged: list[LogEvent],
) -> None:
    replay = start_replay(speed=1.0)
    proxy = start_proxy(replay.url + "/v1")
    _, collector = await start_fetch(
        "POST", proxy.url + "/chat-messages", json=dict(CHAT, user="ivy")
    )
    await wait_for(lambda: collector.body.endswith(b"\n\n"))
    assert collector.transport is not None
    collector.transport.stopProducing()
    await wait_for(lambda: bool(usage_lines(logged)))
    [line] = usage_lines(logged)
    assert (line["user"], line["end"], line["terminal"]) == ("ivy", "client_closed", None)
    assert line["stopped_early"] is True and line["stop_call"] is True
    assert line["task_id"] and line["total_tokens"] is None
    assert 0 < line["bytes"] <= len(collector.body)
    # Let the stop call finish inside the test, so its log lines are checked for the key.
    await wait_for(
        lambda: len(replay.journal.entries) == 2 and bool(replay.journal.entries[1].ended_at)
    )
