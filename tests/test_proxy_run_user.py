"""The user a proxied run goes with: the access gate's when it set one, else the caller's."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any, cast

from twisted.web.http_headers import Headers

from difytw.accesslog import ProxyExchange
from difytw.forward import upstream_run

URL = b"http://127.0.0.1:5001/v1/chat-messages"


class CountingBody(BytesIO):
    reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        return super().read(size)


class FakeRequest:
    def __init__(self, body: bytes, **extra: Any) -> None:
        self.method = b"POST"
        self.uri = b"/dify/v1/chat-messages?user=from-query"
        self.content = CountingBody(body)
        self.requestHeaders = Headers({b"Content-Type": [b"application/json"]})
        self.__dict__.update(extra)


def test_the_gate_user_wins_and_the_body_is_not_parsed_again() -> None:
    request = FakeRequest(json.dumps({"user": "named"}).encode(), dify_user="enforced")
    request.content.read()  # the gate leaves the spool wherever its parse ended
    request.content.reads = 0
    run = upstream_run(cast(ProxyExchange, request), URL, now=0.0)
    assert run.user == "enforced"
    assert request.content.reads == 0
    assert request.content.tell() == 0  # rewound for the upload and the recorder


def test_without_the_gate_the_body_names_the_user() -> None:
    request = FakeRequest(json.dumps({"user": "named"}).encode())
    run = upstream_run(cast(ProxyExchange, request), URL, now=0.0)
    assert run.user == "named"
    assert request.content.tell() == 0


def test_without_the_gate_or_a_json_user_the_query_names_it() -> None:
    request = FakeRequest(b"")
    request.uri = b"/dify/v1/parameters?user=from-query"
    request.method = b"GET"
    run = upstream_run(
        cast(ProxyExchange, request), b"http://127.0.0.1:5001/v1/parameters", now=0.0
    )
    assert run.user == "from-query"


def test_without_the_gate_a_resumed_run_takes_the_query_user() -> None:
    # GET /workflow/{id}/events names its user in the query (contract 1.2); a body parse
    # there found nothing and used to drop the query's user, so a stop call had none.
    run_id = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
    request = FakeRequest(b"")
    request.method = b"GET"
    request.uri = b"/dify/v1/workflow/" + run_id.encode() + b"/events?user=from-query"
    url = b"http://127.0.0.1:5001/v1/workflow/" + run_id.encode() + b"/events?user=from-query"
    run = upstream_run(cast(ProxyExchange, request), url, now=0.0)
    assert run.route is not None and run.route.resumed
    assert run.user == "from-query"
