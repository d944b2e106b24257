"""The offline demo (difytw.web) over real loopback sockets, without a browser.

Page -> difyproxy -> in-process replay server, all started by ``DemoService`` exactly as
``twist difyproxy --demo`` starts them; the demo fixtures are checked in memory.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from difytw.fixture import Fixture
from difytw.fixtureindex import FixtureIndex, Incoming, keyword_hit
from difytw.sse import Decoder, Event
from difytw.web import DEMO_FIXTURES, STATIC, DemoService, demo_index

ROOT = Path(__file__).resolve().parent.parent
CHAT = "/dify/v1/chat-messages"


@pytest.fixture
def demo(monkeypatch: pytest.MonkeyPatch) -> Iterator[DemoService]:
    # The demo must not need (or read) a real key.
    monkeypatch.delenv("DIFY_API_KEY", raising=False)
    monkeypatch.delenv("DIFY_REPLAY_API_KEY", raising=False)
    service = DemoService(reactor, "tcp:0:interface=127.0.0.1", speed=0.0)
    service.startService()  # TCP endpoints listen synchronously
    yield service
    pytest_twisted.blockon(service.stopService())


def client() -> dict[str, Any]:
    return {"pool": HTTPConnectionPool(reactor, persistent=False)}


async def get(service: DemoService, path: str, **kwargs: Any) -> tuple[Any, bytes]:
    assert service.url is not None
    response = await treq.request("GET", service.url + path.lstrip("/"), **client(), **kwargs)
    return response, await response.content()


async def ask(service: DemoService, query: str, **extra: Any) -> tuple[Any, list[dict[str, Any]]]:
    assert service.url is not None
    body = {"query": query, "inputs": {}, "response_mode": "streaming", "user": "t", **extra}
    response = await treq.post(
        service.url + CHAT.lstrip("/"),
        json.dumps(body, ensure_ascii=False).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        **client(),
    )
    raw = await response.content()
    events = [item for item in Decoder().feed(raw) if isinstance(item, Event) and item.data]
    return response, [json.loads(event.data) for event in events]


def content_type(response: Any) -> str:
    return str(response.headers.getRawHeaders("Content-Type")[0])


# -- the page ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/", "text/html; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/sse.js", "text/javascript; charset=utf-8"),
        ("/transcript.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_page_and_assets_are_served_with_their_types(
    demo: DemoService, path: str, media_type: str
) -> None:
    response, body = await get(demo, path)
    assert response.code == 200
    assert content_type(response) == media_type
    assert response.headers.getRawHeaders("Cache-Control") == ["no-cache"]
    assert response.headers.getRawHeaders("X-Content-Type-Options") == ["nosniff"]
    name = "index.html" if path == "/" else path.lstrip("/")
    assert body == (STATIC / name).read_bytes()


@pytest_twisted.ensureDeferred
async def test_page_forbids_other_origins(demo: DemoService) -> None:
    response, _ = await get(demo, "/")
    policy = response.headers.getRawHeaders("Content-Security-Policy")[0]
    assert "default-src 'self'" in policy


@pytest.mark.parametrize("path", ["/nope.js", "/../web.py", "/_demo/nope"])
@pytest_twisted.ensureDeferred
async def test_unknown_paths_are_404(demo: DemoService, path: str) -> None:
    response, _ = await get(demo, path)
    assert response.code == 404


def test_every_asset_the_page_names_exists_and_none_is_remote() -> None:
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    js = {p.name: p.read_text(encoding="utf-8") for p in STATIC.glob("*.js")}
    css = (STATIC / "style.css").read_text(encoding="utf-8")
    named = re.findall(r'(?:src|href)="([^"]+)"', html)
    named += [m for text in js.values() for m in re.findall(r'from "([^"]+)"', text)]
    assert {"app.js", "style.css", "./sse.js", "./transcript.js"} <= set(named)
    for name in named:
        if name.startswith("data:"):
            continue
        assert "//" not in name, f"{name} would load from the network"
        assert (STATIC / name.removeprefix("./")).is_file(), name
    for source in (html, css, *js.values()):
        assert not re.search(r"https?://", source), "the page must load nothing remote"
        assert "@import" not in source


# -- the proxy and the replay behind it ----------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "fixture_id"),
    [
        ("hello there", "demo-chat-hello"),
        ("你好", "demo-chat-hello"),
        ("What's the weather like?", "demo-agent-weather"),
        ("Run the workflow steps", "demo-chatflow-steps"),
        ("Show me an error mid-stream", "demo-chat-error"),
        ("Tell me a long story", "demo-chat-long-story"),
        ("Qu'est-ce que c'est ?", "demo-chat-fallback"),
        ("", "demo-chat-fallback"),
        ("x" * 5_000, "demo-chat-fallback"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_any_question_gets_a_stream(demo: DemoService, query: str, fixture_id: str) -> None:
    response, frames = await ask(demo, query)
    assert response.code == 200
    assert content_type(response).startswith("text/event-stream")
    assert frames[-1]["event"] in ("message_end", "workflow_finished", "error")
    assert demo.demo is not None
    (entry,) = demo.demo.replay.journal.entries
    assert (entry.fixture, entry.outcome) == (fixture_id, "completed")
    # The proxy injected the demo key and the replay server checked it: no real key anywhere.
    assert entry.auth == "ok"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("x" * 100_000, "completion_request_error"),
        ("\x00\x1b[31mred", "invalid_param"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_questions_dify_refuses_are_a_400_json_not_a_hang(
    demo: DemoService, query: str, code: str
) -> None:
    assert demo.url is not None
    body = {"query": query, "inputs": {}, "response_mode": "streaming", "user": "t"}
    response = await treq.post(
        demo.url + CHAT.lstrip("/"),
        json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        **client(),
    )
    assert response.code == 400
    assert content_type(response) == "application/json"
    error = json.loads(await response.content())
    assert (error["code"], error["status"]) == (code, 400)
    assert demo.demo is not None
    (entry,) = demo.demo.replay.journal.entries
    assert entry.status == 400


@pytest_twisted.ensureDeferred
async def test_parameters_come_through_the_proxy(demo: DemoService) -> None:
    response, body = await get(demo, "/dify/v1/parameters?user=someone")
    assert response.code == 200
    parameters = json.loads(body)
    assert parameters["opening_statement"]
    assert len(parameters["suggested_questions"]) >= 5


@pytest_twisted.ensureDeferred
async def test_upload_is_answered_by_the_replay_server(demo: DemoService) -> None:
    assert demo.url is not None
    response = await treq.post(
        demo.url + "dify/v1/files/upload",
        data={"user": "t"},
        files={"file": ("notes.txt", "text/plain", b"some notes\n")},
        **client(),
    )
    assert response.code == 201
    uploaded = json.loads(await response.content())
    assert (uploaded["name"], uploaded["size"], uploaded["extension"]) == ("notes.txt", 11, "txt")
    assert uploaded["id"]


@pytest_twisted.ensureDeferred
async def test_a_replay_fault_header_crosses_the_proxy(demo: DemoService) -> None:
    response, frames = await ask(demo, "hello", conversation_id="")
    assert frames
    assert demo.url is not None
    response = await treq.post(
        demo.url + CHAT.lstrip("/"),
        b'{"query":"hello","inputs":{},"response_mode":"streaming","user":"t"}',
        headers={"Content-Type": "application/json", "X-Replay-Fault": "status=429"},
        **client(),
    )
    body = json.loads(await response.content())
    assert (response.code, body["code"], body["status"]) == (429, "too_many_requests", 429)


@pytest_twisted.ensureDeferred
async def test_journal_is_served_and_can_be_cleared(demo: DemoService) -> None:
    await ask(demo, "hello")
    response, body = await get(demo, "/_demo/journal")
    assert content_type(response) == "application/json"
    (entry,) = json.loads(body)
    assert (entry["path"], entry["fixture"], entry["outcome"]) == (
        "/v1/chat-messages",
        "demo-chat-hello",
        "completed",
    )
    assert demo.url is not None
    deleted = await treq.delete(demo.url + "_demo/journal", **client())
    assert deleted.code == 204
    _, body = await get(demo, "/_demo/journal")
    assert json.loads(body) == []


def test_port_in_use_is_one_clear_line() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        service = DemoService(reactor, f"tcp:{port}:interface=127.0.0.1")
        with pytest.raises(SystemExit) as raised:
            service.startService()
    finally:
        taken.close()
    message = str(raised.value.code)
    assert "\n" not in message
    assert f"127.0.0.1:{port}" in message
    assert "--listen tcp:" in message


# -- the demo fixtures ---------------------------------------------------------------------------


def demo_fixtures() -> dict[str, Fixture]:
    return {fixture.id: fixture for fixture in demo_index().fixtures}


def frames_of(fixture: Fixture) -> list[dict[str, Any]]:
    events = Decoder().feed(fixture.body())
    return [json.loads(e.data) for e in events if isinstance(e, Event) and e.data]


def test_demo_fixtures_load_without_problems() -> None:
    index = FixtureIndex.from_directory(DEMO_FIXTURES)
    assert index.problems == ()
    assert len(index.fixtures) == len(list(DEMO_FIXTURES.glob("*.jsonl")))


def test_every_suggested_question_reaches_its_own_fixture() -> None:
    index = demo_index()
    (parameters,) = [f for f in index.fixtures if f.request.path == "/v1/parameters"]
    questions = json.loads(parameters.body())["suggested_questions"]
    answered = set()
    for question in questions:
        incoming = Incoming("POST", "/v1/chat-messages", "", {"query": question, "inputs": {}})
        fixture = index.match(incoming)
        assert not fixture.request.match.fallback, question
        assert keyword_hit(fixture, incoming) or fixture.request.json["query"] == question
        answered.add(fixture.id)
    assert len(answered) == len(questions)


def test_the_demo_fixtures_cover_what_the_page_shows() -> None:
    fixtures = demo_fixtures()
    hello = "".join(f.get("answer", "") for f in frames_of(fixtures["demo-chat-hello"]))
    assert re.search(r"[\u4e00-\u9fff]", hello) and "👋" in hello
    assert any(
        f["event"] == "agent_thought" and f["tool"]
        for f in frames_of(fixtures["demo-agent-weather"])
    )
    flow = [f["event"] for f in frames_of(fixtures["demo-chatflow-steps"])]
    assert {"workflow_started", "node_started", "node_finished", "workflow_finished"} <= set(flow)
    assert flow.index("message_end") < flow.index("workflow_finished")
    assert frames_of(fixtures["demo-chat-error"])[-1]["event"] == "error"
    assert fixtures["demo-chat-long-story"].end.t >= 10_000  # time to press Stop
    assert [f.id for f in fixtures.values() if f.request.match.fallback] == ["demo-chat-fallback"]
    # The hello stream is cut the way TCP cuts: inside a character, two frames in one read.
    chunks = [chunk.data for chunk in fixtures["demo-chat-hello"].chunks]
    assert any(_splits_a_character(chunk) for chunk in chunks)
    assert any(chunk.count(b"\n\ndata: ") >= 1 for chunk in chunks)


def _splits_a_character(chunk: bytes) -> bool:
    try:
        chunk.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@pytest.mark.parametrize(
    "fixture_id", sorted(f.id for f in demo_fixtures().values() if f.response.is_stream)
)
def test_tokens_arrive_at_a_visible_pace(fixture_id: str) -> None:
    fixture = demo_fixtures()[fixture_id]
    times = [chunk.t for chunk in fixture.chunks if b'"answer":' in chunk.data]
    # Gaps under 1 ms are one frame split over two reads, not two tokens.
    gaps = [b - a for a, b in itertools.pairwise(times) if b - a >= 1]
    assert len(gaps) >= 5
    # Realistic decoding pace (40-80 ms a token) so streaming is visible in the page.
    assert 40 <= sorted(gaps)[len(gaps) // 2] <= 80


def test_the_wheel_ships_the_page_and_the_fixtures(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-t", "wheel", "-d", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in [*DEMO_FIXTURES.glob("*.jsonl"), *STATIC.iterdir()]:
        assert f"difytw/{path.parent.name}/{path.name}" in names
