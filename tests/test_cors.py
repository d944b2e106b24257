"""CORS decisions (difytw.cors), in memory."""

from __future__ import annotations

from typing import Any

import pytest

from difytw.cors import CorsPolicy, is_preflight, strip_upstream
from difytw.refusal import Refusal

APP = "https://app.example.com"
POLICY = CorsPolicy.from_flags([APP, "http://localhost:5173/"])


def refusal(action: Any) -> Refusal:
    with pytest.raises(Refusal) as caught:
        action()
    return caught.value


def as_dict(headers: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    return dict(headers)


def test_preflight_for_an_allowed_origin() -> None:
    headers = as_dict(POLICY.preflight(APP, "POST", "Content-Type, authorization,X-Trace-Id"))
    assert headers[b"Access-Control-Allow-Origin"] == APP.encode()
    assert b"POST" in headers[b"Access-Control-Allow-Methods"]
    assert headers[b"Access-Control-Allow-Headers"] == b"content-type, authorization, x-trace-id"
    assert headers[b"Access-Control-Max-Age"] == b"600"
    assert b"Origin" in headers[b"Vary"]
    assert b"Access-Control-Allow-Credentials" not in headers
    # Origins compare as serialized: the trailing slash given on the flag is not part of it.
    assert as_dict(POLICY.preflight("http://localhost:5173", "GET", ""))


@pytest.mark.parametrize(
    ("origin", "method", "asked"),
    [
        ("https://evil.example", "POST", "content-type"),
        ("https://app.example.com.evil.example", "POST", ""),
        ("http://app.example.com", "POST", ""),  # another scheme is another origin
        ("null", "GET", ""),
        (APP, "TRACE", ""),
        (APP, "POST", "x-api-key"),
        (APP, "POST", "content-type, cookie"),
    ],
)
def test_preflight_refusals(origin: str, method: str, asked: str) -> None:
    error = refusal(lambda: POLICY.preflight(origin, method, asked))
    assert (error.status, error.code) == (403, "cors_not_allowed")


def test_no_cross_origin_access_by_default() -> None:
    policy = CorsPolicy()
    assert refusal(lambda: policy.preflight(APP, "GET", "")).status == 403
    assert policy.response_headers(None, "proxy:8080") == []
    assert refusal(lambda: policy.response_headers(APP, "proxy:8080")).status == 403


def test_the_pages_own_host_is_not_cross_origin() -> None:
    policy = CorsPolicy()
    assert policy.response_headers("http://127.0.0.1:8080", "127.0.0.1:8080") == []
    # behind a TLS-terminating proxy the page is https and this hop is http
    assert policy.response_headers("https://chat.example.com", "chat.example.com") == []
    assert refusal(lambda: policy.response_headers("http://evil:8080", "127.0.0.1:8080"))


def test_response_headers_for_allowed_origins() -> None:
    headers = as_dict(POLICY.response_headers(APP, "proxy:8080"))
    assert headers[b"Access-Control-Allow-Origin"] == APP.encode()
    assert b"Retry-After" in headers[b"Access-Control-Expose-Headers"]
    assert headers[b"Vary"] == b"Origin"
    assert as_dict(POLICY.response_headers(None, "proxy")) == {b"Vary": b"Origin"}


def test_credentials_only_with_named_origins() -> None:
    policy = CorsPolicy.from_flags([APP], credentials=True)
    assert as_dict(policy.preflight(APP, "GET", ""))[b"Access-Control-Allow-Credentials"] == b"true"
    with pytest.raises(ValueError, match="credentials"):
        CorsPolicy.from_flags(["*"], credentials=True)
    with pytest.raises(ValueError, match="--cors-origin"):
        CorsPolicy.from_flags([], credentials=True)


def test_wildcard_never_echoes_or_allows_credentials() -> None:
    policy = CorsPolicy.from_flags(["*"])
    headers = as_dict(policy.preflight("https://anything.example", "DELETE", ""))
    assert headers[b"Access-Control-Allow-Origin"] == b"*"
    assert b"Access-Control-Allow-Credentials" not in headers
    response = as_dict(policy.response_headers("https://x.example", "proxy"))
    assert response[b"Access-Control-Allow-Origin"] == b"*"


@pytest.mark.parametrize("origin", ["app.example.com", "https://app.example.com/path", "ftp:x"])
def test_malformed_origins_name_the_flag(origin: str) -> None:
    with pytest.raises(ValueError, match="--cors-origin"):
        CorsPolicy.from_flags([origin])


def test_is_preflight() -> None:
    assert is_preflight(b"OPTIONS", APP, "POST")
    assert not is_preflight(b"OPTIONS", None, "POST")
    assert not is_preflight(b"OPTIONS", APP, None)
    assert not is_preflight(b"POST", APP, "POST")


def test_upstream_cors_headers_are_found_for_removal() -> None:
    pairs = [
        (b"Access-Control-Allow-Origin", [b"*"]),
        (b"content-type", [b"application/json"]),
        (b"access-control-allow-headers", [b"x"]),
    ]
    assert strip_upstream(pairs) == [
        b"Access-Control-Allow-Origin",
        b"access-control-allow-headers",
    ]
