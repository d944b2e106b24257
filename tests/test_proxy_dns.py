"""An upstream name that does not resolve answers 502 ``upstream_unavailable`` (issue 3
item 7), at once rather than after a timeout.

``.invalid`` names never resolve (RFC 6761 section 6.4), with or without a network.  The
proxy's timers run on a ``task.Clock`` that never advances, so the 502 cannot be the
header timeout in disguise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import LogEvent

from tests.test_proxy_harness import CHAT, TEST_KEY, RunningProxy, fetch, header, start_proxy

__all__ = ["start_proxy"]


@pytest.mark.parametrize("scheme", ["http", "https"])
@pytest_twisted.ensureDeferred
async def test_unresolvable_upstream_is_502_upstream_unavailable(
    scheme: str, start_proxy: Callable[..., RunningProxy], logged: list[LogEvent]
) -> None:
    clock = Clock()
    proxy = start_proxy(f"{scheme}://dify-upstream.invalid/v1", clock=clock)
    response, collector, _ = await fetch(
        "POST",
        proxy.url + "/chat-messages",
        json=dict(CHAT, user="u"),
        headers={"Authorization": "Bearer client-own-token"},
    )
    assert response.code == 502
    assert header(response, "Content-Type")[0].startswith(b"application/json")
    body: dict[str, Any] = json.loads(collector.body)
    assert set(body) == {"code", "message", "status"}  # Dify's error shape, nothing more
    assert body["code"] == "upstream_unavailable" and body["status"] == 502
    assert "DNSLookupError" in body["message"]  # the name lookup failed, not a connect
    assert TEST_KEY.encode() not in collector.body
    assert b"client-own-token" not in collector.body
    assert clock.getDelayedCalls() == []  # the header timer was cancelled, not left
    # One warning names the failure; the ``logged`` fixture checks no event holds the key.
    assert [e["kind"] for e in logged if e.get("log_format", "").startswith("upstream unav")] == [
        "DNSLookupError"
    ]
