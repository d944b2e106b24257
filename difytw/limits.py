"""Per-identity request rate and open streams, plus a global stream cap (pure).

Dify's own limit is per app (``APP_MAX_ACTIVE_REQUESTS``, dify-contract.md section 3):
one greedy caller can use every slot of the app and lock everyone else out, so the proxy
limits each identity before Dify sees it (section 9.14):

- ``--rate 60/min``: a token bucket per identity holding at most 60 requests, refilled
  at 60 a minute; an empty bucket answers 429 ``too_many_requests`` with ``Retry-After``
  the time until the next token;
- ``--max-streams-per-user``: requests that may hold a long answer open (generation
  routes, the events stream, TTS) at once per identity -> 429 ``too_many_requests``;
- ``--max-streams``: the same over all identities -> 503 ``service_unavailable``, which
  protects the proxy's own sockets and file descriptors.

Time comes from an injected ``clock`` (seconds), so the bucket math is tested exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from difytw.refusal import retry_after

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$", re.IGNORECASE)
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
# Buckets are forgotten once full (a full bucket is the same as none); this many trigger
# a sweep so a stream of one-off identities cannot grow the table without bound.
SWEEP_AT = 10_000
# A stream slot frees when some stream ends, which nobody can predict; a second is a
# polite first retry.
STREAM_RETRY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` requests per ``period`` seconds; also the burst a full bucket allows."""

    count: int
    period: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        match = _RATE.match(text)
        if match is None or int(match.group(1)) < 1:
            raise ValueError(f"--rate {text!r}: use COUNT/UNIT, e.g. 60/min, 5/s, 1000/hour")
        return cls(int(match.group(1)), _PERIODS[match.group(2)[0].lower()])

    @property
    def per_second(self) -> float:
        return self.count / self.period


class TokenBucket:
    """Holds up to ``rate.count`` tokens, refilled continuously; a request takes one."""

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.tokens = float(rate.count)
        self.updated = now

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)  # a clock that steps back gives nothing
        self.tokens = min(float(self.rate.count), self.tokens + elapsed * self.rate.per_second)
        self.updated = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 when taken, else the seconds until one will be there."""
        self.refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate.per_second

    def full(self, now: float) -> bool:
        self.refill(now)
        return self.tokens >= self.rate.count


class RateLimiter:
    """One ``TokenBucket`` per identity key."""

    def __init__(self, rate: Rate, clock: Callable[[], float]) -> None:
        self.rate = rate
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, key: str) -> None:
        now = self._clock()
        if len(self._buckets) >= SWEEP_AT:
            self._buckets = {k: b for k, b in self._buckets.items() if not b.full(now)}
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, now)
        wait = bucket.take(now)
        if wait > 0.0:
            raise retry_after(
                429,
                "too_many_requests",
                f"Too many requests. Please try again later. The limit is "
                f"{self.rate.count} requests per {self.rate.period:g} seconds.",
                wait,
            )

    def __len__(self) -> int:
        return len(self._buckets)


class Lease:
    """One held stream slot; ``release`` gives it back (idempotent)."""

    def __init__(self, slots: StreamSlots, key: str) -> None:
        self._slots = slots
        self._key: str | None = key

    def release(self) -> None:
        key, self._key = self._key, None
        if key is not None:
            self._slots._release(key)


class StreamSlots:
    """Open streams per identity (``per_key``) and in all (``total``); None: no limit."""

    def __init__(self, *, per_key: int | None, total: int | None) -> None:
        self.per_key = per_key
        self.total = total
        self.open = 0
        self._by_key: dict[str, int] = {}

    def acquire(self, key: str) -> Lease:
        if self.total is not None and self.open >= self.total:
            raise retry_after(
                503,
                "service_unavailable",
                "The proxy is at its limit of open streams; please try again shortly.",
                STREAM_RETRY_SECONDS,
            )
        held = self._by_key.get(key, 0)
        if self.per_key is not None and held >= self.per_key:
            raise retry_after(
                429,
                "too_many_requests",
                f"Too many requests. Please try again later. The current maximum "
                f"concurrent requests allowed per user is {self.per_key}.",
                STREAM_RETRY_SECONDS,
            )
        self._by_key[key] = held + 1
        self.open += 1
        return Lease(self, key)

    def held(self, key: str) -> int:
        return self._by_key.get(key, 0)

    def _release(self, key: str) -> None:
        self.open -= 1
        left = self._by_key[key] - 1
        if left:
            self._by_key[key] = left
        else:
            del self._by_key[key]


def positive(flag: str, text: str) -> int:
    """A count flag (``--max-streams-per-user 4``); ``0`` is refused, not 'unlimited'."""
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{flag} {text!r}: not a whole number") from None
    if value < 1:
        raise ValueError(f"{flag} {text!r}: must be at least 1")
    return value
