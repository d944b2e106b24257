"""HTTP/1.1 chunked transfer coding, decoded one read at a time (pure, sans-IO).

difyproxy relays Dify's streams, which arrive chunked (one chunk per SSE event, dozens
per socket read when the stream is fast).  Twisted's own decoder handles one chunk per
pass of a state machine and hands each chunk on separately, so a read of 60 events cost
~60 trips through the HTTP client, the response and the relay (issue 3 item 10: proxy
CPU per event).  ``ChunkedDecoder`` decodes everything a read holds in one loop and hands
the body bytes of that read on with one call: the same bytes, in the same order, at the
same moment (a read is never held back waiting for a later one).

It is strict where RFC 9112 section 7.1 is: the size is hex digits only (no sign, no
``0x``, no spaces), an extension is ``;`` followed by visible characters, every chunk ends
in CRLF, and the size line is capped (1024 bytes, as Twisted caps it) as are the trailers
(64 KiB, discarded: a proxy that relays the body and not the trailers has no use for
them).  Anything else raises ``ChunkedError`` and the connection is given up, which the
relay reports as an upstream that broke the stream.

No Twisted import: ``upstream`` adapts it to Twisted's HTTP client.
"""

from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["MAX_SIZE_LINE", "MAX_TRAILERS", "ChunkedDecoder", "ChunkedError"]

MAX_SIZE_LINE = 1024
MAX_TRAILERS = 64 * 1024

# RFC 9112 section 7.1: chunk-size = 1*HEXDIG, then chunk-ext = *( ";" ... ) whose
# names, values and quoted strings are visible ASCII, space and tab.  Sixteen hex digits
# are already 2**64: a longer size is a broken or hostile peer.
# The extension's length is capped so that a whole size line stays under MAX_SIZE_LINE.
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})(?:;[\t\x20-\x7e]{0,1000})?\r\n")

# States between reads.
_SIZE = 0  # reading a size line
_BODY = 1  # inside a chunk's data; ``_left`` bytes to go
_CRLF = 2  # the CRLF after a chunk's data
_TRAILER = 3  # after the last chunk: trailer lines up to an empty one
_DONE = 4


class ChunkedError(ValueError):
    """The body is not valid chunked coding."""


class ChunkedDecoder:
    """Decodes a chunked body; see the module docstring.

    ``on_data(bytes)`` gets the body bytes of each ``feed`` that carries any, once per
    feed.  ``on_done(rest)`` is called once, after the last chunk and its trailers, with
    whatever the feed held after the body (the next response on a kept-alive connection).
    """

    def __init__(self, on_data: Callable[[bytes], object], on_done: Callable[[bytes], object]):
        self._on_data = on_data
        self._on_done = on_done
        self._state = _SIZE
        self._left = 0  # bytes of the current chunk's data still to come
        self._partial = b""  # an unfinished size line, CRLF or trailer line
        self._trailers = 0  # trailer bytes seen

    @property
    def done(self) -> bool:
        """Whether the terminal chunk and its trailers have been read."""
        return self._state == _DONE

    def feed(self, data: bytes) -> None:
        """Decode the next bytes of the body."""
        if self._state == _DONE:
            raise ChunkedError("data after the end of a chunked body")
        if self._partial:
            data = self._partial + data
            self._partial = b""
        pieces: list[bytes] = []
        try:
            self._decode(data, pieces)
        finally:
            # Bytes decoded before a fault still go out: they were valid, and a relay
            # that reports the fault after them loses nothing that was sent correctly.
            if pieces:
                self._on_data(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if self._state == _DONE:
            rest, self._partial = self._partial, b""
            self._on_done(rest)

    def _decode(self, data: bytes, pieces: list[bytes]) -> None:
        end = len(data)
        pos = 0
        state = self._state
        left = self._left
        match = _SIZE_LINE.match
        try:
            while pos < end:
                if state == _BODY:
                    take = end - pos if end - pos < left else left
                    pieces.append(data if take == end else data[pos : pos + take])
                    pos += take
                    left -= take
                    if left == 0:
                        state = _CRLF
                elif state == _CRLF:
                    if end - pos < 2:
                        if data[pos] != 0x0D:
                            raise ChunkedError("chunk data not followed by CRLF")
                        self._partial = data[pos:]
                        return
                    if data[pos] != 0x0D or data[pos + 1] != 0x0A:
                        raise ChunkedError("chunk data not followed by CRLF")
                    pos += 2
                    state = _SIZE
                elif state == _SIZE:
                    # Whole chunks and their CRLFs, as many as this read holds, in one
                    # tight loop: the common case on a busy stream.
                    append = pieces.append
                    while True:
                        found = match(data, pos)
                        if found is None:
                            self._size_line_incomplete(data, pos, end)
                            self._partial = data[pos:]
                            return
                        pos = found.end()
                        left = int(found[1], 16)
                        if not left:
                            state = _TRAILER
                            break
                        stop = pos + left
                        if not data.startswith(b"\r\n", stop):
                            state = _BODY  # the chunk goes on in the next read, or is bad
                            break
                        append(data[pos:stop])
                        pos = stop + 2
                        left = 0
                        if pos >= end:
                            break
                elif state == _TRAILER:
                    eol = data.find(b"\r\n", pos)
                    if eol < 0:
                        if self._trailers + end - pos > MAX_TRAILERS:
                            raise ChunkedError("trailers too long")
                        self._partial = data[pos:]
                        return
                    self._trailers += eol + 2 - pos
                    if self._trailers > MAX_TRAILERS:
                        raise ChunkedError("trailers too long")
                    empty = eol == pos
                    pos = eol + 2
                    if empty:
                        state = _DONE
                        self._partial = data[pos:]
                        return
                else:  # _DONE is handled by the caller; nothing else exists
                    raise AssertionError(state)
        finally:
            self._state = state
            self._left = left

    @staticmethod
    def _size_line_incomplete(data: bytes, pos: int, end: int) -> None:
        """Raise unless ``data[pos:]`` can still become a valid size line."""
        eol = data.find(b"\r\n", pos)
        if eol >= 0:
            raise ChunkedError(f"invalid chunk size line {bytes(data[pos:eol][:40])!r}")
        if end - pos >= MAX_SIZE_LINE:
            raise ChunkedError(f"chunk size line over {MAX_SIZE_LINE} bytes")
        # A prefix of a valid line matches the pattern once CRLF is appended, whatever
        # the cut: only the final CR may be missing its LF.
        tail = data[pos:]
        probe = tail + b"\n" if tail.endswith(b"\r") else tail + b"\r\n"
        if _SIZE_LINE.fullmatch(probe) is None:
            raise ChunkedError(f"invalid chunk size line {bytes(tail[:40])!r}")

    def close(self) -> None:
        """The connection ended: raise ``ChunkedError`` unless the body was complete."""
        if self._state != _DONE:
            raise ChunkedError("connection closed inside a chunked body")
