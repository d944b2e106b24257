"""An open stream keeps only what relaying it needs (issue 3 item 10: memory per idle stream).

difyproxy runs over loopback in front of an in-memory upstream agent, so the test holds
the upstream body's protocol and decides when each read arrives.
"""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IResponse
from zope.interface import implementer

from difytw.accesslog import ProxyExchange
from difytw.proxy import ProxyApp, ProxyConfig
from tests.test_proxy_harness import CHAT, TEST_KEY, start_fetch


@implementer(IPushProducer)
class StillSocket:
    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IResponse)
class HeldStream:
    """An SSE answer whose body the test writes read by read."""

    version = (b"HTTP", 1, 1)
    code = 200
    phrase = b"OK"
    length = UNKNOWN_LENGTH
    request = None
    previousResponse = None

    def __init__(self) -> None:
        self.headers = Headers({b"Content-Type": [b"text/event-stream"]})
        self.body: Protocol | None = None

    def deliverBody(self, protocol: Protocol) -> None:
        self.body = protocol
        protocol.makeConnection(StillSocket())  # type: ignore[arg-type]

    def setPreviousResponse(self, response: IResponse) -> None:
        pass


@implementer(IAgent)
class HeldAgent:
    def __init__(self) -> None:
        self.answer = HeldStream()

    def request(
        self, method: bytes, uri: bytes, headers: Headers | None = None, bodyProducer: Any = None
    ) -> Deferred[IResponse]:
        return succeed(self.answer)


@pytest_twisted.ensureDeferred
async def test_an_open_stream_does_not_keep_the_upstream_response() -> None:
    agent = HeldAgent()
    streaming: list[ProxyExchange] = []

    def observe(request: ProxyExchange, stream: bool) -> None:
        streaming.append(request)

    app = ProxyApp(
        ProxyConfig(upstream="http://127.0.0.1:9/v1", api_key=TEST_KEY),
        reactor=reactor,
        agent=agent,
        observe=observe,
    )
    listening = reactor.listenTCP(0, app.site(), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{listening.getHost().port}/dify/chat-messages"
        _, collector = await start_fetch("POST", url, json=CHAT)
        body = agent.answer.body
        assert body is not None
        body.dataReceived(b'data: {"event": "message", "answer": "one"}\n\n')
        await collector.first_read
        handed = weakref.ref(agent.answer)
        del agent.answer
        gc.collect()
        # The stream is open and idle: the response object (its headers) can go.
        assert handed() is None
        [request] = streaming
        assert len(vars(request)) <= 29
        body.dataReceived(b'data: {"event": "message_end"}\n\n')
        body.connectionLost(Failure(ResponseDone()))
        await collector.done
        assert b"message_end" in collector.body
    finally:
        await listening.stopListening()
        await app.close()
