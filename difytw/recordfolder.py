"""Where recordings go, and the tap that tees one live exchange into a fixture (issue 4).

``RecordFolder`` is a ``--record DIR`` of difyproxy, or the ``--fixtures DIR`` of a
difyreplay that records its misses.  It is checked before anything listens (``check``:
an unwritable folder stops startup with the folder and the reason), holds the scrub rules
(the defaults, the upstream key itself, ``--scrub`` rules) and names each new fixture.

``RecordFolder.tap`` makes one ``RecordingTap`` per exchange *before* the request goes
upstream, because fixture times count from the request (docs/fixture-format.md).  A relay
then calls ``response`` once the head is in, ``chunk`` after each read was written to the
client (BodyRelay's observer: the client never waits for the disk) and ``end`` with how the
relay ended.  A tap never raises into the stream: a write error is logged once, the stream
goes on, and the file keeps the recorder's provisional ``end`` (reset, incomplete).
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

from twisted.logger import Logger

from difytw.fixture import Fixture, FixtureError, load
from difytw.headers import client_response_headers
from difytw.recorder import MAX_RECORDED_BODY, ExchangeRecorder, fixture_name, recorded_request
from difytw.relay import BodyObserver, RelayEnd
from difytw.scrub import Rule, literal_rule, rules_for
from difytw.stopper import body_user, query_user

_log = Logger()

# Response headers a fixture leaves out: Set-Cookie is a credential (issue 4 item 1), and
# the framing headers belong to the server that serves the fixture (fixture-format.md 3).
_NOT_RECORDED = frozenset({b"set-cookie", b"set-cookie2", b"content-length"})
# How a relay's end reads in a fixture's ``end`` record; every other end (the client left,
# the proxy cut a stream that ran too long) aborted the upstream connection: "reset".
_HOW = {RelayEnd.COMPLETED: "eof", RelayEnd.IDLE_TIMEOUT: "timeout"}


class FolderError(ValueError):
    """A record folder that cannot take recordings; the message names it and says why."""


def key_rule(api_key: str) -> Rule:
    """A rule for the upstream key itself: the default rule only knows ``app-`` keys of
    letters and digits, and a key of any other shape must not reach the disk either."""
    return literal_rule("upstream-key", api_key.encode("utf-8"), b"app-scrubbed")


class RecordFolder:
    """A folder that new fixtures are recorded into; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        *,
        now: Callable[[], float],
        rules: Sequence[Rule] = (),
        api_key: str | None = None,
        provenance: str = "recorded by difytw",
    ) -> None:
        self.directory = directory
        self.now = now
        self.extra_rules = ([key_rule(api_key)] if api_key else []) + list(rules)
        self.provenance = provenance
        self._serial = itertools.count(1)

    @staticmethod
    def check(directory: Path, flag: str) -> None:
        """Refuse a folder that is missing or cannot be written, before anything listens."""
        if not directory.is_dir():
            raise FolderError(f"{flag} {directory}: not a directory")
        try:
            # Creating a file is the only honest test: os.access says yes to root on a
            # read-only mount or a pseudo file system.
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise FolderError(f"{flag} {directory}: cannot write there ({reason})") from None

    def tap(
        self,
        method: bytes,
        url: bytes,
        headers: Iterable[tuple[bytes, Sequence[bytes]]],
        body: IO[bytes] | None,
        *,
        user: str | None = None,
    ) -> RecordingTap:
        """A tap for one request to upstream ``url``; ``body`` is the spooled request body,
        read here up to the size a fixture stores and left at position 0."""
        parts = urlsplit(url.decode("latin-1"))
        path, query = parts.path or "/", parts.query
        pairs = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, values in headers
            for value in values
        ]
        content_type = next((v for n, v in pairs if n.lower() == "content-type"), "")
        data, size = b"", 0
        if body is not None:
            body.seek(0, 2)
            size = body.tell()
            body.seek(0)
            data = body.read(MAX_RECORDED_BODY + 1)
            body.seek(0)
        if user is None:
            user = query_user(query.encode("latin-1"))
            if size <= MAX_RECORDED_BODY:
                user = body_user(content_type.encode("latin-1"), data) or user
        rules = rules_for(user, self.extra_rules)
        request, note, scrubbed = recorded_request(
            method.decode("latin-1"), path, query, pairs, data, rules, size=size
        )
        started = self.now()
        recorder = ExchangeRecorder(
            self.directory,
            fixture_name(started, request.method, path, next(self._serial)),
            request=request,
            rules=rules,
            now=self.now,
            provenance=self.provenance,
            notes=note,
            scrubbed=scrubbed,
        )
        return RecordingTap(recorder)


class RecordingTap:
    """Feeds one exchange to its ``ExchangeRecorder``; see the module docstring.

    ``on_end`` callables get the recorded ``Fixture`` once the file is final and loads.
    """

    def __init__(self, recorder: ExchangeRecorder) -> None:
        self.recorder = recorder
        self.on_end: list[Callable[[Fixture], object]] = []
        self._lost_reads = False
        self._reported = False

    @property
    def path(self) -> Path:
        return self.recorder.path

    def response(self, status: int, headers: Iterable[tuple[bytes, Sequence[bytes]]]) -> None:
        # The recorder scrubs the values (a header may echo a token as well as a body can).
        kept = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, values in client_response_headers(headers, stream=False)
            if name.lower() not in _NOT_RECORDED
            for value in values
        ]
        self.recorder.response(status, kept)
        self._report()

    def chunk(self, data: bytes) -> None:
        self.recorder.chunk(data)
        self._report()

    def observing(self, other: BodyObserver | None) -> BodyObserver:
        """A relay observer that records each read, then passes it to ``other``."""
        if other is None:
            return self.chunk
        watched = other

        def both(data: bytes) -> None:
            self.chunk(data)
            try:
                watched(data)
            except Exception:
                # The relay detaches an observer that raises, so later reads would go
                # unrecorded: the fixture must then not claim a whole body.
                self._lost_reads = True
                raise

        return both

    def end(self, end: RelayEnd) -> None:
        how = "reset" if self._lost_reads else _HOW.get(end, "reset")
        if self.recorder.ended:
            return
        self.recorder.end(how)
        self._report()
        # Not ended: no response head ever came, so there is no file.
        if not self.recorder.ended or self.recorder.failed is not None or not self.on_end:
            return
        try:
            fixture = load(self.recorder.path)
        except (OSError, FixtureError) as error:
            _log.error(
                "recorded fixture {path} does not load: {error}",
                path=str(self.path),
                error=str(error),
            )
            return
        for listener in self.on_end:
            listener(fixture)

    def _report(self) -> None:
        failed = self.recorder.failed
        if failed is None or self._reported:
            return
        self._reported = True
        # The stream goes on (issue 4: "the live stream continues untouched"); the file, if
        # it was created, still ends with the provisional incomplete end record.
        _log.error(
            "recording {path} stopped: {error}; the fixture is left incomplete",
            path=str(self.path),
            error=failed.strerror or str(failed),
        )
