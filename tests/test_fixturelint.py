"""Lint findings, in memory: each check fires on a broken fixture and names the right line."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from difytw.eventcatalog import family
from difytw.fixture import Chunk, Fixture, Request, Response, end_for, load
from difytw.fixturelint import Finding, lint_file, lint_text
from difytw.fixturewrite import dumps
from difytw.scrub import DEFAULT_RULES, scrub_bytes

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FILES = sorted(FIXTURES.glob("*.jsonl"))
CHAT = {"conversation_id": "c-1", "message_id": "m-1", "created_at": 1764070000}
STREAM = (("Content-Type", "text/event-stream; charset=utf-8"),)
KEY = "app-" + "Zx9Q" * 6


def frame(event: str, **fields: Any) -> bytes:
    payload = {"event": event, **CHAT, "task_id": "t-1", **fields}
    return (
        b"data: "
        + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
        + b"\n\n"
    )


def error_frame() -> bytes:
    payload = {"event": "error", **CHAT, "code": "x", "status": 400, "message": "boom"}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


PING = b"event: ping\n\n"
HELLO = frame("message", id="m-1", answer="Hello")
END = frame("message_end", id="m-1", metadata={})
GOOD = [PING, HELLO, END]


def fixture(
    reads: list[bytes],
    path: str = "/v1/chat-messages",
    headers: tuple[tuple[str, str], ...] = STREAM,
    status: int = 200,
    incomplete: bool = False,
    notes: str = "",
    body: bytes | None = None,
) -> str:
    chunks = tuple(Chunk(100.0 + i, data) for i, data in enumerate(reads))
    joined = b"".join(reads)
    request = (
        Request("POST", path, body=body)
        if body is not None
        else Request.with_json("POST", path, {"inputs": {}, "query": "hi", "user": "u"})
    )
    end = end_for(joined, 200.0, incomplete=incomplete)
    made = Fixture("f", "test", notes, (), request, Response(50.0, status, headers), chunks, end)
    return dumps(made)


def problems(text: str) -> list[str]:
    return [finding.problem for finding in lint_text(text, "f.jsonl")]


def only(text: str) -> Finding:
    found = lint_text(text, "f.jsonl")
    assert len(found) == 1, found
    return found[0]


# -- the committed fixtures ---------------------------------------------------------------------


@pytest.mark.parametrize("path", FILES, ids=lambda path: path.stem)
def test_every_committed_fixture_is_clean(path: Path) -> None:
    assert lint_file(path) == []


def test_a_good_stream_is_clean_and_findings_read_file_line_problem() -> None:
    assert lint_text(fixture(GOOD), "f.jsonl") == []
    finding = only(fixture([HELLO]))
    # Records: fixture, request, response, one chunk, end -> the end record is line 5.
    assert str(finding).startswith("f.jsonl:5: no terminal event")


# -- format, byte count and sha256 (fixture.loads) -----------------------------------------------


def test_format_errors_name_their_line() -> None:
    lines = fixture(GOOD).split("\n")
    lines[3] = "{not json"
    assert str(only("\n".join(lines))).startswith("f.jsonl:4: bad JSON")


def test_byte_count_and_sha256_are_checked() -> None:
    text = fixture(GOOD)
    size = len(b"".join(GOOD))
    assert "end says 1 bytes" in str(only(text.replace(f'"bytes":{size}', '"bytes":1')))
    digest = json.loads(text.strip().split("\n")[-1])["sha256"]
    assert "sha256" in str(only(text.replace(digest, "0" * 64)))


def test_id_must_be_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "other.jsonl"
    path.write_text(fixture(GOOD), encoding="utf-8")
    assert [str(f) for f in lint_file(path)] == [f"{path}:1: id 'f' is not the file name 'other'"]


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"type":"fixture"}\n\xff\n')
    assert [f.line for f in lint_file(path)] == [2]


# -- secrets ------------------------------------------------------------------------------------


def test_keys_and_bearer_tokens_anywhere_in_the_file() -> None:
    assert only(fixture(GOOD, notes=f"recorded with {KEY}")).line == 1
    assert "secret: a Dify app key (app-Zx9Q...)" in problems(fixture(GOOD, notes=KEY))[0]
    dataset = "dataset-" + "a1" * 12
    assert "dataset key" in only(fixture(GOOD, notes=dataset)).problem
    bearer = only(fixture(GOOD, body=b"Authorization: Bearer abc.DEF-123_x"))
    assert bearer.line == 2 and "Bearer token" in bearer.problem
    # Not secrets: the conftest test key, prose about the scheme.
    assert problems(fixture(GOOD, notes="app-test-key-not-a-secret, Bearer <app key>")) == []


def test_what_the_recorder_scrubbed_is_clean() -> None:
    # The scrubber's placeholders are what a recorded fixture holds; lint must pass them.
    raw = f"Authorization: Bearer {KEY}; dataset-{'a1' * 12}; {KEY}".encode()
    scrubbed, applied = scrub_bytes(raw, list(DEFAULT_RULES))
    assert applied and problems(fixture(GOOD, body=scrubbed)) == []
    assert problems(fixture(GOOD, body=raw)) != []


def test_a_key_hidden_by_a_json_escape_or_in_a_b64_read() -> None:
    escaped = fixture(GOOD, notes=KEY).replace("app-", "\\u0061pp-")
    assert "app-" not in escaped.split("\n")[0]
    assert only(escaped).line == 1
    hidden = frame("message", id="m-1", answer=KEY).replace(b'"answer"', b'"answer\xff"')
    found = lint_text(fixture([hidden, END]), "f.jsonl")
    assert any(f.line == 4 and "app key" in f.problem for f in found)
    assert base64.b64encode(hidden).decode() in fixture([hidden, END])


def test_a_key_split_across_two_reads_is_found_at_every_split_point() -> None:
    body = frame("message", id="m-1", answer=KEY)
    start = body.index(KEY.encode())
    for cut in range(start + 1, start + len(KEY)):
        found = lint_text(fixture([body[:cut], body[cut:], END]), "f.jsonl")
        assert [f.line for f in found if "app key" in f.problem] == [4], cut


def test_credential_and_serving_response_headers() -> None:
    headers = (*STREAM, ("Set-Cookie", "session=1"), ("Content-Length", "5"))
    found = lint_text(fixture(GOOD, headers=headers), "f.jsonl")
    assert [f.line for f in found] == [3, 3]
    assert "Set-Cookie" in found[1].problem or "Set-Cookie" in found[0].problem


# -- SSE grammar --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("read", "expected"),
    [
        (b"event: ping\ndata: {}\n\n", "ping carries data"),
        (b"event: message_end\ndata: {}\n\n", "'event: message_end' line"),
        (b'data:{"event":"message"}\n\n', "without 'data: '"),
        (b"id: 7\n" + HELLO, "'id' line: Dify never sends id or retry"),
        (b"retry: 10\n" + HELLO, "'retry' line"),
        (b"foo: bar\n" + HELLO, "unknown SSE field 'foo'"),
        (HELLO.replace(b"\n", b"\r\n"), "CR line end"),
        (b"data: hello\n\n", "data is not a JSON object"),
        (b'data: {"answer":"x"}\n\n', "no string 'event'"),
        (b'data: {"event":"message",\ndata: "x":1}\n\n', "several data lines"),
    ],
)
def test_grammar_problems_name_the_read(read: bytes, expected: str) -> None:
    found = lint_text(fixture([PING, read, HELLO, END]), "f.jsonl")
    assert any(f.line == 5 and expected in f.problem for f in found), found


def test_bom_and_invalid_utf8() -> None:
    assert any("BOM" in p for p in problems(fixture([b"\xef\xbb\xbf" + HELLO, END])))
    broken = HELLO.replace(b"Hello", b"He\xffllo")
    assert any("not UTF-8 at byte" in p for p in problems(fixture([broken, END])))


def test_a_read_split_inside_a_character_is_fine() -> None:
    body = frame("message", id="m-1", answer="长城") + END
    cut = body.index("城".encode()) + 1
    assert problems(fixture([body[:cut], body[cut:]])) == []


def test_every_split_point_of_a_good_stream_is_clean() -> None:
    body = b"".join(GOOD)
    for cut in range(1, len(body)):
        assert problems(fixture([body[:cut], body[cut:]])) == [], cut


@settings(max_examples=50)
@given(st.data())
def test_any_chunking_of_a_committed_stream_is_clean(data: st.DataObject) -> None:
    original = load(FIXTURES / "chatflow-tts.jsonl")
    body = original.body()
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(body) - 1), max_size=30))))
    reads = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    chunks = tuple(Chunk(original.end.t, read) for read in reads)
    rechunked = Fixture(
        original.id, "p", "", (), original.request, original.response, chunks, original.end
    )
    assert problems(dumps(rechunked)) == []


# -- the Dify contract ---------------------------------------------------------------------------


def test_terminal_event_per_app_type() -> None:
    run = {"workflow_run_id": "r-1", "task_id": "t-1"}

    def wf(event: str, **data: Any) -> bytes:
        return b"data: " + json.dumps({"event": event, **run, "data": data}).encode() + b"\n\n"

    done = wf("workflow_finished", status="succeeded")
    assert problems(fixture([PING, wf("text_chunk", text="hi"), done], "/v1/workflows/run")) == []
    assert (
        "no terminal event"
        in only(fixture([wf("text_chunk", text="hi")], "/v1/workflows/run")).problem
    )
    # A chat stream ends with message_end; a workflow never sends message frames.
    assert "ends with message_end or error" in only(fixture([HELLO])).problem
    found = problems(fixture([HELLO, done], "/v1/workflows/run"))
    assert any("'message' in a workflow stream" in p for p in found)


def test_only_tts_frames_trail_the_terminal_event() -> None:
    tts = frame("tts_message_end", audio="")
    assert problems(fixture([HELLO, END, tts])) == []
    late = only(fixture([HELLO, END, HELLO]))
    assert late.line == 6 and "after the terminal 'message_end'" in late.problem


def test_an_error_frame_ends_the_stream() -> None:
    assert problems(fixture([HELLO, error_frame()])) == []
    assert "last frame" in only(fixture([HELLO, error_frame(), END])).problem


def test_an_incomplete_recording_needs_no_terminal_event_or_last_blank_line() -> None:
    assert problems(fixture([HELLO, b"data: {"], incomplete=True)) == []
    found = problems(fixture([HELLO, END, b"data: {"]))
    assert any("stops inside a frame (7 bytes" in p for p in found)


def test_envelope_ids_per_app_type() -> None:
    no_task = frame("message", id="m-1", answer="x").replace(b',"task_id":"t-1"', b"")
    assert "has no task_id" in only(fixture([no_task, END])).problem
    with_task = error_frame().replace(b'"code"', b'"task_id": "t-1", "code"')
    assert "error frame carries no task_id" in only(fixture([HELLO, with_task])).problem
    chat_only = b'data: {"event":"message","task_id":"t-1","answer":"x"}\n\n'
    assert "lacks conversation_id, message_id, created_at" in problems(fixture([chat_only, END]))[0]
    completion = problems(fixture(GOOD, "/v1/completion-messages"))
    assert len(completion) == 2 and all("completion frames carry none" in p for p in completion)


def test_one_run_per_stream() -> None:
    other = frame("message_end", id="m-1", metadata={}).replace(b"t-1", b"t-2")
    found = only(fixture([HELLO, other]))
    assert found.line == 5 and "task_id 't-2'" in found.problem


def test_event_shapes() -> None:
    bad_answer = frame("message", id="m-1", answer=3)
    assert "'answer' is missing or not a string" in only(fixture([bad_answer, END])).problem
    no_meta = frame("message_end", id="m-1")
    assert "'metadata'" in only(fixture([HELLO, no_meta])).problem


def test_stream_status_and_content_type() -> None:
    found = problems(fixture(GOOD, status=201, headers=(("Content-Type", "text/event-stream"),)))
    assert len(found) == 2 and "status 201" in found[0] + found[1]


def test_json_bodies() -> None:
    headers = (("Content-Type", "application/json"),)
    ok = b'{"code": "invalid_param", "message": "no", "status": 400}\n'
    assert problems(fixture([ok], headers=headers, status=400)) == []
    assert "not JSON" in only(fixture([b"{oops"], headers=headers)).problem
    wrong = only(
        fixture([b'{"code": "x", "message": "m", "status": 500}'], headers=headers, status=400)
    )
    assert "is not the HTTP 400" in wrong.problem


@settings(max_examples=200)
@given(st.text())
def test_lint_reports_but_never_raises(text: str) -> None:
    for finding in lint_text(text, "f.jsonl"):
        assert finding.line >= 1 and finding.problem


def test_a_b64_read_that_is_not_ascii_is_a_finding_not_a_crash() -> None:
    text = fixture([b"\xff" + HELLO, END]).replace('"b64":"', '"b64":"é')
    [finding] = lint_text(text, "f.jsonl")
    # the loader names the chunk's own line (the fixture, request and response come first)
    assert finding.line == 4 and "base64" in finding.problem


@pytest.mark.parametrize(
    ("path", "names", "expected"),
    [
        ("/v1/chat-messages", ["message", "message_end"], "chat"),
        ("/v1/chat-messages", ["agent_thought", "message_end"], "agent-chat"),
        ("/v1/chat-messages", ["workflow_started", "message"], "advanced-chat"),
        ("/v1/completion-messages", ["message"], "completion"),
        ("/v1/workflows/run", [], "workflow"),
        ("/v1/workflows/abc-123/run", [], "workflow"),
        ("/v1/workflow/run-1/events", [], "workflow"),
        ("/v1/workflows/run/run-1", [], None),
        ("/v1/parameters", [], None),
    ],
)
def test_app_family_by_route_then_events(path: str, names: list[str], expected: str | None) -> None:
    assert family(path, names) == expected
