"""Request bodies on the replay server, over loopback: read as Dify's Flask ``get_json()``
reads them (dify-contract.md 1.1), never silently emptied."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import pytest_twisted

from tests.conftest import TEST_KEY, RunningReplay
from tests.rawhttp import build_request
from tests.test_replay import CHAT_FRAMES, fixture_dir, send

__all__ = ["fixture_dir"]

AUTH = ("Authorization", f"Bearer {TEST_KEY}")
HELLO = {"query": "hello", "inputs": {}, "response_mode": "streaming", "user": "u"}
NOT_JSON = (
    "Did not attempt to load JSON data because the request Content-Type was not 'application/json'."
)
INVALID = "Invalid JSON payload received or JSON payload is empty."


def post(body: bytes, content_type: str | None, path: str = "/v1/chat-messages") -> bytes:
    headers = [AUTH] if content_type is None else [AUTH, ("Content-Type", content_type)]
    return build_request("POST", path, headers=headers, body=body)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (None, json.dumps(HELLO).encode()),
        ("text/plain", json.dumps(HELLO).encode()),
        ("application/x-www-form-urlencoded", b"query=hello"),
        ("application/jsonp", json.dumps(HELLO).encode()),
    ],
)
@pytest_twisted.ensureDeferred
async def test_another_content_type_on_a_json_route_is_415(
    start_replay: Callable[..., RunningReplay],
    fixture_dir: Path,
    content_type: str | None,
    body: bytes,
) -> None:
    replay = start_replay(fixture_dir)
    for path in ("/v1/chat-messages", "/v1/chat-messages/t1/stop"):
        response = await send(replay, post(body, content_type, path))
        assert response.status == 415, (path, response.body)
        assert json.loads(response.body) == {
            "code": "unsupported_media_type",
            "message": NOT_JSON,
            "status": 415,
        }


@pytest.mark.parametrize(
    "body", [b"", b"   ", b"{not json", b"\xff\xfe{}", b"[" * 100_000 + b"]" * 100_000]
)
@pytest_twisted.ensureDeferred
async def test_empty_or_invalid_json_is_difys_400(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path, body: bytes
) -> None:
    replay = start_replay(fixture_dir)
    response = await send(replay, post(body, "application/json"))
    assert response.status == 400
    assert json.loads(response.body) == {"code": "invalid_param", "message": INVALID, "status": 400}


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/vnd+json"]
)
@pytest_twisted.ensureDeferred
async def test_json_content_types_flask_accepts(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path, content_type: str
) -> None:
    replay = start_replay(fixture_dir)
    response = await send(replay, post(json.dumps(HELLO).encode(), content_type))
    assert response.status == 200 and response.body == b"".join(CHAT_FRAMES)


@pytest_twisted.ensureDeferred
async def test_a_json_body_over_a_mebibyte_still_matches(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path
) -> None:
    replay = start_replay(fixture_dir)
    # A long query is refused as too long; a big input (a document to summarise) is not.
    body = json.dumps({**HELLO, "files": [{"x": "a" * (3 << 20)}]}).encode()
    response = await send(replay, post(body, "application/json"))
    assert response.status == 200, response.body[:200]
    assert response.body == b"".join(CHAT_FRAMES)
    assert replay.journal.entries[0].body_bytes == len(body)


@pytest_twisted.ensureDeferred
async def test_a_json_body_over_the_cap_is_413(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path
) -> None:
    from difytw.replaychecks import MAX_BODY

    replay = start_replay(fixture_dir)
    body = json.dumps({**HELLO, "files": [{"x": "a" * MAX_BODY}]}).encode()
    response = await send(replay, post(body, "application/json"))
    assert response.status == 413
    error = json.loads(response.body)
    assert (error["code"], error["status"]) == ("request_entity_too_large", 413)


@pytest_twisted.ensureDeferred
async def test_a_route_without_a_json_body_ignores_the_content_type(
    replay: RunningReplay,
) -> None:
    # GET /parameters: Dify never reads a body there, so a client library's habitual
    # Content-Type: application/json on every call is no error.
    headers = [AUTH, ("Content-Type", "application/json")]
    response = await send(replay, build_request("GET", "/v1/parameters", headers=headers))
    assert response.status == 200
    assert "user_input_form" in json.loads(response.body)
