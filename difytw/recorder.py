"""Recording one live exchange into an ``sse-fixture/1`` file as it streams (no Twisted).

``ExchangeRecorder`` is fed what a relay sees -- the response head, each upstream read,
how it ended -- and appends it to a fixture file.  Three promises:

- **The file is always loadable.**  After every chunk line a provisional ``end`` record
  (``how: "reset"``, ``incomplete: true``) follows it; the next chunks and their new end
  overwrite it in one write.  A proxy killed mid-stream leaves a fixture that says it was
  cut short.  The ``fixture`` line lists the scrub rules that matched so far; it is padded
  to the width of all of them and rewritten in place when one more matches.
- **Secrets never reach the disk**, even one split across two reads: chunks pass a
  ``StreamingScrubber`` that holds back a read only while what ends it could still start
  a secret (``app-Ab``, ``Bear``, an open JSON string as short as the user), scrubs the
  joined bytes and cuts them again at the original read boundaries (``difytw.scrub``).
- **Recording never disturbs the stream**: a write error marks the recording failed
  (the caller logs it) and every later call is a no-op.  The file is cut back to its last
  good provisional ``end`` (a full disk can leave half a line), or removed when not even
  the head was written.

Files are created ``0600`` and never overwritten.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from difytw.fixture import MatchRules, Request, Response
from difytw.fixturewrite import FixtureWriter
from difytw.scrub import Rule, StreamingScrubber, scrub_bytes, scrub_text

# Request headers worth keeping in a fixture: what Dify acts on, never credentials.
RECORDED_HEADERS = ("content-type", "accept", "x-trace-id", "traceparent")
MAX_RECORDED_BODY = 1 << 20  # larger request bodies (uploads) are noted, not stored


def recorded_request(
    method: str,
    path: str,
    query: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    rules: Sequence[Rule],
    *,
    size: int | None = None,
) -> tuple[Request, str, set[str]]:
    """The scrubbed ``Request`` record for a live request, a note about it, and the names
    of the rules that matched in it.

    ``size`` is the body's full length when ``body`` holds only its start (a caller need
    not read a 100 MB upload to learn that it is too big to store).
    """
    kept = tuple((n, v) for n, v in headers if n.lower() in RECORDED_HEADERS)
    query, applied = scrub_text(query, rules)
    content_type = next((v for n, v in kept if n.lower() == "content-type"), "")
    size = len(body) if size is None else size
    if size > MAX_RECORDED_BODY:
        note = f"request body of {size} bytes not stored; any body matches"
        return Request(method, path, query, kept, match=MatchRules(keys=())), note, applied
    clean, in_body = scrub_bytes(body, rules)
    applied |= in_body
    if content_type.lower().startswith("application/json"):
        try:
            value = json.loads(clean)
        except ValueError:
            pass
        else:
            return Request.with_json(method, path, value, query=query, headers=kept), "", applied
    if not clean:
        return Request(method, path, query, kept), "", applied
    stored = Request(method, path, query, kept, body=clean, match=MatchRules(keys=()))
    return stored, "", applied


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def fixture_name(started: float, method: str, path: str, serial: int) -> str:
    """A fixture id (and file stem) that sorts by time and says what it was."""
    slug = _UNSAFE.sub("-", path.strip("/")).strip("-")[:60] or "root"
    stamp = f"{started:.3f}".replace(".", "-")
    return f"rec-{stamp}-{method.lower()}-{slug}-{serial}"


class ExchangeRecorder:
    """Appends one exchange to ``directory/<id>.jsonl``; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        fixture_id: str,
        *,
        request: Request,
        rules: Sequence[Rule],
        now: Callable[[], float],
        provenance: str = "recorded by difytw",
        notes: str = "",
        scrubbed: Iterable[str] = (),
    ) -> None:
        self.path = directory / f"{fixture_id}.jsonl"
        self.fixture_id = fixture_id
        self.request = request
        self.rules = list(rules)
        self.now = now
        self.started = now()
        self.provenance = provenance
        self.notes = notes
        self.failed: OSError | None = None
        self.ended = False
        self._scrubber = StreamingScrubber(self.rules)
        self._applied = set(scrubbed)  # rules that matched in the request and response head
        self._named: tuple[str, ...] = ()  # the names the fixture line on disk lists
        self._fd: int | None = None
        self._lines = io.StringIO()  # what the writer wrote, until it goes out in one write
        self._writer: FixtureWriter | None = None
        self._tail = 0  # where the provisional end record starts
        self._good_end: bytes | None = None  # that record's bytes, to restore after an error

    @property
    def scrubbed(self) -> tuple[str, ...]:
        """The names of the rules that matched so far, in rule order (issue 4 item 3)."""
        applied = self._applied | self._scrubber.applied
        return tuple(dict.fromkeys(rule.name for rule in self.rules if rule.name in applied))

    def _ms(self) -> float:
        return round((self.now() - self.started) * 1000, 3)

    def response(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        """The response head arrived: create the file and write the head records."""
        if self._writer is not None or self.failed is not None:
            return
        kept = []
        for name, value in headers:
            # Values are scrubbed too: a header may echo a token as well as a body can.
            clean, applied = scrub_text(value, self.rules)
            self._applied |= applied
            kept.append((name, clean))
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as error:
            self._fail(error)
            return
        self._named = self.scrubbed
        self._writer = FixtureWriter(
            self._lines,
            self.fixture_id,
            self.provenance,
            self.request,
            Response(self._ms(), status, tuple(kept)),
            notes=self.notes,
            scrubbed=self._named,
            reserve=tuple(dict.fromkeys(rule.name for rule in self.rules)),
        )
        self._append([], "reset")

    def chunk(self, data: bytes) -> None:
        """One upstream read, as it was passed to the client."""
        if self._writer is None or self.ended:
            return
        pieces = self._scrubber.push(self._ms(), data)
        if pieces:
            self._append(pieces, "reset")

    def end(self, how: str) -> None:
        """The exchange is over: ``eof``, ``reset`` (upstream or client cut it), ``timeout``."""
        if self._writer is None or self.ended:
            return
        self.ended = True
        self._append(self._scrubber.flush(), how)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _take(self) -> bytes:
        text = self._lines.getvalue()
        self._lines.seek(0)
        self._lines.truncate()
        return text.encode("utf-8")

    def _append(self, pieces: list[tuple[float, bytes]], how: str) -> None:
        """New chunk lines and an end record over the old end, in one write: a recording
        killed at any moment is a loadable fixture (until ``end``, a provisional one)."""
        assert self._writer is not None and self._fd is not None
        try:
            names = self.scrubbed
            if names != self._named:
                # The same width as the line on disk (FixtureWriter pads it): one write.
                os.pwrite(self._fd, self._writer.fixture_line(names).encode("utf-8"), 0)
                self._named = names
            for t, data in pieces:
                self._writer.chunk(t, data)
            lines = self._take()
            self._writer.end(self._ms(), how, incomplete=how != "eof")
            end = self._take()
            new = lines + end
            old = len(self._good_end or b"")
            # Never shorter than the end record it replaces: a blank line (which readers
            # skip) pads it, so no piece of the old record survives after the new one.
            padded = new + (b" " * (old - len(new) - 1) + b"\n" if len(new) < old else b"")
            _write_all(self._fd, padded, self._tail)
            if len(padded) > len(new):
                os.ftruncate(self._fd, self._tail + len(new))
            self._tail += len(lines)
            self._good_end = end
        except OSError as error:
            self._fail(error)

    def _fail(self, error: OSError) -> None:
        self.failed = error
        self.ended = True
        fd, self._fd = self._fd, None
        if fd is None:
            return  # the file was never ours: leave it
        # Best effort: with the disk full, cutting frees the room the old record needs.
        with contextlib.suppress(OSError):
            try:
                if self._good_end is None:
                    os.unlink(self.path)  # not even the head made it: nothing loadable to keep
                else:
                    os.ftruncate(fd, self._tail)
                    _write_all(fd, self._good_end, self._tail)
            finally:
                os.close(fd)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    # One pwrite for a regular file unless the disk fills mid-way; then the next raises.
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
