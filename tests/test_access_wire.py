"""The access gate over loopback: difyproxy in front of the replay server as "Dify".

The replay server's journal shows what reached upstream: the query as sent, the body's
SHA-256 and size, the ``user`` of a stop call; an upload's answer names its end user in
``created_by``.  So each test checks upstream, not only what the client was told.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import provider

from difytw.access import AccessPolicy
from difytw.allowlist import AllowList
from difytw.auth import HeaderAuth, JwtAuth, NoAuth
from difytw.authconfig import parse_networks, parse_tokens, token_line
from difytw.cors import CorsPolicy
from difytw.identity import UserTemplate
from difytw.limits import Rate
from difytw.proxy import ProxyApp, ProxyConfig
from tests import rawhttp
from tests.test_proxy_harness import (
    CHAT,
    TEST_KEY,
    RunningProxy,
    client_pool,
    fetch,
    header,
    start_fetch,
    start_proxy,
    wait_for,
)

__all__ = ["start_proxy"]

TOKENS = parse_tokens([token_line(b"tok-alice", "alice"), token_line(b"tok-bob", "bob")], "t")
ALICE = {"Authorization": "Bearer tok-alice"}
ENFORCED = "acme:alice"
SECURE = AccessPolicy(auth=TOKENS, user_template=UserTemplate("acme:{sub}"))
SECRET = b"wire-test-secret-long-enough-for-hs256!!"
TASK = str(uuid.UUID(int=7))


def body_of(collector: Any) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(collector.body)
    return decoded


@pytest.fixture
def secured(replay: Any, start_proxy: Callable[..., RunningProxy]) -> RunningProxy:
    return start_proxy(replay.url + "/v1", access=SECURE)


# -- authentication ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_no_or_wrong_credentials_are_401_and_never_go_upstream(
    replay: Any, secured: RunningProxy
) -> None:
    for headers, code in (
        ({}, "unauthorized"),
        ({"Authorization": "Bearer nope"}, "invalid_token"),
    ):
        response, collector, _ = await fetch(
            "POST", secured.url + "/chat-messages", json=CHAT, headers=headers
        )
        assert response.code == 401
        assert body_of(collector) == {
            "code": code,
            "message": body_of(collector)["message"],
            "status": 401,
        }
        assert header(response, "WWW-Authenticate") == [b'Bearer realm="difyproxy"']
    assert replay.journal.entries == []
    response, collector, _ = await fetch(
        "POST", secured.url + "/chat-messages", json=CHAT, headers=ALICE
    )
    assert response.code == 200
    [entry] = replay.journal.entries
    assert entry.auth == "ok"  # the caller's token was replaced by the app key


@pytest_twisted.ensureDeferred
async def test_expired_and_forged_jwts_are_refused(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1", access=AccessPolicy(auth=JwtAuth(SECRET, "HS256")))
    now = int(time.time())
    cases = [
        (jwt.encode({"sub": "a", "exp": now - 60}, SECRET, "HS256"), 401, "token_expired"),
        (jwt.encode({"sub": "a", "exp": now + 60}, b"z" * 40, "HS256"), 401, "invalid_token"),
        (jwt.encode({"sub": "a", "exp": now + 60}, SECRET, "HS256"), 200, None),
    ]
    for token, status, code in cases:
        response, collector, _ = await fetch(
            "GET", proxy.url + "/parameters", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.code == status
        if code is not None:
            assert body_of(collector)["code"] == code
    [entry] = replay.journal.entries
    assert entry.query == "user=a"


@pytest_twisted.ensureDeferred
async def test_identity_header_only_from_a_trusted_proxy(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    def gateway(cidr: str) -> AccessPolicy:
        return AccessPolicy(auth=HeaderAuth(b"x-forwarded-user", parse_networks([cidr])))

    elsewhere = start_proxy(replay.url + "/v1", access=gateway("10.0.0.0/8"))
    response, collector, _ = await fetch(
        "GET", elsewhere.url + "/parameters", headers={"X-Forwarded-User": "admin"}
    )
    assert (response.code, body_of(collector)["code"]) == (403, "untrusted_proxy")
    assert replay.journal.entries == []
    trusted = start_proxy(replay.url + "/v1", access=gateway("127.0.0.1/32"))
    response, _, _ = await fetch(
        "GET", trusted.url + "/parameters?user=admin", headers={"X-Forwarded-User": "dana"}
    )
    assert response.code == 200
    assert replay.journal.entries[-1].query == "user=dana"


# -- the Dify user ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_forged_user_in_json_arrives_rewritten(replay: Any, secured: RunningProxy) -> None:
    chat = dict(CHAT, user="victim")
    response, _, _ = await fetch("POST", secured.url + "/chat-messages", json=chat, headers=ALICE)
    assert response.code == 200
    expected = json.dumps(dict(chat, user=ENFORCED), ensure_ascii=False, separators=(",", ":"))
    entry = replay.journal.entries[-1]
    assert entry.body_sha256 == hashlib.sha256(expected.encode()).hexdigest()
    # A stop call records the user it arrived with: the enforced one, not the forged one.
    response, _, _ = await fetch(
        "POST",
        secured.url + f"/chat-messages/{TASK}/stop",
        json={"user": "victim"},
        headers=ALICE,
    )
    assert response.code == 200
    assert replay.journal.entries[-1].stop["user"] == ENFORCED
    # Without a body at all (DELETE, stop), one is made: never upstream without a user.
    response, _, _ = await fetch("POST", secured.url + f"/chat-messages/{TASK}/stop", headers=ALICE)
    assert replay.journal.entries[-1].stop["user"] == ENFORCED


@pytest_twisted.ensureDeferred
async def test_forged_user_in_query_arrives_rewritten(replay: Any, secured: RunningProxy) -> None:
    await fetch("GET", secured.url + "/parameters?user=victim&x=%41&us%65r=v2", headers=ALICE)
    # (The replay server finds no fixture with an "x" and answers 404; its journal still
    # shows what arrived.)
    assert replay.journal.entries[-1].query == "x=%41&user=acme%3Aalice"


async def upload(url: str, user: str, headers: dict[str, str] | None = None) -> Any:
    response = await treq.post(
        url + "/files/upload",
        data={"user": user},
        files={"file": ("notes.txt", "text/plain", b"some notes\n")},
        headers=headers or {},
        pool=client_pool(),
    )
    return response.code, json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_forged_user_in_multipart_arrives_rewritten(
    replay: Any, secured: RunningProxy
) -> None:
    status, through_proxy = await upload(secured.url, "victim", ALICE)
    assert status == 201
    _, direct_as_alice = await upload(
        replay.url + "/v1", ENFORCED, {"Authorization": "Bearer " + TEST_KEY}
    )
    _, direct_as_victim = await upload(
        replay.url + "/v1", "victim", {"Authorization": "Bearer " + TEST_KEY}
    )
    assert through_proxy["created_by"] == direct_as_alice["created_by"]
    assert through_proxy["created_by"] != direct_as_victim["created_by"]


BOUNDARY = b"----difytwBoundary7MA4YWxkTrZu0gW"
TWENTY_MB = 20 * 1024 * 1024


def big_upload(payload: bytes, user: bytes) -> bytes:
    return b"".join(
        [
            b"--" + BOUNDARY + b"\r\n",
            b'Content-Disposition: form-data; name="file"; filename="big.bin"\r\n',
            b"Content-Type: application/octet-stream\r\n\r\n",
            payload,
            b"\r\n--" + BOUNDARY + b"\r\n",
            b'Content-Disposition: form-data; name="user"\r\n\r\n' + user + b"\r\n",
            b"--" + BOUNDARY + b"--\r\n",
        ]
    )


UPLOAD_HEADERS = {**ALICE, "Content-Type": "multipart/form-data; boundary=" + BOUNDARY.decode()}


@pytest_twisted.ensureDeferred
async def test_twenty_megabyte_upload_arrives_identical_but_for_the_user(
    replay: Any, secured: RunningProxy
) -> None:
    payload = os.urandom(TWENTY_MB)
    sent, expected = big_upload(payload, b"u20-forged"), big_upload(payload, ENFORCED.encode())
    response, collector, _ = await fetch(
        "POST", secured.url + "/files/upload", data=sent, headers=UPLOAD_HEADERS
    )
    assert response.code == 201, collector.body
    assert body_of(collector)["size"] == TWENTY_MB
    [entry] = replay.journal.entries
    assert entry.body_bytes == len(expected)
    assert entry.body_sha256 == hashlib.sha256(expected).hexdigest()


class DigestingDify(Resource):
    """An upstream that reads the body from its spool in slices and answers its digest."""

    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        digest, size = hashlib.sha256(), 0
        request.content.seek(0)
        while block := request.content.read(1 << 16):
            digest.update(block)
            size += len(block)
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps({"sha256": digest.hexdigest(), "size": size}).encode()


@pytest_twisted.ensureDeferred
async def test_the_upload_rewrite_never_holds_the_body_in_memory(
    start_proxy: Callable[..., RunningProxy],
) -> None:
    # The replay server's Site parses forms into memory itself (Twisted's default), so
    # memory is measured against an upstream that does not.
    site = Site(DigestingDify(), parsePOSTFormSubmission=False)
    listening = reactor.listenTCP(0, site, interface="127.0.0.1")
    proxy = start_proxy(f"http://127.0.0.1:{listening.getHost().port}/v1", access=SECURE)
    payload = os.urandom(TWENTY_MB)
    spool = io.BytesIO(big_upload(payload, b"u20-forged"))
    expected = hashlib.sha256(big_upload(payload, ENFORCED.encode())).hexdigest()
    del payload
    tracemalloc.start()
    try:
        response, collector, _ = await fetch(
            "POST", proxy.url + "/files/upload", data=spool, headers=UPLOAD_HEADERS
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await listening.stopListening()
    assert response.code == 200
    assert body_of(collector)["sha256"] == expected
    assert peak < 8 * 1024 * 1024, peak  # client, proxy and upstream, all in this process


@pytest_twisted.ensureDeferred
async def test_bodies_must_be_json_objects_of_a_json_type(
    replay: Any, secured: RunningProxy
) -> None:
    cases = [
        (b"[1]", "application/json", 400, "invalid_param"),
        (b"{oops", "application/json", 400, "invalid_param"),
        (b'{"query":"x"}', "text/plain", 415, "unsupported_media_type"),
        (b"--x--", "multipart/form-data; boundary=x", 415, "unsupported_media_type"),
    ]
    for data, content_type, status, code in cases:
        response, collector, _ = await fetch(
            "POST",
            secured.url + "/chat-messages",
            data=data,
            headers={**ALICE, "Content-Type": content_type},
        )
        assert (response.code, body_of(collector)["code"]) == (status, code)
    assert replay.journal.entries == []


@pytest_twisted.ensureDeferred
async def test_auth_none_fills_a_missing_user_and_keeps_a_named_one(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1")  # the defaults: --auth none on loopback
    await fetch("GET", proxy.url + "/parameters")
    await fetch("GET", proxy.url + "/parameters?user=carol")
    assert [e.query for e in replay.journal.entries] == ["user=anonymous", "user=carol"]


@pytest.mark.parametrize(
    "field", ["Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-IP"]
)
@pytest_twisted.ensureDeferred
async def test_auth_none_refuses_what_came_through_another_proxy(
    field: str, replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    """A public nginx in front of the loopback listener: its Host is 127.0.0.1, but the
    forwarding header it adds shows the caller is not on this machine."""
    proxy = start_proxy(replay.url + "/v1")  # the defaults: --auth none on loopback
    nginx = {"Host": f"127.0.0.1:{proxy.port}", field: "for=203.0.113.9"}
    response, collector, _ = await fetch("GET", proxy.url + "/parameters?user=carol", headers=nginx)
    assert response.code == 403
    refusal = body_of(collector)
    assert (refusal["code"], refusal["status"]) == ("forwarded_request", 403)
    assert "--auth tokens:FILE" in refusal["message"]
    assert replay.journal.entries == []


@pytest_twisted.ensureDeferred
async def test_auth_none_on_a_unix_socket_keeps_no_caller_named_user(replay: Any) -> None:
    """Only a direct loopback TCP caller names its own user: a socket file can as well be
    a reverse proxy's way in."""
    folder = tempfile.mkdtemp(prefix="dt-", dir="/tmp")  # short: sun_path holds ~100 bytes
    app = ProxyApp(ProxyConfig(upstream=replay.url + "/v1", api_key=TEST_KEY), reactor=reactor)
    listening = reactor.listenUNIX(os.path.join(folder, "s"), app.site())
    try:
        client = rawhttp.RawClient(
            rawhttp.build_request("GET", "/dify/parameters?user=carol", host="localhost"), reactor
        )
        endpoint = UNIXClientEndpoint(reactor, os.path.join(folder, "s"))
        await connectProtocol(endpoint, client)
        response = await client.finished
        assert response.status == 200
        assert [e.query for e in replay.journal.entries] == ["user=anonymous"]
    finally:
        await listening.stopListening()
        await app.close()
        shutil.rmtree(folder)


