"""The ``sse-fixture/1`` format: one recorded (or authored) Dify exchange per JSONL file.

This module owns the fixture data model and the loader that assembles a file's records
into it (order, timing, the ``end`` check); validation reports every problem as
``path:line: problem``.  One line as a typed record, and the ``chunk``/``event`` body
records, are ``difytw.fixturerecord``.  Writing (the canonical form and the live appender
a recorder uses) lives in ``difytw.fixturewrite``.  Pure: stdlib and ``difytw.fixturerecord``
only.  The format reference is docs/fixture-format.md.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

# FixtureError is this module's too: load() and loads() raise it, and their callers
# import it from here.
from difytw.fixturerecord import FixtureError as FixtureError
from difytw.fixturerecord import Record, chunk_data, compact_json, event_bytes

FORMAT = "sse-fixture/1"
# Keys that change on every real request, so they never take part in matching by default.
DEFAULT_IGNORE = (
    "user",
    "conversation_id",
    "response_mode",
    "auto_generate_name",
    "trace_id",
    "files",
)
END_HOWS = ("eof", "reset", "timeout")
# Credentials are never recorded: a fixture directory is committed and shared.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class MatchRules:
    """Which incoming requests a fixture answers (see difytw.fixtureindex)."""

    keys: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = DEFAULT_IGNORE
    keywords: tuple[str, ...] = ()
    fallback: bool = False


@dataclass(frozen=True)
class Request:
    """The recorded request; ``body`` is the compact JSON when ``has_json``."""

    method: str
    path: str
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    json: Any = None
    body: bytes | None = None
    has_json: bool = False
    match: MatchRules = MatchRules()

    def __hash__(self) -> int:
        # ``json`` may be a dict; ``body`` carries the same information, hashably.
        return hash((self.method, self.path, self.query, self.headers, self.body))

    @classmethod
    def with_json(cls, method: str, path: str, value: Any, **fields: Any) -> Request:
        """A request whose body is the JSON ``value`` (``body`` derived from it)."""
        return cls(method, path, json=value, body=compact_json(value), has_json=True, **fields)


@dataclass(frozen=True)
class Response:
    t: float
    status: int
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def content_type(self) -> str:
        for name, value in self.headers:
            if name.lower() == "content-type":
                return value.lower()
        return ""

    @property
    def is_stream(self) -> bool:
        return self.content_type.startswith("text/event-stream")


@dataclass(frozen=True)
class Chunk:
    """One read of the response body, ``t`` ms after the request was sent."""

    t: float
    data: bytes


@dataclass(frozen=True)
class End:
    t: float
    how: str
    bytes: int
    sha256: str
    incomplete: bool = False


@dataclass(frozen=True)
class Fixture:
    id: str
    provenance: str
    notes: str
    scrubbed: tuple[str, ...]
    request: Request
    response: Response
    chunks: tuple[Chunk, ...]
    end: End
    # Where it was loaded from (the file, the line of its ``fixture`` record), for messages
    # only: two equal exchanges are equal fixtures.
    source: str = field(default="<memory>", compare=False)
    line: int = field(default=1, compare=False)

    def body(self) -> bytes:
        return b"".join(chunk.data for chunk in self.chunks)


def end_for(body: bytes, t: float, how: str = "eof", incomplete: bool = False) -> End:
    """The ``end`` record that vouches for ``body``."""
    return End(t, how, len(body), hashlib.sha256(body).hexdigest(), incomplete)


# -- reading ------------------------------------------------------------------------------------


def read_text(path: str | os.PathLike[str]) -> str:
    """A fixture file's text; a file that is not UTF-8 is a ``FixtureError`` at its line."""
    name = os.fspath(path)
    with open(name, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FixtureError(name, raw[: e.start].count(b"\n") + 1, "file is not UTF-8") from None


def load(path: str | os.PathLike[str]) -> Fixture:
    return loads(read_text(path), os.fspath(path))


def loads(text: str, source: str = "<string>") -> Fixture:
    """Parse and validate one fixture; raise :class:`FixtureError` naming the line."""
    # Split on LF only: str.splitlines() would also split inside JSON strings at U+2028 etc.
    records = [
        Record.parse(source, number, line)
        for number, line in enumerate(text.split("\n"), 1)
        if line.strip()
    ]
    last_line = records[-1].line if records else 1
    head: list[Any] = []
    chunks: list[Chunk] = []
    end: End | None = None
    previous_t = 0.0
    for rec in records:
        if end is not None:
            raise rec.fail(f"{rec.kind!r} record after the 'end' record")
        if len(head) < 3:
            expected = ("fixture", "request", "response")[len(head)]
            if rec.kind != expected:
                raise rec.fail(f"expected a {expected!r} record, got {rec.kind!r}")
            head.append((_fixture_head, _request, _response)[len(head)](rec))
            if rec.kind == "response":
                previous_t = head[2].t
        elif rec.kind in ("chunk", "event", "end"):
            t = rec.number("t")
            if t < previous_t:
                raise rec.fail(
                    f"t {ms_value(t)} is before the previous record's t {ms_value(previous_t)}"
                )
            previous_t = t
            if rec.kind == "end":
                end = _end(rec, t, b"".join(c.data for c in chunks))
            else:
                chunks.append(
                    Chunk(t, chunk_data(rec) if rec.kind == "chunk" else event_bytes(rec))
                )
        else:
            raise rec.fail(f"{rec.kind!r} record out of order (after the response)")
    if end is None:
        missing = ("fixture", "request", "response", "end")[min(len(head), 3)]
        raise FixtureError(source, last_line, f"missing {missing!r} record (file ends here)")
    fixture_id, provenance, notes, scrubbed = head[0]
    return Fixture(
        fixture_id,
        provenance,
        notes,
        scrubbed,
        head[1],
        head[2],
        tuple(chunks),
        end,
        source,
        records[0].line,
    )


def _fixture_head(rec: Record) -> tuple[str, str, str, tuple[str, ...]]:
    rec.only("format", "id", "provenance", "notes", "scrubbed")
    fmt = rec.text("format")
    if fmt != FORMAT:
        raise rec.fail(f"unknown format version {fmt!r} (this reader knows {FORMAT!r})")
    fixture_id = rec.text("id")
    if not _ID.fullmatch(fixture_id):
        raise rec.fail(f"fixture: id {fixture_id!r} must be letters, digits, '.', '_' or '-'")
    return fixture_id, rec.text("provenance"), rec.text("notes", ""), rec.strings("scrubbed", ())


def _request(rec: Record) -> Request:
    rec.only("method", "path", "query", "headers", "json", "text", "b64", "match")
    method, path, query = rec.text("method"), rec.text("path"), rec.text("query", "")
    if not method or not path.startswith("/") or "?" in path:
        raise rec.fail("request: needs a method and a path starting with '/' (query apart)")
    headers = rec.pairs("headers")
    for name, _ in headers:
        if name.lower() in SECRET_HEADERS:
            raise rec.fail(f"request: header {name!r} must never be recorded")
    given = [name for name in ("json", "text", "b64") if name in rec.obj]
    if len(given) > 1:
        raise rec.fail(f"request: body must be one of json, text, b64 (got {' and '.join(given)})")
    rules = rec.nested("match")
    rules.only("keys", "ignore", "keywords", "fallback")
    match = MatchRules(
        rules.strings("keys", None),
        rules.strings("ignore", DEFAULT_IGNORE),
        rules.strings("keywords", ()),
        rules.get("fallback", bool, "a boolean", False),
    )
    if match.keys and given != ["json"]:
        raise rec.fail("request: match keys name JSON keys, but the body is not JSON")
    if given == ["json"]:
        value = rec.obj["json"]
        return Request(method, path, query, headers, value, compact_json(value), True, match)
    body = (rec.utf8 if given == ["text"] else rec.b64)(given[0]) if given else None
    return Request(method, path, query, headers, None, body, False, match)


def _response(rec: Record) -> Response:
    rec.only("t", "status", "headers")
    status = rec.get("status", int, "an integer")
    if not 100 <= status <= 599:
        raise rec.fail(f"response: status {status} is outside 100..599")
    return Response(rec.number("t"), status, rec.pairs("headers"))


def _end(rec: Record, t: float, body: bytes) -> End:
    rec.only("t", "how", "bytes", "sha256", "incomplete")
    how = rec.text("how")
    if how not in END_HOWS:
        raise rec.fail(f"end: how {how!r} is not one of {', '.join(END_HOWS)}")
    size, digest = rec.get("bytes", int, "an integer"), rec.text("sha256")
    if not _SHA256.fullmatch(digest):
        raise rec.fail("end: sha256 must be 64 lowercase hex digits")
    if size != len(body):
        raise rec.fail(f"end says {size} bytes, body has {len(body)}")
    actual = hashlib.sha256(body).hexdigest()
    if digest != actual:
        raise rec.fail(f"end says sha256 {digest[:12]}..., body has {actual[:12]}...")
    return End(t, how, size, digest, rec.get("incomplete", bool, "a boolean", False))


def ms_value(t: float) -> int | float:
    """A time offset as written: whole milliseconds as an int (``120``, not ``120.0``)."""
    return int(t) if float(t).is_integer() else t
