"""difytw.headers: hop-by-hop filtering and forwarded headers, in memory."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from difytw.headers import (
    HOP_BY_HOP,
    client_response_headers,
    connection_listed,
    is_event_stream,
    upstream_request_headers,
)

KEY = b"app-secret"


def as_dict(pairs: list[tuple[bytes, list[bytes]]]) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for name, values in pairs:
        out.setdefault(name.lower(), []).extend(values)
    return out


def test_client_credentials_and_hop_by_hop_never_go_upstream() -> None:
    pairs = [
        (b"Host", [b"proxy.example:8080"]),
        (b"Authorization", [b"Bearer client-own-token"]),
        (b"Cookie", [b"session=abc"]),
        (b"Connection", [b"keep-alive, X-Private-Hop"]),
        (b"X-Private-Hop", [b"1"]),
        (b"Keep-Alive", [b"timeout=5"]),
        (b"Proxy-Authorization", [b"Basic eA=="]),
        (b"Proxy-Foo", [b"bar"]),
        (b"TE", [b"trailers"]),
        (b"Trailer", [b"X-Sum"]),
        (b"Transfer-Encoding", [b"chunked"]),
        (b"Upgrade", [b"websocket"]),
        (b"Accept-Encoding", [b"gzip, br"]),
        (b"Content-Length", [b"12"]),
        (b"Expect", [b"100-continue"]),
        (b"Content-Type", [b"application/json"]),
        (b"Traceparent", [b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]),
        (b"X-Trace-Id", [b"trace-1"]),
        (b"X-Replay-Fault", [b"cut-after=3"]),
    ]
    out = as_dict(
        upstream_request_headers(pairs, api_key=KEY, client_address=b"10.0.0.7", scheme=b"http")
    )
    for gone in (
        b"cookie",
        b"connection",
        b"x-private-hop",
        b"keep-alive",
        b"proxy-authorization",
        b"proxy-foo",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"accept-encoding",
        b"content-length",
        b"expect",
        b"host",
    ):
        assert gone not in out, gone
    assert out[b"authorization"] == [b"Bearer " + KEY]
    assert out[b"content-type"] == [b"application/json"]
    assert out[b"traceparent"] == [b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]
    assert out[b"x-trace-id"] == [b"trace-1"]
    assert out[b"x-replay-fault"] == [b"cut-after=3"]
    assert out[b"x-forwarded-for"] == [b"10.0.0.7"]
    assert out[b"x-forwarded-proto"] == [b"http"]
    assert out[b"x-forwarded-host"] == [b"proxy.example:8080"]


def test_forwarded_for_appends_and_proto_host_are_overwritten() -> None:
    pairs = [
        (b"X-Forwarded-For", [b"203.0.113.9", b"198.51.100.1"]),
        (b"X-Forwarded-Proto", [b"gopher"]),
        (b"X-Forwarded-Host", [b"spoofed.example"]),
    ]
    out = as_dict(
        upstream_request_headers(pairs, api_key=KEY, client_address=b"::1", scheme=b"https")
    )
    assert out[b"x-forwarded-for"] == [b"203.0.113.9, 198.51.100.1, ::1"]
    assert out[b"x-forwarded-proto"] == [b"https"]
    assert b"x-forwarded-host" not in out  # no Host header in this request


def test_forwarded_and_x_real_ip_never_go_upstream() -> None:
    """Only X-Forwarded-For names the caller upstream: a client's own Forwarded or
    X-Real-IP would let it tell Dify any address it likes."""
    pairs = [
        (b"Forwarded", [b"for=203.0.113.9;proto=https"]),
        (b"X-Real-IP", [b"203.0.113.9"]),
        (b"x-real-ip", [b"198.51.100.1"]),
    ]
    out = as_dict(
        upstream_request_headers(pairs, api_key=KEY, client_address=b"10.0.0.7", scheme=b"http")
    )
    assert b"forwarded" not in out and b"x-real-ip" not in out
    assert out[b"x-forwarded-for"] == [b"10.0.0.7"]


def test_no_client_address_keeps_existing_chain_only() -> None:
    out = as_dict(upstream_request_headers([], api_key=KEY, client_address=None, scheme=b"http"))
    assert b"x-forwarded-for" not in out
    out = as_dict(
        upstream_request_headers(
            [(b"X-Forwarded-For", [b"1.2.3.4"])], api_key=KEY, client_address=None, scheme=b"http"
        )
    )
    assert out[b"x-forwarded-for"] == [b"1.2.3.4"]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [b"Authorization", b"authorization", b"AUTHORIZATION", b"Cookie", b"X-Api-Key"]
            ),
            st.lists(st.binary(min_size=1, max_size=20), min_size=1, max_size=3),
        ),
        max_size=6,
    )
)
def test_exactly_one_authorization_and_it_is_the_key(
    pairs: list[tuple[bytes, list[bytes]]],
) -> None:
    out = upstream_request_headers(pairs, api_key=KEY, client_address=None, scheme=b"http")
    auth = [values for name, values in out if name.lower() == b"authorization"]
    assert auth == [[b"Bearer " + KEY]]
    assert all(name.lower() != b"cookie" for name, _ in out)


def test_connection_listed_tokens() -> None:
    assert connection_listed([b"Keep-Alive,  X-A", b" x-b ,"]) == {b"keep-alive", b"x-a", b"x-b"}
    assert connection_listed(None) == frozenset()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([b"text/event-stream; charset=utf-8"], True),
        ([b"text/event-stream"], True),
        ([b"Text/Event-Stream ;charset=utf-8"], True),
        ([b"application/json"], False),
        ([b"text/event-streamx"], False),
        ([b"audio/mpeg"], False),
        ([], False),
        (None, False),
    ],
)
def test_is_event_stream(value: list[bytes] | None, expected: bool) -> None:
    assert is_event_stream(value) is expected


UPSTREAM_ANSWER = [
    (b"Content-Type", [b"text/event-stream; charset=utf-8"]),
    (b"Content-Length", [b"99"]),
    (b"Connection", [b"keep-alive, X-Hop"]),
    (b"X-Hop", [b"1"]),
    (b"Keep-Alive", [b"timeout=5"]),
    (b"Transfer-Encoding", [b"chunked"]),
    (b"Proxy-Authenticate", [b"Basic"]),
    (b"Cache-Control", [b"private"]),
    (b"X-Version", [b"1.9.0"]),
    (b"X-Env", [b"PRODUCTION"]),
]


def test_stream_answer_headers() -> None:
    out = as_dict(client_response_headers(UPSTREAM_ANSWER, stream=True))
    for name in HOP_BY_HOP | {b"x-hop", b"proxy-authenticate", b"content-length"}:
        assert name not in out, name
    assert out[b"cache-control"] == [b"no-cache"]
    assert out[b"x-accel-buffering"] == [b"no"]
    assert out[b"content-type"] == [b"text/event-stream; charset=utf-8"]
    assert out[b"x-version"] == [b"1.9.0"]
    assert out[b"x-env"] == [b"PRODUCTION"]


def test_non_stream_answer_keeps_length_and_cache_control() -> None:
    out = as_dict(client_response_headers(UPSTREAM_ANSWER, stream=False))
    assert out[b"content-length"] == [b"99"]
    assert out[b"cache-control"] == [b"private"]
    assert b"x-accel-buffering" not in out
    assert b"transfer-encoding" not in out and b"x-hop" not in out


def test_empty_content_encoding_is_dropped_real_one_kept() -> None:
    out = as_dict(client_response_headers([(b"Content-Encoding", [b""])], stream=False))
    assert b"content-encoding" not in out
    out = as_dict(client_response_headers([(b"Content-Encoding", [b"gzip"])], stream=False))
    assert out[b"content-encoding"] == [b"gzip"]


_NAMES = st.sampled_from(
    [
        b"Connection",
        b"Keep-Alive",
        b"TE",
        b"Trailer",
        b"Transfer-Encoding",
        b"Upgrade",
        b"Proxy-Authenticate",
        b"Proxy-Anything",
        b"Content-Type",
        b"X-Version",
        b"X-Listed",
        b"Set-Cookie",
        b"Content-Length",
    ]
)
_VALUES = st.lists(st.sampled_from([b"a", b"x-listed", b"close, X-Listed", b"1"]), min_size=1)


@given(st.lists(st.tuples(_NAMES, _VALUES), max_size=8), st.booleans())
def test_response_filter_property(pairs: list[tuple[bytes, list[bytes]]], stream: bool) -> None:
    out = client_response_headers(pairs, stream=stream)
    listed = connection_listed(v for n, vs in pairs if n.lower() == b"connection" for v in vs)
    added = {b"cache-control", b"x-accel-buffering"} if stream else set()
    for name, values in out:
        lower = name.lower()
        assert lower not in HOP_BY_HOP and not lower.startswith(b"proxy-")
        assert lower not in listed
        if lower not in added:
            assert (name, values) in pairs  # passed on untouched, never invented
    kept = {n.lower() for n, _ in out}
    for name, _ in pairs:
        lower = name.lower()
        dropped = lower in HOP_BY_HOP or lower.startswith(b"proxy-") or lower in listed
        dropped = dropped or (stream and lower == b"content-length")
        assert (lower in kept) != dropped


@pytest.mark.parametrize(
    ("proto", "host", "scheme", "forwarded_host"),
    [
        ([b"https"], [b"chat.example.com"], b"https", b"chat.example.com"),
        ([b"HTTPS, http"], [b"chat.example.com:8443, inner"], b"https", b"chat.example.com:8443"),
        ([b"gopher"], [b"bad host\x00"], b"http", b"proxy.example:8080"),  # ours instead
        ([], [], b"http", b"proxy.example:8080"),
    ],
)
def test_a_trusted_proxys_scheme_and_host_go_on(
    proto: list[bytes], host: list[bytes], scheme: bytes, forwarded_host: bytes
) -> None:
    """Behind a TLS-terminating nginx in --trusted-proxy, Dify must hear the client's
    https and public host, not this hop's http and 127.0.0.1; whatever the order."""
    pairs = [(b"X-Forwarded-Host", host), (b"Host", [b"proxy.example:8080"])]
    pairs += [(b"X-Forwarded-Proto", proto)]
    for ordered in (pairs, pairs[::-1]):
        out = as_dict(
            upstream_request_headers(
                [(n, v) for n, v in ordered if v],
                api_key=KEY,
                client_address=b"10.0.0.2",
                scheme=b"http",
                trust_forwarding=True,
            )
        )
        assert out[b"x-forwarded-proto"] == [scheme]
        assert out[b"x-forwarded-host"] == [forwarded_host]
