"""The upstream HTTP client's guards, in memory: identity encoding and no cookie jar."""

from __future__ import annotations

import email
from http.cookiejar import Cookie
from typing import Any
from urllib.request import Request as UrllibRequest

from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from zope.interface import implementer

from difytw.upstream import IdentityEncodingAgent, NoCookies


@implementer(IAgent)
class RecordingAgent:
    def __init__(self) -> None:
        self.seen: list[tuple[bytes, bytes, Headers]] = []

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None
    ) -> Deferred[Any]:
        assert headers is not None
        self.seen.append((method, uri, headers))
        return Deferred()  # never answers: only what was sent matters here


def test_treq_over_identity_agent_asks_for_identity_only() -> None:
    recorder = RecordingAgent()
    client = HTTPClient(IdentityEncodingAgent(recorder))
    client.request(
        "GET",
        "http://up.example/v1/x?a=1",
        headers=Headers({b"Accept-Encoding": [b"gzip, br"]}),
        unbuffered=True,
        allow_redirects=False,
    )
    [(method, uri, headers)] = recorder.seen
    assert (method, uri) == (b"GET", b"http://up.example/v1/x?a=1")
    assert headers.getRawHeaders(b"Accept-Encoding") == [b"identity"]


def test_identity_agent_does_not_touch_the_callers_headers() -> None:
    recorder = RecordingAgent()
    mine = Headers({b"X-A": [b"1"]})
    IdentityEncodingAgent(recorder).request(b"GET", b"http://up/", mine)
    assert not mine.hasHeader(b"Accept-Encoding")


def cookie(name: str) -> Cookie:
    return Cookie(
        0,
        name,
        "v",
        None,
        False,
        "up.example",
        True,
        False,
        "/",
        True,
        False,
        None,
        False,
        None,
        None,
        {},
    )


def test_no_cookies_policy_keeps_nothing_and_sends_nothing() -> None:
    jar = IndexableCookieJar(policy=NoCookies())
    request = UrllibRequest("http://up.example/v1/x")
    assert not NoCookies().set_ok(cookie("session"), request)
    assert not NoCookies().return_ok(cookie("session"), request)
    jar.add_cookie_header(request)
    assert not request.has_header("Cookie")
    assert list(jar) == []


class SetCookieAnswer:
    """What http.cookiejar reads from a response: ``info()`` with its headers."""

    def info(self) -> Any:
        return email.message_from_string("Set-Cookie: session=abc; Path=/\n\n")


def test_upstream_set_cookie_is_not_kept() -> None:
    request = UrllibRequest("http://up.example/v1/x")
    ordinary = IndexableCookieJar()
    ordinary.extract_cookies(SetCookieAnswer(), request)  # type: ignore[arg-type]
    assert [c.name for c in ordinary] == ["session"]  # what treq's default jar would do
    guarded = IndexableCookieJar(policy=NoCookies())
    guarded.extract_cookies(SetCookieAnswer(), request)  # type: ignore[arg-type]
    assert list(guarded) == []
