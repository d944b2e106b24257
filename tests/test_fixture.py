"""The sse-fixture/1 format in memory: round trips, every validation error, event expansion."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from difytw.fixture import (
    DEFAULT_IGNORE,
    FORMAT,
    Chunk,
    End,
    Fixture,
    FixtureError,
    MatchRules,
    Request,
    Response,
    end_for,
    load,
    loads,
)
from difytw.fixturewrite import FixtureWriter, dump, dumps
from difytw.sse import Event, decode

HEAD = {"type": "fixture", "format": FORMAT, "id": "t", "provenance": "test"}
REQUEST = {
    "type": "request",
    "method": "POST",
    "path": "/v1/chat-messages",
    "json": {"inputs": {}, "query": "hi", "user": "u"},
}
RESPONSE = {
    "type": "response",
    "t": 10,
    "status": 200,
    "headers": [["Content-Type", "text/event-stream; charset=utf-8"]],
}
RESPONSE_HEADERS = (("Content-Type", "text/event-stream; charset=utf-8"),)
NO_BODY = {k: v for k, v in REQUEST.items() if k != "json"}
FRAME = 'data: {"event":"message","answer":"你好"}\n\n'


def end(body: bytes, t: float = 100, **fields: Any) -> dict[str, Any]:
    record = {"type": "end", "t": t, "how": "eof", "bytes": len(body)}
    record["sha256"] = hashlib.sha256(body).hexdigest()
    return record | fields


def text(*records: dict[str, Any] | str) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def with_body(*body: dict[str, Any], data: bytes, **end_fields: Any) -> str:
    return text(HEAD, REQUEST, RESPONSE, *body, end(data, **end_fields))


VALID = with_body({"type": "chunk", "t": 20, "text": FRAME}, data=FRAME.encode())


def error_of(source: str) -> FixtureError:
    with pytest.raises(FixtureError) as info:
        loads(source, "x.jsonl")
    return info.value


# -- loading and round trips ------------------------------------------------------------------


def test_loads_valid_fixture() -> None:
    fixture = loads(VALID, "x.jsonl")
    assert fixture.id == "t" and fixture.source == "x.jsonl"
    assert fixture.notes == "" and fixture.scrubbed == ()
    assert fixture.request.has_json and fixture.request.json["query"] == "hi"
    assert fixture.request.body == b'{"inputs":{},"query":"hi","user":"u"}'
    assert fixture.request.match == MatchRules(None, DEFAULT_IGNORE, (), False)
    assert fixture.response == Response(10.0, 200, RESPONSE_HEADERS)
    assert fixture.response.is_stream
    assert fixture.chunks == (Chunk(20.0, FRAME.encode()),)
    assert fixture.body() == FRAME.encode()
    assert fixture.end.how == "eof" and not fixture.end.incomplete


def test_round_trip_is_canonical() -> None:
    fixture = loads(VALID)
    again = loads(dumps(fixture))
    assert again == fixture
    assert dumps(again) == dumps(fixture)
    # Whole-millisecond times are written as integers, compact JSON, raw UTF-8.
    assert '"t":20,' in dumps(fixture) and "你好" in dumps(fixture)


def test_dump_and_load_use_the_path_as_given(tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    dump(loads(VALID), path)
    assert load(path) == loads(VALID)
    assert load(path).source == str(path)
    path.write_text(VALID.replace('"status": 200', '"status": 700'), encoding="utf-8")
    with pytest.raises(
        FixtureError, match=rf"^{re.escape(str(path))}:3: response: status 700 is outside"
    ):
        load(path)


def test_load_rejects_non_utf8_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(VALID.encode().replace(b"hi", b"h\xff", 1))
    with pytest.raises(FixtureError, match=r":2: file is not UTF-8"):
        load(path)


def test_request_bodies_text_b64_none_and_match_rules() -> None:
    def request(**fields: Any) -> Request:
        record = {"type": "request", "method": "POST", "path": "/v1/files/upload", **fields}
        return loads(text(HEAD, record, RESPONSE, end(b""))).request

    plain = request(text="--b\r\n\r\nx")
    assert plain.body == b"--b\r\n\r\nx" and not plain.has_json and plain.json is None
    assert request(b64="AP8=").body == b"\x00\xff"
    assert request().body is None
    assert request(json=None).has_json and request(json=None).body == b"null"
    rules = request(
        json={"a": 1}, match={"keys": ["a"], "ignore": [], "keywords": ["x"], "fallback": True}
    ).match
    assert rules == MatchRules(("a",), (), ("x",), True)
    assert request(match={"keys": None}).match.keys is None
    assert request(match={"keys": []}, text="x").match.keys == ()


def test_round_trip_keeps_request_forms_and_rules() -> None:
    for fields in (
        {"text": "--b\r\nfoo"},
        {"b64": "AP8="},
        {"json": [1, "二"]},
        {"json": {"q": 1}, "match": {"keywords": ["rain"], "ignore": ["user"]}},
        {},
    ):
        record = {"type": "request", "method": "GET", "path": "/v1/p", "query": "a=1", **fields}
        fixture = loads(text(HEAD, record, RESPONSE, end(b"")))
        assert loads(dumps(fixture)) == fixture


def test_blank_lines_are_skipped_but_counted() -> None:
    source = VALID.replace("\n", "\n\n", 2)
    assert loads(source).body() == FRAME.encode()
    broken = source.replace('"status": 200', '"status": 1')
    assert error_of(broken).line == 5


def test_u2028_inside_a_string_does_not_split_the_line() -> None:
    frame = 'data: {"answer":"a\u2028b\x85c"}\n\n'
    record = {"type": "chunk", "t": 20, "text": frame}
    fixture = loads(text(HEAD, REQUEST, RESPONSE) + _raw(record, frame))
    assert fixture.body() == frame.encode()
    assert loads(dumps(fixture)) == fixture


def _raw(record: dict[str, Any], frame: str) -> str:
    # ensure_ascii=False keeps U+2028 and U+0085 raw in the file, as dumps() does.
    return json.dumps(record, ensure_ascii=False) + "\n" + json.dumps(end(frame.encode())) + "\n"


# -- every validation error, with its line ------------------------------------------------------

CHUNK = {"type": "chunk", "t": 20, "text": "x"}


def _nested(depth: int) -> Any:
    """``depth`` - 1 arrays around an empty one: the parser takes it, the fixture must not."""
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_nesting_up_to_the_limit_loads_and_matches_itself() -> None:
    from difytw.fixtureindex import FixtureIndex, Incoming

    # The record (1) holds "json" (2) holding "a" (3): 98 arrays more make 100 levels.
    deep = REQUEST | {"json": {"a": _nested(98)}}
    fixture = loads(text(HEAD, deep, RESPONSE, end(b"")))
    assert FixtureIndex([fixture]).match(Incoming.from_request(fixture.request)) == fixture


ERRORS: list[tuple[str, list[Any], int, str]] = [
    ("bad json", [HEAD, "{nope", RESPONSE], 2, "bad JSON: "),
    ("nan", [HEAD, REQUEST, RESPONSE | {"t": "NaN"}], 3, "'t' must be a number, got a string"),
    ("nan constant", [HEAD, REQUEST, '{"type":"response","t":NaN,"status":200}'], 3, "bad JSON"),
    ("array", [HEAD, "[1]"], 2, "a record must be a JSON object, got an array"),
    ("null", [HEAD, "null"], 2, "a record must be a JSON object, got null"),
    ("deep", [HEAD, '{"type":"request","json":' + "[" * 5000 + "]" * 5000 + "}"], 2, "nested"),
    ("deep ok", [HEAD, REQUEST | {"json": {"a": _nested(101)}}], 2, "deeper than 100 levels"),
    ("no type", [HEAD, {"method": "GET"}], 2, "record has no 'type'"),
    ("unknown type", [HEAD, {"type": "chunky"}], 2, "unknown record type 'chunky'"),
    ("empty", [], 1, "missing 'fixture' record"),
    ("missing request", [HEAD], 1, "missing 'request' record"),
    ("missing end", [HEAD, REQUEST, RESPONSE, CHUNK], 4, "missing 'end' record"),
    ("out of order", [HEAD, RESPONSE], 2, "expected a 'request' record, got 'response'"),
    ("head first", [REQUEST], 1, "expected a 'fixture' record, got 'request'"),
    ("twice", [HEAD, REQUEST, RESPONSE, REQUEST], 4, "'request' record out of order"),
    ("after end", [HEAD, REQUEST, RESPONSE, end(b""), CHUNK], 5, "'chunk' record after the 'end'"),
    ("format", [HEAD | {"format": "sse-fixture/2"}], 1, "unknown format version 'sse-fixture/2'"),
    ("bad id", [HEAD | {"id": "a b"}], 1, "id 'a b' must be letters"),
    ("no id", [{k: v for k, v in HEAD.items() if k != "id"}], 1, "fixture: missing field 'id'"),
    ("scrubbed", [HEAD | {"scrubbed": "all"}], 1, "'scrubbed' must be a list of strings"),
    ("scrubbed items", [HEAD | {"scrubbed": [1]}], 1, "'scrubbed' must be a list of strings"),
    ("unknown field", [HEAD | {"author": "me"}], 1, "fixture: unknown field 'author'"),
    ("path", [HEAD, REQUEST | {"path": "v1/x"}], 2, "path starting with '/'"),
    ("query in path", [HEAD, REQUEST | {"path": "/v1/x?a=1"}], 2, "(query apart)"),
    ("auth", [HEAD, REQUEST | {"headers": [["Authorization", "Bearer k"]]}], 2, "'Authorization'"),
    ("cookie", [HEAD, REQUEST | {"headers": [["cookie", "s=1"]]}], 2, "'cookie' must never"),
    ("headers", [HEAD, REQUEST | {"headers": [["A"]]}], 2, "[name, value] string pairs"),
    ("headers dict", [HEAD, REQUEST | {"headers": {"A": "b"}}], 2, "got an object"),
    (
        "two bodies",
        [HEAD, REQUEST | {"text": "x"}],
        2,
        "one of json, text, b64 (got json and text)",
    ),
    ("request b64", [HEAD, NO_BODY | {"b64": "@@"}], 2, "'b64' is not valid base64"),
    (
        "keys on text",
        [HEAD, NO_BODY | {"text": "x", "match": {"keys": ["q"]}}],
        2,
        "match keys name JSON keys, but the body is not JSON",
    ),
    ("match type", [HEAD, REQUEST | {"match": []}], 2, "'match' must be an object, got an array"),
    ("match field", [HEAD, REQUEST | {"match": {"key": []}}], 2, "match: unknown field 'key'"),
    ("fallback", [HEAD, REQUEST | {"match": {"fallback": 1}}], 2, "'fallback' must be a boolean"),
    ("status type", [HEAD, REQUEST, RESPONSE | {"status": "200"}], 3, "must be an integer"),
    ("status bool", [HEAD, REQUEST, RESPONSE | {"status": True}], 3, "got a boolean"),
    ("status low", [HEAD, REQUEST, RESPONSE | {"status": 99}], 3, "status 99 is outside 100..599"),
    ("status high", [HEAD, REQUEST, RESPONSE | {"status": 600}], 3, "status 600 is outside"),
    ("negative t", [HEAD, REQUEST, RESPONSE | {"t": -1}], 3, "'t' must not be negative"),
    ("no t", [HEAD, REQUEST, RESPONSE, {"type": "chunk", "text": "x"}], 4, "missing field 't'"),
    ("both", [HEAD, REQUEST, RESPONSE, CHUNK | {"b64": "eA=="}], 4, "exactly one of 'text' and"),
    ("neither", [HEAD, REQUEST, RESPONSE, {"type": "chunk", "t": 20}], 4, "exactly one of"),
    ("chunk b64", [HEAD, REQUEST, RESPONSE, {"type": "chunk", "t": 20, "b64": "eA="}], 4, "base64"),
    ("surrogate", [HEAD, REQUEST, RESPONSE, '{"type":"chunk","t":20,"text":"\\ud800"}'], 4, "UTF"),
    ("before head", [HEAD, REQUEST, RESPONSE, CHUNK | {"t": 5}], 4, "t 5 is before the previous"),
    (
        "t decreases",
        [HEAD, REQUEST, RESPONSE, CHUNK | {"t": 30}, CHUNK | {"t": 20.5}],
        5,
        "t 20.5 is before the previous record's t 30",
    ),
    ("end early", [HEAD, REQUEST, RESPONSE, CHUNK, end(b"x", t=15)], 5, "t 15 is before"),
    ("how", [HEAD, REQUEST, RESPONSE, end(b"", how="closed")], 4, "how 'closed' is not one of"),
    ("bytes", [HEAD, REQUEST, RESPONSE, CHUNK, end(b"xy")], 5, "end says 2 bytes, body has 1"),
    ("sha", [HEAD, REQUEST, RESPONSE, CHUNK, end(b"y")], 5, "end says sha256 "),
    ("sha form", [HEAD, REQUEST, RESPONSE, end(b"", sha256="ABC")], 4, "64 lowercase hex"),
    ("incomplete", [HEAD, REQUEST, RESPONSE, end(b"", incomplete="yes")], 4, "must be a boolean"),
    ("event empty", [HEAD, REQUEST, RESPONSE, {"type": "event", "t": 20}], 4, "needs 'event',"),
    (
        "comment and data",
        [HEAD, REQUEST, RESPONSE, {"type": "event", "t": 20, "comment": "c", "data": "d"}],
        4,
        "'comment' cannot be combined",
    ),
    (
        "style on raw",
        [HEAD, REQUEST, RESPONSE, {"type": "event", "t": 20, "data": "d", "style": "spaced"}],
        4,
        "'style' applies only to object data",
    ),
    (
        "style name",
        [HEAD, REQUEST, RESPONSE, {"type": "event", "t": 20, "data": {}, "style": "pretty"}],
        4,
        "style 'pretty' is not",
    ),
    (
        "data list",
        [HEAD, REQUEST, RESPONSE, {"type": "event", "t": 20, "data": [1]}],
        4,
        "'data' must be an object or a string",
    ),
    (
        "event name",
        [HEAD, REQUEST, RESPONSE, {"type": "event", "t": 20, "event": "a\nb"}],
        4,
        "bad event name",
    ),
    (
        "unencodable",
        [HEAD, REQUEST, RESPONSE, {"type": "event", "t": 20, "data": "a\rb"}],
        4,
        "cannot encode",
    ),
]


@pytest.mark.parametrize(
    ("records", "line", "problem"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_validation_error_names_file_line_and_problem(
    records: list[Any], line: int, problem: str
) -> None:
    error = error_of(text(*records) if records else "")
    assert (error.path, error.line) == ("x.jsonl", line)
    assert problem in error.problem
    assert str(error) == f"x.jsonl:{line}: {error.problem}"
    assert isinstance(error, ValueError)


def test_bytes_mismatch_message_is_exact() -> None:
    body = b"x" * 118
    source = with_body({"type": "chunk", "t": 20, "text": "x" * 118}, data=body, bytes=120)
    assert error_of(source).problem == "end says 120 bytes, body has 118"


# -- event records ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        ({"event": "ping"}, b"event: ping\n\n"),
        ({"data": {"a": "你", "b": [1, 2.5]}}, 'data: {"a":"你","b":[1,2.5]}\n\n'.encode()),
        (
            {"data": {"a": "你", "b": [1]}, "style": "compact"},
            'data: {"a":"你","b":[1]}\n\n'.encode(),
        ),
        (
            {"data": {"a": "你", "e": "😀"}, "style": "spaced"},
            b'data: {"a": "\\u4f60", "e": "\\ud83d\\ude00"}\n\n',
        ),
        ({"data": "[DONE]"}, b"data: [DONE]\n\n"),
        ({"data": "two\nlines"}, b"data: two\ndata: lines\n\n"),
        ({"event": "custom", "data": "x"}, b"event: custom\ndata: x\n\n"),
        ({"event": "custom", "data": {"k": 1}}, b'event: custom\ndata: {"k":1}\n\n'),
        ({"comment": "keep-alive"}, b":keep-alive\n"),
        ({"comment": ""}, b":\n"),
    ],
)
def test_event_record_expands_to_one_chunk(event: dict[str, Any], expected: bytes) -> None:
    record = {"type": "event", "t": 20, **event}
    fixture = loads(text(HEAD, REQUEST, RESPONSE, record, end(expected)))
    assert fixture.chunks == (Chunk(20.0, expected),)
    # Canonical form writes the expansion as a chunk record; the bytes survive.
    assert loads(dumps(fixture)) == fixture
    assert '"type":"event"' not in dumps(fixture)


def test_event_records_decode_as_sse() -> None:
    records = [
        {"type": "event", "t": 20, "event": "ping"},
        {"type": "event", "t": 30, "data": {"event": "message", "answer": "é"}},
        {"type": "event", "t": 40, "comment": "c"},
        {"type": "event", "t": 50, "data": {"event": "message_end"}, "style": "spaced"},
    ]
    body = b'event: ping\n\ndata: {"event":"message","answer":"\xc3\xa9"}\n\n:c\n'
    body += b'data: {"event": "message_end"}\n\n'
    fixture = loads(text(HEAD, REQUEST, RESPONSE, *records, end(body)))
    assert [c.t for c in fixture.chunks] == [20, 30, 40, 50]
    assert decode(fixture.body(), dispatch_empty=True) == [
        Event("", "ping"),
        Event('{"event":"message","answer":"é"}'),
        Event('{"event": "message_end"}'),
    ]


def test_events_and_chunks_mix() -> None:
    records = [
        {"type": "chunk", "t": 20, "b64": "ZGF0YTog"},  # "data: "
        {"type": "event", "t": 20, "event": "ping"},
    ]
    body = b"data: event: ping\n\n"
    assert loads(text(HEAD, REQUEST, RESPONSE, *records, end(body))).body() == body


# -- b64 chunks and every split point -----------------------------------------------------------


def test_b64_chunk_split_inside_a_character() -> None:
    data = FRAME.encode()
    cut = data.index("你".encode()) + 1
    records = [
        {"type": "chunk", "t": 20, "b64": _b64(data[:cut])},
        {"type": "chunk", "t": 20.4, "b64": _b64(data[cut:])},
    ]
    fixture = loads(text(HEAD, REQUEST, RESPONSE, *records, end(data)))
    assert fixture.body() == data
    assert [c.data for c in fixture.chunks] == [data[:cut], data[cut:]]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_every_split_point_round_trips_with_text_or_b64() -> None:
    data = 'data: {"answer":"é你😀"}\n\n'.encode()
    for cut in range(len(data) + 1):
        parts = [data[:cut], data[cut:]]
        fixture = _fixture([Chunk(20, part) for part in parts])
        canonical = dumps(fixture)
        assert loads(canonical) == fixture
        for line, part in zip(canonical.splitlines()[3:5], parts, strict=True):
            assert ('"b64":' in line) == (not _is_utf8(part))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _fixture(chunks: list[Chunk], request: Request | None = None) -> Fixture:
    body = b"".join(c.data for c in chunks)
    return Fixture(
        "gen",
        "test",
        "",
        (),
        request or Request.with_json("POST", "/v1/chat-messages", {"query": "q"}),
        Response(10, 200, RESPONSE_HEADERS),
        tuple(chunks),
        end_for(body, max([10.0, *(c.t for c in chunks)])),
    )


# -- hypothesis ---------------------------------------------------------------------------------

times = st.floats(min_value=0, max_value=1e7, allow_nan=False) | st.integers(0, 10**7)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
requests = st.builds(
    Request,
    method=st.sampled_from(["GET", "POST", "DELETE"]),
    path=st.from_regex(r"/v1/[a-z/-]{0,20}", fullmatch=True),
    query=st.text().filter(lambda q: "\n" not in q),
    headers=st.lists(st.tuples(st.text(min_size=1), st.text())).map(tuple),
    body=st.none() | st.binary(),
    match=st.builds(
        MatchRules,
        keys=st.none() | st.just(()),
        ignore=st.lists(st.text()).map(tuple),
        keywords=st.lists(st.text()).map(tuple),
        fallback=st.booleans(),
    ),
) | json_values.map(lambda v: Request.with_json("POST", "/v1/chat-messages", v))


@given(
    request=requests,
    gaps=st.lists(st.tuples(times, st.binary(max_size=40)), max_size=6),
    how=st.sampled_from(["eof", "reset", "timeout"]),
    incomplete=st.booleans(),
    notes=st.text(),
)
def test_any_fixture_round_trips(
    request: Request, gaps: list[tuple[float, bytes]], how: str, incomplete: bool, notes: str
) -> None:
    if any(
        name.lower() in ("authorization", "cookie", "proxy-authorization")
        for name, _ in request.headers
    ):
        return
    t, chunks = 10.0, []
    for gap, data in gaps:
        t += gap
        chunks.append(Chunk(t, data))
    fixture = _fixture(chunks, request)
    body = fixture.body()
    fixture = Fixture(
        "gen",
        "prov",
        notes,
        ("token",),
        request,
        fixture.response,
        fixture.chunks,
        End(t + 1, how, len(body), hashlib.sha256(body).hexdigest(), incomplete),
    )
    again = loads(dumps(fixture))
    assert again == fixture
    assert again.body() == body
    assert dumps(again) == dumps(fixture)


# -- FixtureWriter ------------------------------------------------------------------------------


class FlushCounter(io.StringIO):
    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_writer_appends_lines_and_vouches_for_the_body() -> None:
    out = FlushCounter()
    request = Request.with_json("POST", "/v1/chat-messages", {"query": "雨"})
    writer = FixtureWriter(out, "rec-1", "recorded", request, Response(300, 200, RESPONSE_HEADERS))
    assert out.getvalue().count("\n") == 3 and out.flushes == 3
    parts = [FRAME.encode()[:9], FRAME.encode()[9:], b"event: ping\n\n"]
    for i, part in enumerate(parts):
        writer.chunk(310 + i, part)
        assert out.getvalue().endswith("\n") and out.flushes == 4 + i
    writer.end(400, "reset", incomplete=True)
    fixture = loads(out.getvalue())
    assert fixture.id == "rec-1" and fixture.request == request
    assert [c.data for c in fixture.chunks] == parts
    assert fixture.end == end_for(b"".join(parts), 400, "reset", True)
    assert out.getvalue() == dumps(fixture)


def test_non_ascii_base64_names_file_and_line() -> None:
    from difytw.fixture import FixtureError, loads

    text = (
        '{"type":"fixture","format":"sse-fixture/1","id":"x","provenance":"t"}\n'
        '{"type":"request","method":"GET","path":"/v1/parameters"}\n'
        '{"type":"response","t":0,"status":200,"headers":[]}\n'
        '{"type":"chunk","t":1,"b64":"é=="}\n'
    )
    with pytest.raises(FixtureError, match=r"x\.jsonl:4: .*base64"):
        loads(text, "x.jsonl")
