"""One structured access-log event per request, and never the key (spec item 8)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import LogEvent, formatEvent

from tests.rawhttp import build_request
from tests.rawhttp import fetch as raw_fetch
from tests.test_proxy_harness import (
    CHAT,
    RunningProxy,
    fetch,
    free_port,
    start_fetch,
    start_proxy,
    wait_for,
)

__all__ = ["start_proxy"]

FIELDS = {"method", "path", "status", "bytes", "ttfb", "duration", "outcome", "client_left_early"}


def access(events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if e.get("log_namespace") == "difytw.access"]


@pytest_twisted.ensureDeferred
async def test_one_line_for_a_relayed_stream(
    replay: Any, start_proxy: Callable[..., RunningProxy], logged: list[LogEvent]
) -> None:
    proxy = start_proxy(replay.url + "/v1")
    _, collector, _ = await fetch(
        "POST",
        proxy.url + "/chat-messages?user=secret-user-id",
        json=dict(CHAT, user="u"),
        headers={"Authorization": "Bearer client-token"},
    )
    [line] = access(logged)
    assert line.keys() >= FIELDS
    assert line["method"] == "POST"
    assert line["path"] == "/dify/chat-messages"  # the query (user ids) is not logged
    assert line["status"] == 200
    assert line["bytes"] == len(collector.body)
    assert line["outcome"] == "completed" and line["client_left_early"] is False
    assert 0 <= line["ttfb"] <= line["duration"]
    assert "client-token" not in repr(line)
    assert "secret-user-id" not in formatEvent(line)


@pytest_twisted.ensureDeferred
async def test_one_line_for_each_kind_of_refusal(
    replay: Any, start_proxy: Callable[..., RunningProxy], logged: list[LogEvent]
) -> None:
    proxy = start_proxy(replay.url + "/v1", max_body=100)
    await fetch("GET", proxy.url.removesuffix("/dify") + "/elsewhere")
    await fetch("GET", proxy.url + "/parameters", headers={"X-Replay-Fault": "status=429"})
    _, answered = raw_fetch(
        reactor, proxy.port, build_request("POST", "/dify/chat-messages", body=b"x" * 500)
    )
    await answered
    lines = access(logged)
    assert [(e["status"], e["outcome"]) for e in lines] == [
        (404, "not_found"),
        (429, "completed"),
        (413, "request_entity_too_large"),
    ]
    assert lines[2]["method"] == "POST" and lines[2]["path"] == "/dify/chat-messages"
    assert all(e.keys() >= FIELDS for e in lines)


@pytest_twisted.ensureDeferred
async def test_client_that_leaves_is_logged_as_such(
    start_replay: Callable[..., Any],
    start_proxy: Callable[..., RunningProxy],
    logged: list[LogEvent],
) -> None:
    replay = start_replay(speed=1.0)
    proxy = start_proxy(replay.url + "/v1", clock=Clock())
    _, collector = await start_fetch(
        "POST", proxy.url + "/chat-messages", json=dict(CHAT, user="u")
    )
    await collector.first_read
    ended = replay.journal.next_end()
    assert collector.transport is not None
    collector.transport.stopProducing()
    await ended
    [line] = access(logged)
    assert line["outcome"] == "client_closed"
    assert line["client_left_early"] is True
    assert line["status"] == 200


@pytest_twisted.ensureDeferred
async def test_upstream_unavailable_logs_no_key(
    start_proxy: Callable[..., RunningProxy], logged: list[LogEvent]
) -> None:
    proxy = start_proxy(f"http://127.0.0.1:{free_port()}/v1")
    response, _, _ = await fetch("GET", proxy.url + "/parameters")
    assert response.code == 502
    [line] = access(logged)
    assert line["outcome"] == "upstream_unavailable"


@pytest_twisted.ensureDeferred
async def test_client_that_leaves_before_the_head_is_logged_as_499(
    replay: Any, start_proxy: Callable[..., RunningProxy], logged: list[LogEvent]
) -> None:
    proxy = start_proxy(replay.url + "/v1")
    request = build_request(
        "POST",
        "/dify/chat-messages",
        headers=[("Content-Type", "application/json"), ("X-Replay-Fault", "stall=30@0")],
        body=json.dumps(dict(CHAT, user="u")).encode(),
    )
    client, answered = raw_fetch(reactor, proxy.port, request)
    await wait_for(lambda: bool(replay.journal.entries))  # upstream has it, no head yet
    ended = replay.journal.next_end()
    assert client.transport is not None
    client.transport.abortConnection()
    response = await answered
    await ended
    assert response.status == 0  # the client never saw a status line
    [line] = access(logged)
    assert (line["status"], line["ttfb"], line["bytes"]) == (499, None, 0)
    assert line["outcome"] == "client_closed" and line["client_left_early"] is True
