"""Writing ``sse-fixture/1`` files: the canonical form and the live appender (pure).

``dumps``/``dump`` write a loaded or built :class:`~difytw.fixture.Fixture` in canonical
form (chunk records, text when a read is valid UTF-8 on its own, b64 otherwise);
:class:`FixtureWriter` appends one record at a time while bytes stream by, for a
recorder.  Reading and validation live in ``difytw.fixture``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from typing import IO, Any

from difytw.fixture import FORMAT, End, Fixture, MatchRules, Request, Response, ms_value


def dumps(fixture: Fixture) -> str:
    """Canonical JSONL: one record a line, body as chunk records (text when valid UTF-8)."""
    records = [
        _fixture_record(fixture.id, fixture.provenance, fixture.notes, fixture.scrubbed),
        _request_record(fixture.request),
        _response_record(fixture.response),
        *(_chunk_record(chunk.t, chunk.data) for chunk in fixture.chunks),
        _end_record(fixture.end),
    ]
    return "".join(_line(record) for record in records)


def dump(fixture: Fixture, path: str | os.PathLike[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(dumps(fixture))


class FixtureWriter:
    """Appends a fixture to a text stream a record at a time, flushing each line.

    A recorder writes the head when the response starts, one chunk per read, then the end
    record, whose byte count and hash the writer keeps as the chunks go by.  The ``fixture``
    line is padded with spaces to the width it would have listing ``reserve`` (every name a
    recorder might list, in order), so that ``fixture_line`` gives a same-width line to
    rewrite it in place with the scrub rules that turned out to apply.
    """

    def __init__(
        self,
        out: IO[str],
        fixture_id: str,
        provenance: str,
        request: Request,
        response: Response,
        notes: str = "",
        scrubbed: tuple[str, ...] = (),
        reserve: tuple[str, ...] = (),
    ) -> None:
        self._out = out
        self._size = 0
        self._hash = hashlib.sha256()
        self._head = (fixture_id, provenance, notes)
        self._width = max(
            len(_line(_fixture_record(*self._head, names)).encode())
            for names in (scrubbed, reserve)
        )
        self._write_line(self.fixture_line(scrubbed))
        self._write(_request_record(request))
        self._write(_response_record(response))

    def fixture_line(self, scrubbed: tuple[str, ...]) -> str:
        """The ``fixture`` line listing ``scrubbed``, padded to the width reserved."""
        line = _line(_fixture_record(*self._head, scrubbed))
        pad = self._width - len(line.encode())
        if pad < 0:
            raise ValueError("scrubbed names beyond those reserved")
        return line[:-1] + " " * pad + "\n"

    def chunk(self, t: float, data: bytes) -> None:
        self._size += len(data)
        self._hash.update(data)
        self._write(_chunk_record(t, data))

    def end(self, t: float, how: str = "eof", incomplete: bool = False) -> None:
        self._write(_end_record(End(t, how, self._size, self._hash.hexdigest(), incomplete)))

    def _write(self, record: dict[str, Any]) -> None:
        self._write_line(_line(record))

    def _write_line(self, line: str) -> None:
        self._out.write(line)
        self._out.flush()


def _line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def _fixture_record(
    fixture_id: str, provenance: str, notes: str, scrubbed: tuple[str, ...]
) -> dict[str, Any]:
    return {
        "type": "fixture",
        "format": FORMAT,
        "id": fixture_id,
        "provenance": provenance,
        "notes": notes,
        "scrubbed": list(scrubbed),
    }


def _request_record(request: Request) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": "request",
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "headers": [list(pair) for pair in request.headers],
    }
    if request.has_json:
        record["json"] = request.json
    elif request.body is not None:
        record.update(_body_field(request.body))
    rules, default = request.match, MatchRules()
    match = {
        name: list(value) if isinstance(value, tuple) else value
        for name in ("keys", "ignore", "keywords", "fallback")
        if (value := getattr(rules, name)) != getattr(default, name)
    }
    if match:
        record["match"] = match
    return record


def _response_record(response: Response) -> dict[str, Any]:
    return {
        "type": "response",
        "t": ms_value(response.t),
        "status": response.status,
        "headers": [list(pair) for pair in response.headers],
    }


def _chunk_record(t: float, data: bytes) -> dict[str, Any]:
    return {"type": "chunk", "t": ms_value(t), **_body_field(data)}


def _body_field(data: bytes) -> dict[str, str]:
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(data).decode("ascii")}


def _end_record(end: End) -> dict[str, Any]:
    record: dict[str, Any] = {
        "type": "end",
        "t": ms_value(end.t),
        "how": end.how,
        "bytes": end.bytes,
        "sha256": end.sha256,
    }
    if end.incomplete:
        record["incomplete"] = True
    return record