# -- allow-list -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/app/feedbacks", 403, "route_not_allowed"),
        ("GET", "/workflows/logs", 403, "route_not_allowed"),
        ("GET", f"/workflows/run/{TASK}", 403, "route_not_allowed"),
        ("GET", "/apps/annotations", 403, "route_not_allowed"),
        ("GET", f"/end-users/{TASK}", 403, "route_not_allowed"),
        ("GET", "/datasets", 403, "route_not_allowed"),
        ("GET", "/%61pp/feedbacks", 403, "route_not_allowed"),
        ("POST", "/chat-messages/not-a-uuid/stop", 400, "invalid_param"),
        ("GET", "/chat-messages", 405, "method_not_allowed"),
        ("GET", "/console/api/apps", 404, "not_found"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_blocked_routes_never_reach_upstream(
    method: str, path: str, status: int, code: str, replay: Any, secured: RunningProxy
) -> None:
    response, collector, _ = await fetch(method, secured.url + path, headers=ALICE, json={})
    assert (response.code, body_of(collector)["code"]) == (status, code)
    assert replay.journal.entries == []


@pytest.mark.parametrize(
    "path",
    [
        "/datasets/x/v1/parameters",
        "/console/api/v1/chat-messages",
        "/parameters",
        "/files/v1/parameters",
    ],
)
@pytest_twisted.ensureDeferred
async def test_upstream_without_v1_serves_only_paths_that_start_with_v1(
    path: str, replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    """Upstream at the host root (the demo, https://api.dify.ai): a ``v1`` deeper in the
    path must not make another Dify surface look like an allowed Service API route."""
    proxy = start_proxy(replay.url, access=SECURE)
    response, collector, _ = await fetch("GET", proxy.url + path, headers=ALICE)
    assert (response.code, body_of(collector)["code"]) == (403, "route_not_allowed")
    assert replay.journal.entries == []
    response, _, _ = await fetch("GET", proxy.url + "/v1/parameters", headers=ALICE)
    assert response.code == 200
    [entry] = replay.journal.entries
    assert (entry.path, entry.query) == ("/v1/parameters", "user=acme%3Aalice")


@pytest_twisted.ensureDeferred
async def test_allow_opens_an_app_wide_route(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    access = AccessPolicy(allow=AllowList.with_allowed(["GET /app/feedbacks"]))
    proxy = start_proxy(replay.url + "/v1", access=access)
    await fetch("GET", proxy.url + "/app/feedbacks?page=1")
    [entry] = replay.journal.entries
    assert (entry.path, entry.query) == ("/v1/app/feedbacks", "page=1")  # no user added


# -- limits ---------------------------------------------------------------------------------


async def open_stream(proxy: RunningProxy, replay: Any, held: Clock, user: str) -> Any:
    """A chat stream that stays open: the replay server's clock is ``held``, moved just
    far enough to send the head (chat-slow runs 5.5 s)."""
    count = len(replay.journal.entries)
    opening = defer.ensureDeferred(
        start_fetch("POST", proxy.url + "/chat-messages", json=dict(CHAT, user=user))
    )
    await wait_for(lambda: len(replay.journal.entries) > count)
    held.advance(1.0)
    return await opening


@pytest_twisted.ensureDeferred
async def test_streams_per_user_429_then_recover(
    start_replay: Callable[..., Any], start_proxy: Callable[..., RunningProxy]
) -> None:
    held = Clock()  # the replay server's clock: the stream waits until it is advanced
    replay = start_replay(speed=1.0, clock=held)
    proxy = start_proxy(replay.url + "/v1", access=AccessPolicy(max_streams_per_user=1))
    first, first_body = await open_stream(proxy, replay, held, "u1")
    assert first.code == 200
    response, collector, _ = await fetch(
        "POST", proxy.url + "/chat-messages", json=dict(CHAT, user="u1")
    )
    assert (response.code, body_of(collector)["code"]) == (429, "too_many_requests")
    assert header(response, "Retry-After") == [b"1"]
    other, other_body = await open_stream(proxy, replay, held, "u2")
    assert other.code == 200  # another user has slots of their own
    held.advance(10)
    await first_body.done
    await other_body.done
    await wait_for(lambda: proxy.app._gate.slots.open == 0)
    again, again_body = await open_stream(proxy, replay, held, "u1")
    assert again.code == 200
    held.advance(10)
    await again_body.done


@pytest_twisted.ensureDeferred
async def test_global_stream_cap_503_then_recover(
    start_replay: Callable[..., Any], start_proxy: Callable[..., RunningProxy]
) -> None:
    held = Clock()
    replay = start_replay(speed=1.0, clock=held)
    proxy = start_proxy(replay.url + "/v1", access=AccessPolicy(max_streams=1))
    first, first_body = await open_stream(proxy, replay, held, "a")
    assert first.code == 200
    response, collector, _ = await fetch(
        "POST", proxy.url + "/chat-messages", json=dict(CHAT, user="b")
    )
    assert (response.code, body_of(collector)["code"]) == (503, "service_unavailable")
    assert header(response, "Retry-After")
    asking = defer.ensureDeferred(fetch("GET", proxy.url + "/parameters?user=b"))
    await wait_for(lambda: len(replay.journal.entries) == 2)
    held.advance(1.0)
    response, _, _ = await asking
    assert response.code == 200  # only streams count
    held.advance(10)
    await first_body.done
    await wait_for(lambda: proxy.app._gate.slots.open == 0)
    again, again_body = await open_stream(proxy, replay, held, "b")
    assert again.code == 200
    held.advance(10)
    await again_body.done


@pytest_twisted.ensureDeferred
async def test_rate_limit_429_with_retry_after_then_recover(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    clock = Clock()
    clock.advance(1000)
    access = AccessPolicy(auth=TOKENS, rate=Rate.parse("2/min"))
    proxy = start_proxy(replay.url + "/v1", clock=clock, access=access)
    statuses = []
    for _ in range(3):
        response, _, _ = await fetch("GET", proxy.url + "/parameters", headers=ALICE)
        statuses.append(response.code)
    assert statuses == [200, 200, 429]
    response, _, _ = await fetch("GET", proxy.url + "/parameters", headers=ALICE)
    assert header(response, "Retry-After") == [b"30"]
    bob, _, _ = await fetch(
        "GET", proxy.url + "/parameters", headers={"Authorization": "Bearer tok-bob"}
    )
    assert bob.code == 200
    clock.advance(30)
    response, _, _ = await fetch("GET", proxy.url + "/parameters", headers=ALICE)
    assert response.code == 200
    assert len(replay.journal.entries) == 4


# -- CORS ------------------------------------------------------------------------------------

APP = "https://app.example.com"
WITH_CORS = AccessPolicy(auth=TOKENS, cors=CorsPolicy.from_flags([APP]))


@pytest_twisted.ensureDeferred
async def test_cors_preflight_allowed_and_denied(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1", access=WITH_CORS)
    asking = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    response, _, _ = await fetch(
        "OPTIONS", proxy.url + "/chat-messages", headers={"Origin": APP, **asking}
    )
    assert response.code == 204
    assert header(response, "Access-Control-Allow-Origin") == [APP.encode()]
    assert header(response, "Access-Control-Allow-Headers") == [b"authorization, content-type"]
    for origin in ("https://evil.example", "null"):
        response, collector, _ = await fetch(
            "OPTIONS", proxy.url + "/chat-messages", headers={"Origin": origin, **asking}
        )
        assert (response.code, body_of(collector)["code"]) == (403, "cors_not_allowed")
        assert header(response, "Access-Control-Allow-Origin") == []
    assert replay.journal.entries == []


@pytest_twisted.ensureDeferred
async def test_cors_on_answers_and_refusals_and_foreign_origins_refused(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    proxy = start_proxy(replay.url + "/v1", access=WITH_CORS)
    response, _, _ = await fetch("GET", proxy.url + "/parameters", headers={"Origin": APP, **ALICE})
    assert response.code == 200
    assert header(response, "Access-Control-Allow-Origin") == [APP.encode()]
    response, _, _ = await fetch("GET", proxy.url + "/parameters", headers={"Origin": APP})
    assert response.code == 401  # the browser may read why
    assert header(response, "Access-Control-Allow-Origin") == [APP.encode()]
    response, collector, _ = await fetch(
        "POST",
        proxy.url + "/files/upload",
        headers={"Origin": "https://evil.example", **ALICE},
        data=b"--x--",
    )
    assert (response.code, body_of(collector)["code"]) == (403, "cors_not_allowed")
    assert len(replay.journal.entries) == 1


class PermissiveDify(Resource):
    """An upstream that, like Dify's flask-cors, allows every origin."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setHeader(b"Access-Control-Allow-Origin", b"*")
        request.setHeader(b"Access-Control-Allow-Credentials", b"true")
        request.setHeader(b"Vary", b"Accept-Encoding")
        request.setHeader(b"Content-Type", b"application/json")
        return b"{}"


@pytest.fixture
def permissive() -> Iterator[str]:
    listening = reactor.listenTCP(0, Site(PermissiveDify()), interface="127.0.0.1")
    yield f"http://127.0.0.1:{listening.getHost().port}/v1"
    pytest_twisted.blockon(listening.stopListening())


@pytest_twisted.ensureDeferred
async def test_upstream_cors_headers_never_reach_the_client(
    permissive: str, start_proxy: Callable[..., RunningProxy]
) -> None:
    closed = start_proxy(permissive)
    response, _, _ = await fetch("GET", closed.url + "/parameters")
    assert response.code == 200
    names = [name.lower() for name, _ in response.headers.getAllRawHeaders()]
    assert not [n for n in names if n.startswith(b"access-control-")]
    opened = start_proxy(permissive, access=AccessPolicy(cors=CorsPolicy.from_flags([APP])))
    response, _, _ = await fetch("GET", opened.url + "/parameters", headers={"Origin": APP})
    assert header(response, "Access-Control-Allow-Origin") == [APP.encode()]
    assert header(response, "Access-Control-Allow-Credentials") == []
    vary = b", ".join(header(response, "Vary"))
    assert b"Origin" in vary and b"Accept-Encoding" in vary


class ForwardingEcho(Resource):
    """An upstream that answers with the forwarding headers it was sent."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        names = (
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-real-ip",
        )
        seen = {name: request.requestHeaders.getRawHeaders(name, []) for name in names}
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(seen).encode()


@pytest.fixture
def echo() -> Iterator[str]:
    listening = reactor.listenTCP(0, Site(ForwardingEcho()), interface="127.0.0.1")
    yield f"http://127.0.0.1:{listening.getHost().port}/v1"
    pytest_twisted.blockon(listening.stopListening())


SPOOFED = {
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "chat.example.com",
    "Forwarded": "for=203.0.113.9",
    "X-Real-IP": "203.0.113.9",
}


@pytest.mark.parametrize(
    ("trusted", "chain"),
    [
        ((), ["127.0.0.1"]),  # replaced: a client's own claim about itself
        (("10.0.0.0/8",), ["127.0.0.1"]),  # a peer outside --trusted-proxy: the same
        (("127.0.0.1/32",), ["203.0.113.9, 127.0.0.1"]),  # a trusted proxy: extended
    ],
)
@pytest_twisted.ensureDeferred
async def test_forwarded_for_is_kept_only_from_a_trusted_proxy(
    trusted: tuple[str, ...], chain: list[str], echo: str, start_proxy: Callable[..., RunningProxy]
) -> None:
    """As nginx's realip: a trusted proxy's chain is extended, and its scheme and host
    (the TLS it terminated, the public name) go on; anyone else's are replaced."""
    access = AccessPolicy(auth=TOKENS, trusted_proxies=parse_networks(list(trusted)))
    proxy = start_proxy(echo, access=access)
    response, collector, _ = await fetch(
        "GET", proxy.url + "/parameters", headers={**ALICE, **SPOOFED}
    )
    assert response.code == 200
    seen = body_of(collector)
    assert seen["x-forwarded-for"] == chain
    assert seen["forwarded"] == [] and seen["x-real-ip"] == []
    if trusted == ("127.0.0.1/32",):
        assert seen["x-forwarded-proto"] == ["https"]
        assert seen["x-forwarded-host"] == ["chat.example.com"]
    else:
        assert seen["x-forwarded-proto"] == ["http"]
        assert seen["x-forwarded-host"] == [f"127.0.0.1:{proxy.port}"]


# -- the key stays secret --------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_key_is_in_no_response_and_no_log_line(
    replay: Any, start_proxy: Callable[..., RunningProxy]
) -> None:
    lines: list[str] = []

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event) + repr(event))

    access = AccessPolicy(auth=TOKENS, rate=Rate.parse("3/min"), cors=CorsPolicy.from_flags([APP]))
    proxy = start_proxy(replay.url + "/v1", access=access)
    globalLogPublisher.addObserver(observe)
    try:
        answers = [
            await fetch(
                "POST", proxy.url + "/chat-messages", json=dict(CHAT, user="x"), headers=ALICE
            ),
            await fetch("GET", proxy.url + "/parameters?user=v", headers=ALICE),
            await fetch("GET", proxy.url + "/parameters"),
            await fetch("GET", proxy.url + "/app/feedbacks", headers=ALICE),
            await fetch("GET", proxy.url + "/parameters", headers=ALICE),
            await fetch("GET", proxy.url + "/parameters", headers=ALICE),
            await fetch(
                "OPTIONS",
                proxy.url + "/x",
                headers={"Origin": APP, "Access-Control-Request-Method": "GET"},
            ),
        ]
    finally:
        globalLogPublisher.removeObserver(observe)
    assert [response.code for response, _, _ in answers] == [200, 200, 401, 403, 200, 429, 204]
    key = TEST_KEY.encode()
    for response, collector, _ in answers:
        assert key not in collector.body
        for _, values in response.headers.getAllRawHeaders():
            assert all(key not in value for value in values)
    assert lines and not [line for line in lines if TEST_KEY in line or "tok-alice" in line]
    assert any("'x'" in line and "'alice'" in line for line in lines)  # the forgery is logged


# -- the demo ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_demo_runs_without_auth_as_one_fixed_user() -> None:
    from difytw.web import DEMO_USER, start_demo

    demo = start_demo(reactor, speed=0.0)
    listening = reactor.listenTCP(0, demo.site, interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{listening.getHost().port}/dify/v1"
        response, _, _ = await fetch("GET", url + "/parameters?user=someone-else")
        assert response.code == 200
        assert demo.replay.journal.entries[-1].query == f"user={DEMO_USER}"
        assert isinstance(demo.proxy.config.access.auth, NoAuth)
    finally:
        await listening.stopListening()
        await demo.close()
