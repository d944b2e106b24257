"""The ``sse-fixture/1`` format: one recorded (or authored) Dify exchange per JSONL file.

This module owns the fixture data model and reading it: validation reports every problem
as ``path:line: problem``.  Writing (the canonical form and the live appender a recorder
uses) lives in ``difytw.fixturewrite``.  Pure: stdlib and ``difytw.sse`` only.  The format
reference is docs/fixture-format.md.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from difytw import sse

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
# Far deeper than any Dify request or record; see _Record.parse.
MAX_NESTING = 100
_TOO_DEEP = f"JSON nested deeper than {MAX_NESTING} levels"
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class FixtureError(ValueError):
    """A fixture file is invalid; ``str()`` is ``path:line: problem`` (line 1-based)."""

    def __init__(self, path: str, line: int, problem: str) -> None:
        super().__init__(f"{path}:{line}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


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


def compact_json(value: Any) -> bytes:
    """orjson-style JSON (new Dify, dify-contract.md 2.1): no spaces, raw UTF-8."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def spaced_json(value: Any) -> bytes:
    """Python ``json.dumps`` defaults (old Dify, 2.1): ``", "``/``": "``, ``\\uXXXX`` escapes."""
    return json.dumps(value).encode("ascii")


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
        _Record.parse(source, number, line)
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
                chunks.append(Chunk(t, _chunk_data(rec) if rec.kind == "chunk" else _event(rec)))
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


class _Record:
    """One parsed line: typed field access whose failures name the line."""

    KINDS = ("fixture", "request", "response", "chunk", "event", "end")

    def __init__(self, source: str, line: int, obj: dict[str, Any], label: str) -> None:
        self.source, self.line, self.obj, self.label = source, line, obj, label
        self.kind = label

    @classmethod
    def parse(cls, source: str, line: int, text: str) -> _Record:
        def no_constant(name: str) -> None:
            raise ValueError(f"{name} is not JSON")

        try:
            obj = json.loads(text, parse_constant=no_constant)
        except ValueError as e:
            raise FixtureError(source, line, f"bad JSON: {e}") from None
        except RecursionError:
            raise FixtureError(source, line, _TOO_DEEP) from None
        if _deeper_than(obj, MAX_NESTING):
            # Matching, writing and lint walk a record recursively: a record nested near
            # the interpreter's limit would stop them with a RecursionError.
            raise FixtureError(source, line, _TOO_DEEP)
        if not isinstance(obj, dict):
            raise FixtureError(source, line, f"a record must be a JSON object, got {_kind(obj)}")
        kind = obj.get("type")
        if kind not in cls.KINDS:
            problem = "record has no 'type'" if kind is None else f"unknown record type {kind!r}"
            raise FixtureError(source, line, problem)
        return cls(source, line, obj, kind)

    def fail(self, problem: str) -> FixtureError:
        return FixtureError(self.source, self.line, problem)

    def nested(self, name: str) -> _Record:
        return _Record(self.source, self.line, self.get(name, dict, "an object", {}), name)

    def only(self, *allowed: str) -> None:
        unknown = sorted(set(self.obj) - set(allowed) - {"type"})
        if unknown:
            raise self.fail(f"{self.label}: unknown field {unknown[0]!r}")

    def get(self, name: str, kind: type | tuple[type, ...], what: str, default: Any = ...) -> Any:
        if name not in self.obj or (self.obj[name] is None and default is not ...):
            if default is ...:
                raise self.fail(f"{self.label}: missing field {name!r}")
            return default
        value = self.obj[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _tuple(kind)):
            raise self.fail(f"{self.label}: {name!r} must be {what}, got {_kind(value)}")
        return value

    def text(self, name: str, default: Any = ...) -> Any:
        return self.get(name, str, "a string", default)

    def number(self, name: str) -> float:
        value = float(self.get(name, (int, float), "a number"))
        if value < 0:
            raise self.fail(f"{self.label}: {name!r} must not be negative, got {value:g}")
        return value

    def strings(self, name: str, default: Any = ...) -> Any:
        items = self.get(name, list, "a list of strings", default)
        if items is default:
            return items
        if not all(isinstance(item, str) for item in items):
            raise self.fail(f"{self.label}: {name!r} must be a list of strings")
        return tuple(items)

    def pairs(self, name: str) -> tuple[tuple[str, str], ...]:
        items = self.get(name, list, "a list of [name, value] pairs", [])
        for item in items:
            if not (
                isinstance(item, list) and len(item) == 2 and all(isinstance(s, str) for s in item)
            ):
                raise self.fail(
                    f"{self.label}: {name!r} entries must be [name, value] string pairs"
                )
        return tuple((n, v) for n, v in items)

    def b64(self, name: str) -> bytes:
        try:
            return base64.b64decode(self.text(name), validate=True)
        except ValueError as e:
            # binascii.Error, and plain ValueError for non-ASCII characters.
            raise self.fail(f"{self.label}: {name!r} is not valid base64 ({e})") from None

    def utf8(self, name: str) -> bytes:
        try:
            return str(self.text(name)).encode("utf-8")
        except UnicodeEncodeError:
            raise self.fail(f"{self.label}: {name!r} is not valid UTF-8 (lone surrogate)") from None


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether ``value`` nests arrays and objects more than ``limit`` deep (no recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in _children(item))
    return False


