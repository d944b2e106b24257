"""Pacing: the times of a fixture's reads, invented for a transcript or rewritten (pure).

This module owns the clock side of ``import-sse`` and ``retime``.  A raw transcript has no
timing, so each frame becomes one read (Dify flushes frame by frame, dify-contract.md 2.1),
spaced by a fixed interval or by how long its answer tokens take at a given rate.  ``retime``
scales and caps the gaps of an existing fixture without touching a byte or the order of its
reads.  Times are computed in whole microseconds, so that a capped gap is exactly the cap and
rounding never reorders two reads.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace

from difytw.eventcatalog import answer_delta, decode_reads, payload
from difytw.fixture import Chunk, Fixture
from difytw.sse import Event

# A rough LLM token: an ASCII word or number, or any other visible character (CJK scripts
# tokenize about a character a token).  Good enough to make a replay feel like a model typing.
_TOKEN = re.compile(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]")


def tokens(frame: bytes) -> int:
    """Approximate answer tokens a frame streams (0 for pings, node events, ...)."""
    count = 0
    for _, item in decode_reads([frame]):
        data = payload(item) if isinstance(item, Event) else None
        delta = answer_delta(data) if data is not None else None
        if delta is not None:
            count += len(_TOKEN.findall(delta[0]))
    return count


def paced(
    frames: Sequence[bytes],
    start: float = 0.0,
    *,
    interval: float | None = None,
    tokens_per_second: float | None = None,
) -> list[Chunk]:
    """One read per frame: the first at ``start`` ms, each next one a gap later.

    The gap is ``interval`` ms, or the time the frame's tokens take at ``tokens_per_second``
    (at least one token, so that pings and node events still move the clock on).
    """
    if (interval is None) == (tokens_per_second is None):
        raise ValueError("give exactly one of interval and tokens_per_second")
    if (interval is not None and interval < 0) or (
        tokens_per_second is not None and tokens_per_second <= 0
    ):
        raise ValueError("interval must be >= 0 and tokens_per_second > 0")
    now = _us(start)
    chunks: list[Chunk] = []
    for index, frame in enumerate(frames):
        if index:
            if interval is not None:
                now += _us(interval)
            else:
                assert tokens_per_second is not None
                now += round(max(1, tokens(frame)) * 1_000_000 / tokens_per_second)
        chunks.append(Chunk(_ms(now), frame))
    return chunks


def retime(fixture: Fixture, speed: float = 1.0, max_gap: float | None = None) -> Fixture:
    """The same exchange ``speed`` times faster, no gap longer than ``max_gap`` ms.

    Every gap counts, from the request to the response head, between reads and to the end,
    so a 10 s ping gap shrinks like any other.  Bytes, read boundaries and order are kept.
    """
    if speed <= 0:
        raise ValueError(f"speed must be > 0, got {speed}")
    if max_gap is not None and max_gap < 0:
        raise ValueError(f"max gap must be >= 0, got {max_gap}")
    old = [fixture.response.t, *(chunk.t for chunk in fixture.chunks), fixture.end.t]
    cap = None if max_gap is None else _us(max_gap)
    new: list[float] = []
    previous_old = 0
    now = 0
    for t in old:
        gap = round((_us(t) - previous_old) / speed)
        now += gap if cap is None else min(gap, cap)
        previous_old = _us(t)
        new.append(_ms(now))
    chunks = tuple(Chunk(t, chunk.data) for t, chunk in zip(new[1:-1], fixture.chunks, strict=True))
    return replace(
        fixture,
        response=replace(fixture.response, t=new[0]),
        chunks=chunks,
        end=replace(fixture.end, t=new[-1]),
    )


def _us(ms: float) -> int:
    return round(ms * 1000)


def _ms(us: int) -> float:
    return us / 1000
