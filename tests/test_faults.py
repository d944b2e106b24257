"""The fault parser and the write planner, in memory."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from difytw.faults import PING, FaultError, Faults, event_ends, plan_writes

FRAMES = [
    b'data: {"event":"message","answer":"\xe4\xbd\xa0"}\n\n',
    b"event: ping\n\n",
    b'data: {"event":"message","answer":"\xf0\x9f\x98\x80"}\n\n',
    b'data: {"event":"message_end"}\n\n',
]
CHUNKS = [(100.0 * (i + 1), frame) for i, frame in enumerate(FRAMES)]
BODY = b"".join(FRAMES)


def plan(faults: str = "", speed: float = 1.0, chunks: list[tuple[float, bytes]] = CHUNKS):
    return plan_writes(
        chunks, head_ms=50, end_ms=500, end="eof", speed=speed, faults=Faults.parse(faults)
    )


def body_of(p) -> bytes:  # type: ignore[no-untyped-def]
    return b"".join(w.data for w in p.writes)


def test_parse_every_fault() -> None:
    faults = Faults.parse(
        "cut-after=2, reset-after=3; stall=1.5@2, drip=4/20, split-utf8, crlf, "
        "no-final-blank-line, status=429, ping-every=2"
    )
    assert faults.cut_after == 2
    assert faults.reset_after == 3
    assert faults.stall == (1.5, 2)
    assert faults.drip == 4
    assert faults.drip_interval == pytest.approx(0.02)
    assert faults.split_utf8 and faults.crlf and faults.no_final_blank_line
    assert faults.status == 429
    assert faults.ping_every == 2.0


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("explode", "unknown fault 'explode'"),
        ("cut-after=x", "whole number"),
        ("cut-after", "needs a value"),
        ("stall=abc@1", "needs seconds"),
        ("stall=99999@1", "between 0 and 3600"),
        ("drip=0", "positive byte count"),
        ("status=200", "400-599"),
        ("crlf=1", "takes no value"),
        ("ping-every=0", "positive"),
    ],
)
def test_parse_rejects_with_a_clear_message(spec: str, message: str) -> None:
    with pytest.raises(FaultError, match=message):
        Faults.parse(spec)


def test_no_fault_keeps_chunks_and_scales_time() -> None:
    p = plan(speed=2.0)
    assert [w.data for w in p.writes] == FRAMES
    assert [w.at for w in p.writes] == [0.05, 0.1, 0.15, 0.2]
    assert p.head_at == 0.025 and p.end_at == 0.25 and p.end == "eof"


def test_speed_zero_is_immediate() -> None:
    p = plan(speed=0)
    assert {w.at for w in p.writes} == {0.0} and p.end_at == 0.0


def test_event_ends_all_line_endings() -> None:
    # a comment-only block dispatches nothing, an unterminated one never ends
    assert event_ends(b"data: a\n\ndata: b\r\n\r\n:c\r\rdata: d\n") == [9, 20]
    assert event_ends(b":c\nevent: ping\r\rdata: d\n\n") == [16, 25]
    assert event_ends(b"\n\n\ndata: x\n\n") == [12]


@pytest.mark.parametrize("n", range(len(FRAMES) + 1))
def test_cut_after_n_events(n: int) -> None:
    p = plan(f"cut-after={n}")
    assert body_of(p) == b"".join(FRAMES[:n])
    assert p.end == "eof"


def test_reset_after() -> None:
    p = plan("reset-after=1")
    assert body_of(p) == FRAMES[0] and p.end == "reset"


def test_cut_inside_a_chunk_that_holds_two_events() -> None:
    p = plan("cut-after=1", chunks=[(0, FRAMES[0] + FRAMES[1])])
    assert body_of(p) == FRAMES[0]


def test_stall_delays_everything_after_the_nth_event() -> None:
    p = plan("stall=3@2")
    assert [w.at for w in p.writes] == [0.1, 0.2, 3.3, 3.4]
    assert p.end_at == pytest.approx(3.5)


def test_stall_at_zero_delays_the_head() -> None:
    p = plan("stall=3@0")
    assert p.head_at == pytest.approx(3.05)
    assert p.writes[0].at == pytest.approx(3.1)


def test_stall_splits_a_write_at_the_event_boundary() -> None:
    p = plan("stall=1@1", chunks=[(0, FRAMES[0] + FRAMES[1])])
    assert [(w.at, w.data) for w in p.writes] == [(0, FRAMES[0]), (1, FRAMES[1])]


def test_drip_writes_small_pieces_in_order() -> None:
    p = plan("drip=5/10")
    assert body_of(p) == BODY
    assert all(len(w.data) <= 5 for w in p.writes)
    times = [w.at for w in p.writes]
    assert times == sorted(times)
    assert all(b - a >= 0.01 - 1e-9 for a, b in itertools.pairwise(times))


def test_split_utf8_cuts_inside_a_character() -> None:
    p = plan("split-utf8")
    assert body_of(p) == BODY
    cut = [w.data for w in p.writes if w.data and w.data[-1] >= 0xC0]
    assert len(cut) == 2  # the CJK frame and the emoji frame
    with pytest.raises(UnicodeDecodeError):
        cut[0].decode("utf-8")


def test_crlf_and_no_final_blank_line() -> None:
    p = plan("crlf")
    assert body_of(p) == BODY.replace(b"\n", b"\r\n")
    p = plan("no-final-blank-line")
    assert body_of(p) == BODY[:-1]
    p = plan("crlf,no-final-blank-line")
    assert body_of(p) == BODY.replace(b"\n", b"\r\n")[:-2]


def test_ping_every_only_between_events() -> None:
    p = plan("ping-every=0.15")
    pings = [w for w in p.writes if w.data == PING]
    assert pings, "pings were injected"
    ends = {0, *event_ends(body_of(p))}
    offset = 0
    for write in p.writes:
        if write.data == PING:
            assert offset in ends
        offset += len(write.data)
    assert body_of(p).replace(PING, b"") == BODY.replace(PING, b"")


@given(
    st.lists(st.sampled_from(FRAMES), min_size=1, max_size=8),
    st.lists(st.integers(min_value=1, max_value=40), max_size=8),
    st.sampled_from(["", "drip=3", "split-utf8", "stall=1@1", "drip=7,split-utf8"]),
)
def test_reshaping_faults_never_change_the_bytes(
    frames: list[bytes], cuts: list[int], spec: str
) -> None:
    body = b"".join(frames)
    points = sorted({min(c * 7, len(body)) for c in cuts} | {0, len(body)})
    chunks = [(float(i), body[a:b]) for i, (a, b) in enumerate(itertools.pairwise(points))]
    p = plan_writes(chunks, head_ms=0, end_ms=100, end="eof", speed=1, faults=Faults.parse(spec))
    assert body_of(p) == body
    times = [w.at for w in p.writes]
    assert times == sorted(times)


def test_a_ping_due_inside_a_frame_waits_for_its_end() -> None:
    # Reads that end mid-frame (a big frame in two reads): the ping due between them goes
    # right after the frame, not lost and not inside it.
    frame = FRAMES[0]
    half = len(frame) // 2
    chunks = [(100.0, frame[:half]), (400.0, frame[half:]), (500.0, FRAMES[3])]
    p = plan("ping-every=0.3", chunks=chunks)  # due at 0.35 s, mid-frame
    datas = [w.data for w in p.writes]
    assert datas[:4] == [frame[:half], frame[half:], PING, FRAMES[3]]
    assert p.writes[2].at == p.writes[1].at  # as soon as the frame is whole


def test_injected_pings_follow_crlf() -> None:
    p = plan("crlf,ping-every=0.15")
    pings = [w.data for w in p.writes if b"ping" in w.data and w.data.startswith(b"event")]
    assert pings and all(ping == b"event: ping\r\n\r\n" for ping in pings)
    assert b"\n" not in body_of(p).replace(b"\r\n", b"")
