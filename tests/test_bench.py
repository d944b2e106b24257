"""The benchmark in bench/: its parsers in memory at every split point, and one smoke run.

The parsers (the upstream's multipart digest, the load generator's HTTP/SSE reader) decide
whether a benchmark number means anything, so they get the same split-point treatment as
the product's own wire code.  The smoke run drives the real CLI with a few streams and
checks the table's shape and that nothing failed; it asserts no timings.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _load(name: str) -> ModuleType:
    # bench/ is a folder of scripts, not a package: load by path under a unique name.
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


upstream = _load("upstream")
loadgen = _load("loadgen")
report = _load("report")

BOUNDARY = b"xyzBOUNDARYxyz"
# File bytes that look like the start of a delimiter, so a split inside them is tested.
TRICKY_FILE = b"\r\n--xyzBOUND\r\n-\r\n--xyzBOUNDARYx" + bytes(range(256)) + b"\r\n--"


def multipart(file: bytes, boundary: bytes = BOUNDARY) -> bytes:
    return (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="user"\r\n\r\nbench-user'
        b"\r\n--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; '
        b'filename="a.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + file
        + b"\r\n--"
        + boundary
        + b"--\r\n"
    )


def digest_of(pieces: list[bytes]) -> Any:
    digest = upstream.MultipartDigest(BOUNDARY)
    for piece in pieces:
        digest.feed(piece)
    return digest


def test_multipart_digest_every_split_point() -> None:
    body = multipart(TRICKY_FILE)
    for cut in range(len(body) + 1):
        digest = digest_of([body[:cut], body[cut:]])
        assert digest.done, cut
        assert digest.size == len(TRICKY_FILE), cut
        assert digest.sha256.hexdigest() == hashlib.sha256(TRICKY_FILE).hexdigest(), cut
        assert digest.fields == {"user": "bench-user"}, cut
        assert digest.filename == "a.bin"


@settings(max_examples=200, deadline=None)
@given(file=st.binary(max_size=600), cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_multipart_digest_any_chunking(file: bytes, cuts: list[int]) -> None:
    body = multipart(file)
    points = sorted({c % (len(body) + 1) for c in cuts})
    pieces = [body[a:b] for a, b in zip([0, *points], [*points, len(body)], strict=True)]
    digest = digest_of(pieces)
    assert digest.done
    assert (digest.size, digest.sha256.digest()) == (len(file), hashlib.sha256(file).digest())


def test_multipart_digest_not_done_before_the_closing_delimiter() -> None:
    body = multipart(b"payload")
    digest = digest_of([body[: body.rindex(b"--\r\n")]])
    assert not digest.done


def test_stream_params_default_and_cap() -> None:
    assert upstream.stream_params(b"/v1/chat-messages") == upstream.DEFAULTS
    got = upstream.stream_params(b"/v1/chat-messages?n=5&interval_ms=x&hold_ms=-3&n=7")
    assert got == {"n": 5, "interval_ms": 20, "answer_bytes": 16, "hold_ms": 0}
    assert upstream.stream_params(b"/x?n=99999999")["n"] == upstream.LIMITS["n"]


def sse_response(times: list[int]) -> bytes:
    """A chunked Dify stream as upstream.py frames it: one chunk per event."""
    frames = [
        b'data: {"event": "message", "conversation_id": "c", "answer": "hi", "t": %d}\n\n' % t
        for t in times
    ]
    frames.append(b'data: {"event": "message_end", "id": "m", "t": 1}\n\n')
    frames.insert(1, b"event: ping\n\n")
    body = b"".join(b"%x\r\n%s\r\n" % (len(f), f) for f in frames) + b"0\r\n\r\n"
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    return head + body


def read_stream(pieces: list[bytes], n: int) -> tuple[Any, Any]:
    loop = asyncio.new_event_loop()
    try:
        run = loadgen.SseRun(dict(loadgen.DEFAULTS, n=n, concurrency=1), loop)
        stream = loadgen.SseStream(run, 0, b"")
        for piece in pieces:
            stream.data_received(piece)
        return run, stream
    finally:
        loop.close()


def test_sse_reader_every_split_point() -> None:
    times = [10, 20, 30]
    wire = sse_response(times)
    for cut in range(len(wire) + 1):
        run, stream = read_stream([wire[:cut], wire[cut:]], n=3)
        assert run.errors == {}, cut
        assert (stream.events, stream.got_end, stream.ended) == (3, True, True), cut
        assert (run.events, run.pings, run.finished, len(run.latencies)) == (3, 1, 1, 3), cut
        assert run.bytes == len(wire)


def test_sse_reader_counts_an_error_answer_and_a_short_stream() -> None:
    body = b'{"code": "unauthorized"}'
    wire = b"HTTP/1.1 401 UNAUTHORIZED\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    run, _ = read_stream([wire], n=1)
    assert run.errors == {"http_401": 1}
    assert "unauthorized" in run.error_samples[0]["detail"]
    run, _ = read_stream([sse_response([1, 2])], n=3)
    assert run.errors == {"event_count_mismatch": 1}
    cut = sse_response([1])
    run, stream = read_stream([cut[: cut.index(b"message_end")]], n=1)
    stream.connection_lost(None)
    assert run.errors == {"closed_mid_body": 1}


def test_percentiles_are_nearest_rank() -> None:
    summary = loadgen.summary_ms([i * 1_000_000 for i in range(1, 101)])
    assert (summary["p50"], summary["p99"], summary["max"], summary["count"]) == (50, 99, 100, 100)
    assert loadgen.summary_ms([]) == {"count": 0}


def test_report_rows_ratio_and_missing_cells() -> None:
    scenarios = {"latency_1": {"concurrency": 1, "interval_ms": 20}}
    direct = {"name": "direct", "steps": {"latency_1": {"result": {"latency_ms": {"p50": 0.5}}}}}
    proxy = {"name": "difyproxy", "steps": {"latency_1": {"result": {"latency_ms": {"p50": 1.0}}}}}
    lines = report.render([direct, proxy], scenarios).splitlines()
    p50 = next(line for line in lines if line.startswith("| added latency p50"))
    assert p50 == "| added latency p50 ms, 1 stream x 50 ev/s | 0.500 | 1 | x2.00 |  |"
    p99 = next(line for line in lines if line.startswith("| added latency p99"))
    assert "| - | - |" in p99
    failed = report.render([direct, {"name": "difyproxy", "error": "boom"}], scenarios)
    errors = next(line for line in failed.splitlines() if line.startswith("| errors"))
    assert errors.endswith("| 0 | FAILED | | 0 |")


def test_report_marks_a_step_the_machine_was_busy_in() -> None:
    scenarios = {"latency_1": {"concurrency": 1, "interval_ms": 20}}
    quiet = {"latency_ms": {"p50": 0.5}}
    direct = {"name": "direct", "steps": {"latency_1": {"result": quiet, "background_cpu_pct": 3}}}
    busy = {"result": quiet, "background_cpu_pct": 80.0}
    proxy = {"name": "difyproxy", "steps": {"latency_1": busy}}
    lines = report.render([direct, proxy], scenarios).splitlines()
    p50 = next(line for line in lines if line.startswith("| added latency p50"))
    assert "| 0.500 | 0.500 † |" in p50
    assert lines[-1].startswith("| background CPU % (other processes, max over steps) | 3 | 80 |")


ROWS = [
    r"added latency p50 ms, 1 stream x \d+ ev/s",
    r"added latency p99 ms, 1 stream x \d+ ev/s",
    r"added latency p50 ms, \d+ streams x \d+ ev/s",
    r"added latency p99 ms, \d+ streams x \d+ ev/s",
    r"TTFB p99 ms, \d+ streams",
    r"listen overflows \+ SYN retransmits",
    r"proxy CPU µs per event, \d+ streams",
    r"events/s flat out",
    r"proxy CPU µs per event, flat out",
    r"proxy RSS KiB per idle open stream",
    r"upload MiB/s",
    r"proxy peak RSS growth MiB",
    r"errors",
    r"background CPU %",
]


@pytest.mark.timeout(60)
def test_smoke_run_prints_the_table(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--smoke", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=BENCH.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    table = {
        line.split(" | ")[0].lstrip("| "): line.split(" | ")
        for line in done.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| metric")
    }
    for pattern in ROWS:
        assert any(re.match(pattern, label) for label in table), (pattern, done.stdout)
    assert table["errors (step: count)"][1:3] == ["0", "0"], done.stdout
    latency = next(cells for label, cells in table.items() if label.startswith("added latency"))
    # a number, perhaps marked noisy: other engineers run their tests on this machine too
    assert all(re.match(r"^[\d.,]+( †)?$", cell) for cell in latency[1:3]), latency
    (result,) = tmp_path.glob("*.json")
    data = json.loads(result.read_text())
    assert [c["name"] for c in data["columns"]] == ["direct", "difyproxy"]
    proxy_steps = data["columns"][1]["steps"]
    assert set(proxy_steps) == {"latency_1", "latency_100", "latency_1000", "flat_out"} | {
        "upload",
        "idle",
    }
    # Every event the upstream sent arrived through the proxy, none invented.
    flat = proxy_steps["flat_out"]["result"]
    assert flat["events_received"] == flat["events_expected"]
