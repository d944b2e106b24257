"""Recording an exchange into a fixture while it streams, in memory and on disk."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from difytw.fixture import Request, load, loads
from difytw.recorder import ExchangeRecorder, fixture_name, recorded_request
from difytw.scrub import StreamingScrubber, parse_rule, rules_for, scrub_bytes

KEY = b"app-" + b"K3y" * 9
SSE = [("Content-Type", "text/event-stream; charset=utf-8")]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def recorder(tmp_path: Path, clock: Clock, user: str | None = "alice") -> ExchangeRecorder:
    request = Request.with_json(
        "POST", "/v1/chat-messages", {"query": "q", "inputs": {}, "user": "scrubbed-user"}
    )
    return ExchangeRecorder(tmp_path, "rec-1", request=request, rules=rules_for(user), now=clock)


def test_a_live_recording_round_trips_with_times_and_boundaries(tmp_path: Path) -> None:
    clock = Clock()
    rec = recorder(tmp_path, clock)
    clock.t += 0.2
    rec.response(200, SSE)
    reads = [b'data: {"event":"message","answer":"\xe4\xbd', b'\xa0"}\n\n', b"event: ping\n\n"]
    for read in reads:
        clock.t += 0.05
        rec.chunk(read)
    clock.t += 0.01
    rec.end("eof")
    fixture = load(rec.path)
    assert [c.data for c in fixture.chunks] == reads
    assert [c.t for c in fixture.chunks] == [250.0, 300.0, 350.0]
    assert fixture.response.t == 200.0
    assert (fixture.end.how, fixture.end.incomplete) == ("eof", False)
    assert stat.S_IMODE(os.stat(rec.path).st_mode) == 0o600


def test_every_prefix_of_a_recording_is_a_loadable_fixture(tmp_path: Path) -> None:
    clock = Clock()
    rec = recorder(tmp_path, clock)
    rec.response(200, SSE)
    for i in range(3):
        rec.chunk(b"data: {}\n\n" * 500)  # big enough to pass the scrub window
        cut_short = load(rec.path)  # as if the proxy were killed right now
        assert cut_short.end.incomplete and cut_short.end.how == "reset"
        assert cut_short.body() == b"data: {}\n\n" * 500 * len(cut_short.chunks)
        assert len(cut_short.chunks) <= i + 1


def test_a_key_split_across_two_reads_never_reaches_the_disk(tmp_path: Path) -> None:
    clock = Clock()
    rec = recorder(tmp_path, clock)
    rec.response(200, SSE)
    body = b'data: {"answer":"your key is ' + KEY + b'","user":"alice"}\n\n'
    cut = body.index(KEY) + 10
    rec.chunk(body[:cut])
    rec.chunk(body[cut:])
    rec.end("eof")
    raw = rec.path.read_bytes()
    assert KEY not in raw and KEY[4:14] not in raw and b"alice" not in raw
    fixture = load(rec.path)
    assert b"app-scrubbed" in fixture.body() and b"scrubbed-user" in fixture.body()
    assert len(fixture.chunks) == 2


def test_a_cut_recording_says_how_it_ended(tmp_path: Path) -> None:
    rec = recorder(tmp_path, Clock())
    rec.response(200, SSE)
    rec.chunk(b"data: {}\n\n")
    rec.end("reset")
    fixture = load(rec.path)
    assert (fixture.end.how, fixture.end.incomplete) == ("reset", True)


def test_write_errors_stop_recording_quietly(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    rec = ExchangeRecorder(
        missing, "rec-2", request=Request("GET", "/v1/parameters"), rules=[], now=Clock()
    )
    rec.response(200, [])
    rec.chunk(b"x")
    rec.end("eof")
    assert isinstance(rec.failed, OSError)


def test_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "rec-1.jsonl").write_text("keep me")
    rec = recorder(tmp_path, Clock())
    rec.response(200, SSE)
    assert rec.failed is not None
    assert (tmp_path / "rec-1.jsonl").read_text() == "keep me"


def test_recorded_request_keeps_only_safe_headers_and_scrubs() -> None:
    headers = [
        ("Content-Type", "application/json"),
        ("Authorization", "Bearer app-x"),
        ("Cookie", "s=1"),
        ("X-Trace-Id", "tr"),
    ]
    body = b'{"query":"hi","user":"alice","inputs":{}}'
    request, note, applied = recorded_request(
        "POST", "/v1/chat-messages", "user=alice", headers, body, rules_for("alice")
    )
    assert request.headers == (("Content-Type", "application/json"), ("X-Trace-Id", "tr"))
    assert request.json == {"query": "hi", "user": "scrubbed-user", "inputs": {}}
    assert request.query == "user=scrubbed-user" and note == "" and applied == {"user"}


def test_big_bodies_are_noted_not_stored() -> None:
    request, note, _ = recorded_request(
        "POST",
        "/v1/files/upload",
        "",
        [("Content-Type", "multipart/form-data; boundary=b")],
        b"x" * (2 << 20),
        rules_for(None),
    )
    assert request.body is None and request.match.keys == () and "not stored" in note


def test_fixture_names_are_valid_ids() -> None:
    name = fixture_name(1700000000.123, "POST", "/v1/chat-messages/../x y", 3)
    assert name == "rec-1700000000-123-post-v1-chat-messages-..-x-y-3"


@settings(max_examples=200)
@given(
    st.lists(
        st.sampled_from(
            [
                b"data: ",
                b"hi ",
                KEY,
                b"\n\n",
                "é".encode(),
                b'"alice"',
                b"x" * 300,
                b"Bearer ",
                b"sk-abcd",
            ]
        ),
        max_size=30,
    ),
    st.lists(st.integers(min_value=1, max_value=200), max_size=30),
    st.integers(min_value=8, max_value=600),
)
# A released read that ends inside a finished match ("app-...app"): the rescan used to find
# a match starting in that released tail, which swallowed the next key's "app" and leaked it.
@example(parts=[KEY, KEY, KEY], cuts=[len(KEY) + 3], window=8)
def test_streaming_scrubber_equals_scrubbing_the_whole(
    parts: list[bytes], cuts: list[int], window: int
) -> None:
    body = b"".join(parts)
    reads, rest = [], body
    for size in cuts:
        if rest:
            reads.append(rest[:size])
            rest = rest[size:]
    if rest:
        reads.append(rest)
    rules = rules_for("alice", [parse_rule("sk-[a-z]{4}=SK")])
    scrubber = StreamingScrubber(rules, window=window)
    out: list[bytes] = []
    for i, read in enumerate(reads):
        out += [d for _, d in scrubber.push(float(i), read)]
    out += [d for _, d in scrubber.flush()]
    joined = b"".join(out)
    # The custom rule has no tail: a window as long as its secret makes it as safe.
    assert KEY not in joined and b'"alice"' not in joined
    assert (joined == scrub_bytes(body, rules)[0]) or window < len(b"sk-abcd")
    assert len(out) <= len(reads)


@pytest.mark.parametrize("user", [None, "bob"])
def test_the_fixture_record_names_the_rules_that_matched(tmp_path: Path, user: str | None) -> None:
    rec = recorder(tmp_path, Clock(), user=user)
    rec.response(200, SSE)
    rec.end("eof")
    assert load(rec.path).scrubbed == ()  # nothing matched: nothing listed
    other = ExchangeRecorder(
        tmp_path,
        "rec-2",
        request=Request("GET", "/v1/parameters"),
        rules=rules_for(user),
        now=Clock(),
        scrubbed=["user"] if user else [],  # as recorded_request found it in the request
    )
    other.response(200, [*SSE, ("X-Echo", "Bearer tok3n-abcdefgh")])
    assert load(other.path).scrubbed == ("bearer-token", *(["user"] if user else []))
    other.chunk(b'data: {"answer":"' + KEY[:10])
    other.chunk(KEY[10:] + b'"}\n\n')
    killed = load(other.path)  # the line was rewritten in place as soon as the key went out
    assert "dify-app-key" in killed.scrubbed and b"app-scrubbed" in killed.body()
    other.end("eof")
    assert load(other.path).scrubbed == (
        "bearer-token",
        "dify-app-key",
        *(["user"] if user else []),
    )


def test_a_recording_killed_after_any_write_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each append (chunk lines and the new end) is one write: a kill between two writes
    always leaves a fixture, never a file that stops difyreplay from starting."""
    writes: list[tuple[int, bytes]] = []  # (offset, the file as a kill right after leaves it)
    real_pwrite = os.pwrite

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        written = real_pwrite(fd, data, offset)
        writes.append((offset, rec.path.read_bytes()))
        return written

    monkeypatch.setattr(os, "pwrite", pwrite)
    clock = Clock()
    rec = recorder(tmp_path, clock)
    rec.response(200, SSE)
    reads = [
        b'data: {"answer":"' + KEY + b'"}\n\n',
        b"event: ping\n\n",
        b'data: {"user":"alice"}\n\n',
    ]
    for read in reads:
        before = len(writes)
        clock.t += 0.1
        rec.chunk(read)
        appends = [offset for offset, _ in writes[before:] if offset > 0]
        assert len(appends) == 1 and len(writes) - before <= 2  # + the fixture line
    rec.end("reset")
    final = load(rec.path)
    assert final.body() == scrub_bytes(b"".join(reads), rules_for("alice"))[0]
    assert final.scrubbed == ("dify-app-key", "user")
    for _, raw in writes:
        cut = loads(raw.decode("utf-8"))
        assert cut.end.incomplete and final.body().startswith(cut.body())
