"""One line of an ``sse-fixture/1`` file as a typed record, and the body records.

This module owns the record layer of reading a fixture: a line parsed as JSON (no NaN, at
most ``MAX_NESTING`` deep), its ``type``, typed field access whose every failure is a
:class:`FixtureError` naming the line, and the two record kinds that become body bytes
without the model -- ``chunk`` (text or base64) and the authored ``event`` (expanded to
the SSE bytes Dify would write).  It also owns the two JSON spellings of Dify
(dify-contract.md 2.1).  Assembling records into a :class:`~difytw.fixture.Fixture` is
``difytw.fixture``.  Pure: stdlib and ``difytw.sse`` only.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from difytw import sse

# Far deeper than any Dify request or record; see Record.parse.
MAX_NESTING = 100
_TOO_DEEP = f"JSON nested deeper than {MAX_NESTING} levels"


class FixtureError(ValueError):
    """A fixture file is invalid; ``str()`` is ``path:line: problem`` (line 1-based)."""

    def __init__(self, path: str, line: int, problem: str) -> None:
        super().__init__(f"{path}:{line}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


def compact_json(value: Any) -> bytes:
    """orjson-style JSON (new Dify, dify-contract.md 2.1): no spaces, raw UTF-8."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def spaced_json(value: Any) -> bytes:
    """Python ``json.dumps`` defaults (old Dify, 2.1): ``", "``/``": "``, ``\\uXXXX`` escapes."""
    return json.dumps(value).encode("ascii")


class Record:
    """One parsed line: typed field access whose failures name the line."""

    KINDS = ("fixture", "request", "response", "chunk", "event", "end")

    def __init__(self, source: str, line: int, obj: dict[str, Any], label: str) -> None:
        self.source, self.line, self.obj, self.label = source, line, obj, label
        self.kind = label

    @classmethod
    def parse(cls, source: str, line: int, text: str) -> Record:
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

    def nested(self, name: str) -> Record:
        return Record(self.source, self.line, self.get(name, dict, "an object", {}), name)

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


def chunk_data(rec: Record) -> bytes:
    rec.only("t", "text", "b64")
    if ("text" in rec.obj) == ("b64" in rec.obj):
        raise rec.fail("chunk: needs exactly one of 'text' and 'b64'")
    return rec.utf8("text") if "text" in rec.obj else rec.b64("b64")


def event_bytes(rec: Record) -> bytes:
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


def _sse(rec: Record, encode: Any) -> bytes:
    try:
        return bytes(encode())
    except ValueError as e:
        raise rec.fail(f"event: cannot encode: {e}") from None
