"""difytw.uri: raw request-target vetting and upstream URL building, in memory."""

from __future__ import annotations

import string
from urllib.parse import unquote_to_bytes

import pytest
from hyperlink import EncodedURL
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.web.client import URI

from difytw.errors import DifyError
from difytw.uri import RequestTarget, UpstreamRoute, normalize_prefix, normalize_upstream

ESCAPES = [
    b"/dify/../admin",
    b"/dify/..",
    b"/dify/./chat-messages",
    b"/dify/%2e%2e/admin",
    b"/dify/%2E%2E/admin",
    b"/dify/.%2e/admin",
    b"/dify/%2e./admin",
    b"/dify/%2e/x",
    b"/dify/a%2Fb",
    b"/dify/a%2fb",
    b"/dify/..%2Fadmin",
    b"/dify/a%5Cb",
    b"/dify/a%5cb",
    b"/dify/a\\..\\b",
    b"/dify/a\\b",
    b"/dify/a%00b",
    b"/dify/a\x00b",
    b"/dify/x?user=a%00",
    b"//evil.example/v1/x",
    b"///evil",
    b"/dify//x",
    b"http://evil.example/dify/x",
    b"https://evil.example/",
    b"evil.example:443",
    b"*",
    b"",
    b"dify/x",
    b"/dify/x#frag",
    b"/dify/%zz",
    b"/dify/%2",
    b"/dify/%ff",
    b"/dify/\xc3\xa9",
    b"/dify/a b",
    b"/dify/{x}",
    b"/dify/x?q=|",
]


@pytest.mark.parametrize("raw", ESCAPES, ids=[repr(r) for r in ESCAPES])
def test_escape_attempts_are_bad_requests(raw: bytes) -> None:
    with pytest.raises(DifyError) as caught:
        RequestTarget.parse(raw)
    assert caught.value.status == 400
    assert caught.value.code == "bad_request"


ACCEPTED = [
    (b"/dify/chat-messages", b"/dify/chat-messages", None),
    (b"/dify/chat-messages/", b"/dify/chat-messages/", None),
    (b"/dify/messages?user=u&limit=20", b"/dify/messages", b"user=u&limit=20"),
    (b"/dify/x?", b"/dify/x", b""),
    (b"/dify/x?a=%2F..%2e&b=/../", b"/dify/x", b"a=%2F..%2e&b=/../"),
    (b"/dify/files/%E6%96%87", b"/dify/files/%E6%96%87", None),
    (b"/dify/a..b/.x/x.", b"/dify/a..b/.x/x.", None),
    (b"/", b"/", None),
]


@pytest.mark.parametrize(("raw", "path", "query"), ACCEPTED)
def test_safe_targets_split_at_first_question_mark(
    raw: bytes, path: bytes, query: bytes | None
) -> None:
    assert RequestTarget.parse(raw) == RequestTarget(path, query)


def test_url_for_keeps_rest_and_raw_query() -> None:
    route = UpstreamRoute("/dify", "https://api.dify.ai/v1/")
    assert route.url_for(RequestTarget.parse(b"/dify/chat-messages")) == (
        b"https://api.dify.ai/v1/chat-messages"
    )
    assert route.url_for(RequestTarget.parse(b"/dify/messages?b=2&a=%41&&c")) == (
        b"https://api.dify.ai/v1/messages?b=2&a=%41&&c"
    )
    assert route.url_for(RequestTarget.parse(b"/dify")) == b"https://api.dify.ai/v1"


@pytest.mark.parametrize("raw", [b"/difyx/chat", b"/other", b"/", b"/Dify/x", b"/%64ify/x"])
def test_outside_prefix_is_none(raw: bytes) -> None:
    assert UpstreamRoute("/dify", "http://127.0.0.1:1/v1").url_for(RequestTarget.parse(raw)) is None


def test_root_prefix_proxies_everything() -> None:
    route = UpstreamRoute("/", "http://up:9/v1")
    assert route.prefix == b""
    assert route.url_for(RequestTarget.parse(b"/x/y?z")) == b"http://up:9/v1/x/y?z"


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [("/dify", b"/dify"), ("/dify/", b"/dify"), ("", b""), ("/", b""), ("/a/b", b"/a/b")],
)
def test_normalize_prefix(prefix: str, expected: bytes) -> None:
    assert normalize_prefix(prefix) == expected


@pytest.mark.parametrize("prefix", ["dify", "/a/../b", "/a//b", "/a?b", "/a%2Fb", "/é"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError):
        normalize_prefix(prefix)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://x/v1",
        "http:///v1",
        "https://user:pw@api.dify.ai/v1",
        "https://api.dify.ai/v1?x=1",
        "https://api.dify.ai/v1#f",
        "https://api.dify.ai:99999/v1",
        "api.dify.ai/v1",
        "https://api.dify.ai/v 1",
    ],
)
def test_bad_upstreams_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        normalize_upstream(url)


def test_ipv6_upstream_is_fine() -> None:
    assert normalize_upstream("http://[::1]:8000/v1/") == b"http://[::1]:8000/v1"


# Every byte RFC 3986 allows in a request-target, weighted toward the tricky ones.
_TARGET_BYTES = st.sampled_from(
    [c.encode() for c in string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@/?"]
    + [b"%2e", b"%2E", b"%2f", b"%5C", b"%41", b"%e6%96%87", b"%", b"..", b".", b"//", b"\\"]
)


@settings(max_examples=500)
@given(st.lists(_TARGET_BYTES, max_size=30))
def test_accepted_targets_have_no_escape(pieces: list[bytes]) -> None:
    raw = b"/dify/" + b"".join(pieces)
    try:
        target = RequestTarget.parse(raw)
    except DifyError as error:
        assert error.status == 400
        return
    for segment in target.path.split(b"/"):
        decoded = unquote_to_bytes(segment)
        assert decoded not in (b".", b"..")
        assert b"/" not in decoded and b"\\" not in decoded and b"\x00" not in decoded
    route = UpstreamRoute("/dify", "http://up:9/v1")
    url = route.url_for(target)
    assert url is not None
    assert url.startswith(b"http://up:9/v1/")


@settings(max_examples=500)
@given(st.lists(_TARGET_BYTES, max_size=30), st.lists(_TARGET_BYTES, max_size=30))
def test_accepted_targets_survive_the_http_client_byte_for_byte(
    path_pieces: list[bytes], query_pieces: list[bytes]
) -> None:
    """What treq (hyperlink) and Twisted's Agent put on the wire equals the vetted URL.

    Two empty delimiters are the only loss, both dropped by Twisted's ``URI``: a bare "?"
    (an empty query; RFC 3986 section 6.2.3 calls the forms equivalent) and a ";" that ends
    the last segment (empty RFC 2396 path parameters).
    """
    raw = b"/dify/" + b"".join(path_pieces)
    query = b"".join(query_pieces)
    if query:
        raw += b"?" + query
    try:
        target = RequestTarget.parse(raw)
    except DifyError:
        return
    url = UpstreamRoute("/dify", "http://up:9/v1").url_for(target)
    assert url is not None
    on_wire = URI.fromBytes(
        EncodedURL.from_text(url.decode("ascii")).to_uri().to_text().encode("ascii")
    ).originForm
    path, _, query = url[len(b"http://up:9") :].partition(b"?")
    last = path.rsplit(b"/", 1)[-1]
    if last.endswith(b";") and last.index(b";") == len(last) - 1:
        path = path[:-1]
    assert on_wire == (path + b"?" + query if query else path)
