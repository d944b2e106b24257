"""A fake Dify API for the benchmark: stdlib asyncio, loopback only, raw HTTP/1.1.

``POST /v1/chat-messages?n=&interval_ms=&answer_bytes=&hold_ms=`` streams ``n`` Dify
``message`` events ``interval_ms`` apart (0: as fast as the socket takes them, with
backpressure), an optional ``hold_ms`` of silence, then ``message_end``.  Each event carries
``"t"`` = ``time.monotonic_ns()`` taken just before the bytes go to the socket, so the load
generator can compute the added latency of every event on the same clock.  Framing is
Dify's (dify-contract.md 2.1: one ``data: {json}\\n\\n`` line, pre-orjson spacing) in a
chunked body (2.2: Dify sets no Content-Length on streams), one chunk per event.

``POST /v1/files/upload`` parses the multipart body as it arrives (nothing buffered but a
delimiter's worth) and answers 201 with Dify's upload JSON plus ``size`` and ``sha256`` of
the ``file`` part.  Anything without ``Authorization: Bearer app-...`` gets Dify's 401.

    python bench/upstream.py --port 18080
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import time
import uuid
from urllib.parse import parse_qs, urlsplit

LOOPBACK = "127.0.0.1"
# Caps keep a typo in a query string from turning into an endless stream.
LIMITS = {"n": 1_000_000, "interval_ms": 600_000, "answer_bytes": 1_000_000, "hold_ms": 600_000}
DEFAULTS = {"n": 10, "interval_ms": 20, "answer_bytes": 16, "hold_ms": 0}
FILLER = b"lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
MAX_HEAD = 64 * 1024
MAX_JSON_BODY = 1 << 20
BURST = 32  # events written per loop turn when interval_ms is 0, so streams interleave


def stream_params(target: bytes) -> dict[str, int]:
    """The bench parameters of a request-target, defaulted and capped."""
    query = parse_qs(urlsplit(target.decode("latin-1")).query)
    out: dict[str, int] = {}
    for name, default in DEFAULTS.items():
        try:
            value = int(query.get(name, [str(default)])[0])
        except ValueError:
            value = default
        out[name] = min(max(value, 0), LIMITS[name])
    return out


def json_response(status: int, reason: str, obj: object) -> bytes:
    body = json.dumps(obj).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


UNAUTHORIZED = json_response(
    401,
    "UNAUTHORIZED",
    {"code": "unauthorized", "message": "Access token is invalid", "status": 401},
)
NOT_FOUND = json_response(
    404, "NOT FOUND", {"code": "not_found", "message": "not found", "status": 404}
)
BAD_REQUEST = json_response(
    400, "BAD REQUEST", {"code": "invalid_param", "message": "bad request", "status": 400}
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


class MultipartDigest:
    """Streams a multipart/form-data body: sha256 and size of the ``file`` part, small fields.

    Only the last ``len(delimiter)`` bytes are ever held back, so a 20 MiB upload costs
    this process no more memory than a 64 KiB one.
    """

    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"\r\n--" + boundary
        self._pending = b"\r\n"  # the first delimiter has no CRLF before it: supply one
        self._state = "preamble"
        self._part = b""
        self.fields: dict[str, str] = {}
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.filename: str | None = None
        self.done = False

    def feed(self, data: bytes) -> None:
        self._pending += data
        while not self.done:
            if self._state in ("preamble", "body"):
                at = self._pending.find(self._delimiter)
                if at < 0:
                    keep = len(self._delimiter) - 1
                    self._emit(self._pending[: max(0, len(self._pending) - keep)])
                    self._pending = self._pending[max(0, len(self._pending) - keep) :]
                    return
                self._emit(self._pending[:at])
                self._pending = self._pending[at + len(self._delimiter) :]
                self._state = "after_delimiter"
            elif self._state == "after_delimiter":
                if len(self._pending) < 2:
                    return
                if self._pending.startswith(b"--"):
                    self.done = True
                    return
                self._pending = self._pending[2:]  # CRLF
                self._state = "headers"
            else:  # headers
                end = self._pending.find(b"\r\n\r\n")
                if end < 0:
                    return
                self._start_part(self._pending[:end])
                self._pending = self._pending[end + 4 :]
                self._state = "body"

    def _start_part(self, headers: bytes) -> None:
        self._part = b""
        self._value = b""
        for line in headers.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() != b"content-disposition":
                continue
            for param in value.split(b";"):
                key, _, raw = param.strip().partition(b"=")
                if key == b"name":
                    self._part = raw.strip(b'"')
                elif key == b"filename":
                    self.filename = raw.strip(b'"').decode("utf-8", "replace")

    def _emit(self, data: bytes) -> None:
        if self._state != "body" or not data:
            return
        if self._part == b"file":
            self.sha256.update(data)
            self.size += len(data)
        elif len(self._value) < 1024:
            self._value += data
            self.fields[self._part.decode("utf-8", "replace")] = self._value.decode(
                "utf-8", "replace"
            )


class FakeDify(asyncio.Protocol):
    """One client connection; keep-alive, one request at a time."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._handler: str | None = None
        self._body_left = 0
        self._body = b""
        self._target = b""
        self._upload: MultipartDigest | None = None
        self._timer: asyncio.Handle | None = None
        self._paused = False
        self._closed = False
        self._resume: object = None

    # -- transport callbacks --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        resume, self._resume = self._resume, None
        if callable(resume):
            resume()

    def data_received(self, data: bytes) -> None:
        if self._handler is None:
            self._buffer += data
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD:
                    self._reply(BAD_REQUEST, close=True)
                return
            head, data = self._buffer[:end], self._buffer[end + 4 :]
            self._buffer = b""
            self._begin(head)
        self._body_data(data)

    # -- requests -----------------------------------------------------------------------

    def _begin(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        method, target, _ = ([*lines[0].split(b" "), b"", b""])[:3]
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        self._target = target
        self._body_left = int(headers.get(b"content-length", b"0") or 0)
        self._body = b""
        path = target.split(b"?", 1)[0]
        if not headers.get(b"authorization", b"").startswith(b"Bearer app-"):
            self._handler = "reject"
        elif method == b"POST" and path == b"/v1/chat-messages":
            self._handler = "chat"
        elif method == b"POST" and path == b"/v1/files/upload":
            _, _, boundary = headers.get(b"content-type", b"").partition(b"boundary=")
            self._upload = MultipartDigest(boundary.strip(b'"'))
            self._handler = "upload"
        else:
            self._handler = "missing"

    def _body_data(self, data: bytes) -> None:
        take = data[: self._body_left]
        self._body_left -= len(take)
        if self._handler == "upload":
            assert self._upload is not None
            self._upload.feed(take)
        elif self._handler == "chat" and len(self._body) < MAX_JSON_BODY:
            self._body += take
        if self._body_left > 0:
            return
        handler, self._handler = self._handler, None
        if handler == "chat":
            self._chat()
        elif handler == "upload":
            self._uploaded()
        elif handler == "reject":
            self._reply(UNAUTHORIZED, close=False)
        else:
            self._reply(NOT_FOUND, close=False)

    def _reply(self, response: bytes, *, close: bool) -> None:
        assert self._transport is not None
        self._transport.write(response)
        if close:
            self._transport.close()

    def _uploaded(self) -> None:
        upload, self._upload = self._upload, None
        assert upload is not None
        if not upload.done or upload.filename is None:
            self._reply(BAD_REQUEST, close=False)
            return
        name = upload.filename
        self._reply(
            json_response(
                201,
                "CREATED",
                {
                    "id": str(uuid.uuid4()),
                    "name": name,
                    "size": upload.size,
                    "extension": name.rpartition(".")[2] if "." in name else "",
                    "mime_type": "application/octet-stream",
                    "created_by": upload.fields.get("user"),
                    "created_at": int(time.time()),
                    "sha256": upload.sha256.hexdigest(),
                },
            ),
            close=False,
        )

    def _chat(self) -> None:
        try:
            body = json.loads(self._body or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("query"), str):
            self._reply(BAD_REQUEST, close=False)
            return
        self._params = stream_params(self._target)
        task, message, conversation = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        created = int(time.time())
        answer = (FILLER * (self._params["answer_bytes"] // len(FILLER) + 1))[
            : self._params["answer_bytes"]
        ].decode()
        common = f'"conversation_id": "{conversation}", "message_id": "{message}", '
        common += f'"created_at": {created}, "task_id": "{task}", "id": "{message}"'
        self._message = (
            f'data: {{"event": "message", {common}, "answer": "{answer}", "t": '.encode()
        )
        n = self._params["n"]
        self._end = (
            f'data: {{"event": "message_end", {common}, "metadata": {{"usage": '
            f'{{"prompt_tokens": 8, "completion_tokens": {n}, "total_tokens": {n + 8}}}}}, "t": '
        ).encode()
        self._sent = 0
        self._start = self._loop.time()
        assert self._transport is not None
        self._transport.write(STREAM_HEAD)
        if self._params["interval_ms"] == 0:
            self._burst()
        else:
            self._tick()

    def _event(self, prefix: bytes) -> None:
        assert self._transport is not None
        t = time.monotonic_ns()
        frame = b"%s%d}\n\n" % (prefix, t)
        self._transport.write(b"%x\r\n%s\r\n" % (len(frame), frame))

    def _tick(self) -> None:
        # Absolute schedule (start + k * interval) so timer lateness does not accumulate;
        # "t" is stamped at the write, so lateness here is never counted as proxy latency.
        self._timer = None
        if self._closed:
            return
        self._event(self._message)
        self._sent += 1
        if self._sent >= self._params["n"]:
            self._after_messages()
            return
        due = self._start + self._sent * self._params["interval_ms"] / 1000
        self._timer = self._loop.call_at(due, self._tick)

    def _burst(self) -> None:
        self._timer = None
        for _ in range(BURST):
            if self._closed:
                return
            if self._sent >= self._params["n"]:
                self._after_messages()
                return
            if self._paused:
                self._resume = self._burst
                return
            self._event(self._message)
            self._sent += 1
        self._timer = self._loop.call_soon(self._burst)

    def _after_messages(self) -> None:
        if self._params["hold_ms"]:
            self._timer = self._loop.call_later(self._params["hold_ms"] / 1000, self._finish)
        else:
            self._finish()

    def _finish(self) -> None:
        self._timer = None
        if self._closed:
            return
        self._event(self._end)
        self._reply(b"0\r\n\r\n", close=False)


async def serve(port: int, ready: asyncio.Future[int] | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FakeDify, LOOPBACK, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    if ready is not None:
        ready.set_result(bound)
    print(json.dumps({"type": "listening", "port": bound}), flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
