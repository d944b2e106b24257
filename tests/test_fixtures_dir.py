"""Every file in fixtures/ is valid, realistic Dify (dify-contract.md section 2) and secret-free.

Besides per-file checks, the coverage tests pin down that the directory keeps exhibiting each
wire behaviour the proxy and replay tests rely on (leading ping, 10 s gap, reads split inside a
character, several frames in one read, both JSON styles, ...).
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest

from difytw.fixture import Fixture, load
from difytw.fixtureindex import FixtureIndex, Incoming
from difytw.sse import Event, decode

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FILES = sorted(FIXTURES.glob("*.jsonl"))
ALL = {path.stem: load(path) for path in FILES}
STREAMS = sorted(name for name, fixture in ALL.items() if fixture.response.is_stream)
# Terminal events per dify-contract.md 2.6 (error is handled apart: it must be the last frame).
TERMINAL = {"message_end", "workflow_finished", "workflow_paused"}
# TTS frames are the only ones allowed to trail the terminal event (2.6).
AFTER_TERMINAL = {"tts_message", "tts_message_end"}
REAL_KEY = re.compile(r"app-[A-Za-z0-9]{20,}")


def payloads(fixture: Fixture) -> list[dict[str, Any]]:
    frames = []
    for event in decode(fixture.body(), dispatch_empty=True):
        assert isinstance(event, Event)
        if event.event == "ping":
            continue
        payload = json.loads(event.data)
        assert isinstance(payload, dict)
        frames.append(payload)
    return frames


def test_directory_has_the_agreed_fixtures() -> None:
    assert len(FILES) >= 12
    assert {"chat-cjk-orjson", "chat-slow"} <= set(ALL)


@pytest.mark.parametrize("name", sorted(ALL))
def test_id_is_the_file_name(name: str) -> None:
    assert ALL[name].id == name


@pytest.mark.parametrize("name", STREAMS)
def test_stream_is_dify_shaped(name: str) -> None:
    fixture = ALL[name]
    assert fixture.response.status == 200
    assert fixture.response.content_type == "text/event-stream; charset=utf-8"
    body = fixture.body()
    # 2.1: LF only, no BOM, and (unless the recording says so) the last frame is complete.
    assert b"\r" not in body and not body.startswith(b"\xef\xbb\xbf")
    assert fixture.end.incomplete or body.endswith(b"\n\n")
    for event in decode(body, dispatch_empty=True):
        assert isinstance(event, Event)
        # Data events carry their name inside the JSON; the only named block is the ping.
        if event.event == "ping":
            assert event.data == ""
        else:
            assert event.event == "message" and event.id == "" and event.retry is None
    frames = payloads(fixture)
    assert frames and all(isinstance(frame.get("event"), str) for frame in frames)
    for frame in frames:
        assert ("task_id" in frame) == (frame["event"] != "error"), frame["event"]
    names = [frame["event"] for frame in frames]
    if names[-1] == "error":
        assert names.count("error") == 1
        return
    assert fixture.end.incomplete or TERMINAL & set(names)
    last_terminal = max(i for i, n in enumerate(names) if n in TERMINAL)
    assert set(names[last_terminal + 1 :]) <= AFTER_TERMINAL


@pytest.mark.parametrize("name", STREAMS)
def test_stream_ids_are_consistent(name: str) -> None:
    frames = payloads(ALL[name])
    for key in ("task_id", "conversation_id", "message_id", "workflow_run_id"):
        assert len({frame[key] for frame in frames if key in frame}) <= 1, key


@pytest.mark.parametrize("name", sorted(set(ALL) - set(STREAMS)))
def test_non_stream_body_is_json(name: str) -> None:
    fixture = ALL[name]
    assert fixture.response.content_type == "application/json"
    payload = json.loads(fixture.body())
    assert isinstance(payload, dict)
    if fixture.response.status >= 400:
        # dify-contract.md 3: {code, message, status} with status mirroring the HTTP status.
        assert list(payload)[:3] == ["code", "message", "status"]
        assert payload["status"] == fixture.response.status


@pytest.mark.parametrize("name", sorted(ALL))
def test_request_is_one_a_real_client_sends(name: str) -> None:
    request = ALL[name].request
    assert request.path.startswith("/v1/")
    if request.method == "POST" and request.has_json:
        assert {"user", "inputs", "response_mode"} <= set(request.json)
        assert request.json["response_mode"] in ("streaming", "blocking")
    if request.path == "/v1/chat-messages":
        assert isinstance(request.json["query"], str) and request.json["query"]


def test_index_has_no_problems_and_every_fixture_answers_its_own_request() -> None:
    index = FixtureIndex.from_directory(FIXTURES)
    assert index.problems == ()
    for fixture in index.fixtures:
        assert index.match(Incoming.from_request(fixture.request)).id == fixture.id


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.stem)
def test_no_real_key(path: Path) -> None:
    assert not REAL_KEY.search(path.read_text(encoding="utf-8"))
    # b64 chunks could hide one from a text search.
    assert not REAL_KEY.search(ALL[path.stem].body().decode("utf-8", "replace"))
    assert all(name.lower() != "authorization" for name, _ in ALL[path.stem].request.headers)


# -- coverage: what the directory as a whole must exhibit -----------------------------------------


def all_event_names() -> set[str]:
    return {frame["event"] for name in STREAMS for frame in payloads(ALL[name])}


def test_covers_every_agreed_event() -> None:
    assert {
        "message",
        "message_end",
        "agent_thought",
        "agent_message",
        "message_file",
        "workflow_started",
        "node_started",
        "node_finished",
        "text_chunk",
        "workflow_finished",
        "error",
        "tts_message_end",
    } <= all_event_names()


def test_covers_both_json_styles() -> None:
    bodies = [ALL[name].body() for name in STREAMS]
    # New Dify: compact with raw UTF-8 CJK and emoji (4-byte sequences).
    assert any(
        b'{"event":"message"' in b and "长城".encode() in b and b"\xf0\x9f" in b for b in bodies
    )
    # Old Dify: json.dumps defaults, non-ASCII escaped.
    assert any(b'{"event": "message", ' in b and b"\\u4f60" in b and b.isascii() for b in bodies)


def test_covers_reads_split_inside_a_character() -> None:
    def invalid(data: bytes) -> bool:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False

    assert any(invalid(c.data) for name in STREAMS for c in ALL[name].chunks)


def test_covers_reads_that_pack_and_split_frames() -> None:
    chunks = [chunk.data for name in STREAMS for chunk in ALL[name].chunks]
    assert any(data.count(b"\n\n") >= 3 for data in chunks)
    assert any(not data.endswith(b"\n") and data.startswith(b"data: ") for data in chunks)
    assert any(data.startswith(b"\n") for data in chunks)  # split between the two LFs


def test_covers_pings_leading_and_after_a_ten_second_gap() -> None:
    ping = b"event: ping\n\n"
    assert any(ALL[name].chunks[0].data == ping for name in STREAMS)
    gaps = [
        later.t - earlier.t
        for name in STREAMS
        for earlier, later in itertools.pairwise(ALL[name].chunks)
        if later.data == ping
    ]
    assert max(gaps) >= 10_000


def test_chatflow_ends_message_end_then_workflow_finished() -> None:
    orders = [
        [n for n in (f["event"] for f in payloads(ALL[name])) if n in TERMINAL]
        for name in STREAMS
        if "workflow_started" in {f["event"] for f in payloads(ALL[name])}
        and "message" in {f["event"] for f in payloads(ALL[name])}
    ]
    assert ["message_end", "workflow_finished"] in orders


def test_chat_slow_events_are_a_second_apart() -> None:
    times = [chunk.t for chunk in ALL["chat-slow"].chunks]
    assert len(times) >= 5
    assert all(b - a == 1000 for a, b in itertools.pairwise(times))


def test_covers_the_non_stream_exchanges() -> None:
    routes = {
        (f.request.method, f.request.path, f.response.status): f
        for f in ALL.values()
        if not f.response.is_stream
    }
    error = json.loads(routes["POST", "/v1/chat-messages", 400].body())
    assert error["code"] == "invalid_param"
    params = json.loads(routes["GET", "/v1/parameters", 200].body())
    assert params["opening_statement"] and params["suggested_questions"]
    upload = routes["POST", "/v1/files/upload", 201]
    content_type = dict(upload.request.headers)["Content-Type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    assert upload.request.body is not None
    assert content_type.split("=", 1)[1].encode() in upload.request.body
    # Dify's key order and json.dumps default separators (dify-contract.md 1.2).
    file_object = upload.body()
    assert file_object.startswith(b'{"id": "') and b'", "name": "' in file_object
    assert list(json.loads(file_object))[:9] == [
        "id",
        "name",
        "size",
        "extension",
        "mime_type",
        "created_by",
        "created_at",
        "preview_url",
        "source_url",
    ]
