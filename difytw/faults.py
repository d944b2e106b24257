"""Replay faults and the write plan they shape (pure: no Twisted).

A client chooses faults per request with ``X-Replay-Fault: drip=3, stall=2@1``
(or the ``replay_fault`` query parameter, since a browser ``EventSource`` or a
plain link cannot set headers).  ``Faults.parse`` reads that string;
``plan_writes`` turns a recorded body (its chunks and their offsets) plus the
faults and the ``--speed`` factor into the exact sequence of timed writes the
replay server performs, so every fault is deterministic and testable without
a socket.

Events are counted as SSE blocks that hold at least one non-blank line
(WHATWG "dispatch the event" happens at a blank line); ``@N`` / ``-after=N``
positions sit just after the Nth such block.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

FAULT_HEADER = "X-Replay-Fault"
FAULT_QUERY_PARAM = "replay_fault"
PING = b"event: ping\n\n"
DEFAULT_DRIP_INTERVAL = 0.01  # seconds between drip pieces: slow enough to see


class FaultError(ValueError):
    """A fault specification that cannot be understood."""


@dataclass(frozen=True)
class Faults:
    cut_after: int | None = None  # finish cleanly after N events
    reset_after: int | None = None  # abort the TCP connection after N events
    stall: tuple[float, int] | None = None  # (seconds, after N events); N=0: before the head
    drip: int | None = None  # bytes per write
    drip_interval: float = DEFAULT_DRIP_INTERVAL
    split_utf8: bool = False  # split every chunk inside its first multibyte character
    crlf: bool = False  # CRLF line ends instead of LF
    no_final_blank_line: bool = False  # the last event is never terminated
    status: int | None = None  # a Dify-shaped error before any stream
    ping_every: float | None = None  # extra `event: ping` frames every S seconds
    spec: str = field(default="", compare=False)

    @property
    def shapes_body(self) -> bool:
        return self != Faults()

    @classmethod
    def parse(cls, spec: str) -> Faults:
        values: dict[str, object] = {}
        for raw in re.split(r"[,;]", spec):
            item = raw.strip()
            if not item:
                continue
            name, sep, value = item.partition("=")
            name = name.strip().lower()
            value = value.strip()
            if name in _FLAGS:
                if sep:
                    raise FaultError(f"fault {name!r} takes no value")
                values[_FLAGS[name]] = True
            elif name in _READERS:
                if not sep or not value:
                    raise FaultError(f"fault {name!r} needs a value, e.g. {_EXAMPLES[name]}")
                values.update(_READERS[name](name, value))
            else:
                known = ", ".join(sorted([*_FLAGS, *_READERS]))
                raise FaultError(f"unknown fault {name!r} (known: {known})")
        return cls(**values, spec=spec.strip())  # type: ignore[arg-type]


def _count(name: str, value: str) -> int:
    if not value.isdigit():
        raise FaultError(f"fault {name!r} needs a whole number of events, got {value!r}")
    return int(value)


def _seconds(name: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise FaultError(f"fault {name!r} needs seconds, got {value!r}") from None
    if not 0 <= seconds <= 3600:
        raise FaultError(f"fault {name!r} needs seconds between 0 and 3600, got {value!r}")
    return seconds


def _read_stall(name: str, value: str) -> dict[str, object]:
    seconds, _, after = value.partition("@")
    return {"stall": (_seconds(name, seconds), _count(name, after or "0"))}


def _read_drip(name: str, value: str) -> dict[str, object]:
    size, _, interval_ms = value.partition("/")
    if not size.isdigit() or int(size) < 1:
        raise FaultError(f"fault 'drip' needs a positive byte count, got {size!r}")
    result: dict[str, object] = {"drip": int(size)}
    if interval_ms:
        result["drip_interval"] = _seconds(name, interval_ms) / 1000
    return result


def _read_status(name: str, value: str) -> dict[str, object]:
    if not value.isdigit() or not 400 <= int(value) <= 599:
        raise FaultError(f"fault 'status' needs an HTTP error status 400-599, got {value!r}")
    return {"status": int(value)}


def _read_ping(name: str, value: str) -> dict[str, object]:
    seconds = _seconds(name, value)
    if seconds <= 0:
        raise FaultError("fault 'ping-every' needs a positive number of seconds")
    return {"ping_every": seconds}


_FLAGS = {"split-utf8": "split_utf8", "crlf": "crlf", "no-final-blank-line": "no_final_blank_line"}
_READERS: dict[str, Callable[[str, str], dict[str, object]]] = {
    "cut-after": lambda n, v: {"cut_after": _count(n, v)},
    "reset-after": lambda n, v: {"reset_after": _count(n, v)},
    "stall": _read_stall,
    "drip": _read_drip,
    "status": _read_status,
    "ping-every": _read_ping,
}
_EXAMPLES = {
    "cut-after": "cut-after=3",
    "reset-after": "reset-after=3",
    "stall": "stall=5@2",
    "drip": "drip=4 or drip=4/50 (ms between writes)",
    "status": "status=429",
    "ping-every": "ping-every=2",
}


@dataclass(frozen=True)
class Write:
    at: float  # seconds after the request arrived
    data: bytes


@dataclass(frozen=True)
class Plan:
    head_at: float
    writes: tuple[Write, ...]
    end_at: float
    end: str  # "eof" | "reset" | "timeout" (stall until the client leaves)


_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)")


def event_ends(body: bytes) -> list[int]:
    """Offsets just past each blank line that closes a non-empty SSE block."""
    ends: list[int] = []
    in_block = False
    for match in _LINE.finditer(body):
        line = match.group()
        if line in (b"\n", b"\r", b"\r\n"):
            if in_block:
                ends.append(match.end())
            in_block = False
        elif not line.startswith(b":"):
            in_block = True  # a comment alone never makes a block dispatch
    return ends


def _split_utf8(data: bytes) -> list[bytes]:
    # Split just after the lead byte of the first multibyte character, so the
    # client must reassemble a character across two writes.
    for i, byte in enumerate(data):
        if byte >= 0xC0:
            return [data[: i + 1], data[i + 1 :]]
    return [data]


def plan_writes(
    chunks: Sequence[tuple[float, bytes]],
    *,
    head_ms: float,
    end_ms: float,
    end: str,
    speed: float,
    faults: Faults,
) -> Plan:
    """The timed writes for one replayed body (times in ms in, seconds out)."""

    def scale(ms: float) -> float:
        return 0.0 if speed == 0 else ms / 1000.0 / speed

    pieces = [(scale(t), data) for t, data in chunks if data]
    end_at = scale(end_ms)
    if faults.crlf:
        pieces = [(t, data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")) for t, data in pieces]
    if faults.no_final_blank_line and pieces and pieces[-1][1].endswith(b"\n"):
        t, data = pieces[-1]
        cut = 2 if data.endswith(b"\r\n") else 1
        pieces[-1] = (t, data[:-cut])
        pieces = [(t, d) for t, d in pieces if d]
    if faults.split_utf8:
        pieces = [(t, part) for t, data in pieces for part in _split_utf8(data) if part]
    if faults.drip:
        dripped: list[tuple[float, bytes]] = []
        not_before = 0.0
        for t, data in pieces:
            for start in range(0, len(data), faults.drip):
                at = max(t, not_before)
                dripped.append((at, data[start : start + faults.drip]))
                not_before = at + faults.drip_interval
        pieces = dripped
        end_at = max(end_at, not_before)

    body = b"".join(data for _, data in pieces)
    ends = event_ends(body)
    head_at = scale(head_ms)

    for after, how in ((faults.cut_after, "eof"), (faults.reset_after, "reset")):
        if after is not None and after <= len(ends):
            limit = ends[after - 1] if after else 0
            pieces, end_at = _truncate(pieces, limit, head_at)
            end = how
            body = body[:limit]
            ends = ends[:after]

    if faults.stall is not None:
        seconds, after = faults.stall
        if after == 0:
            head_at += seconds
            pieces = [(t + seconds, d) for t, d in pieces]
            end_at += seconds
        elif after <= len(ends):
            pieces, end_at = _delay_from(pieces, ends[after - 1], seconds, end_at)

    if faults.ping_every:
        ping = PING.replace(b"\n", b"\r\n") if faults.crlf else PING
        pieces = _add_pings(pieces, ends, faults.ping_every, head_at, end_at, ping)

    writes = tuple(Write(t, d) for t, d in pieces)
    return Plan(head_at=head_at, writes=writes, end_at=max(end_at, head_at), end=end)


def _truncate(
    pieces: list[tuple[float, bytes]], limit: int, head_at: float
) -> tuple[list[tuple[float, bytes]], float]:
    kept: list[tuple[float, bytes]] = []
    offset = 0
    last_t = head_at
    for t, data in pieces:
        if offset >= limit:
            break
        part = data[: limit - offset]
        kept.append((t, part))
        offset += len(part)
        last_t = t
    return kept, last_t


def _delay_from(
    pieces: list[tuple[float, bytes]], boundary: int, seconds: float, end_at: float
) -> tuple[list[tuple[float, bytes]], float]:
    shifted: list[tuple[float, bytes]] = []
    offset = 0
    for t, data in pieces:
        if offset < boundary < offset + len(data):
            # The Nth event ends inside this write: split it there.
            cut = boundary - offset
            shifted += [(t, data[:cut]), (t + seconds, data[cut:])]
        elif offset >= boundary:
            shifted.append((t + seconds, data))
        else:
            shifted.append((t, data))
        offset += len(data)
    return shifted, end_at + seconds


def _add_pings(
    pieces: list[tuple[float, bytes]],
    ends: list[int],
    every: float,
    head_at: float,
    end_at: float,
    ping: bytes = PING,
) -> list[tuple[float, bytes]]:
    # A ping may only go where the body sits between events; one that falls inside a
    # frame (a read that ends mid-frame) waits for that frame's end, or it would corrupt
    # it.  Pings that fell due while one frame was being sent go out as one, as Dify's
    # keep-alive only ever comes between events.
    boundaries = {0, *ends}
    result: list[tuple[float, bytes]] = []
    offset = 0
    next_ping = head_at + every
    waiting = False
    for t, data in pieces:
        if next_ping <= t and offset in boundaries:
            while next_ping <= t:
                result.append((next_ping, ping))
                next_ping += every
        elif next_ping <= t:
            waiting = True
            while next_ping <= t:
                next_ping += every
        result.append((t, data))
        offset += len(data)
        if waiting and offset in boundaries:
            result.append((t, ping))
            waiting = False
    while next_ping < end_at:
        result.append((next_ping, ping))
        next_ping += every
    return result
