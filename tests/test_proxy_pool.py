"""A client leaving mid-stream leaves no upstream connection behind (issue 3 item 6).

test_proxy_failures checks that the replay server sees the client gone and that no timer
is left; this checks the socket itself: the upstream connection the stream used is
closed, not parked in the proxy's persistent pool for the next request.  The replay
server is wrapped in a ``WrappingFactory``, whose ``protocols`` are the connections that
are open on the upstream side right now.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.protocols.policies import WrappingFactory
from twisted.web.client import ResponseDone

from tests.test_proxy_harness import (
    CHAT,
    RunningProxy,
    fetch,
    start_fetch,
    start_proxy,
    wait_for,
)

__all__ = ["start_proxy"]


@pytest.fixture
def counted_replay(start_replay: Callable[..., Any]) -> Iterator[tuple[Any, WrappingFactory, int]]:
    """(replay server at real speed, the wrapper counting its open connections, its port)."""
    replay = start_replay(speed=1.0)
    wrapper = WrappingFactory(replay.app.site())
    listening = reactor.listenTCP(0, wrapper, interface="127.0.0.1")
    yield replay, wrapper, listening.getHost().port
    pytest_twisted.blockon(listening.stopListening())


def pooled(proxy: RunningProxy, port: int) -> list[Any]:
    """The idle connections the proxy's pool keeps for the upstream at ``port``.

    Neither the pool nor its cache has a public reader; Agent keys the cache by
    (scheme, host, port).
    """
    connections: list[Any] = proxy.app._pool._connections.get((b"http", b"127.0.0.1", port), [])
    return connections


def client_port(connection: Any) -> int:
    """The proxy-side port of an upstream connection seen from the replay's side."""
    port: int = connection.transport.getPeer().port
    return port


def pooled_ports(proxy: RunningProxy, port: int) -> set[int]:
    """The proxy-side ports of the connections parked in its pool for ``port``."""
    return {connection.transport.getHost().port for connection in pooled(proxy, port)}


@pytest_twisted.ensureDeferred
async def test_client_leaving_mid_stream_closes_the_upstream_connection_for_good(
    counted_replay: tuple[Any, WrappingFactory, int], start_proxy: Callable[..., RunningProxy]
) -> None:
    replay, wrapper, port = counted_replay
    proxy = start_proxy(f"http://127.0.0.1:{port}/v1")

    # The control: a finished exchange does park its connection, open, in the pool.
    _, _, reason = await fetch("GET", proxy.url + "/parameters?user=u")
    assert reason.check(ResponseDone)
    [parked] = wrapper.protocols
    assert pooled_ports(proxy, port) == {client_port(parked)}

    _, collector = await start_fetch(
        "POST", proxy.url + "/chat-messages", json=dict(CHAT, user="u")
    )
    await collector.first_read
    [streaming] = wrapper.protocols  # the stream took the parked connection out of the pool
    assert pooled(proxy, port) == []
    stream_port = client_port(streaming)
    ended = replay.journal.next_end()
    assert collector.transport is not None
    collector.transport.stopProducing()  # the client hangs up mid-stream

    await wait_for(lambda: streaming not in wrapper.protocols)  # closed upstream
    assert (await ended).outcome == "client_closed"
    # The proxy then calls the run's stop endpoint (issue 7) over a connection of its own,
    # which may be parked; the stream's connection never is.
    await wait_for(lambda: any(e.path.endswith("/stop") for e in replay.journal.entries))
    await wait_for(lambda: all(e.ended_at is not None for e in replay.journal.entries))
    assert stream_port not in pooled_ports(proxy, port)
    assert stream_port not in {client_port(c) for c in wrapper.protocols}

    # The pool still works: the next request gets its whole answer.
    _, _, reason = await fetch("GET", proxy.url + "/parameters?user=u")
    assert reason.check(ResponseDone)
