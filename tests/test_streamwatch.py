"""The side-parser that learns task ids and the terminal event, in memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from difytw.fixture import load
from difytw.streamwatch import ID_FRAMES, StreamWatch
from tests.conftest import FIXTURES

STREAMS = sorted(p for p in FIXTURES.glob("*.jsonl") if load(p).response.is_stream)


def summary(watch: StreamWatch) -> tuple[object, ...]:
    return (
        dict(watch.ids),
        watch.terminal,
        watch.usage,
        watch.error,
        watch.workflow_status,
        watch.total_tokens,
    )


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
def test_every_split_point_sees_the_same_stream(path: Path) -> None:
    body = load(path).body()
    whole = StreamWatch()
    whole.feed(body)
    step = max(1, len(body) // 150)  # every split point of small bodies, a dense sample of big
    for cut in range(0, len(body) + 1, step):
        watch = StreamWatch()
        watch.feed(body[:cut])
        watch.feed(body[cut:])
        assert summary(watch) == summary(whole), cut


@pytest.mark.parametrize("path", STREAMS, ids=lambda p: p.stem)
def test_recorded_chunks_reach_the_terminal_event(path: Path) -> None:
    fixture = load(path)
    watch = StreamWatch()
    for chunk in fixture.chunks:
        watch.feed(chunk.data)
    frames = [
        json.loads(line[6:])
        for line in fixture.body().decode().split("\n")
        if line.startswith("data: ")
    ]
    names = [f.get("event") for f in frames]
    task_ids = [f["task_id"] for f in frames if "task_id" in f]
    assert watch.task_id == (task_ids[0] if task_ids else None)
    if "error" in names:
        assert watch.terminal == "error"
        assert watch.error is not None and watch.error["code"]
    elif "workflow_started" in names:
        assert watch.terminal == "workflow_finished"
    elif "message_end" in names:
        assert watch.terminal == "message_end"


def frame(**fields: object) -> bytes:
    return b"data: " + json.dumps(fields).encode() + b"\n\n"


def test_chatflow_is_not_over_at_message_end() -> None:
    watch = StreamWatch()
    watch.feed(frame(event="workflow_started", task_id="t", workflow_run_id="r", data={}))
    watch.feed(frame(event="message_end", task_id="t", metadata={"usage": {"total_tokens": 9}}))
    assert not watch.finished and watch.usage == {"total_tokens": 9}
    watch.feed(frame(event="workflow_finished", task_id="t", data={"status": "succeeded"}))
    assert watch.terminal == "workflow_finished" and watch.workflow_status == "succeeded"
    assert watch.ids == {"task_id": "t", "workflow_run_id": "r"}


def test_oversized_frame_stops_watching_not_the_stream() -> None:
    watch = StreamWatch(max_event_size=64)
    watch.feed(frame(event="message", task_id="t", answer="x" * 200))
    assert watch.broken and "64" in watch.broken
    watch.feed(frame(event="message_end", task_id="t"))  # ignored, no exception
    assert not watch.finished


def test_non_json_and_pings_are_tolerated() -> None:
    watch = StreamWatch()
    watch.feed(b"event: ping\n\ndata: [DONE]\n\n: comment\n\n")
    watch.feed(frame(event="message", task_id="t1", answer="a"))
    assert watch.task_id == "t1"


def fed_in_reads(body: bytes, sizes: list[int]) -> StreamWatch:
    """A watch fed ``body`` in reads of ``sizes``, then the rest in one."""
    watch, at = StreamWatch(), 0
    for size in sizes:
        watch.feed(body[at : at + size])
        at += size
    watch.feed(body[at:])
    return watch


def long_chat(n: int = 60) -> list[bytes]:
    envelope = {"conversation_id": "c", "message_id": "m", "created_at": 1, "task_id": "t"}
    frames = [frame(event="message", **envelope, answer=f"w{i} ") for i in range(n)]
    frames.insert(n // 2, b"event: ping\n\n")
    frames.append(frame(event="message_end", **envelope, metadata={"usage": {"total_tokens": n}}))
    return frames


@pytest.mark.parametrize("step", [1, 3, 7, 50])
def test_fast_path_reads_agree_with_full_decoding(step: int) -> None:
    frames = long_chat()
    per_frame = StreamWatch()  # reads end on frame boundaries: mostly the fast path
    for frame_bytes in frames:
        per_frame.feed(frame_bytes)
    body = b"".join(frames)
    ragged = StreamWatch()  # reads split anywhere: the decoder path
    for start in range(0, len(body), step):
        ragged.feed(body[start : start + step])
    assert summary(per_frame) == summary(ragged)
    assert per_frame.terminal == "message_end" and per_frame.total_tokens == 60


def test_a_terminal_event_packed_with_plain_frames_is_seen() -> None:
    frames = long_chat()
    watch = StreamWatch()
    for frame_bytes in frames[:20]:
        watch.feed(frame_bytes)
    watch.feed(b"".join(frames[20:]))  # many frames and the terminal one in one read
    assert watch.terminal == "message_end"


def test_an_error_frame_after_the_ids_is_seen() -> None:
    frames = long_chat()[:20]
    watch = StreamWatch()
    for frame_bytes in frames:
        watch.feed(frame_bytes)
    watch.feed(frame(event="error", code="completion_request_error", status=400, message="x"))
    assert watch.terminal == "error" and watch.error is not None


# -- leading pings (contract 2.3: a ping every 10 s until the first token) -----------------

PING = b"event: ping\n\n"
WORKFLOW_ENVELOPE = {"task_id": "wt", "workflow_run_id": "wr"}


def slow_workflow(n: int = 12) -> list[bytes]:
    frames = [frame(event="workflow_started", **WORKFLOW_ENVELOPE, data={})]
    frames += [frame(event="node_started", **WORKFLOW_ENVELOPE, data={"i": i}) for i in range(n)]
    frames.append(frame(event="workflow_finished", **WORKFLOW_ENVELOPE, data={"status": "ok"}))
    return frames


def pinged(frames: list[bytes], pings: int) -> list[bytes]:
    return [PING] * pings + frames


@pytest.mark.parametrize("pings", [ID_FRAMES, ID_FRAMES + 1, 30])
@pytest.mark.parametrize(
    ("frames", "ids"),
    [
        (long_chat(), {"task_id": "t", "conversation_id": "c", "message_id": "m"}),
        (
            [frame(event="message", task_id="ct", message_id="cm", answer="a")] * 3,
            {"task_id": "ct", "message_id": "cm"},
        ),
        (slow_workflow(), WORKFLOW_ENVELOPE),
    ],
    ids=["chat", "completion", "workflow"],
)
def test_leading_pings_do_not_hide_the_task_id(
    pings: int, frames: list[bytes], ids: dict[str, str]
) -> None:
    # The caller leaves after a few frames: the terminal event, which names the ids
    # too, never comes, so they must be caught from the first data frames.
    stream = pinged(frames[:3], pings)
    per_frame = StreamWatch()  # each ping its own read, as Dify writes them
    for frame_bytes in stream:
        per_frame.feed(frame_bytes)
    assert per_frame.ids == ids and not per_frame.finished
    body = b"".join(stream)
    for cut in range(len(body) + 1):
        watch = StreamWatch()
        watch.feed(body[:cut])
        watch.feed(body[cut:])
        assert summary(watch) == summary(per_frame), cut


@given(
    st.lists(st.integers(min_value=0, max_value=12), min_size=1, max_size=12),
    st.lists(st.integers(min_value=1, max_value=400), max_size=20),
)
def test_pings_anywhere_at_the_start_at_any_chunking(pings: list[int], cuts: list[int]) -> None:
    """Runs of pings before each of the first frames of an unfinished chat, read in
    arbitrary pieces: the ids are known all the same."""
    frames = long_chat()[:-1]  # no message_end: it would name the ids late
    stream: list[bytes] = []
    for run, frame_bytes in zip(pings, frames, strict=False):
        stream += [PING] * run + [frame_bytes]
    stream += frames[len(pings) :]
    body = b"".join(stream)
    whole = StreamWatch()
    whole.feed(body)
    assert whole.ids == {"task_id": "t", "conversation_id": "c", "message_id": "m"}
    assert summary(fed_in_reads(body, cuts)) == summary(whole)


def test_the_id_hunt_still_ends_after_the_first_data_frames() -> None:
    """Once task_id is in, only the first data frames are decoded for the other ids: the
    fast path takes over (a chat never names a workflow_run_id, so the hunt must end)."""
    watch = StreamWatch()
    for frame_bytes in pinged(long_chat()[:ID_FRAMES], 20):
        watch.feed(frame_bytes)
    watch.feed(frame(event="message", task_id="t", workflow_run_id="late", answer="x"))
    assert "workflow_run_id" not in watch.ids


@given(
    st.lists(st.integers(min_value=1, max_value=300), max_size=40),
    st.sampled_from([b"\n", b"\r\n"]),
    st.booleans(),
)
def test_skipping_whole_frames_agrees_with_decoding_everything(
    cuts: list[int], line_end: bytes, fails: bool
) -> None:
    """Past the id hunt, whole frames that name nothing of note are skipped undecoded:
    for any cutting of a stream into reads, what is learnt equals decoding it at once."""
    frames = long_chat(40)
    if fails:
        frames.insert(30, frame(event="error", code="quota", status=400, message="m"))
    body = b"".join(frames).replace(b"\n", line_end)
    whole = StreamWatch()
    whole.feed(body)  # one read, from the stream's start: all of it decoded
    watch = fed_in_reads(body, cuts)
    assert summary(watch) == summary(whole)
    assert watch.terminal == ("error" if fails else "message_end")


def test_an_oversized_frame_mid_read_stops_watching_quietly() -> None:
    """Past the id hunt, a read whose first piece breaks the decoder's size limit ends the
    watching; the rest of that read is not fed to a decoder that is gone."""
    watch = StreamWatch(max_event_size=4096)
    for frame_bytes in long_chat()[: ID_FRAMES + 2]:
        watch.feed(frame_bytes)
    huge = frame(event="message", task_id="t", answer="x" * 5000)
    watch.feed(huge[:100])  # the decoder now holds a partial frame
    watch.feed(huge[100:] + b"".join(long_chat()[-3:]))
    assert watch.broken and "4096" in watch.broken
    assert not watch.finished
