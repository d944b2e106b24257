"""Fixtures out to HAR 1.2, the format browser DevTools and Playwright save (pure).

This module owns the HAR side of the fixture format: one entry per fixture, with the whole body
in ``response.content.text`` (base64, with ``encoding``, when it is not UTF-8) so that any HAR
viewer shows it; the reads in the custom ``_chunks`` list (``{"t": ms, "text"|"b64": ...}``,
the fixture's own chunk records); and what HAR has no field for (id, provenance, notes,
scrubbed, match rules, a JSON body, how the exchange ended) in the custom ``_fixture`` object
(HAR 1.2 allows custom fields whose names start with an underscore).
:mod:`difytw.harimport` reads those back, so ``import_har(export_har(x)) == x``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from difytw import __version__
from difytw.fixture import Fixture
from difytw.fixturewrite import dumps

CREATOR = {"name": "difytw-fixture", "version": __version__}
# RFC 2606: a .invalid host never resolves, so a HAR viewer's "replay" cannot reach anything.
DEFAULT_BASE_URL = "http://dify.invalid"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def export_har(fixtures: Iterable[Fixture], base_url: str = DEFAULT_BASE_URL) -> dict[str, Any]:
    """A HAR 1.2 log with one entry per fixture, one after the other from the Unix epoch."""
    entries = []
    started = 0.0
    for fixture in fixtures:
        entries.append(_entry(fixture, base_url, started))
        started += fixture.end.t
    return {"log": {"version": "1.2", "creator": dict(CREATOR), "entries": entries}}


def _entry(fixture: Fixture, base_url: str, started: float) -> dict[str, Any]:
    # The canonical records carry what HAR lacks (match rules, chunk text/b64) in fixture terms.
    records = [json.loads(line) for line in dumps(fixture).split("\n") if line]
    request_record, chunk_records = records[1], records[3:-1]
    request, response, end = fixture.request, fixture.response, fixture.end
    url = base_url.rstrip("/") + request.path + (f"?{request.query}" if request.query else "")
    har_request: dict[str, Any] = {
        "method": request.method,
        "url": url,
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": [{"name": name, "value": value} for name, value in request.headers],
        "queryString": [
            {"name": name, "value": value}
            for name, value in parse_qsl(request.query, keep_blank_values=True)
        ],
        "headersSize": -1,
        "bodySize": len(request.body) if request.body is not None else 0,
    }
    if request.body is not None:
        har_request["postData"] = {
            "mimeType": _header(request.headers, "content-type"),
            "params": [],
            # HAR 1.2 postData has no encoding field, hence a custom one.
            **_text(request.body, "_encoding"),
        }
    marks: dict[str, Any] = {
        "id": fixture.id,
        "provenance": fixture.provenance,
        "notes": fixture.notes,
        "scrubbed": list(fixture.scrubbed),
        "json": request.has_json,
        "end": {"t": records[-1]["t"], "how": end.how, "incomplete": end.incomplete},
    }
    if "match" in request_record:
        marks["match"] = request_record["match"]
    body = fixture.body()
    return {
        "startedDateTime": (_EPOCH + timedelta(milliseconds=started)).isoformat(
            timespec="milliseconds"
        ),
        "time": end.t,
        "request": har_request,
        "response": {
            "status": response.status,
            "statusText": _reason(response.status),
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": [{"name": name, "value": value} for name, value in response.headers],
            "content": {
                "size": len(body),
                "mimeType": _header(response.headers, "content-type"),
                **_text(body, "encoding"),
            },
            "redirectURL": _header(response.headers, "location"),
            "headersSize": -1,
            "bodySize": len(body),
        },
        "cache": {},
        "timings": {
            "blocked": -1,
            "dns": -1,
            "connect": -1,
            "send": 0,
            "wait": response.t,
            "receive": end.t - response.t,
        },
        "_fixture": marks,
        "_chunks": [{k: v for k, v in record.items() if k != "type"} for record in chunk_records],
    }


def _text(data: bytes, encoding_key: str) -> dict[str, str]:
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"text": base64.b64encode(data).decode("ascii"), encoding_key: "base64"}


def _header(headers: Iterable[tuple[str, str]], name: str) -> str:
    return next((value for key, value in headers if key.lower() == name), "")


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
