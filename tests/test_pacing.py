"""Frames, pacing and retiming, in memory: bytes and order never change, only times."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from difytw.eventcatalog import split_frames, unfinished
from difytw.fixture import Chunk, Fixture, Request, Response, end_for, load, loads
from difytw.fixturewrite import dumps
from difytw.pacing import paced, retime, tokens

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def data(payload: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


PING = b"event: ping\n\n"
HELLO = data({"event": "message", "answer": "Hello world, 你好"})
END = data({"event": "message_end", "metadata": {}})


def fixture_of(chunks: list[Chunk], response_t: float = 0.0, end_t: float | None = None) -> Fixture:
    body = b"".join(c.data for c in chunks)
    end = end_for(body, chunks[-1].t if end_t is None else end_t)
    request = Request.with_json("POST", "/v1/chat-messages", {"query": "q"})
    response = Response(response_t, 200, (("Content-Type", "text/event-stream"),))
    return Fixture("f", "test", "", (), request, response, tuple(chunks), end)


# -- split_frames / unfinished ------------------------------------------------------------------


def test_one_frame_per_block_whatever_the_line_ends() -> None:
    assert split_frames(HELLO + PING + END) == [HELLO, PING, END]
    assert split_frames(b"data: a\r\n\r\ndata: b\r\rdata: c") == [
        b"data: a\r\n\r\n",
        b"data: b\r\r",
        b"data: c",
    ]
    # Blank lines with no field before them belong to the next frame, not a frame of their own.
    assert split_frames(b"\n\ndata: a\n\n") == [b"\n\ndata: a\n\n"]
    assert split_frames(b"") == []


def test_unfinished_counts_the_bytes_of_a_frame_never_ended() -> None:
    assert unfinished(HELLO + END) == 0
    assert unfinished(HELLO + b"data: {") == len(b"data: {")
    assert unfinished(HELLO + b"data: x\n") == len(b"data: x\n")
    assert unfinished(b"\n\n") == 0


@given(
    st.lists(st.sampled_from([b"data: x", b"\n", b"\r", b"\r\n", b":c", b"event: ping", b"\xe4"]))
)
def test_frames_join_back_and_each_but_the_last_ends_a_block(pieces: list[bytes]) -> None:
    body = b"".join(pieces)
    frames = split_frames(body)
    assert b"".join(frames) == body
    assert all(frames)
    for frame in frames[:-1]:
        assert unfinished(frame) == 0
    if frames:
        assert unfinished(body) in (0, len(frames[-1]))


# -- paced --------------------------------------------------------------------------------------


def test_fixed_interval_from_the_first_byte() -> None:
    chunks = paced([HELLO, PING, END], 200, interval=50)
    assert [c.t for c in chunks] == [200, 250, 300]
    assert [c.data for c in chunks] == [HELLO, PING, END]


def test_token_rate_paces_by_the_answer_a_frame_carries() -> None:
    # "Hello", "world", ",", "你", "好": five tokens; a ping or an end counts one.
    assert tokens(HELLO) == 5 and tokens(PING) == 0 and tokens(END) == 0
    chunks = paced([PING, HELLO, END], 0, tokens_per_second=10)
    assert [c.t for c in chunks] == [0, 500, 600]


def test_pacing_needs_exactly_one_rule() -> None:
    with pytest.raises(ValueError):
        paced([HELLO], 0)
    with pytest.raises(ValueError):
        paced([HELLO], 0, interval=1, tokens_per_second=1)
    with pytest.raises(ValueError):
        paced([HELLO], 0, tokens_per_second=0)


# -- retime -------------------------------------------------------------------------------------


def gaps(fixture: Fixture) -> list[int]:
    times = [0.0, fixture.response.t, *(c.t for c in fixture.chunks), fixture.end.t]
    return [round((b - a) * 1000) for a, b in itertools.pairwise(times)]


def test_ten_second_ping_gaps_shrink_to_the_cap() -> None:
    original = load(FIXTURES / "agent-chat-tools.jsonl")
    assert max(gaps(original)) >= 6_000_000
    fast = retime(original, max_gap=250)
    assert max(gaps(fast)) == 250_000
    assert fast.body() == original.body()
    assert [c.data for c in fast.chunks] == [c.data for c in original.chunks]
    assert fast.end.sha256 == original.end.sha256
    assert loads(dumps(fast)) == fast  # still a valid fixture, times never decrease


def test_speed_divides_every_gap() -> None:
    original = fixture_of([Chunk(100, HELLO), Chunk(1100, PING), Chunk(1300, END)], 100, 1301)
    twice = retime(original, speed=2)
    assert [twice.response.t, *(c.t for c in twice.chunks), twice.end.t] == [
        50,
        50,
        550,
        650,
        650.5,
    ]


def test_bad_factors_are_refused() -> None:
    original = fixture_of([Chunk(1, HELLO)])
    with pytest.raises(ValueError):
        retime(original, speed=0)
    with pytest.raises(ValueError):
        retime(original, max_gap=-1)


times = st.integers(min_value=0, max_value=30_000_000).map(lambda us: us / 1000)


@given(
    st.lists(st.tuples(times, st.binary(min_size=1, max_size=8)), min_size=1, max_size=20),
    st.floats(min_value=0.01, max_value=100),
    st.none() | st.integers(min_value=0, max_value=20_000),
)
def test_retime_keeps_bytes_and_order_and_caps_gaps(
    raw: list[tuple[float, bytes]], speed: float, cap: int | None
) -> None:
    stamps = sorted(t for t, _ in raw)
    chunks = [Chunk(t, d) for t, (_, d) in zip(stamps, raw, strict=True)]
    original = fixture_of(chunks, stamps[0], stamps[-1] + 1)
    result = retime(original, speed, cap)
    assert [c.data for c in result.chunks] == [c.data for c in original.chunks]
    assert result.end == original.end.__class__(
        result.end.t, original.end.how, original.end.bytes, original.end.sha256
    )
    new = gaps(result)
    assert all(g >= 0 for g in new)
    for old_gap, new_gap in zip(gaps(original), new, strict=True):
        expected = round(old_gap / speed)
        assert new_gap == (expected if cap is None else min(expected, cap * 1000))


@given(st.lists(times, min_size=1, max_size=20))
def test_retime_at_speed_one_without_cap_changes_nothing(stamps: list[float]) -> None:
    stamps.sort()
    original = fixture_of([Chunk(t, b"x") for t in stamps], stamps[0], stamps[-1])
    assert retime(original) == original
