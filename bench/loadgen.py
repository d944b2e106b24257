"""The benchmark's load generator: raw asyncio sockets, loopback only, stdlib only.

    python bench/loadgen.py '<json config>'

``mode: "sse"`` opens ``concurrency`` chat streams spread over ``ramp_ms``, de-chunks and
splits each body into SSE blocks as it arrives, and records for every ``message`` event
its *added latency* = receive time - the event's ``t`` (both ``time.monotonic_ns()``, i.e.
CLOCK_MONOTONIC, in two processes on one machine).  It prints ``{"type": "all_open"}`` once
every stream has had its first event (or ``open_timeout_ms`` passed), then one
``{"type": "result"}`` line.  ``mode: "upload"`` posts a random ``size_bytes`` file as
multipart ``repeats`` times, one after another, with backpressure, and checks the sha256
and size the upstream reports.  ``deadline_ms`` bounds every run.

One read costs one ``data_received`` call however many events it carries: the client
shares CPU 0 with the upstream, so it must stay cheap (the ``direct`` column shows what it
costs anyway).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import resource
import sys
import time
from typing import Any

LOOPBACK = ("127.0.0.1", "localhost")
MAX_STREAMS = 20_000
MESSAGE = b'data: {"event": "message", '
MESSAGE_END = b'data: {"event": "message_end"'
PING = b"event: ping"
T_FIELD = b'"t": '

DEFAULTS: dict[str, Any] = {
    "mode": "sse",
    "host": "127.0.0.1",
    "port": 0,
    "path": "/dify/v1/chat-messages",
    "headers": {},
    "concurrency": 1,
    "n": 10,
    "interval_ms": 20,
    "answer_bytes": 16,
    "hold_ms": 0,
    "ramp_ms": 0,
    "deadline_ms": 60_000,
    "open_timeout_ms": 0,
    "size_bytes": 20 * 1024 * 1024,
    "repeats": 1,
}


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def summary_ms(samples_ns: list[int]) -> dict[str, Any]:
    """Nearest-rank percentiles of nanosecond samples, in milliseconds."""
    if not samples_ns:
        return {"count": 0}
    ordered = sorted(samples_ns)
    n = len(ordered)

    def rank(q: float) -> float:
        return round(ordered[min(n - 1, max(0, math.ceil(q * n - 1e-9) - 1))] / 1e6, 3)

    return {
        "count": n,
        "mean": round(sum(ordered) / n / 1e6, 3),
        "min": round(ordered[0] / 1e6, 3),
        "p50": rank(0.5),
        "p90": rank(0.9),
        "p99": rank(0.99),
        "p999": rank(0.999),
        "max": round(ordered[-1] / 1e6, 3),
    }


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class SseRun:
    """Shared tallies of one SSE run; the streams report into it."""

    def __init__(self, config: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.latencies: list[int] = []
        self.ttfb: list[int] = []
        self.errors: dict[str, int] = {}
        self.error_samples: list[dict[str, Any]] = []
        self.events = 0
        self.bytes = 0
        self.pings = 0
        self.with_event = 0
        self.finished = 0
        self.all_open = loop.create_future()
        self.all_done = loop.create_future()
        self.first_start = 0
        self.last_end = 0

    def fail(self, stream: int, kind: str, detail: str = "") -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if len(self.error_samples) < 5:
            self.error_samples.append({"stream": stream, "error": kind, "detail": detail[:300]})

    def first_event(self) -> None:
        self.with_event += 1
        if self.with_event == self.config["concurrency"] and not self.all_open.done():
            self.all_open.set_result("all")

    def stream_done(self) -> None:
        self.finished += 1
        self.last_end = time.monotonic_ns()
        if self.finished == self.config["concurrency"] and not self.all_done.done():
            self.all_done.set_result(None)


class SseStream(asyncio.Protocol):
    """One chat stream over its own connection, with a minimal HTTP/1.1 response parser."""

    def __init__(self, run: SseRun, index: int, request: bytes) -> None:
        self.run = run
        self.index = index
        self.request = request
        self.t0 = time.monotonic_ns()
        self.transport: asyncio.Transport | None = None
        self.raw = b""
        self.sse = b""
        self.phase = "head"  # head, size, data, crlf, trailer, done
        self.left = 0
        self.status = 0
        self.events = 0
        self.got_end = False
        self.got_byte = False
        self.error_body = b""
        self.ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        run = self.run
        if not self.got_byte:
            self.got_byte = True
            run.ttfb.append(now - self.t0)
        run.bytes += len(data)
        self.raw += data
        self._parse(now)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended:
            self.end("closed_before_response" if self.phase == "head" else "closed_mid_body")

    def end(self, error: str | None, detail: str = "") -> None:
        if self.ended:
            return
        self.ended = True
        if error is None and self.status != 200:
            error, detail = f"http_{self.status}", self.error_body.decode("utf-8", "replace")
        if error is None and not self.got_end:
            error = "no_message_end"
        if error is None and self.events != self.run.config["n"]:
            error = "event_count_mismatch"
        if error is not None:
            self.run.fail(self.index, error, detail)
        if self.transport is not None:
            self.transport.close()
        self.run.stream_done()

    def _parse(self, now: int) -> None:
        raw, pos = self.raw, 0
        while True:
            if self.phase == "size":
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    break
                try:
                    self.left = int(raw[pos:eol].split(b";")[0], 16)
                except ValueError:
                    self.end("bad_chunk")
                    return
                pos = eol + 2
                self.phase = "data" if self.left else "trailer"
            elif self.phase == "data":
                take = min(len(raw) - pos, self.left)
                if take == 0:
                    break
                self._body(raw[pos : pos + take], now)
                pos += take
                self.left -= take
                if self.left == 0:
                    self.phase = "crlf"
            elif self.phase == "crlf":
                if len(raw) - pos < 2:
                    break
                pos += 2
                self.phase = "size"
            elif self.phase == "head":
                end = raw.find(b"\r\n\r\n", pos)
                if end < 0:
                    break
                self._head(raw[pos:end])
                pos = end + 4
                if self.phase == "done":
                    return
            elif self.phase == "trailer":
                eol = raw.find(b"\r\n", pos)
                if eol < 0:
                    break
                empty = eol == pos  # the blank line that closes the trailer section
                pos = eol + 2
                if empty:
                    self.phase = "done"
                    self.end(None)
                    return
            else:  # "length": a plain body, only for error answers
                take = min(len(raw) - pos, self.left)
                self.error_body += raw[pos : pos + take][:300]
                pos += take
                self.left -= take
                if self.left == 0:
                    self.phase = "done"
                    self.end(None)
                    return
                break
        self.raw = raw[pos:]

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        self.status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
        chunked, length = False, -1
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"content-length":
                length = int(value.strip())
        if chunked:
            self.phase = "size"
        elif length > 0:
            self.phase, self.left = "length", length
        else:
            self.phase = "done"
            self.end(None if length == 0 else "no_length")

    def _body(self, data: bytes, now: int) -> None:
        if self.status != 200:
            self.error_body += data[:300]
            return
        self.sse += data
        sse, pos = self.sse, 0
        while True:
            end = sse.find(b"\n\n", pos)
            if end < 0:
                break
            self._block(sse, pos, end, now)
            pos = end + 2
        if pos:
            self.sse = sse[pos:]

    def _block(self, buf: bytes, start: int, end: int, now: int) -> None:
        run = self.run
        if buf.startswith(MESSAGE, start):
            if self.events == 0:
                run.first_event()
            self.events += 1
            run.events += 1
            at = buf.rfind(T_FIELD, start, end)
            if at > 0:
                stop = buf.find(b"}", at, end)
                run.latencies.append(now - int(buf[at + len(T_FIELD) : stop]))
        elif buf.startswith(MESSAGE_END, start):
            self.got_end = True
        elif buf.startswith(PING, start):
            run.pings += 1
        else:
            run.fail(self.index, "unexpected_block", buf[start:end].decode("utf-8", "replace"))


def chat_request(config: dict[str, Any], index: int, query: str) -> bytes:
    body = json.dumps(
        {"query": "benchmark", "user": f"bench-{index}", "response_mode": "streaming", "inputs": {}}
    ).encode()
    sep = "&" if "?" in config["path"] else "?"
    extra = "".join(f"{k}: {v}\r\n" for k, v in config["headers"].items())
    head = (
        f"POST {config['path']}{sep}{query} HTTP/1.1\r\nHost: {config['host']}:{config['port']}\r\n"
        f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


async def run_sse(config: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    run = SseRun(config, loop)
    count = config["concurrency"]
    query = "&".join(f"{k}={config[k]}" for k in ("n", "interval_ms", "answer_bytes", "hold_ms"))
    streams: list[SseStream] = []
    openers: set[asyncio.Task[None]] = set()  # the loop keeps only weak references to tasks
    cpu0 = cpu_seconds()

    async def open_stream(index: int) -> None:
        stream = SseStream(run, index, chat_request(config, index, query))
        streams.append(stream)
        try:
            await loop.create_connection(lambda: stream, config["host"], config["port"])
        except OSError as error:
            stream.end(f"connect_{type(error).__name__}", str(error))

    async def launch() -> None:
        start = time.monotonic()
        ramp = config["ramp_ms"] / 1000
        for index in range(count):
            if ramp and count > 1:
                due = start + ramp * index / count
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            if index == 0:
                run.first_start = time.monotonic_ns()
            opener = loop.create_task(open_stream(index))
            openers.add(opener)
            opener.add_done_callback(openers.discard)

    async def announce_open() -> None:
        timeout = config["open_timeout_ms"] / 1000 or None
        try:
            reason = await asyncio.wait_for(asyncio.shield(run.all_open), timeout)
        except TimeoutError:
            reason = "open_timeout"
        emit({"type": "all_open", "streams_with_event": run.with_event, "reason": reason})

    announcer = loop.create_task(announce_open())
    launcher = loop.create_task(launch())
    try:
        await asyncio.wait_for(asyncio.shield(run.all_done), config["deadline_ms"] / 1000)
    except TimeoutError:
        for stream in list(streams):
            stream.end("timeout")
        if len(streams) < count:
            run.fail(-1, "not_started", str(count - len(streams)))
    launcher.cancel()
    if not announcer.done():
        announcer.cancel()
        emit({"type": "all_open", "streams_with_event": run.with_event, "reason": "complete"})
    duration = max(1, (run.last_end or time.monotonic_ns()) - (run.first_start or 1)) / 1e9
    return {
        "type": "result",
        "mode": "sse",
        "config": config,
        "streams": count,
        "streams_started": len(streams),
        "error_count": sum(run.errors.values()),
        "errors": run.errors,
        "error_samples": run.error_samples,
        "events_expected": count * config["n"],
        "events_received": run.events,
        "pings": run.pings,
        "bytes_received": run.bytes,
        "duration_s": duration,
        "events_per_s": run.events / duration,
        "bytes_per_s": run.bytes / duration,
        "latency_ms": summary_ms(run.latencies),
        "ttfb_ms": summary_ms(run.ttfb),
        "loadgen_cpu_s": cpu_seconds() - cpu0,
    }


async def upload_once(config: dict[str, Any], payload: bytes, digest: str) -> dict[str, Any]:
    boundary = "benchboundary" + os.urandom(8).hex()
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="user"\r\n\r\nbench-user\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="bench.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    extra = "".join(f"{k}: {v}\r\n" for k, v in config["headers"].items())
    request = (
        f"POST {config['path']} HTTP/1.1\r\nHost: {config['host']}:{config['port']}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(head) + len(payload) + len(tail)}\r\n{extra}\r\n"
    ).encode()
    t0 = time.monotonic_ns()
    reader, writer = await asyncio.open_connection(config["host"], config["port"])
    try:
        writer.write(request + head)
        view = memoryview(payload)
        for offset in range(0, len(payload), 64 * 1024):
            writer.write(view[offset : offset + 64 * 1024])
            await writer.drain()
        writer.write(tail)
        await writer.drain()
        status_line = await reader.readuntil(b"\r\n")
        headers = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        status = int(status_line.split(b" ")[1])
        if "transfer-encoding: chunked" in headers:
            body = b""
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                body += (await reader.readexactly(size + 2))[:-2]
            await reader.readuntil(b"\r\n")
        else:
            length = int(headers.split("content-length:")[1].split("\r\n")[0])
            body = await reader.readexactly(length)
        seconds = (time.monotonic_ns() - t0) / 1e9
    finally:
        writer.close()
    error = None
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {}
    if status not in (200, 201):
        error = f"http_{status}"
    elif answer.get("sha256") != digest or answer.get("size") != len(payload):
        error = "checksum_mismatch"
    return {"status": status, "seconds": seconds, "error": error, "body": body[:300].decode()}


async def run_upload(config: dict[str, Any]) -> dict[str, Any]:
    payload = os.urandom(config["size_bytes"])
    digest = hashlib.sha256(payload).hexdigest()
    runs: list[dict[str, Any]] = []
    deadline = time.monotonic() + config["deadline_ms"] / 1000
    for _ in range(config["repeats"]):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            runs.append(await asyncio.wait_for(upload_once(config, payload, digest), left))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
            runs.append({"error": type(error).__name__, "seconds": None, "body": str(error)})
    good = sorted(len(payload) / 1048576 / r["seconds"] for r in runs if not r["error"])
    errors: dict[str, int] = {}
    for r in runs:
        if r["error"]:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    return {
        "type": "result",
        "mode": "upload",
        "size_bytes": len(payload),
        "repeats": len(runs),
        "error_count": sum(errors.values()),
        "errors": errors,
        "error_samples": [r for r in runs if r["error"]][:3],
        "seconds": [r["seconds"] for r in runs],
        "mib_per_s_median": good[(len(good) - 1) // 2] if good else None,
        "mib_per_s_best": good[-1] if good else None,
    }


def main() -> int:
    config = dict(DEFAULTS, **json.loads(sys.argv[1] if len(sys.argv) > 1 else "{}"))
    if config["host"] not in LOOPBACK:
        print("loadgen: refusing a non-loopback target", file=sys.stderr)
        return 2
    if not 1 <= config["concurrency"] <= MAX_STREAMS:
        print(f"loadgen: concurrency must be 1..{MAX_STREAMS}", file=sys.stderr)
        return 2
    runner = run_upload if config["mode"] == "upload" else run_sse
    emit(asyncio.run(runner(config)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
