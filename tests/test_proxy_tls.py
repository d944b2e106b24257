"""https upstreams over loopback: certificates are verified, ``--ca-bundle`` trusts a
private CA (issue 3 items 1 and 7).

The upstream is the real replay server behind TLS with a self-signed certificate made for
this test run; the proxy's configuration comes from parsing the real command line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.ssl import PrivateCertificate
from twisted.web.client import ResponseDone

from difytw.fixture import load
from difytw.proxytap import Options
from tests.certs import self_signed
from tests.test_proxy_harness import (
    CHAT,
    FIXTURES,
    TEST_KEY,
    RunningProxy,
    data_frames,
    fetch,
    header,
    start_proxy,
)

__all__ = ["start_proxy"]


@pytest.fixture(params=["127.0.0.1"])
def tls_replay(
    request: pytest.FixtureRequest, start_replay: Callable[..., Any], tmp_path: Path
) -> Iterator[tuple[Any, str, Path]]:
    """(replay server, its https base URL, the PEM file of its certificate, which is for
    the address in the fixture's param)."""
    cert_path, key_path = self_signed(tmp_path, request.param)
    replay = start_replay()
    identity = PrivateCertificate.loadPEM(cert_path.read_text() + key_path.read_text())
    listening = reactor.listenSSL(  # type: ignore[attr-defined]
        0, replay.app.site(), identity.options(), interface="127.0.0.1"
    )
    yield replay, f"https://127.0.0.1:{listening.getHost().port}/v1", cert_path
    pytest_twisted.blockon(listening.stopListening())


def proxy_from_flags(
    start_proxy: Callable[..., RunningProxy], upstream: str, *flags: str
) -> RunningProxy:
    """A proxy configured as ``twist difyproxy --upstream URL FLAGS`` would be."""
    options = Options(environ={"DIFY_API_KEY": TEST_KEY})
    options.parseOptions(["--upstream", upstream, *flags])
    config = options.config
    kept = {f.name: getattr(config, f.name) for f in fields(config) if f.name != "upstream"}
    return start_proxy(config.upstream, **kept)


@pytest_twisted.ensureDeferred
async def test_an_untrusted_certificate_is_502_and_no_request_reaches_upstream(
    tls_replay: tuple[Any, str, Path], start_proxy: Callable[..., RunningProxy]
) -> None:
    replay, upstream, _ = tls_replay
    proxy = proxy_from_flags(start_proxy, upstream)  # the system trust store only
    response, collector, _ = await fetch(
        "POST", proxy.url + "/chat-messages", json=dict(CHAT, user="u")
    )
    assert response.code == 502
    body = json.loads(collector.body)
    assert body["code"] == "upstream_unavailable" and body["status"] == 502
    assert set(body) == {"code", "message", "status"}
    assert TEST_KEY.encode() not in collector.body
    assert replay.journal.entries == []  # the handshake failed before any request went


@pytest_twisted.ensureDeferred
async def test_ca_bundle_trusts_the_private_certificate_and_the_stream_passes(
    tls_replay: tuple[Any, str, Path], start_proxy: Callable[..., RunningProxy]
) -> None:
    replay, upstream, cert_path = tls_replay
    proxy = proxy_from_flags(start_proxy, upstream, "--ca-bundle", str(cert_path))
    response, collector, reason = await fetch(
        "POST", proxy.url + "/chat-messages", json=dict(CHAT, user="u")
    )
    assert response.code == 200
    assert reason.check(ResponseDone)
    assert header(response, "Content-Type") == [b"text/event-stream; charset=utf-8"]
    assert collector.body == load(FIXTURES / "chat-slow.jsonl").body()
    assert data_frames(collector.body)[-1]["event"] == "message_end"
    [entry] = replay.journal.entries
    assert entry.auth == "ok"  # the key went upstream, inside TLS


@pytest.mark.parametrize("tls_replay", ["127.0.0.2"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_a_trusted_certificate_for_another_address_is_502(
    tls_replay: tuple[Any, str, Path], start_proxy: Callable[..., RunningProxy]
) -> None:
    # Trusting the CA is not enough: the certificate must name the host the URL names.
    replay, upstream, cert_path = tls_replay
    proxy = proxy_from_flags(start_proxy, upstream, "--ca-bundle", str(cert_path))
    response, collector, _ = await fetch("GET", proxy.url + "/parameters?user=u")
    assert response.code == 502
    assert json.loads(collector.body)["code"] == "upstream_unavailable"
    assert replay.journal.entries == []
