"""difyproxy's request side over loopback: routing, path escapes, bodies and limits."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from difytw.fixture import load
from tests.rawhttp import build_request
from tests.rawhttp import fetch as raw_fetch
from tests.test_proxy_harness import (
    CHAT,
    FIXTURES,
    RunningProxy,
    fetch,
    header,
    start_proxy,
)

__all__ = ["start_proxy"]

ESCAPES = [
    b"/dify/../v1/parameters",
    b"/dify/%2e%2e/parameters",
    b"/dify/.%2E/parameters",
    b"/dify/%2E./x",
    b"/dify/./parameters",
    b"/dify/a%2Fb",
    b"/dify/a%5Cb",
    b"/dify/a\\b",
    b"/dify/..\\parameters",
    b"/dify/a%00",
    b"//evil.example/dify/parameters",
    b"http://evil.example/dify/parameters",
    b"http://127.0.0.1/dify/parameters",
    b"/dify//parameters",
    b"/dify/%ff",
    b"/dify/%zz",
]


def raw_target(method: bytes, target: bytes, body: bytes = b"") -> bytes:
    head = method + b" " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    if body:
        head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


@pytest.mark.parametrize("target", ESCAPES, ids=[repr(t) for t in ESCAPES])
@pytest_twisted.ensureDeferred
async def test_path_escapes_are_400_and_never_reach_upstream(
    target: bytes, replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1")
    _, answered = raw_fetch(reactor, proxy.port, raw_target(b"GET", target))
    answer = await answered
    assert answer.status == 400
    body = json.loads(answer.body)
    assert body["code"] == "bad_request" and body["status"] == 400
    assert answer.header("content-type") == "application/json"
    assert replay.journal.entries == []


@pytest.mark.parametrize("target", [b"/", b"/v1/parameters", b"/difyx/parameters", b"/Dify/x"])
@pytest_twisted.ensureDeferred
async def test_outside_the_prefix_is_404_not_found(
    target: bytes, replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1")
    _, answered = raw_fetch(reactor, proxy.port, raw_target(b"GET", target))
    answer = await answered
    assert answer.status == 404
    assert json.loads(answer.body)["code"] == "not_found"
    assert replay.journal.entries == []


@pytest_twisted.ensureDeferred
async def test_healthz(replay: Any, start_proxy: Callable[..., RunningProxy]) -> None:
    proxy = start_proxy(replay.url + "/v1")
    base = proxy.url.removesuffix("/dify")
    response, collector, _ = await fetch("GET", base + "/healthz")
    assert response.code == 200
    assert json.loads(collector.body) == {"status": "ok"}
    assert header(response, "Content-Type") == [b"application/json"]
    response, collector, _ = await fetch("POST", base + "/healthz")
    assert response.code == 405
    assert replay.journal.entries == []


@pytest_twisted.ensureDeferred
async def test_raw_query_reaches_upstream_byte_for_byte(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1")
    query = b"user=a%2Fb&&x=%41%e6%96%87&last_id=&y=/..;z=(1)+2"
    _, answered = raw_fetch(reactor, proxy.port, raw_target(b"GET", b"/dify/parameters?" + query))
    await answered
    [entry] = replay.journal.entries
    assert entry.path == "/v1/parameters"
    assert entry.query == query.decode()


@pytest_twisted.ensureDeferred
async def test_multipart_fixture_body_arrives_exactly(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    fixture = load(FIXTURES / "files-upload.jsonl")
    assert fixture.request.body is not None
    proxy = start_proxy(replay.url + "/v1")
    response, collector, _ = await fetch(
        "POST",
        proxy.url + "/files/upload",
        data=fixture.request.body,
        headers=dict(fixture.request.headers),
    )
    assert response.code == 201
    assert collector.body == fixture.body()  # matched by exact body bytes upstream
    [entry] = replay.journal.entries
    assert entry.body_sha256 == hashlib.sha256(fixture.request.body).hexdigest()


@pytest_twisted.ensureDeferred
async def test_twenty_megabyte_upload_arrives_byte_identical(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1")
    payload = os.urandom(20 * 1024 * 1024)
    boundary = b"----difytwBoundary7MA4YWxkTrZu0gW"
    body = b"".join(
        [
            b"--" + boundary + b"\r\n",
            b'Content-Disposition: form-data; name="file"; filename="big.bin"\r\n',
            b"Content-Type: application/octet-stream\r\n\r\n",
            payload,
            b"\r\n--" + boundary + b"\r\n",
            b'Content-Disposition: form-data; name="user"\r\n\r\nu20\r\n',
            b"--" + boundary + b"--\r\n",
        ]
    )
    response, collector, _ = await fetch(
        "POST",
        proxy.url + "/files/upload",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=" + boundary.decode()},
    )
    assert response.code == 201, collector.body
    assert json.loads(collector.body)["size"] == len(payload)
    [entry] = replay.journal.entries
    assert entry.body_bytes == len(body)
    assert entry.body_sha256 == hashlib.sha256(body).hexdigest()


@pytest_twisted.ensureDeferred
async def test_chunked_request_body_is_forwarded_exactly(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1")
    body = json.dumps(dict(CHAT, user="u-chunked")).encode()
    pieces = [body[:7], body[7:30], body[30:]]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    request = (
        b"POST /dify/chat-messages HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
    )
    _, answered = raw_fetch(reactor, proxy.port, request)
    answer = await answered
    assert answer.status == 200
    [entry] = replay.journal.entries
    assert entry.body_sha256 == hashlib.sha256(body).hexdigest()


@pytest_twisted.ensureDeferred
async def test_max_body_with_content_length_is_413_before_upstream(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1", max_body=1024)
    request = build_request(
        "POST",
        "/dify/chat-messages",
        headers=[("Content-Type", "application/json")],
        body=b"x" * 4096,
    )
    _, answered = raw_fetch(reactor, proxy.port, request)
    answer = await answered
    assert answer.status == 413
    body = json.loads(answer.body)
    assert body["code"] == "request_entity_too_large" and body["status"] == 413
    assert answer.header("connection") == "close"
    assert replay.journal.entries == []


@pytest_twisted.ensureDeferred
async def test_max_body_with_chunked_body_is_413_before_upstream(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1", max_body=1024)
    chunk = b"y" * 300
    request = (
        b"POST /dify/chat-messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 5
        + b"0\r\n\r\n"
    )
    _, answered = raw_fetch(reactor, proxy.port, request)
    answer = await answered
    assert answer.status == 413
    assert json.loads(answer.body)["code"] == "request_entity_too_large"
    assert replay.journal.entries == []


@pytest_twisted.ensureDeferred
async def test_max_body_413_reaches_a_treq_client_still_sending(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    """A client blasting a big body still reads the 413 (the proxy lingers, no RST)."""
    proxy = start_proxy(replay.url + "/v1", max_body=64 * 1024)
    response, collector, _ = await fetch(
        "POST", proxy.url + "/files/upload", data=b"z" * (8 * 1024 * 1024)
    )
    assert response.code == 413
    assert json.loads(collector.body)["code"] == "request_entity_too_large"
    assert replay.journal.entries == []


HEAD = b"Host: 127.0.0.1\r\nConnection: close\r\n"
MALFORMED = {
    "bad Content-Length": (
        b"POST /dify/chat-messages HTTP/1.1\r\n" + HEAD + b"Content-Length: 12x\r\n\r\n",
        400,
        "Content-Length or Transfer-Encoding",
    ),
    "Content-Length and Transfer-Encoding": (
        b"POST /dify/chat-messages HTTP/1.1\r\n"
        + HEAD
        + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
        "Content-Length or Transfer-Encoding",
    ),
    "unknown Transfer-Encoding": (
        b"POST /dify/chat-messages HTTP/1.1\r\n" + HEAD + b"Transfer-Encoding: gzip\r\n\r\n",
        400,
        "Content-Length or Transfer-Encoding",
    ),
    "non-ASCII method": (
        b"G\xc3\x89T /dify/parameters HTTP/1.1\r\n" + HEAD + b"\r\n",
        400,
        "request line",
    ),
    "not a request line": (b"hello there\r\n" + HEAD + b"\r\n", 400, "request line"),
    "header without a colon": (
        b"GET /dify/parameters HTTP/1.1\r\n" + HEAD + b"no colon here\r\n\r\n",
        400,
        "header field or the chunked body",
    ),
    "bad chunk size": (
        b"POST /dify/chat-messages HTTP/1.1\r\n"
        + HEAD
        + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
        "header field or the chunked body",
    ),
    "501 header fields": (
        b"GET /dify/parameters HTTP/1.1\r\n"
        + HEAD
        + b"".join(b"X-H%d: v\r\n" % i for i in range(501))
        + b"\r\n",
        431,
        "more than 500 header fields",
    ),
    "a 17 KB header field": (
        b"GET /dify/parameters HTTP/1.1\r\n" + HEAD + b"X-Big: " + b"a" * 17_000 + b"\r\n\r\n",
        431,
        "longer than 16384 bytes",
    ),
    "a 17 KB request line": (
        b"GET /dify/" + b"a" * 17_000 + b" HTTP/1.1\r\n" + HEAD + b"\r\n",
        431,
        "longer than 16384 bytes",
    ),
    "a 20 KB header section": (
        b"GET /dify/parameters HTTP/1.1\r\n"
        + HEAD
        + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 500) for i in range(40))
        + b"\r\n",
        431,
        "header section is larger than 16384 bytes",
    ),
}


@pytest.mark.parametrize(
    ("request_bytes", "status", "says"), MALFORMED.values(), ids=MALFORMED.keys()
)
@pytest_twisted.ensureDeferred
async def test_malformed_http_is_answered_in_difys_json_and_logged(
    request_bytes: bytes,
    status: int,
    says: str,
    replay: Any,
    start_proxy: Callable[..., RunningProxy],
    logged: list[Any],
) -> None:
    proxy = start_proxy(replay.url + "/v1")
    _, answered = raw_fetch(reactor, proxy.port, request_bytes)
    answer = await answered
    assert answer.status == status
    assert answer.header("content-type") == "application/json"
    assert answer.header("connection") == "close"
    body = json.loads(answer.body)
    code = "bad_request" if status == 400 else "request_header_fields_too_large"
    assert (body["code"], body["status"]) == (code, status)
    assert says in body["message"]
    assert replay.journal.entries == []
    [line] = [e for e in logged if e.get("log_namespace") == "difytw.access"]
    assert (line["status"], line["outcome"]) == (status, code)
