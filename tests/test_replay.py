"""The replay server over real loopback sockets."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater

from tests.conftest import TEST_KEY, RunningReplay
from tests.rawhttp import RawResponse, build_request, fetch

CHAT_FRAMES = [
    b'data: {"event":"message","conversation_id":"c1","message_id":"m1","created_at":1,'
    b'"task_id":"t1","id":"m1","answer":"\xe4\xbd\xa0\xe5\xa5\xbd"}\n\n',
    b"event: ping\n\n",
    b'data: {"event":"message","conversation_id":"c1","message_id":"m1","created_at":1,'
    b'"task_id":"t1","id":"m1","answer":" \xf0\x9f\x98\x80"}\n\n',
    b'data: {"event":"message_end","conversation_id":"c1","message_id":"m1","created_at":1,'
    b'"task_id":"t1","id":"m1","metadata":{"usage":{"total_tokens":7}}}\n\n',
]
SSE_HEADERS = [["Content-Type", "text/event-stream; charset=utf-8"], ["X-Version", "1.9.0"]]


def write_fixture(
    folder: Path,
    fid: str,
    query: str,
    frames: list[bytes],
    *,
    gap_ms: float = 300,
    how: str = "eof",
    status: int = 200,
    headers: list[list[str]] = SSE_HEADERS,
) -> None:
    from difytw.fixture import end_for

    records: list[dict[str, Any]] = [
        {"type": "fixture", "format": "sse-fixture/1", "id": fid, "provenance": "test"},
        {
            "type": "request",
            "method": "POST",
            "path": "/v1/chat-messages",
            "query": "",
            "headers": [["Content-Type", "application/json"]],
            "json": {"query": query, "inputs": {}, "response_mode": "streaming", "user": "u"},
        },
        {"type": "response", "t": 10, "status": status, "headers": headers},
    ]
    for i, frame in enumerate(frames):
        records.append({"type": "chunk", "t": 20 + gap_ms * i, "text": frame.decode()})
    end = end_for(b"".join(frames), 20 + gap_ms * len(frames), how)
    records.append(
        {"type": "end", "t": end.t, "how": end.how, "bytes": end.bytes, "sha256": end.sha256}
    )
    (folder / f"{fid}.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )


WORKFLOW_FRAMES = [
    b'data: {"event":"workflow_started","workflow_run_id":"r1","task_id":"t2",'
    b'"data":{"id":"r1","workflow_id":"w1","created_at":1}}\n\n',
    b'data: {"event":"text_chunk","workflow_run_id":"r1","task_id":"t2","data":{"text":"a"}}\n\n',
    b'data: {"event":"workflow_finished","workflow_run_id":"r1","task_id":"t2",'
    b'"data":{"id":"r1","workflow_id":"w1","status":"succeeded","outputs":{}}}\n\n',
]


@pytest.fixture
def fixture_dir(tmp_path: Path) -> Path:
    write_fixture(tmp_path, "chat", "hello", CHAT_FRAMES)
    write_fixture(tmp_path, "workflow", "run the workflow", WORKFLOW_FRAMES)
    write_fixture(tmp_path, "stalls", "stall please", CHAT_FRAMES[:1], how="timeout")
    write_fixture(tmp_path, "resets", "reset please", CHAT_FRAMES[:2], how="reset")
    return tmp_path


def chat(
    query: str = "hello",
    *,
    key: str | None = TEST_KEY,
    fault: str | None = None,
    mode: str = "streaming",
    body: bytes | None = None,
    path: str = "/v1/chat-messages",
) -> bytes:
    headers = [("Content-Type", "application/json")]
    if key is not None:
        headers.append(("Authorization", f"Bearer {key}"))
    if fault is not None:
        headers.append(("X-Replay-Fault", fault))
    if body is None:
        payload = {"query": query, "inputs": {}, "response_mode": mode, "user": "someone"}
        body = json.dumps(payload).encode()
    return build_request("POST", path, headers=headers, body=body)


async def send(replay: RunningReplay, request: bytes) -> RawResponse:
    _, done = fetch(reactor, replay.port, request)
    return await done


@pytest_twisted.ensureDeferred
async def test_each_recorded_chunk_is_its_own_http_chunk(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path
) -> None:
    replay = start_replay(fixture_dir)
    response = await send(replay, chat())
    assert response.status == 200
    assert response.complete
    assert [data for _, data in response.chunks] == CHAT_FRAMES
    assert response.header("content-type") == "text/event-stream; charset=utf-8"
    assert response.header("x-version") == "1.9.0"
    assert response.header("content-length") is None
    [entry] = replay.journal.entries
    assert (entry.fixture, entry.outcome, entry.auth) == ("chat", "completed", "ok")
    assert entry.bytes_sent == sum(map(len, CHAT_FRAMES))
    assert all(name.lower() != "authorization" for name, _ in entry.headers)


@pytest.mark.parametrize("speed", [1.0, 3.0, 0.5])
@pytest_twisted.ensureDeferred
async def test_timing_follows_speed(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path, speed: float
) -> None:
    # The clock is injected, so "when" is exact: each recorded chunk (t = 20, 320, 620,
    # 920 ms) goes out at t / speed, not a millisecond before, and in time.  A server that
    # ignored --speed (or applied it twice) fails at 3 and 0.5; no scheduler jitter can.
    clock = Clock()
    replay = start_replay(fixture_dir, speed=speed, clock=clock)
    _, done = fetch(reactor, replay.port, chat())
    await _until(lambda: bool(clock.getDelayedCalls()))
    [entry] = replay.journal.entries
    for i, recorded_ms in enumerate([20, 320, 620, 920]):
        due = recorded_ms / 1000 / speed
        clock.advance(due - 0.001 - clock.seconds())
        assert entry.bytes_sent == sum(map(len, CHAT_FRAMES[:i])), (i, clock.seconds())
        clock.advance(0.002)
        assert entry.bytes_sent == sum(map(len, CHAT_FRAMES[: i + 1])), (i, clock.seconds())
    clock.advance(1.0 / speed)  # the recorded end, at 1220 ms
    response = await done
    assert response.complete
    assert [data for _, data in response.chunks] == CHAT_FRAMES  # each its own HTTP chunk
    assert clock.getDelayedCalls() == []


async def _until(predicate: Callable[[], bool]) -> None:
    for _ in range(300):
        if predicate():
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("the condition never became true")


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (None, "Authorization header must be provided and start with 'Bearer'"),
        ("app-wrong", "Access token is invalid"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_wrong_or_missing_key_is_difys_401(
    replay: RunningReplay, key: str | None, message: str
) -> None:
    response = await send(replay, chat(key=key))
    assert response.status == 401
    assert response.header("www-authenticate") == 'Bearer realm="api"'
    assert json.loads(response.body) == {"code": "unauthorized", "message": message, "status": 401}
    assert replay.journal.entries[0].auth == ("missing" if key is None else "wrong")


@pytest_twisted.ensureDeferred
async def test_journal_counts_credentials_but_never_keeps_them(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path
) -> None:
    replay = start_replay(fixture_dir)
    await send(replay, chat())
    headers = [
        ("Authorization", "Bearer app-first-secret"),
        ("Authorization", f"Bearer {TEST_KEY}"),
        ("Cookie", "session=cookie-secret"),
    ]
    await send(replay, build_request("GET", "/v1/parameters", headers=headers))
    plain, doubled = replay.journal.entries
    assert (plain.authorization_values, plain.cookie) == (1, False)
    assert (doubled.authorization_values, doubled.cookie) == (2, True)
    shown = (await send(replay, build_request("GET", "/_replay/journal"))).body
    assert [e["authorization_values"] for e in json.loads(shown)] == [1, 2]
    for secret in (b"app-first-secret", b"cookie-secret", TEST_KEY.encode()):
        assert secret not in shown


@pytest_twisted.ensureDeferred
async def test_wrong_scheme(replay: RunningReplay) -> None:
    request = build_request(
        "GET", "/v1/parameters", headers=[("Authorization", f"Basic {TEST_KEY}")]
    )
    response = await send(replay, request)
    assert response.status == 401
    assert json.loads(response.body)["message"] == "Authorization scheme must be 'Bearer'"


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "Authorization header must be provided and start with 'Bearer'"),
        ("Bearer", "Authorization header must be provided and start with 'Bearer'"),
        ("Basic dXNlcjpwdw==", "Authorization scheme must be 'Bearer'"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_without_api_key_a_well_formed_bearer_is_still_required(
    start_replay: Callable[..., RunningReplay],
    fixture_dir: Path,
    authorization: str | None,
    message: str,
) -> None:
    # Real Dify always answers 401 here (dify-contract.md 1.1); --api-key only decides
    # whether the key itself is compared.
    replay = start_replay(fixture_dir, api_key=None)
    headers = [("Content-Type", "application/json")]
    if authorization is not None:
        headers.append(("Authorization", authorization))
    body = json.dumps({"query": "hello", "inputs": {}, "response_mode": "streaming", "user": "u"})
    for path in ("/v1/chat-messages", "/v1/chat-messages/t1/stop"):
        request = build_request("POST", path, headers=headers, body=body.encode())
        response = await send(replay, request)
        assert response.status == 401, path
        assert response.header("www-authenticate") == 'Bearer realm="api"'
        assert json.loads(response.body) == {
            "code": "unauthorized",
            "message": message,
            "status": 401,
        }
    assert [entry.auth for entry in replay.journal.entries] == 2 * [
        "missing" if authorization is None else "wrong"
    ]
    journal = await send(replay, build_request("GET", "/_replay/journal"))
    assert journal.status == 200  # the harness API needs no key


@pytest_twisted.ensureDeferred
async def test_without_api_key_any_bearer_key_is_accepted(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path
) -> None:
    replay = start_replay(fixture_dir, api_key=None)
    response = await send(replay, chat(key="app-whatever-the-client-holds"))
    assert response.status == 200 and response.complete
    assert replay.journal.entries[0].auth == "unchecked"


@pytest_twisted.ensureDeferred
async def test_unmatched_request_names_the_nearest_fixture(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path
) -> None:
    replay = start_replay(fixture_dir)
    response = await send(replay, chat("helo"))
    assert response.status == 404
    error = json.loads(response.body)
    assert error["code"] == "not_found" and error["status"] == 404
    assert error["nearest"][0][0] == "chat"
    assert "query" in error["nearest"][0][1]


@pytest_twisted.ensureDeferred
async def test_non_json_body_is_invalid_param(replay: RunningReplay) -> None:
    response = await send(replay, chat(body=b"{not json"))
    assert response.status == 400
    error = json.loads(response.body)
    assert error == {
        "code": "invalid_param",
        "message": "Invalid JSON payload received or JSON payload is empty.",
        "status": 400,
    }


@pytest_twisted.ensureDeferred
async def test_blocking_request_gets_the_folded_answer(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path
) -> None:
    replay = start_replay(fixture_dir)
    response = await send(replay, chat(mode="blocking"))
    assert response.status == 200
    assert response.header("content-type") == "application/json"
    folded = json.loads(response.body)
    assert folded["answer"] == "你好 😀"
    assert folded["mode"] == "chat"
    assert folded["metadata"] == {"usage": {"total_tokens": 7}}
    assert (folded["task_id"], folded["conversation_id"], folded["message_id"]) == (
        "t1",
        "c1",
        "m1",
    )


@pytest_twisted.ensureDeferred
async def test_upload_answers_a_file_object_from_the_real_body(replay: RunningReplay) -> None:
    content = "数据,emoji 😀\n".encode() * 1000
    boundary = "----difytwBoundary7MA4YWxk"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="user"\r\n\r\nu1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="notes.csv"\r\n'
            f"Content-Type: text/csv\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = [
        ("Authorization", f"Bearer {TEST_KEY}"),
        ("Content-Type", f"multipart/form-data; boundary={boundary}"),
    ]
    response = await send(
        replay, build_request("POST", "/v1/files/upload", headers=headers, body=body)
    )
    assert response.status == 201, response.body
    obj = json.loads(response.body)
    assert (obj["name"], obj["size"], obj["extension"], obj["mime_type"]) == (
        "notes.csv",
        len(content),
        "csv",
        "text/csv",
    )
    assert list(obj)[:7] == [
        "id",
        "name",
        "size",
        "extension",
        "mime_type",
        "created_by",
        "created_at",
    ]
    again = json.loads(
        (
            await send(
                replay, build_request("POST", "/v1/files/upload", headers=headers, body=body)
            )
        ).body
    )
    assert again["id"] == obj["id"], "the same upload gets the same id"


@pytest_twisted.ensureDeferred
async def test_upload_without_a_file_part(replay: RunningReplay) -> None:
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="user"\r\n\r\nu1\r\n'
        f"--{boundary}--\r\n"
    ).encode()
    headers = [
        ("Authorization", f"Bearer {TEST_KEY}"),
        ("Content-Type", f"multipart/form-data; boundary={boundary}"),
    ]
    response = await send(
        replay, build_request("POST", "/v1/files/upload", headers=headers, body=body)
    )
    assert response.status == 400
    assert json.loads(response.body)["code"] == "no_file_uploaded"


@pytest_twisted.ensureDeferred
async def test_journal_over_http(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path
) -> None:
    replay = start_replay(fixture_dir)
    await send(replay, chat())
    response = await send(replay, build_request("GET", "/_replay/journal"))
    [entry] = json.loads(response.body)
    assert entry["fixture"] == "chat" and entry["outcome"] == "completed"
    assert entry["path"] == "/v1/chat-messages"
    assert len(entry["body_sha256"]) == 64
    response = await send(replay, build_request("DELETE", "/_replay/journal"))
    assert response.status == 204
    assert replay.journal.entries == []


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("cut-after=1", CHAT_FRAMES[0]),
        ("cut-after=2", b"".join(CHAT_FRAMES[:2])),
        ("crlf", b"".join(CHAT_FRAMES).replace(b"\n", b"\r\n")),
        ("no-final-blank-line", b"".join(CHAT_FRAMES)[:-1]),
        ("split-utf8", b"".join(CHAT_FRAMES)),
        ("drip=16/0", b"".join(CHAT_FRAMES)),
    ],
)
@pytest_twisted.ensureDeferred
async def test_body_faults_over_the_wire(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path, fault: str, expected: bytes
) -> None:
    replay = start_replay(fixture_dir)
    response = await send(replay, chat(fault=fault))
    assert response.complete
    assert response.body == expected
    assert replay.journal.entries[0].fault == fault
    if fault.startswith("drip"):
        assert max(len(data) for _, data in response.chunks) <= 16
    if fault == "split-utf8":
        with pytest.raises(UnicodeDecodeError):
            response.chunks[0][1].decode("utf-8")


@pytest_twisted.ensureDeferred
async def test_reset_after_aborts_the_connection(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path
) -> None:
    replay = start_replay(fixture_dir)
    response = await send(replay, chat(fault="reset-after=1"))
    assert not response.complete
    assert response.body == CHAT_FRAMES[0]
    assert replay.journal.entries[0].outcome == "reset"


@pytest_twisted.ensureDeferred
async def test_recorded_reset(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path
) -> None:
    replay = start_replay(fixture_dir)
    response = await send(replay, chat("reset please"))
    assert not response.complete
    assert response.body == b"".join(CHAT_FRAMES[:2])


@pytest_twisted.ensureDeferred
async def test_status_fault_is_a_dify_error_before_the_stream(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path
) -> None:
    replay = start_replay(fixture_dir)
    response = await send(replay, chat(fault="status=429"))
    assert response.status == 429
    error = json.loads(response.body)
    assert (error["code"], error["status"]) == ("too_many_requests", 429)


@pytest_twisted.ensureDeferred
async def test_bad_fault_spec(replay: RunningReplay) -> None:
    response = await send(replay, chat(fault="explode"))
    assert response.status == 400
    assert "unknown fault 'explode'" in json.loads(response.body)["message"]


@pytest_twisted.ensureDeferred
async def test_stall_and_ping_every(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path
) -> None:
    replay = start_replay(fixture_dir, speed=1.0)
    response = await send(replay, chat(fault="stall=0.6@1, ping-every=0.25"))
    assert response.complete
    times = [t for t, _ in response.chunks]
    data = [d for _, d in response.chunks]
    first = data.index(CHAT_FRAMES[0])
    after = data.index(CHAT_FRAMES[2])
    assert times[after] - times[first] > 0.8  # 0.6 s recorded + 0.6 s stall
    assert data.count(b"event: ping\n\n") >= 2  # recorded one plus injected ones
    assert response.body.replace(b"event: ping\n\n", b"") == b"".join(CHAT_FRAMES).replace(
        b"event: ping\n\n", b""
    )


@pytest_twisted.ensureDeferred
async def test_fault_by_query_parameter(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path
) -> None:
    replay = start_replay(fixture_dir)
    request = chat(path="/v1/chat-messages?replay_fault=cut-after%3D1")
    response = await send(replay, request)
    assert response.body == CHAT_FRAMES[0]
    assert replay.journal.entries[0].fixture == "chat"


@pytest_twisted.ensureDeferred
async def test_disconnect_cancels_every_pending_write(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path
) -> None:
    clock = Clock()
    replay = start_replay(fixture_dir, speed=1.0, clock=clock)
    client, done = fetch(reactor, replay.port, chat())
    for _ in range(100):
        await deferLater(reactor, 0.01, lambda: None)
        if clock.getDelayedCalls():
            break
    clock.advance(0.025)  # head and the first chunk are due
    for _ in range(100):
        await deferLater(reactor, 0.01, lambda: None)
        if client.response.chunks:
            break
    assert client.response.chunks[0][1] == CHAT_FRAMES[0]
    assert clock.getDelayedCalls(), "the next write is pending"
    assert client.transport is not None
    client.transport.loseConnection()
    await done
    entry = await _ended(replay)
    assert entry.outcome == "client_closed"
    assert entry.closed_at_byte == len(CHAT_FRAMES[0])
    assert clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_recorded_timeout_stalls_until_the_client_leaves(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path
) -> None:
    replay = start_replay(fixture_dir)
    client, done = fetch(reactor, replay.port, chat("stall please"))
    await deferLater(reactor, 0.3, lambda: None)
    assert client.response.body == CHAT_FRAMES[0]
    assert not client.response.complete
    assert client.transport is not None
    client.transport.loseConnection()
    await done
    entry = await _ended(replay)
    assert entry.outcome == "client_closed"


async def _ended(replay: RunningReplay) -> Any:
    for _ in range(200):
        entry = replay.journal.entries[-1]
        if entry.ended_at is not None:
            return entry
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("the journal never saw the end")


@pytest_twisted.ensureDeferred
async def test_readme_curl_against_the_shipped_fixtures(replay: RunningReplay) -> None:
    body = json.dumps(
        {"query": "hello", "inputs": {}, "response_mode": "streaming", "user": "u1"}
    ).encode()
    headers = [("Authorization", f"Bearer {TEST_KEY}"), ("Content-Type", "application/json")]
    response = await send(
        replay, build_request("POST", "/v1/chat-messages", headers=headers, body=body)
    )
    assert response.status == 200
    assert response.header(
        "content-type",
    ).startswith("text/event-stream")  # type: ignore[union-attr]
    assert b'"event":"message_end"' in response.body or b'"event": "message_end"' in response.body


def stop_call(task_id: str, user: str | None, kind: str = "chat-messages") -> bytes:
    body = json.dumps({} if user is None else {"user": user}).encode()
    headers = [("Authorization", f"Bearer {TEST_KEY}"), ("Content-Type", "application/json")]
    return build_request("POST", f"/v1/{kind}/{task_id}/stop", headers=headers, body=body)


async def first_chunk(client: Any) -> None:
    for _ in range(300):
        if client.response.chunks:
            return
        await deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("no chunk arrived")


@pytest_twisted.ensureDeferred
async def test_stop_ends_a_chat_stream_like_dify(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path
) -> None:
    replay = start_replay(fixture_dir, speed=1.0)
    client, done = fetch(reactor, replay.port, chat())
    await first_chunk(client)
    answer = await send(replay, stop_call("t1", "someone"))
    assert (answer.status, json.loads(answer.body)) == (200, {"result": "success"})
    response = await done
    assert response.complete
    assert response.body.startswith(CHAT_FRAMES[0])
    last = json.loads(response.chunks[-1][1].removeprefix(b"data: "))
    assert last["event"] == "message_end" and last["task_id"] == "t1"
    stream, stop = replay.journal.entries
    assert stream.outcome == "stopped"
    assert stop.stop == {"task_id": "t1", "user": "someone", "stopped": [stream.id]}
    assert len(replay.app.playbacks) == 0


@pytest_twisted.ensureDeferred
async def test_stop_ends_a_workflow_with_status_stopped(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path
) -> None:
    replay = start_replay(fixture_dir, speed=1.0)
    client, done = fetch(reactor, replay.port, chat("run the workflow"))
    await first_chunk(client)
    await send(replay, stop_call("t2", "someone", "workflows/tasks"))
    response = await done
    last = json.loads(response.chunks[-1][1].removeprefix(b"data: "))
    assert last["event"] == "workflow_finished"
    assert last["data"]["status"] == "stopped"
    assert last["workflow_run_id"] == "r1"


@pytest_twisted.ensureDeferred
async def test_stop_for_another_user_is_a_silent_no_op(
    start_replay: Callable[..., RunningReplay], fixture_dir: Path
) -> None:
    replay = start_replay(fixture_dir, speed=4.0)
    client, done = fetch(reactor, replay.port, chat())
    await first_chunk(client)
    answer = await send(replay, stop_call("t1", "intruder"))
    assert (answer.status, json.loads(answer.body)) == (200, {"result": "success"})
    response = await done
    assert response.body == b"".join(CHAT_FRAMES)
    assert replay.journal.entries[0].outcome == "completed"
    assert replay.journal.entries[1].stop["stopped"] == []


@pytest_twisted.ensureDeferred
async def test_stop_needs_a_user(replay: RunningReplay) -> None:
    answer = await send(replay, stop_call("t1", None))
    assert answer.status == 400
    assert json.loads(answer.body)["message"] == "Arg user must be provided."


@pytest_twisted.ensureDeferred
async def test_a_path_that_is_not_utf8_is_a_dify_400(replay: RunningReplay) -> None:
    response = await send(replay, build_request("GET", "/v1/%ff"))
    assert response.status == 400
    assert json.loads(response.body)["code"] == "invalid_param"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("x" * 100_000, "completion_request_error"),
        ("hello\x00there", "invalid_param"),
        ("bell\x07", "invalid_param"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_questions_dify_refuses_are_a_400_before_any_stream(
    start_replay: Callable[..., RunningReplay], tmp_path: Path, query: str, code: str
) -> None:
    records = [
        {"type": "fixture", "format": "sse-fixture/1", "id": "any", "provenance": "test"},
        {
            "type": "request",
            "method": "POST",
            "path": "/v1/chat-messages",
            "json": {"query": "x", "inputs": {}},
            "match": {"fallback": True},
        },
        {"type": "response", "t": 0, "status": 200, "headers": SSE_HEADERS},
        {"type": "chunk", "t": 1, "text": CHAT_FRAMES[-1].decode()},
    ]
    from difytw.fixture import end_for

    end = end_for(CHAT_FRAMES[-1], 2)
    records.append({"type": "end", "t": 2, "how": "eof", "bytes": end.bytes, "sha256": end.sha256})
    (tmp_path / "any.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    replay = start_replay(tmp_path)
    response = await send(replay, chat(query))
    assert response.status == 400
    assert json.loads(response.body)["code"] == code
    ok = await send(replay, chat("tabs\tand\nnewlines are fine"))
    assert ok.status == 200
