"""Every recorded fixture, through the real proxy to the real replay server.

For each fixture in fixtures/: the recorded request goes through difyproxy (with the
client's own, different Authorization and a cookie); the answer must be the recorded one byte
for byte with status and content type kept, its events must be Dify-shaped, the replay server
(which requires one exact key) must see that key alone and no cookie, and the key must appear
nowhere in the answer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.web.client import ResponseDone
from twisted.web.iweb import UNKNOWN_LENGTH

from difytw.fixture import Fixture, load
from difytw.sse import Decoder, Event
from tests.test_proxy_harness import (
    FIXTURES,
    TEST_KEY,
    RunningProxy,
    fetch,
    header,
    start_proxy,
)

__all__ = ["start_proxy"]

FIXTURE_FILES = sorted(FIXTURES.glob("*.jsonl"))
CLIENT_AUTHORIZATION = "Bearer app-the-clients-own-token"
CLIENT_COOKIE = "session=the-clients-own-session"


def test_there_are_fixtures_to_check() -> None:
    assert len(FIXTURE_FILES) >= 10


def assert_dify_shaped(body: bytes) -> None:
    """dify-contract.md 2.1/2.4/2.5: one JSON object per data frame, ``event`` inside,
    ``task_id`` on every frame but ``error``, pings carry no data."""
    frames = [item for item in Decoder().feed(body) if isinstance(item, Event)]
    assert frames
    for frame in frames:
        if not frame.data:
            assert frame.event == "ping"
            continue
        payload = json.loads(frame.data)
        assert isinstance(payload, dict)
        assert isinstance(payload.get("event"), str)
        if payload["event"] == "error":
            assert {"code", "status", "message"} <= payload.keys()
        else:
            assert isinstance(payload.get("task_id"), str)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=[p.stem for p in FIXTURE_FILES])
@pytest_twisted.ensureDeferred
async def test_fixture_through_the_proxy(
    path: Path, replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    fixture: Fixture = load(path)
    recorded = fixture.request
    assert recorded.path.startswith("/v1/")
    proxy = start_proxy(replay.url + "/v1")
    url = proxy.url + recorded.path.removeprefix("/v1")
    if recorded.query:
        url += "?" + recorded.query
    headers = {name: value for name, value in recorded.headers}
    headers["Authorization"] = CLIENT_AUTHORIZATION
    headers["Cookie"] = CLIENT_COOKIE

    response, collector, reason = await fetch(
        recorded.method, url, headers=headers, data=recorded.body or None
    )

    assert reason.check(ResponseDone)
    assert response.code == fixture.response.status
    assert collector.body == fixture.body()
    content_type = header(response, "Content-Type")
    assert [value.decode() for value in content_type] == [
        value for name, value in fixture.response.headers if name.lower() == "content-type"
    ]
    if fixture.response.is_stream:
        assert_dify_shaped(collector.body)
        assert response.length is UNKNOWN_LENGTH  # no Content-Length on a stream
    else:
        json.loads(collector.body)  # Dify's non-stream answers are JSON
        assert response.length == len(collector.body)

    [entry] = replay.journal.entries
    assert entry.auth == "ok"  # the one exact key reached upstream, not the client's
    # ...and only it: the client's Authorization was replaced, not added to, and its
    # cookie stayed at the proxy.
    assert (entry.authorization_values, entry.cookie) == (1, False)
    assert entry.fixture == fixture.id

    key = TEST_KEY.encode()
    assert key not in collector.body
    for name, values in response.headers.getAllRawHeaders():
        assert all(key not in value for value in values), name
