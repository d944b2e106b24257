"""Server-Sent Events wire format: an incremental sans-IO decoder and an encoder.

This module owns the ``text/event-stream`` codec every other part of difytw
uses: the proxy side-parses each relayed stream with :class:`Decoder`, the
replay server and tests build frames with :func:`encode`.  It is pure (stdlib
only, no I/O, no Twisted): bytes go in through :meth:`Decoder.feed`, parsed
items come out, in the style of h11.

The decoder follows WHATWG HTML "9.2.6 Interpreting an event stream" (cited
below as "9.2.6").  It works on bytes with ``splitlines``/``find`` and keeps
the unfinished line as a list of pieces, so a multi-megabyte Dify frame that
arrives in thousands of small reads costs O(n) in total.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

__all__ = [
    "Comment",
    "Decoder",
    "Event",
    "EventTooLarge",
    "SSEError",
    "decode",
    "encode",
    "encode_comment",
]

_BOM = b"\xef\xbb\xbf"
_CR = 0x0D
_LF = 0x0A
_COLON = 0x3A


@dataclass(frozen=True, slots=True)
class Event:
    """A dispatched event (9.2.6 "dispatch the event")."""

    data: str = ""
    # 9.2.6: the type is "message" when the event type buffer is empty.
    event: str = "message"
    # The last event ID buffer at dispatch time; it persists across events.
    id: str = ""
    # The retry value seen in this block, if any (informational only).
    retry: int | None = None


@dataclass(frozen=True, slots=True)
class Comment:
    """A line starting with a colon; only yielded by ``Decoder(comments=True)``."""

    # Raw text after the colon: 9.2.6 gives comments no value, so no space is stripped.
    text: str


class SSEError(ValueError):
    """The event stream cannot be decoded (or the decoder was misused)."""


class EventTooLarge(SSEError):
    """A pending line or event went over ``Decoder(max_event_size=...)``.

    ``decoded`` holds the items the failing ``feed`` call had already decoded
    before the oversized event, so a caller can still deliver them.
    """

    def __init__(self, limit: int, size: int, decoded: list[Event | Comment] | None = None) -> None:
        super().__init__(f"SSE event exceeds {limit} bytes ({size} bytes reached)")
        self.limit = limit
        self.size = size
        self.decoded: list[Event | Comment] = decoded if decoded is not None else []


def _utf8(raw: bytes) -> str:
    # 9.2.6 decodes the stream with "UTF-8 decode": invalid bytes become U+FFFD.
    # Decoding whole lines (never whole feeds) keeps split sequences intact, and
    # since CR and LF are ASCII the replacement result is the same as decoding
    # the stream in one go.
    return raw.decode("utf-8", "replace")


class Decoder:
    """Incremental event stream parser: ``feed`` bytes, get Events (and Comments).

    ``max_event_size`` caps the bytes held for one line or one event (no cap by
    default: Dify frames reach megabytes).  ``dispatch_empty`` also dispatches
    blocks whose data buffer is empty but that had a field line, such as Dify's
    ``event: ping`` keep-alive.  ``comments`` yields comment lines.
    """

    def __init__(
        self,
        *,
        max_event_size: int | None = None,
        dispatch_empty: bool = False,
        comments: bool = False,
    ) -> None:
        self._max = max_event_size
        self._dispatch_empty = dispatch_empty
        self._comments = comments
        # The unfinished line, as pieces; joined once when its line end arrives.
        self._pending: list[bytes] = []
        self._pending_len = 0
        # Stream start, until we know whether it begins with a BOM (it may be split).
        self._head: bytes | None = b""
        # The previous feed ended in CR: an LF starting the next feed ends nothing.
        self._skip_lf = False
        self._closed = False
        self._failure: EventTooLarge | None = None
        # 9.2.6 buffers: data, event type, last event ID; plus this block's retry.
        self._data: list[str] = []
        self._event = ""
        self._last_id = ""
        self._retry: int | None = None
        self._had_field = False
        self._block_size = 0

    @property
    def buffered(self) -> int:
        """Bytes held waiting for a line end."""
        return self._pending_len + (len(self._head) if self._head else 0)

    def feed(self, data: bytes) -> list[Event | Comment]:
        """Consume the next bytes of the stream; return the items they complete."""
        if self._failure is not None:
            raise EventTooLarge(self._failure.limit, self._failure.size)
        if self._closed:
            raise SSEError("feed() after close()")
        if self._head is not None:
            data = self._strip_bom(data)
        if self._skip_lf and data:
            # 9.2.6: CRLF is one line end, even when a read boundary splits it.
            self._skip_lf = False
            if data[0] == _LF:
                data = data[1:]
        if not data:
            return []
        out: list[Event | Comment] = []
        if b"\n" not in data and b"\r" not in data:
            self._hold(data, out)
            return out
        lines = data.splitlines()
        last = data[-1]
        if last in (_CR, _LF):
            self._skip_lf = last == _CR
            tail = b""
        else:
            tail = lines.pop()
        if self._pending:
            self._pending.append(lines[0])
            lines[0] = b"".join(self._pending)
            self._pending = []
            self._pending_len = 0
        for line in lines:
            self._line(line, out)
        if tail:
            self._hold(tail, out)
        return out

    def close(self) -> list[Event | Comment]:
        """End of stream: 9.2.6 discards pending data, so nothing is dispatched."""
        self._closed = True
        # "If the file ends in the middle of an event, before the final empty
        # line, the incomplete event is not dispatched" (9.2.6).
        self._pending = []
        self._pending_len = 0
        self._head = None
        self._reset_block()
        return []

    def _strip_bom(self, data: bytes) -> bytes:
        # 9.2.6 "UTF-8 decode" strips one leading BOM, only at the very start of
        # the stream; hold up to 3 bytes until we can tell.
        assert self._head is not None
        head = self._head + data
        if len(head) < len(_BOM) and _BOM.startswith(head):
            self._head = head
            return b""
        self._head = None
        return head[len(_BOM) :] if head.startswith(_BOM) else head

    def _hold(self, piece: bytes, out: list[Event | Comment]) -> None:
        self._pending.append(piece)
        self._pending_len += len(piece)
        if self._max is not None:
            size = self._pending_len
            if self._pending[0][0] != _COLON:
                size += self._block_size
            if size > self._max:
                self._fail(size, out)

    def _fail(self, size: int, out: list[Event | Comment]) -> None:
        assert self._max is not None
        # The stream cannot be resynchronised mid-line, so the decoder stays failed.
        self._failure = EventTooLarge(self._max, size, out)
        self._pending = []
        self._pending_len = 0
        self._reset_block()
        raise self._failure

    def _reset_block(self) -> None:
        self._data = []
        self._event = ""
        self._retry = None
        self._had_field = False
        self._block_size = 0

    def _line(self, line: bytes, out: list[Event | Comment]) -> None:
        if not line:
            # 9.2.6: "If the line is empty (a blank line) -> Dispatch the event".
            if self._data or (self._dispatch_empty and self._had_field):
                # Joining with LF is the same as appending value+LF per data line
                # and then removing the buffer's last LF (9.2.6 dispatch step 3).
                out.append(
                    Event(
                        "\n".join(self._data), self._event or "message", self._last_id, self._retry
                    )
                )
            # Dispatch steps 2 and 6: the data and event type buffers are reset
            # whether or not an event fired; the last event ID buffer is kept.
            self._reset_block()
            return
        if line[0] == _COLON:
            # 9.2.6: "If the line starts with a U+003A COLON character -> Ignore the line."
            # Still capped, so that whether the cap trips never depends on chunking.
            if self._max is not None and len(line) > self._max:
                self._fail(len(line), out)
            if self._comments:
                out.append(Comment(_utf8(line[1:])))
            return
        self._had_field = True
        if self._max is not None:
            self._block_size += len(line)
            if self._block_size > self._max:
                self._fail(self._block_size, out)
        colon = line.find(b":")
        if colon < 0:
            # 9.2.6: no colon -> the whole line is the field name, the value is empty.
            name = line
            value = b""
        else:
            name = line[:colon]
            # 9.2.6: "If value starts with a U+0020 SPACE character, remove it" (one only).
            start = colon + 2 if line[colon + 1 : colon + 2] == b" " else colon + 1
            value = line[start:]
        # Field names compare on bytes: a name with invalid UTF-8 decodes to
        # something containing U+FFFD, which matches no known field either way.
        if name == b"data":
            self._data.append(_utf8(value))
        elif name == b"event":
            self._event = _utf8(value)
        elif name == b"id":
            # 9.2.6: an id containing U+0000 NULL is ignored.
            if b"\x00" not in value:
                self._last_id = _utf8(value)
        elif name == b"retry" and value.isdigit():
            # 9.2.6: only ASCII digits count (bytes.isdigit is ASCII-only), else ignore.
            # Beyond Python's int-from-string digit limit there is no sane delay: ignore.
            with contextlib.suppress(ValueError):
                self._retry = int(value)
        # 9.2.6: any other field name is ignored.


def encode(event: Event) -> bytes:
    """Serialise one event so that ``Decoder().feed(encode(e)) == [e]``.

    Raises ValueError for values that could not survive a round trip.
    """
    if not event.event:
        raise ValueError("SSE event type must not be empty (it would decode as 'message')")
    for name, value in (("event", event.event), ("id", event.id)):
        if "\r" in value or "\n" in value:
            raise ValueError(f"SSE {name} must not contain CR or LF: {value!r}")
    if "\x00" in event.id:
        # 9.2.6 ignores an id containing NULL, so it would never arrive.
        raise ValueError(f"SSE id must not contain NUL: {event.id!r}")
    if "\r" in event.data:
        # Data lines are split on LF only; a CR would end a line on the other side.
        raise ValueError("SSE data must not contain CR")
    if event.retry is not None and event.retry < 0:
        raise ValueError(f"SSE retry must be a non-negative integer: {event.retry!r}")
    parts: list[str] = []
    if event.event != "message":
        parts.append(f"event: {event.event}\n")
    if event.id:
        parts.append(f"id: {event.id}\n")
    if event.retry is not None:
        parts.append(f"retry: {event.retry}\n")
    # Always at least one data line: an empty data buffer would not be dispatched.
    parts.extend(f"data: {line}\n" for line in event.data.split("\n"))
    parts.append("\n")
    return "".join(parts).encode("utf-8")


def encode_comment(text: str) -> bytes:
    """A comment line: ``b":" + text + b"\\n"`` (e.g. a keep-alive)."""
    if "\r" in text or "\n" in text:
        raise ValueError(f"SSE comment must not contain CR or LF: {text!r}")
    return b":" + text.encode("utf-8") + b"\n"


def decode(
    data: bytes,
    *,
    max_event_size: int | None = None,
    dispatch_empty: bool = False,
    comments: bool = False,
) -> list[Event | Comment]:
    """Decode a whole stream at once (``feed`` then ``close``)."""
    decoder = Decoder(
        max_event_size=max_event_size, dispatch_empty=dispatch_empty, comments=comments
    )
    return decoder.feed(data) + decoder.close()
