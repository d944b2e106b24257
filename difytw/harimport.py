"""HAR 1.2 into ``sse-fixture/1`` fixtures (pure).

This module owns ``import-har``.  An entry :mod:`difytw.har` wrote comes back exactly as it
went out (its ``_fixture`` and ``_chunks``).  From a browser's or Playwright's HAR it keeps
each ``text/event-stream`` entry and only the request headers Dify acts on (never credentials,
never the browser's cookies or fingerprint), and cuts the body into frames spread evenly over
the entry's receive time: HAR records no per-read timing.  The records it builds go through
``fixture.loads``, which validates them; what is wrong comes back as :class:`HarError`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any
from urllib.parse import urlsplit

from difytw.eventcatalog import split_frames, unfinished
from difytw.fixture import FORMAT, SECRET_HEADERS, Fixture, FixtureError, loads

# What Dify acts on in a request (dify-contract.md 1.1): the body type and tracing ids.
REQUEST_HEADERS = frozenset({"content-type", "accept", "x-trace-id", "traceparent"})
# Set-Cookie is a session credential: like the request's Authorization and Cookie, never kept.
SECRET_RESPONSE_HEADERS = frozenset({"set-cookie"})
# fixture-format.md 3: the serving side sets these (difytw.playback drops the same list).
# Content-Encoding too: HAR's content.text is the decoded body, so "gzip" would lie.
SERVING_HEADERS = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "date",
        "server",
        "content-encoding",
    }
)


class HarError(ValueError):
    """The input is not a HAR this module can import; ``str()`` says what is wrong, and where."""


def import_har(
    har: Any, name: str = "<har>", prefix: str = "har"
) -> tuple[list[Fixture], list[str]]:
    """The fixtures of a parsed HAR, and a line for each stream entry skipped for lack of a body.

    Kept: every ``text/event-stream`` entry, and every entry ``export_har`` wrote.  Entries
    without ``_fixture`` get the id ``PREFIX-N`` (N: the entry's number in the HAR).
    """
    log = har.get("log") if isinstance(har, dict) else None
    if not isinstance(log, dict):
        raise HarError("no 'log' object at the top: not a HAR file")
    entries = log.get("entries")
    if not isinstance(entries, list):
        raise HarError("'log.entries' is missing or not a list: not a HAR file")
    given = log.get("creator")
    creator: dict[str, Any] = given if isinstance(given, dict) else {}
    made_by = " ".join(str(creator[key]) for key in ("name", "version") if key in creator)
    fixtures: list[Fixture] = []
    skipped: list[str] = []
    for number, entry in enumerate(entries, 1):
        where = f"entry {number}"
        entry = _object(entry, where)
        response = _object(entry.get("response"), f"{where}: response")
        marks = entry.get("_fixture")
        if marks is None and not _is_stream(response):
            continue
        body = _body(_object(response.get("content"), f"{where}: response.content"), where)
        if body is None:
            skipped.append(f"{where}: the HAR kept no response body (skipped)")
            continue
        if marks is None:
            origin = f"imported from {name} {where}" + (f" ({made_by})" if made_by else "")
            marks = {"id": f"{prefix}-{number}", "provenance": origin + " by difytw-fixture"}
        fixture = _fixture(entry, _object(marks, f"{where}: _fixture"), response, body, name, where)
        if any(other.id == fixture.id for other in fixtures):
            raise HarError(f"{where}: fixture id {fixture.id!r} is used by an earlier entry")
        fixtures.append(fixture)
    return fixtures, skipped


def _fixture(
    entry: dict[str, Any],
    marks: dict[str, Any],
    response: dict[str, Any],
    body: bytes,
    name: str,
    where: str,
) -> Fixture:
    exported = "_fixture" in entry
    request = _object(entry.get("request"), f"{where}: request")
    given = entry.get("timings")
    timings: dict[str, Any] = given if isinstance(given, dict) else {}
    # HAR 1.2: -1 marks a timing that does not apply; ssl is already inside connect.
    before = ("blocked", "dns", "connect", "send", "wait")
    head_t = sum((_ms(timings.get(key)) for key in before), 0.0)
    receive = _ms(timings.get("receive"))
    records: list[dict[str, Any]] = [
        {
            "type": "fixture",
            "format": FORMAT,
            **{
                key: marks[key] for key in ("id", "provenance", "notes", "scrubbed") if key in marks
            },
        },
        _request(request, marks, exported, where),
        {
            "type": "response",
            "t": head_t if exported else round(head_t, 1),
            "status": response.get("status"),
            "headers": [
                [key, value]
                for key, value in _pairs(response.get("headers", []), f"{where}: response.headers")
                if key.lower() not in SECRET_RESPONSE_HEADERS
                and not key.startswith(":")
                and (exported or key.lower() not in SERVING_HEADERS)
            ],
        },
    ]
    stream = _is_stream(response)
    end: dict[str, Any] = {"t": round(head_t + receive, 1), "how": "eof"}
    if "_chunks" in entry:
        chunks = entry["_chunks"]
        if not isinstance(chunks, list) or not all(isinstance(c, dict) for c in chunks):
            raise HarError(f"{where}: _chunks must be a list of objects")
        reads = (_chunk_bytes(chunk, f"{where}: _chunks[{i}]") for i, chunk in enumerate(chunks))
        if b"".join(reads) != body:
            raise HarError(f"{where}: _chunks do not add up to the body in response.content.text")
        records += [{"type": "chunk", **chunk} for chunk in chunks]
    else:
        frames = split_frames(body) if stream else [body] if body else []
        step = receive / (len(frames) - 1) if len(frames) > 1 else 0.0
        records += [
            {"type": "chunk", "t": round(head_t + step * i, 1), **_body_field(frame)}
            for i, frame in enumerate(frames)
        ]
        records[0].setdefault(
            "notes",
            f"HAR keeps no per-read timing: {len(frames)} reads, one per frame, spread evenly"
            f" over the entry's {receive:g} ms receive time.",
        )
        end["incomplete"] = stream and unfinished(body) > 0
    if isinstance(marks.get("end"), dict):
        end = {key: marks["end"][key] for key in ("t", "how", "incomplete") if key in marks["end"]}
    end.update(type="end", bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
    if not end.get("incomplete"):
        end.pop("incomplete", None)
    records.append(end)
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    try:
        return loads(text, f"{name} {where}")
    except FixtureError as e:
        raise HarError(f"{where}: {e.problem}") from None
    except ValueError as e:  # fixture.loads lets a non-ASCII b64 string through as ValueError
        raise HarError(f"{where}: {e}") from None


def _request(
    request: dict[str, Any], marks: dict[str, Any], exported: bool, where: str
) -> dict[str, Any]:
    url = request.get("url")
    method = request.get("method")
    if not isinstance(url, str) or not isinstance(method, str):
        raise HarError(f"{where}: request needs a string 'method' and 'url'")
    parts = urlsplit(url)
    record: dict[str, Any] = {
        "type": "request",
        "method": method,
        "path": parts.path or "/",
        "query": parts.query,
        "headers": [
            [key, value]
            for key, value in _pairs(request.get("headers", []), f"{where}: request.headers")
            # Credentials are never kept; HTTP/2 pseudo-headers (Chrome lists them) are framing.
            if key.lower() not in SECRET_HEADERS
            and (key.lower() in REQUEST_HEADERS or (exported and not key.startswith(":")))
        ],
    }
    post = request.get("postData")
    post_where = f"{where}: request.postData"
    data = None if post is None else _text_bytes(_object(post, post_where), "_encoding", post_where)
    if post is not None and data is not None:
        json_type = "json" in str(post.get("mimeType", "")).lower()
        if marks.get("json", json_type and _is_json(data)):
            try:
                record["json"] = json.loads(data)
            except ValueError as e:
                raise HarError(f"{where}: request.postData.text is not JSON ({e})") from None
        else:
            record.update(_body_field(data))
    if "match" in marks:
        record["match"] = marks["match"]
    return record


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True


def _is_stream(response: dict[str, Any]) -> bool:
    content = response.get("content")
    types = [content.get("mimeType")] if isinstance(content, dict) else []
    headers = response.get("headers")
    if isinstance(headers, list):
        types += [h.get("value") for h in headers if isinstance(h, dict) and _named(h)]
    return any(isinstance(t, str) and t.lower().startswith("text/event-stream") for t in types)


def _named(header: dict[str, Any]) -> bool:
    return str(header.get("name", "")).lower() == "content-type"


def _body(content: dict[str, Any], where: str) -> bytes | None:
    data = _text_bytes(content, "encoding", f"{where}: response.content")
    size = content.get("size")
    # DevTools writes text "" with the real size when it did not keep a streamed body.
    if data == b"" and isinstance(size, int) and size > 0:
        return None
    return data


def _text_bytes(obj: dict[str, Any], encoding_key: str, where: str) -> bytes | None:
    """The bytes of a HAR ``text`` (``None`` when absent), base64 if ``encoding_key`` says so."""
    text = obj.get("text")
    if text is None:
        return None
    encoding = obj.get(encoding_key)
    if encoding not in (None, "base64"):
        raise HarError(f"{where}: unknown {encoding_key} {encoding!r} (HAR 1.2 knows base64)")
    return _decode(text, encoding == "base64", f"{where}.text")


def _chunk_bytes(chunk: dict[str, Any], where: str) -> bytes:
    if ("text" in chunk) == ("b64" in chunk) or not isinstance(chunk.get("t"), (int, float)):
        raise HarError(f"{where}: needs a number 't' and exactly one of 'text' and 'b64'")
    is_b64 = "b64" in chunk
    return _decode(chunk["b64" if is_b64 else "text"], is_b64, where)


def _decode(text: Any, is_b64: bool, where: str) -> bytes:
    if not isinstance(text, str):
        raise HarError(f"{where} is not a string")
    try:
        return base64.b64decode(text, validate=True) if is_b64 else text.encode("utf-8")
    except UnicodeEncodeError:
        raise HarError(f"{where} holds a lone surrogate, which is not UTF-8") from None
    except ValueError as e:  # binascii.Error, or a base64 string that is not ASCII
        raise HarError(f"{where} is not valid base64 ({e})") from None


def _body_field(data: bytes) -> dict[str, str]:
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(data).decode("ascii")}


def _pairs(value: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(value, list):
        raise HarError(f"{where} must be a list")
    pairs = []
    for item in value:
        if not (
            isinstance(item, dict)
            and isinstance(item.get("name"), str)
            and isinstance(item.get("value"), str)
        ):
            raise HarError(f"{where}: each header needs a string 'name' and 'value'")
        pairs.append((item["name"], item["value"]))
    return pairs


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise HarError(f"{where} is missing or not an object")
    return value


def _ms(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        return 0.0
    return float(value)
