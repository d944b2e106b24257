"""The upstream client's plumbing, in memory: endpoints per host kind, a quiet pool, no cookies."""

from __future__ import annotations

import email
from io import BytesIO
from typing import Any
from urllib.request import Request as UrllibRequest

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.task import Cooperator
from twisted.internet.testing import MemoryReactorClock
from twisted.web.client import URI, _HTTP11ClientFactory
from twisted.web.error import SchemeNotSupported

from difytw.uploadbody import UploadBody
from difytw.upstream import (
    POOL_IDLE_PER_HOST,
    NoCookieJar,
    UpstreamEndpoints,
    tls_policy,
    upload_body,
    upstream_client,
    upstream_headers,
    upstream_pool,
)
from tests.test_proxy_client import cookie


def endpoint_for(url: bytes, timeout: float = 7.0) -> Any:
    endpoints = UpstreamEndpoints(
        MemoryReactorClock(), tls=tls_policy(None), connect_timeout=timeout
    )
    return endpoints.endpointForURI(URI.fromBytes(url))


@pytest.mark.parametrize(
    ("url", "kind", "host"),
    [
        (b"http://127.0.0.1:5001/v1", TCP4ClientEndpoint, "127.0.0.1"),
        (b"http://10.1.2.3/v1", TCP4ClientEndpoint, "10.1.2.3"),
        (b"http://[::1]:5001/v1", TCP6ClientEndpoint, "::1"),
        (b"http://dify.internal:5001/v1", HostnameEndpoint, None),
        (b"http://localhost:5001/v1", HostnameEndpoint, None),
    ],
)
def test_ip_literals_connect_directly_and_names_resolve(
    url: bytes, kind: type, host: str | None
) -> None:
    endpoint = endpoint_for(url)
    assert type(endpoint) is kind
    if host is not None:
        assert endpoint._host == host
        assert endpoint._timeout == 7.0


def test_a_literal_reaches_connect_tcp_without_the_resolver() -> None:
    reactor = MemoryReactorClock()
    endpoints = UpstreamEndpoints(reactor, tls=tls_policy(None), connect_timeout=3.0)
    endpoints.endpointForURI(URI.fromBytes(b"http://127.0.0.1:5001/v1")).connect(
        _HTTP11ClientFactory(lambda _: None, "test")
    )
    [(host, port, _factory, timeout, _bind)] = reactor.tcpClients
    assert (host, port, timeout) == ("127.0.0.1", 5001, 3.0)


def test_https_wraps_the_same_endpoint_in_tls() -> None:
    endpoint = endpoint_for(b"https://127.0.0.1:8443/v1")
    assert not isinstance(endpoint, TCP4ClientEndpoint)
    assert type(endpoint._wrappedEndpoint) is TCP4ClientEndpoint
    named = endpoint_for(b"https://api.dify.ai/v1")
    assert type(named._wrappedEndpoint) is HostnameEndpoint


def test_other_schemes_are_refused() -> None:
    with pytest.raises(SchemeNotSupported):
        endpoint_for(b"ftp://127.0.0.1/v1")


def test_the_client_connects_through_these_endpoints() -> None:
    reactor = MemoryReactorClock()
    client = upstream_client(
        reactor, upstream_pool(reactor), connect_timeout=4.0, tls=tls_policy(None)
    )
    client.request("GET", "http://127.0.0.1:5001/v1/parameters", unbuffered=True)
    [(host, port, _factory, timeout, _bind)] = reactor.tcpClients
    assert (host, port, timeout) == ("127.0.0.1", 5001, 4.0)


def test_the_pool_is_persistent_and_its_connections_do_not_log() -> None:
    pool = upstream_pool(MemoryReactorClock())
    assert pool.persistent
    assert pool.maxPersistentPerHost == POOL_IDLE_PER_HOST
    assert issubclass(pool._factory, _HTTP11ClientFactory)
    assert pool._factory.noisy is False
    assert _HTTP11ClientFactory.noisy is True  # Twisted's own class is left as it was


class SetCookieAnswer:
    def info(self) -> Any:
        return email.message_from_string("Set-Cookie: session=abc; Path=/\n\n")


def test_the_jar_keeps_and_sends_nothing() -> None:
    jar = NoCookieJar()
    request = UrllibRequest("http://up.example/v1/x")
    jar.extract_cookies(SetCookieAnswer(), request)  # type: ignore[arg-type]
    jar.set_cookie(cookie("seeded"))
    jar.add_cookie_header(request)
    assert list(jar) == []
    assert not request.has_header("Cookie")


def test_upstream_headers_carry_the_key_and_the_client_hop() -> None:
    headers = upstream_headers(
        [(b"Authorization", [b"Bearer client-token"]), (b"Accept", [b"text/event-stream"])],
        api_key=b"app-k",
        client=IPv4Address("TCP", "10.0.0.7", 50000),
        secure=True,
    )
    assert headers.getRawHeaders(b"Authorization") == [b"Bearer app-k"]
    assert headers.getRawHeaders(b"Accept") == [b"text/event-stream"]
    assert headers.getRawHeaders(b"X-Forwarded-For") == [b"10.0.0.7"]
    assert headers.getRawHeaders(b"X-Forwarded-Proto") == [b"https"]


def test_an_empty_body_sends_no_producer_and_a_read_one_is_rewound() -> None:
    cooperator = Cooperator(started=False)
    assert upload_body(None, cooperator=cooperator, progress=lambda: None) is None
    assert upload_body(BytesIO(), cooperator=cooperator, progress=lambda: None) is None
    spool = BytesIO(b'{"query": "hi"}')
    spool.read()
    body = upload_body(spool, cooperator=cooperator, progress=lambda: None)
    assert isinstance(body, UploadBody)
    assert body.length == len(b'{"query": "hi"}')
    assert spool.tell() == 0