def _children(item: dict[str, Any] | list[Any]) -> Any:
    return item.values() if isinstance(item, dict) else item


def _tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def _fixture_head(rec: _Record) -> tuple[str, str, str, tuple[str, ...]]:
    rec.only("format", "id", "provenance", "notes", "scrubbed")
    fmt = rec.text("format")
    if fmt != FORMAT:
        raise rec.fail(f"unknown format version {fmt!r} (this reader knows {FORMAT!r})")
    fixture_id = rec.text("id")
    if not _ID.fullmatch(fixture_id):
        raise rec.fail(f"fixture: id {fixture_id!r} must be letters, digits, '.', '_' or '-'")
    return fixture_id, rec.text("provenance"), rec.text("notes", ""), rec.strings("scrubbed", ())


def _request(rec: _Record) -> Request:
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


def _response(rec: _Record) -> Response:
    rec.only("t", "status", "headers")
    status = rec.get("status", int, "an integer")
    if not 100 <= status <= 599:
        raise rec.fail(f"response: status {status} is outside 100..599")
    return Response(rec.number("t"), status, rec.pairs("headers"))


def _chunk_data(rec: _Record) -> bytes:
    rec.only("t", "text", "b64")
    if ("text" in rec.obj) == ("b64" in rec.obj):
        raise rec.fail("chunk: needs exactly one of 'text' and 'b64'")
    return rec.utf8("text") if "text" in rec.obj else rec.b64("b64")


def _event(rec: _Record) -> bytes:
    """Expand an authored event record to the bytes Dify would write (one chunk)."""
    rec.only("t", "event", "data", "style", "comment")
    if "comment" in rec.obj:
        if {"event", "data", "style"} & set(rec.obj):
            raise rec.fail("event: 'comment' cannot be combined with event, data or style")
        return _sse(rec, lambda: sse.encode_comment(rec.text("comment")))
    name = rec.text("event", "message")
    data = rec.get("data", (dict, str), "an object or a string", None)
    style = rec.text("style", None)
    if style is not None and not isinstance(data, dict):
        raise rec.fail("event: 'style' applies only to object data")
    if style not in (None, "compact", "spaced"):
        raise rec.fail(f"event: style {style!r} is not 'compact' or 'spaced'")
    if data is None:
        if "event" not in rec.obj:
            raise rec.fail("event: needs 'event', 'data' or 'comment'")
        if not name or "\n" in name or "\r" in name:
            raise rec.fail(f"event: bad event name {name!r}")
        # Dify's keep-alive is a bare ``event: ping`` block with no data line (contract 2.1);
        # sse.encode always writes a data line so that the event dispatches, hence by hand.
        return f"event: {name}\n\n".encode()
    if isinstance(data, dict):
        data = (spaced_json if style == "spaced" else compact_json)(data).decode("utf-8")
    payload = str(data)
    return _sse(rec, lambda: sse.encode(sse.Event(data=payload, event=name)))


def _sse(rec: _Record, encode: Any) -> bytes:
    try:
        return bytes(encode())
    except ValueError as e:
        raise rec.fail(f"event: cannot encode: {e}") from None


def _end(rec: _Record, t: float, body: bytes) -> End:
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
