"""Recording one live exchange into an ``sse-fixture/1`` file as it streams (no Twisted).

``ExchangeRecorder`` is fed what a relay sees -- the response head, each upstream read,
how it ended -- and appends it to a fixture file.  Three promises:

- **The file is always loadable.**  After every chunk line a provisional ``end`` record
  (``how: "reset"``, ``incomplete: true``) follows it; the next chunk overwrites it.  A
  proxy killed mid-stream leaves a fixture that says it was cut short.
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
from collections.abc import Callable, Sequence
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
) -> tuple[Request, str]:
    """The scrubbed ``Request`` record for a live request, and a note about it.

    ``size`` is the body's full length when ``body`` holds only its start (a caller need
    not read a 100 MB upload to learn that it is too big to store).
    """
    kept = tuple((n, v) for n, v in headers if n.lower() in RECORDED_HEADERS)
    query, _ = scrub_text(query, rules)
    content_type = next((v for n, v in kept if n.lower() == "content-type"), "")
    size = len(body) if size is None else size
    if size > MAX_RECORDED_BODY:
        note = f"request body of {size} bytes not stored; any body matches"
        return Request(method, path, query, kept, match=MatchRules(keys=())), note
    clean, _ = scrub_bytes(body, rules)
    if content_type.lower().startswith("application/json"):
        try:
            value = json.loads(clean)
        except ValueError:
            pass
        else:
            return Request.with_json(method, path, value, query=query, headers=kept), ""
    if not clean:
        return Request(method, path, query, kept), ""
    return Request(method, path, query, kept, body=clean, match=MatchRules(keys=())), ""


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
        self._out: io.TextIOWrapper | None = None
        self._writer: FixtureWriter | None = None
        self._tail = 0  # where the provisional end record starts
        self._good_end: bytes | None = None  # that record's bytes, to restore after an error

    def _ms(self) -> float:
        return round((self.now() - self.started) * 1000, 3)

    def response(self, status: int, headers: Sequence[tuple[str, str]]) -> None:
        """The response head arrived: create the file and write the head records."""
        if self._writer is not None or self.failed is not None:
            return
        try:
            # Read-write only so that _provisional_end can read its own record back.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            self._out = open(fd, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
            self._writer = FixtureWriter(
                self._out,
                self.fixture_id,
                self.provenance,
                self.request,
                Response(self._ms(), status, tuple(headers)),
                notes=self.notes,
                scrubbed=tuple(rule.name for rule in self.rules),
            )
            self._provisional_end()
        except OSError as error:
            self._fail(error)

    def chunk(self, data: bytes) -> None:
        """One upstream read, as it was passed to the client."""
        if self._writer is None or self.ended:
            return
        self._write(self._scrubber.push(self._ms(), data))

    def end(self, how: str) -> None:
        """The exchange is over: ``eof``, ``reset`` (upstream or client cut it), ``timeout``."""
        if self._writer is None or self.ended:
            return
        self.ended = True
        pieces = self._scrubber.flush()
        try:
            assert self._out is not None
            self._out.seek(self._tail)
            for t, data in pieces:
                self._writer.chunk(t, data)
            self._writer.end(self._ms(), how, incomplete=how != "eof")
            self._out.truncate()
            self._out.close()
        except OSError as error:
            self._fail(error)

    def _write(self, pieces: list[tuple[float, bytes]]) -> None:
        if not pieces:
            return
        assert self._writer is not None and self._out is not None
        try:
            self._out.seek(self._tail)
            for t, data in pieces:
                self._writer.chunk(t, data)
            self._provisional_end()
        except OSError as error:
            self._fail(error)

    def _provisional_end(self) -> None:
        assert self._writer is not None and self._out is not None
        self._tail = self._out.tell()
        self._writer.end(self._ms(), "reset", incomplete=True)
        size = self._out.truncate()
        self._good_end = os.pread(self._out.fileno(), size - self._tail, self._tail)

    def _fail(self, error: OSError) -> None:
        self.failed = error
        self.ended = True
        out, self._out = self._out, None
        if out is None:
            return
        with contextlib.suppress(OSError, ValueError):
            out.close()  # may flush what failed once more: the file is cut back below
        # Best effort: with the disk full, cutting frees the room the old record needs.
        with contextlib.suppress(OSError):
            if self._good_end is None:
                os.unlink(self.path)  # not even the head made it: nothing loadable to keep
                return
            fd = os.open(self.path, os.O_WRONLY)
            try:
                os.ftruncate(fd, self._tail)
                os.pwrite(fd, self._good_end, self._tail)
            finally:
                os.close(fd)
