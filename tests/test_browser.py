"""The demo chat page in the system Chromium, against the real demo server.

The demo runs in a subprocess (``python -m difytw.web`` on a free loopback port, from a
folder that is not the repository), so the page talks to the real proxy and the real replay
server over loopback; what reached the replay server is read from ``/_demo/journal``.
Playwright's sync API runs in one dedicated thread, away from pytest-twisted's reactor and
greenlets, and each test hands it one scenario to play.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from difytw.fixture import Fixture
from difytw.sse import Decoder, Event
from difytw.web import demo_index

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 20_000  # generous: a slow CI machine is not a failure; a hang still is
T = TypeVar("T")


def fixture(fixture_id: str) -> Fixture:
    (found,) = [f for f in demo_index().fixtures if f.id == fixture_id]
    return found


def frames(fixture_id: str) -> list[dict[str, Any]]:
    events = Decoder().feed(fixture(fixture_id).body())
    return [json.loads(e.data) for e in events if isinstance(e, Event) and e.data]


def answer_of(fixture_id: str) -> str:
    return "".join(f["answer"] for f in frames(fixture_id) if "answer" in f)


# -- the demo server and the browser -------------------------------------------------------------


class DemoServer:
    def __init__(self, tmp: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        env.pop("DIFY_API_KEY", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "difytw.web", "--listen", "tcp:0:interface=127.0.0.1"],
            cwd=tmp,  # the page and fixtures must come from the package, not the cwd
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                self.output.append(line)
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 30
        self.url = ""
        while not self.url:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                pytest.fail("the demo printed no URL:\n" + "".join(self.output))
            match = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
            self.url = match.group(1) if match else ""

    def journal(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.url + "_demo/journal", timeout=10) as response:
            entries: list[dict[str, Any]] = json.load(response)
        return entries

    def chats(self) -> list[dict[str, Any]]:
        return [e for e in self.journal() if e["path"] == "/v1/chat-messages"]

    def clear_journal(self) -> None:
        request = urllib.request.Request(self.url + "_demo/journal", method="DELETE")
        urllib.request.urlopen(request, timeout=10).close()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Browser:
    """Chromium driven from one thread; ``play(scenario)`` runs ``scenario(page)`` there."""

    def __init__(self) -> None:
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="playwright")
        self.thread.submit(self._launch).result(timeout=60)

    def _launch(self) -> None:
        from playwright.sync_api import sync_playwright

        self.playwright = sync_playwright().start()
        self.chromium = self.playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )

    def play(self, scenario: Callable[[Any], T], **context: Any) -> T:
        def run() -> T:
            page_context = self.chromium.new_context(**context)
            page = page_context.new_page()
            page.set_default_timeout(WAIT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            try:
                result = scenario(page)
            finally:
                page_context.close()
            assert not errors, f"JavaScript errors: {errors}"
            return result

        return self.thread.submit(run).result(timeout=120)

    def close(self) -> None:
        def shut() -> None:
            self.chromium.close()
            self.playwright.stop()

        self.thread.submit(shut).result(timeout=30)
        self.thread.shutdown()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but /usr/bin/chromium is missing: install Debian's chromium")
        pytest.skip("/usr/bin/chromium is not installed (apt install chromium)")
    launched = Browser()
    yield launched
    launched.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoServer]:
    running = DemoServer(tmp_path_factory.mktemp("elsewhere"))
    yield running
    running.stop()


@pytest.fixture
def demo(server: DemoServer, browser: Browser) -> DemoServer:
    server.clear_journal()
    return server


def open_chat(page: Any, url: str) -> None:
    page.goto(url)
    page.locator(".suggestion").first.wait_for()


def ask(page: Any, question: str) -> Any:
    """Type and send a question; return the locator of the answer it gets."""
    before = page.locator("article.assistant").count()
    page.get_by_label("Message").fill(question)
    page.get_by_label("Message").press("Enter")
    answer = page.locator("article.assistant").nth(before)
    answer.wait_for()
    return answer


def finished(answer: Any) -> str:
    answer.locator(".typing").wait_for(state="detached")
    return str(answer.get_attribute("data-state"))


def wait_for(condition: Callable[[], T], what: str, seconds: float = 10) -> T:
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- the scenarios -------------------------------------------------------------------------------


def test_answer_grows_in_steps_and_keeps_cjk_and_emoji_exact(
    demo: DemoServer, browser: Browser
) -> None:
    expected = answer_of("demo-chat-hello")

    def scenario(page: Any) -> tuple[list[int], str, str]:
        open_chat(page, demo.url)
        # Sample the answer's length every 15 ms while it streams.
        page.evaluate(
            """() => {
                window.samples = [];
                setInterval(() => {
                    const answers = document.querySelectorAll("article.assistant .answer");
                    if (answers.length > 1) window.samples.push(answers[1].textContent.length);
                }, 15);
            }"""
        )
        answer = ask(page, "Say hello in Chinese 👋")
        state = finished(answer)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo-hello.png"))
        return page.evaluate("window.samples"), answer.locator(".answer").inner_text(), state

    samples, text, state = browser.play(scenario, viewport={"width": 900, "height": 800})
    assert state == "done"
    assert text == expected  # every split read and split character put back together
    steps = sorted({n for n in samples if 0 < n < len(expected)})
    assert len(steps) >= 3, f"the answer appeared in {len(steps)} partial steps: {samples}"
    (entry,) = demo.chats()
    assert (entry["fixture"], entry["outcome"], entry["auth"]) == (
        "demo-chat-hello",
        "completed",
        "ok",
    )


def test_stop_closes_the_stream_at_the_replay_server(demo: DemoServer, browser: Browser) -> None:
    full = answer_of("demo-chat-long-story")

    def scenario(page: Any) -> tuple[str, str, str]:
        open_chat(page, demo.url)
        answer = ask(page, "Tell me a long story")
        page.wait_for_function(
            "() => document.querySelectorAll('article.assistant .answer')[1]"
            ".textContent.length > 40"
        )
        page.get_by_role("button", name="Stop").click()
        state = finished(answer)
        return state, answer.locator(".answer").inner_text(), answer.inner_text()

    state, text, whole = browser.play(scenario)
    assert state == "stopped"
    assert "Stopped." in whole
    assert 0 < len(text) < len(full) and full.startswith(text)
    (entry,) = wait_for(
        lambda: [e for e in demo.chats() if e["outcome"] != "pending"], "the journal to close"
    )
    assert (entry["fixture"], entry["outcome"]) == ("demo-chat-long-story", "client_closed")
    assert 0 < entry["closed_at_byte"] < fixture("demo-chat-long-story").end.bytes


def test_the_error_event_is_shown_with_its_message(demo: DemoServer, browser: Browser) -> None:
    (error,) = [f for f in frames("demo-chat-error") if f["event"] == "error"]

    def scenario(page: Any) -> tuple[str, str]:
        open_chat(page, demo.url)
        answer = ask(page, "Show me an error mid-stream")
        state = finished(answer)
        return state, answer.get_by_role("alert").inner_text()

    state, alert = browser.play(scenario)
    assert state == "error"
    assert error["message"] in alert and error["code"] in alert


def test_second_turn_sends_the_conversation_id_and_steps_fit_a_phone(
    demo: DemoServer, browser: Browser
) -> None:
    conversation = frames("demo-agent-weather")[0]["conversation_id"]

    def scenario(page: Any) -> tuple[list[dict[str, Any]], list[str], list[str]]:
        bodies: list[dict[str, Any]] = []
        page.on(
            "request",
            lambda r: (
                bodies.append(json.loads(r.post_data))
                if r.url.endswith("/dify/v1/chat-messages")
                else None
            ),
        )
        open_chat(page, demo.url)
        first = ask(page, "What's the weather in Berlin and Tokyo? Use a tool.")
        assert finished(first) == "done"
        tools = first.locator(".step").all_inner_texts()
        second = ask(page, "Run the workflow steps")
        assert finished(second) == "done"
        nodes = [
            f"{step.locator('.step-label').inner_text()}:{step.get_attribute('data-state')}"
            for step in second.locator(".step").all()
        ]
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo-steps.png"))
        # Phone width: everything fits, nothing scrolls sideways.
        page.set_viewport_size({"width": 360, "height": 740})
        page.screenshot(path=str(ARTIFACTS / "demo-phone.png"))
        widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1], f"page is {widths[0]} px wide at {widths[1]} px"
        return bodies, tools, nodes

    bodies, tools, nodes = browser.play(scenario, viewport={"width": 900, "height": 900})
    assert [b["conversation_id"] for b in bodies] == ["", conversation]
    assert len({b["user"] for b in bodies}) == 1
    assert [b["response_mode"] for b in bodies] == ["streaming", "streaming"]
    assert ["Current Weather" in t for t in tools] == [True, False]
    assert any("Unit Converter" in t for t in tools)
    assert nodes == [
        "Workflow:succeeded",
        "Start:succeeded",
        "Knowledge Retrieval:succeeded",
        "LLM:succeeded",
        "Answer:succeeded",
    ]
    assert [e["fixture"] for e in demo.chats()] == ["demo-agent-weather", "demo-chatflow-steps"]


@pytest.mark.parametrize(
    ("fault", "shown"),
    [
        ("status=429", "Error 429"),
        ("status=500", "(internal_server_error)"),
        ("cut-after=8", "The stream ended before the answer was complete."),
    ],
)
def test_network_menu_faults_are_shown_readably(
    demo: DemoServer, browser: Browser, fault: str, shown: str
) -> None:
    def scenario(page: Any) -> tuple[str, str]:
        open_chat(page, demo.url)
        page.get_by_label("Network").select_option(fault)
        answer = ask(page, "hello")
        state = finished(answer)
        return state, answer.get_by_role("alert").inner_text()

    state, alert = browser.play(scenario)
    assert state == "error"
    assert shown in alert
    (entry,) = demo.chats()
    assert entry["fault"] == fault


def test_opening_statement_suggestions_and_upload(demo: DemoServer, browser: Browser) -> None:
    parameters = json.loads(fixture("demo-parameters").body())

    def scenario(page: Any) -> tuple[str, list[str], str, dict[str, Any]]:
        bodies: list[dict[str, Any]] = []
        page.on(
            "request",
            lambda r: (
                bodies.append(json.loads(r.post_data)) if r.url.endswith("/chat-messages") else None
            ),
        )
        open_chat(page, demo.url)
        opening = page.locator("article.assistant .answer").first.inner_text()
        suggestions = page.locator(".suggestion").all_inner_texts()
        with page.expect_response(lambda r: r.url.endswith("/files/upload")) as uploaded:
            page.get_by_label("Attach a file").set_input_files(
                {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"notes\n"}
            )
        page.get_by_text("📎 notes.txt").wait_for()
        file_id = uploaded.value.json()["id"]
        page.locator(".suggestion").first.click()  # a suggestion asks its question
        finished(page.locator("article.assistant").nth(1))
        return opening, suggestions, file_id, bodies[0]

    opening, suggestions, file_id, body = browser.play(scenario)
    assert opening == parameters["opening_statement"]
    assert suggestions == parameters["suggested_questions"]
    assert body["query"] == suggestions[0]
    assert body["files"] == [
        {"type": "document", "transfer_method": "local_file", "upload_file_id": file_id}
    ]
    upload = [e for e in demo.journal() if e["path"] == "/v1/files/upload"]
    assert [(e["status"], e["auth"]) for e in upload] == [(201, "ok")]


# -- sse.js, exhaustively, against difytw.sse (the WHATWG decoder the proxy uses) ----------------

TRICKY = (
    "\ufeffdata: first\n\n"
    ": a comment\n"
    "event: ping\n\n"
    "event: custom\r\ndata: line one\r\ndata:line two\r\nid: 7\r\n\r\n"
    "data: not json {\rretry: 100\r\r"
    "data\n\n"
    "id: 8\ndata: 你好👩🏽‍💻\n\n"
    "data: unterminated at the end"
).encode()


def js_parse(page: Any, body: bytes) -> dict[str, Any]:
    result: dict[str, Any] = page.evaluate(
        """async (b64) => {
            const { EventStreamParser, readEventStream } = await import("./sse.js");
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const shape = (events) => events.map((e) => [e.event, e.data, e.id]);
            const run = (pieces) => {
                const decoder = new TextDecoder();
                const parser = new EventStreamParser();
                const out = [];
                for (const piece of pieces) {
                    out.push(...parser.push(decoder.decode(piece, { stream: true })));
                }
                out.push(...parser.push(decoder.decode()));
                return JSON.stringify(shape(out));
            };
            const whole = run([bytes]);
            const badSplits = [];
            for (let i = 0; i <= bytes.length; i++) {
                if (run([bytes.subarray(0, i), bytes.subarray(i)]) !== whole) badSplits.push(i);
            }
            const bytewise = run(Array.from(bytes, (_, i) => bytes.subarray(i, i + 1)));
            // The reader on a real Response body, one byte per read.
            let i = 0;
            const body = new ReadableStream({
                pull(controller) {
                    if (i < bytes.length) controller.enqueue(bytes.slice(i, ++i));
                    else controller.close();
                },
            });
            const streamed = [];
            for await (const event of readEventStream(new Response(body))) streamed.push(event);
            return {
                whole: JSON.parse(whole),
                badSplits,
                bytewise: bytewise === whole,
                streamed: JSON.stringify(shape(streamed)) === whole,
            };
        }""",
        base64.b64encode(body).decode(),
    )
    return result


@pytest.mark.parametrize("name", ["tricky", "hello-fixture"])
def test_sse_js_matches_the_python_decoder_at_every_split(
    demo: DemoServer, browser: Browser, name: str
) -> None:
    body = TRICKY if name == "tricky" else fixture("demo-chat-hello").body()[:4000]
    expected = [[e.event, e.data, e.id] for e in Decoder().feed(body) if isinstance(e, Event)]

    def scenario(page: Any) -> dict[str, Any]:
        page.goto(demo.url)
        return js_parse(page, body)

    result = browser.play(scenario)
    assert result["whole"] == expected
    assert result["badSplits"] == []
    assert result["bytewise"] and result["streamed"]
    if name == "tricky":
        # Pings and comments dispatch nothing, a bare "data" line an empty event; the
        # unterminated tail is discarded (9.2.6).
        assert [(event, data) for event, data, _ in expected][2:4] == [
            ("message", "not json {"),
            ("message", ""),
        ]
        assert len(expected) == 5
