"""A raw HTTP/1.1 test client that sees chunk boundaries and arrival times.

treq hides ``Transfer-Encoding: chunked`` framing; tests that must prove
"each recorded chunk is its own HTTP chunk" or "event 1 arrived before event 2
was written" need the frames themselves, so this client parses the response
by hand (it is test code: small, strict, no keep-alive).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure


@dataclass
class RawResponse:
    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    chunks: list[tuple[float, bytes]] = field(default_factory=list)  # (arrival, data)
    complete: bool = False  # saw the terminating zero-length chunk / full length
    lost: str = ""  # how the connection ended

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def body(self) -> bytes:
        return b"".join(data for _, data in self.chunks)


class RawClient(Protocol):
    def __init__(self, request: bytes, clock: Any, on_chunk: Any = None) -> None:
        self.request = request
        self.clock = clock
        self.on_chunk = on_chunk
        self.response = RawResponse()
        self.buffer = b""
        self.state = "head"
        self.remaining = 0
        self.chunked = False
        self.finished: Deferred[RawResponse] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while self._step():
            pass

    def _step(self) -> bool:
        if self.state == "head":
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return False
            head, self.buffer = self.buffer[:end].decode("latin-1"), self.buffer[end + 4 :]
            status_line, *lines = head.split("\r\n")
            self.response.status = int(status_line.split()[1])
            for line in lines:
                name, _, value = line.partition(":")
                self.response.headers.append((name.strip(), value.strip()))
            self.chunked = (self.response.header("transfer-encoding") or "").lower() == "chunked"
            length = self.response.header("content-length")
            if self.chunked:
                self.state = "size"
            elif length is not None:
                self.state, self.remaining = "length", int(length)
                if self.remaining == 0:
                    self._done()
            else:
                self.state = "close"
            return True
        if self.state == "size":
            end = self.buffer.find(b"\r\n")
            if end < 0:
                return False
            size = int(self.buffer[:end].split(b";")[0], 16)
            self.buffer = self.buffer[end + 2 :]
            if size == 0:
                self._done()
                return False
            self.state, self.remaining = "chunk", size
            return True
        if self.state == "chunk":
            if len(self.buffer) < self.remaining + 2:
                return False
            self._chunk(self.buffer[: self.remaining])
            self.buffer = self.buffer[self.remaining + 2 :]
            self.state = "size"
            return True
        if self.state in ("length", "close") and self.buffer:
            data = self.buffer if self.state == "close" else self.buffer[: self.remaining]
            self.buffer = self.buffer[len(data) :]
            self._chunk(data)
            if self.state == "length":
                self.remaining -= len(data)
                if self.remaining == 0:
                    self._done()
            return False
        return False

    def _chunk(self, data: bytes) -> None:
        self.response.chunks.append((self.clock.seconds(), data))
        if self.on_chunk is not None:
            self.on_chunk(self, data)

    def _done(self) -> None:
        self.response.complete = True
        self.state = "done"
        assert self.transport is not None
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.state == "close":
            self.response.complete = True
        self.response.lost = reason.getErrorMessage() if reason is not None else ""
        if not self.finished.called:
            self.finished.callback(self.response)


def build_request(
    method: str,
    path: str,
    *,
    host: str = "127.0.0.1",
    headers: list[tuple[str, str]] | None = None,
    body: bytes | None = None,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    for name, value in headers or []:
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def fetch(
    reactor: Any, port: int, request: bytes, on_chunk: Any = None
) -> tuple[RawClient, Deferred[RawResponse]]:
    """Send ``request`` to 127.0.0.1:port; the Deferred fires when the connection ends."""
    client = RawClient(request, reactor, on_chunk)
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    connected = connectProtocol(endpoint, client)
    connected.addErrback(client.finished.errback)
    return client, client.finished
