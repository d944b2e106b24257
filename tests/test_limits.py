"""Rate and stream limits (difytw.limits) with an injected clock, in memory."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from difytw.limits import SWEEP_AT, Rate, RateLimiter, StreamSlots, TokenBucket, positive
from difytw.refusal import Refusal


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusal(action: Any) -> Refusal:
    with pytest.raises(Refusal) as caught:
        action()
    return caught.value


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("60/min", Rate(60, 60.0)),
        ("5/s", Rate(5, 1.0)),
        (" 10 / Second ", Rate(10, 1.0)),
        ("1000/hour", Rate(1000, 3600.0)),
        ("2/m", Rate(2, 60.0)),
        ("7/h", Rate(7, 3600.0)),
    ],
)
def test_rate_parse(text: str, rate: Rate) -> None:
    assert Rate.parse(text) == rate


@pytest.mark.parametrize("text", ["0/min", "60", "60/day", "-1/s", "1.5/s", "/min", ""])
def test_rate_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="--rate"):
        Rate.parse(text)


def test_bucket_allows_a_burst_then_one_per_interval() -> None:
    bucket = TokenBucket(Rate(3, 60.0), now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(20.0)  # one token per 20 s
    assert bucket.take(10.0) == pytest.approx(10.0)
    assert bucket.take(20.0) == 0.0
    assert bucket.take(20.0) == pytest.approx(20.0)


def test_bucket_never_holds_more_than_its_burst_and_ignores_a_clock_going_back() -> None:
    bucket = TokenBucket(Rate(2, 1.0), now=0.0)
    bucket.take(0.0)
    bucket.refill(1_000_000.0)
    assert bucket.tokens == 2.0
    bucket.take(1_000_000.0)
    bucket.take(1_000_000.0)
    assert bucket.take(999_990.0) > 0.0  # time went back: no free tokens


@given(st.lists(st.floats(min_value=0, max_value=100), max_size=60), st.integers(1, 5))
def test_bucket_admits_no_more_than_burst_plus_refill(times: list[float], count: int) -> None:
    rate = Rate(count, 10.0)
    bucket = TokenBucket(rate, now=0.0)
    admitted = [t for t in sorted(times) if bucket.take(t) == 0.0]
    for i, start in enumerate(admitted):
        for end in admitted[i:]:
            inside = sum(1 for t in admitted if start <= t <= end)
            assert inside <= count + (end - start) * rate.per_second + 1e-9


def test_limiter_429_with_retry_after_and_recovery() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Rate(2, 60.0), clock)
    limiter.check("alice")
    limiter.check("alice")
    error = refusal(lambda: limiter.check("alice"))
    assert (error.status, error.code) == (429, "too_many_requests")
    assert (b"Retry-After", b"30") in error.headers
    limiter.check("bob")  # a separate bucket per identity
    clock.now += 30
    limiter.check("alice")


def test_limiter_forgets_full_buckets_when_it_grows() -> None:
    clock = FakeClock()
    limiter = RateLimiter(Rate(1, 1.0), clock)
    for i in range(SWEEP_AT):
        limiter.check(f"user-{i}")
    clock.now += 5  # every bucket is full again
    limiter.check("late")
    assert len(limiter) == 1


def test_stream_slots_per_user_and_in_all() -> None:
    slots = StreamSlots(per_key=2, total=3)
    a1, a2 = slots.acquire("a"), slots.acquire("a")
    error = refusal(lambda: slots.acquire("a"))
    assert (error.status, error.code) == (429, "too_many_requests")
    assert any(name == b"Retry-After" for name, _ in error.headers)
    b1 = slots.acquire("b")
    error = refusal(lambda: slots.acquire("c"))
    assert (error.status, error.code) == (503, "service_unavailable")
    a1.release()
    a1.release()  # idempotent: one release per lease
    assert (slots.open, slots.held("a")) == (2, 1)
    slots.acquire("c")
    a2.release()
    b1.release()
    assert slots.held("a") == 0 and slots.open == 1


def test_unlimited_slots() -> None:
    slots = StreamSlots(per_key=None, total=None)
    leases = [slots.acquire("x") for _ in range(100)]
    assert slots.open == 100
    for lease in leases:
        lease.release()
    assert slots.open == 0


@given(st.lists(st.tuples(st.sampled_from("abc"), st.booleans()), max_size=80))
def test_slots_never_exceed_their_limits(steps: list[tuple[str, bool]]) -> None:
    slots = StreamSlots(per_key=2, total=4)
    held: list[tuple[str, Any]] = []
    for key, take in steps:
        if take or not held:
            with contextlib.suppress(Refusal):
                held.append((key, slots.acquire(key)))
        else:
            held.pop(0)[1].release()
        assert slots.open == len(held) <= 4
        assert all(slots.held(k) == sum(1 for h, _ in held if h == k) <= 2 for k in "abc")


def test_positive() -> None:
    assert positive("--max-streams", "7") == 7
    for bad in ("0", "-3", "x", "1.5"):
        with pytest.raises(ValueError, match="--max-streams"):
            positive("--max-streams", bad)
