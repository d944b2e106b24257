"""HAR 1.2 export and import, in memory: exact round trips, browser HARs, broken HARs."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from difytw.fixture import (
    END_HOWS,
    Chunk,
    Fixture,
    MatchRules,
    Request,
    Response,
    end_for,
    load,
)
from difytw.har import export_har
from difytw.harimport import HarError, import_har

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ALL = [load(path) for path in sorted(FIXTURES.glob("*.jsonl"))]


def through_json(har: dict[str, Any]) -> Any:
    """What a file holds: the HAR as written and read back."""
    return json.loads(json.dumps(har, ensure_ascii=False))


# -- round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("original", ALL, ids=lambda f: f.id)
def test_every_committed_fixture_round_trips(original: Fixture) -> None:
    fixtures, skipped = import_har(through_json(export_har([original])))
    assert skipped == []
    assert fixtures == [original]
    back = fixtures[0]
    assert [(c.t, c.data) for c in back.chunks] == [(c.t, c.data) for c in original.chunks]


def test_the_whole_directory_round_trips_in_one_har() -> None:
    fixtures, _ = import_har(through_json(export_har(ALL)))
    assert fixtures == ALL


def test_an_exported_entry_is_a_har_viewers_can_read() -> None:
    original = next(f for f in ALL if f.id == "chat-cjk-orjson")
    har = export_har([original], "https://api.example")
    assert har["log"]["version"] == "1.2"
    (entry,) = har["log"]["entries"]
    assert entry["request"]["url"] == "https://api.example/v1/chat-messages"
    assert json.loads(entry["request"]["postData"]["text"]) == original.request.json
    content = entry["response"]["content"]
    # The whole body for viewers, even though two reads end inside a character.
    assert content["text"].encode() == original.body() and "encoding" not in content
    assert content["mimeType"] == "text/event-stream; charset=utf-8"
    assert entry["timings"]["wait"] == original.response.t
    assert entry["time"] == original.end.t
    chunks = entry["_chunks"]
    assert len(chunks) == len(original.chunks)
    assert any("b64" in chunk for chunk in chunks) and all("t" in chunk for chunk in chunks)


def test_a_body_that_is_not_utf8_is_base64_in_the_har() -> None:
    body = b"\xff\xfe raw"
    made = Fixture(
        "bin",
        "p",
        "",
        (),
        Request("POST", "/v1/x", query="a=1&b=", body=b"\x00\xff"),
        Response(1, 200, (("Content-Type", "application/octet-stream"),)),
        (Chunk(2, body),),
        end_for(body, 3),
    )
    (entry,) = export_har([made])["log"]["entries"]
    assert entry["response"]["content"]["encoding"] == "base64"
    assert base64.b64decode(entry["response"]["content"]["text"]) == body
    assert entry["request"]["postData"]["_encoding"] == "base64"
    assert entry["request"]["queryString"] == [
        {"name": "a", "value": "1"},
        {"name": "b", "value": ""},
    ]
    assert import_har(through_json(export_har([made])))[0] == [made]


names = st.text(
    st.characters(min_codepoint=33, max_codepoint=126, exclude_characters=":"), min_size=1
)
header_pairs = st.lists(
    st.tuples(
        names.filter(
            lambda n: (
                n.lower() not in {"authorization", "proxy-authorization", "cookie", "set-cookie"}
            )
        ),
        st.text(),
    ),
    max_size=3,
).map(tuple)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def fixtures(draw: st.DrawFn) -> Fixture:
    kind = draw(st.sampled_from(["json", "text", "bytes", "none"]))
    path = "/" + draw(st.text("abcv1/-", max_size=12))
    query = draw(st.sampled_from(["", "user=u", "a=1&a=2&b="]))
    headers = draw(header_pairs)
    match = draw(
        st.sampled_from(
            [MatchRules(), MatchRules(keywords=("x",)), MatchRules(fallback=True, ignore=())]
        )
    )
    if kind == "json":
        rules = draw(st.sampled_from([match, MatchRules(keys=("query",))]))
        request = Request.with_json(
            "POST", path, draw(json_values), query=query, headers=headers, match=rules
        )
    else:
        body = {
            "text": draw(st.text()).encode("utf-8", "replace"),
            "bytes": draw(st.binary()),
            "none": None,
        }[kind]
        request = Request("POST", path, query, headers, body=body, match=match)
    stamps = sorted(
        draw(st.lists(st.integers(0, 10**7).map(lambda us: us / 1000), min_size=2, max_size=12))
    )
    reads = draw(
        st.lists(
            st.binary(min_size=1, max_size=6), min_size=len(stamps) - 2, max_size=len(stamps) - 2
        )
    )
    chunks = tuple(Chunk(t, data) for t, data in zip(stamps[1:-1], reads, strict=True))
    body = b"".join(reads)
    content_type = draw(
        st.sampled_from(["text/event-stream; charset=utf-8", "application/json", ""])
    )
    response_headers = ((("Content-Type", content_type),) if content_type else ()) + draw(
        header_pairs
    )
    end = end_for(body, stamps[-1], draw(st.sampled_from(END_HOWS)), draw(st.booleans()))
    return Fixture(
        draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,8}", fullmatch=True)),
        draw(st.text()),
        draw(st.text()),
        tuple(draw(st.lists(st.text(), max_size=2))),
        request,
        Response(stamps[0], draw(st.integers(100, 599)), response_headers),
        chunks,
        end,
    )


@settings(max_examples=150, deadline=None)
@given(fixtures())
def test_any_fixture_round_trips(original: Fixture) -> None:
    assert import_har(through_json(export_har([original])))[0] == [original]


# -- a browser's HAR ----------------------------------------------------------------------------


def browser_har() -> dict[str, Any]:
    """The shape Playwright 1.65 recorded for a fetch() of a replayed Dify stream and a page."""
    source = next(f for f in ALL if f.id == "chat-cjk-orjson")
    request_body = json.dumps(source.request.json, ensure_ascii=False, separators=(",", ":"))

    def headers(*pairs: tuple[str, str]) -> list[dict[str, str]]:
        return [{"name": name, "value": value} for name, value in pairs]

    page = {
        "startedDateTime": "2026-11-25T17:04:49.100Z",
        "time": 44.8,
        "request": {
            "method": "GET",
            "url": "http://127.0.0.1:18931/v1/parameters?user=demo-user-11",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": headers(("Accept", "text/html")),
            "queryString": [{"name": "user", "value": "demo-user-11"}],
            "headersSize": 500,
            "bodySize": 0,
        },
        "response": {
            "status": 200,
            "statusText": "OK",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": headers(("Content-Type", "application/json")),
            "content": {"size": 2, "mimeType": "application/json", "text": "{}"},
            "redirectURL": "",
            "headersSize": 100,
            "bodySize": 2,
        },
        "cache": {},
        "timings": {"dns": -1, "connect": -1, "ssl": -1, "send": 0, "wait": 36.1, "receive": 8.7},
    }
    stream = {
        "startedDateTime": "2026-11-25T17:04:49.392Z",
        "time": 1717.143,
        "request": {
            "method": "POST",
            "url": "http://127.0.0.1:18931/v1/chat-messages",
            "httpVersion": "HTTP/1.1",
            "cookies": [{"name": "session", "value": "s3cr3t"}],
            "headers": headers(
                ("Accept", "*/*"),
                ("Authorization", "Bearer app-" + "abcdefghijklm" * 2),  # key-shaped, made up
                ("Cookie", "session=s3cr3t"),
                ("Content-Type", "application/json"),
                ("Host", "127.0.0.1:18931"),
                ("User-Agent", "Mozilla/5.0 HeadlessChrome/156.0.0.0"),
                ("sec-ch-ua", '"Chromium";v="156"'),
            ),
            "queryString": [],
            "headersSize": 672,
            "bodySize": len(request_body.encode()),
            "postData": {"mimeType": "application/json", "text": request_body, "params": []},
        },
        "response": {
            "status": 200,
            "statusText": "OK",
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": headers(
                ("Content-Type", "text/event-stream; charset=utf-8"),
                ("Date", "Wed, 25 Nov 2026 17:04:49 GMT"),
                ("Set-Cookie", "session=s3cr3t; HttpOnly"),
                ("Transfer-Encoding", "chunked"),
                ("X-Version", "1.9.2"),
            ),
            "content": {
                "size": len(source.body()),
                "mimeType": "text/event-stream; charset=utf-8",
                "compression": 0,
                "text": source.body().decode("utf-8"),
            },
            "headersSize": 197,
            "bodySize": 7767,
            "redirectURL": "",
            "_transferSize": 7964,
        },
        "cache": {},
        "timings": {
            "dns": -1,
            "connect": -1,
            "ssl": -1,
            "send": 0,
            "wait": 518.126,
            "receive": 1199.017,
        },
        "_resourceType": "fetch",
    }
    return {
        "log": {
            "version": "1.2",
            "creator": {"name": "Playwright", "version": "1.65.1"},
            "entries": [page, stream],
        }
    }


def test_a_browser_har_gives_one_fixture_per_stream_without_credentials() -> None:
    (fixture,), skipped = import_har(browser_har(), "session.har", "session")
    source = next(f for f in ALL if f.id == "chat-cjk-orjson")
    assert skipped == []
    assert fixture.id == "session-2"
    assert "session.har entry 2 (Playwright 1.65.1)" in fixture.provenance
    assert fixture.body() == source.body()
    assert (
        fixture.request.json == source.request.json and fixture.request.path == "/v1/chat-messages"
    )
    # Only what Dify acts on: never Authorization or Cookie, nor the browser's fingerprint.
    assert fixture.request.headers == (("Accept", "*/*"), ("Content-Type", "application/json"))
    assert fixture.response.headers == (
        ("Content-Type", "text/event-stream; charset=utf-8"),
        ("X-Version", "1.9.2"),
    )
    assert "s3cr3t" not in repr(fixture) and "app-abc" not in repr(fixture)
    # One read per frame, from the response head to the end of the receive time.
    frames = sum(1 for c in source.chunks if c.data.endswith(b"\n\n"))
    assert len(fixture.chunks) == frames
    assert all(c.data.endswith(b"\n\n") for c in fixture.chunks)
    assert fixture.response.t == 518.1 and fixture.chunks[0].t == 518.1
    assert fixture.chunks[-1].t == fixture.end.t == round(518.126 + 1199.017, 1)
    assert "spread evenly" in fixture.notes
    assert fixture.end.how == "eof" and not fixture.end.incomplete


def test_a_cut_stream_and_a_base64_body() -> None:
    har = browser_har()
    content = har["log"]["entries"][1]["response"]["content"]
    body = content["text"].encode()[:-40]
    content.update(text=base64.b64encode(body).decode(), encoding="base64")
    (fixture,), _ = import_har(har)
    assert fixture.body() == body and fixture.end.incomplete


def test_a_stream_whose_body_the_browser_did_not_keep_is_skipped() -> None:
    har = browser_har()
    har["log"]["entries"][1]["response"]["content"]["text"] = ""
    again = copy.deepcopy(har["log"]["entries"][1])
    del again["response"]["content"]["text"]
    har["log"]["entries"].append(again)
    fixtures, skipped = import_har(har)
    assert fixtures == []
    assert skipped == [
        "entry 2: the HAR kept no response body (skipped)",
        "entry 3: the HAR kept no response body (skipped)",
    ]


def test_http2_pseudo_headers_are_not_headers() -> None:
    har = browser_har()
    request = har["log"]["entries"][1]["request"]
    request["headers"].insert(0, {"name": ":authority", "value": "api.dify.ai"})
    (fixture,), _ = import_har(har)
    assert all(not name.startswith(":") for name, _ in fixture.request.headers)


# -- broken HARs --------------------------------------------------------------------------------


def broken(change: Any) -> str:
    har = browser_har()
    change(har)
    with pytest.raises(HarError) as caught:
        import_har(har)
    message = str(caught.value)
    assert "\n" not in message
    return message


def entry(har: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = har["log"]["entries"][1]
    return result


def test_what_is_not_a_har() -> None:
    for value in ([], {"log": []}, {"logs": {}}, "HAR"):
        with pytest.raises(HarError, match="not a HAR file"):
            import_har(value)
    with pytest.raises(HarError, match=r"log\.entries"):
        import_har({"log": {"version": "1.2"}})


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda har: har["log"]["entries"].append(3), "entry 3 is missing or not an object"),
        (lambda har: entry(har).pop("request"), "entry 2: request is missing"),
        (lambda har: entry(har)["response"].pop("content"), "entry 2: response.content is missing"),
        (lambda har: entry(har)["request"].pop("url"), "string 'method' and 'url'"),
        (lambda har: entry(har)["response"].update(status="200"), "status' must be an integer"),
        (
            lambda har: entry(har)["response"].update(headers={"a": "b"}),
            "response.headers must be a list",
        ),
        (
            lambda har: entry(har)["request"]["headers"].append({"name": 1}),
            "string 'name' and 'value'",
        ),
        (
            lambda har: entry(har)["response"]["content"].update(encoding="base64"),
            "not valid base64",
        ),
        (
            lambda har: entry(har)["response"]["content"].update(encoding="gzip"),
            "unknown encoding 'gzip'",
        ),
        (
            lambda har: entry(har)["response"]["content"].update(text=3),
            "entry 2: response.content.text is not a string",
        ),
        (lambda har: entry(har).update(_chunks={}), "_chunks must be a list of objects"),
        (lambda har: entry(har).update(_chunks=[{"t": 1, "text": "x"}]), "_chunks do not add up"),
        (
            lambda har: entry(har).update(_chunks=[{"t": 1, "b64": "é"}]),
            "_chunks[0] is not valid base64",
        ),
        (lambda har: entry(har).update(_chunks=[{"t": 1}]), "_chunks[0]: needs a number 't'"),
        (
            lambda har: entry(har).update(_fixture={"id": "bad id!", "provenance": "p"}),
            "id 'bad id!'",
        ),
        (lambda har: entry(har).update(_fixture={"id": "x"}), "missing field 'provenance'"),
    ],
)
def test_broken_entries_say_what_is_wrong_and_where(change: Any, expected: str) -> None:
    assert expected in broken(change)


def test_exported_json_flag_with_a_body_that_is_not_json() -> None:
    (exported,) = export_har([next(f for f in ALL if f.id == "chat-slow")])["log"]["entries"]
    exported["request"]["postData"]["text"] = "{nope"
    with pytest.raises(HarError, match=r"entry 1: request\.postData\.text is not JSON"):
        import_har({"log": {"entries": [exported]}})


def test_two_entries_with_one_id() -> None:
    har = export_har([ALL[0], ALL[0]])
    with pytest.raises(HarError, match=f"entry 2: fixture id '{ALL[0].id}' is used by an earlier"):
        import_har(har)
