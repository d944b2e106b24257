"""``difytw-fixture`` end to end through ``main(argv)``: every command, good and broken input."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from difytw.fixture import Fixture, load, loads
from difytw.fixturecli import main
from difytw.fixturewrite import dumps

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
FILES = sorted(FIXTURES.glob("*.jsonl"))
CHAT = '"conversation_id":"c-1","message_id":"m-1","created_at":1,"task_id":"t-1"'
TRANSCRIPT = (
    'data: {"event":"message",' + CHAT + ',"id":"m-1","answer":"Hello there"}\n\n'
    "event: ping\n\n"
    ": keep-alive\n\n"
    'data: {"event":"message",' + CHAT + ',"id":"m-1","answer":", 世界"}\n\n'
    'data: {"event":"message_end",' + CHAT + ',"id":"m-1","metadata":{}}\n\n'
).encode()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def one_line_error(err: str, *parts: str) -> None:
    lines = err.strip().split("\n")
    assert len(lines) == 1, err
    for part in parts:
        assert part in lines[0], err


# -- usage --------------------------------------------------------------------------------------


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--help")[0] == 0
    assert (
        run(
            capsys,
        )[0]
        == 2
    )
    assert run(capsys, "frobnicate")[0] == 2
    assert run(capsys, "retime", "x.jsonl", "--speed", "0")[0] == 2
    assert run(capsys, "retime", "x.jsonl", "--in-place", "-o", "y")[0] == 2
    assert run(capsys, "import-sse", "x", "--interval", "5", "--tokens-per-second", "5")[0] == 2
    assert run(capsys, "import-sse", "x", "--json", "{nope")[0] == 2
    assert run(capsys, "import-sse", "x", "--id", "no spaces")[0] == 2
    assert run(capsys, "import-har", "x.har")[0] == 2  # -o DIR is required


# -- show ---------------------------------------------------------------------------------------


def test_show_marks_pings_and_comments_and_joins_the_answer(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "t.sse").write_bytes(TRANSCRIPT)
    out_file = tmp_path / "t.jsonl"
    assert run(capsys, "import-sse", str(tmp_path / "t.sse"), "-o", str(out_file))[0] == 0
    status, out, _ = run(capsys, "show", str(out_file))
    assert status == 0
    rows = out.split("\n")
    assert re.search(r"^\s+0\.0\s+\+0\.0\s+message\s+'Hello there'$", out, re.M)
    assert any("[ping]" in row and "+50.0" in row for row in rows)
    assert any("[comment]" in row and "' keep-alive'" in row for row in rows)
    assert "answer: 'Hello there, 世界'" in rows
    assert "ended: message_end, then eof" in rows


def test_show_a_committed_stream_and_a_json_answer(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "show", str(FIXTURES / "chat-error-midstream.jsonl"))
    assert status == 0
    assert "answer: 'Tokens per minute run dry —'" in out
    assert "ended: error completion_request_error (400)" in out
    status, out, _ = run(capsys, "show", str(FIXTURES / "parameters-get.jsonl"))
    assert status == 0 and "GET /v1/parameters?user=demo-user-11" in out
    assert '"opening_statement"' in out and "ended: HTTP 200 application/json" in out


def test_show_a_broken_fixture(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"type":"fixture"}\n', encoding="utf-8")
    status, out, err = run(capsys, "show", str(path))
    assert status == 2 and out == ""
    one_line_error(err, f"{path}:1:", "missing field 'format'")
    status, _, err = run(capsys, "show", str(tmp_path / "missing.jsonl"))
    assert status == 2
    one_line_error(err, "missing.jsonl", "No such file")


# -- lint ---------------------------------------------------------------------------------------


def test_lint_passes_over_the_committed_fixtures(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "lint", str(FIXTURES))
    assert (status, out) == (0, "")
    assert f"{len(FILES)} files, 0 problems" in err


def test_lint_prints_one_file_line_problem_per_finding(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    fixture = load(FIXTURES / "chat-slow.jsonl")
    text = dumps(fixture).replace("demo-user-5", "app-" + "K" * 24)
    (tmp_path / "chat-slow.jsonl").write_text(text, encoding="utf-8")
    cut = dumps(fixture).split("\n")
    (tmp_path / "cut.jsonl").write_text("\n".join(cut[:-2]), encoding="utf-8")
    status, out, _ = run(capsys, "lint", str(tmp_path), str(FIXTURES / "chat-slow.jsonl"))
    assert status == 1
    lines = out.strip().split("\n")
    assert lines == [
        f"{tmp_path / 'chat-slow.jsonl'}:2: secret: a Dify app key (app-KKKK...) must be scrubbed",
        f"{tmp_path / 'cut.jsonl'}:{len(cut) - 2}: missing 'end' record (file ends here)",
    ]


def test_lint_reports_duplicate_ids_and_ambiguity_per_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    hello = load(FIXTURES / "chat-hello.jsonl")
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "chat-hello.jsonl").write_text(dumps(hello), encoding="utf-8")
    (folder / "twin.jsonl").write_text(dumps(replace(hello, id="twin")), encoding="utf-8")
    (folder / "zz.jsonl").write_text(dumps(hello), encoding="utf-8")  # the id again
    first, twin, again = (
        str(folder / name) for name in ("chat-hello.jsonl", "twin.jsonl", "zz.jsonl")
    )
    status, out, _ = run(capsys, "lint", str(folder))
    assert status == 1
    lines = out.strip().split("\n")
    assert f"{again}:1: duplicate fixture id 'chat-hello': {first} and {again}" in lines
    assert (
        f"{twin}:1: ambiguous: 'twin' also matches the request recorded in 'chat-hello' "
        f"({first}, POST /v1/chat-messages)"
    ) in lines
    assert all(
        re.match(rf"({re.escape(first)}|{re.escape(twin)}|{re.escape(again)}):\d+: ", line)
        for line in lines
    )
    # The same folder named file by file is the same one index.
    assert run(capsys, "lint", again, first, twin)[1] == out
    # Another folder is another replay server: the committed chat-hello is no duplicate.
    status, out, _ = run(capsys, "lint", first, str(FIXTURES / "chat-hello.jsonl"))
    assert (status, out) == (0, "")


def test_lint_a_deeply_nested_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    lines = (FIXTURES / "chat-hello.jsonl").read_text().splitlines()
    lines[1] = '{"type":"request","json":' + "[" * 100_000 + "]" * 100_000 + "}"
    (tmp_path / "chat-hello.jsonl").write_text("\n".join(lines) + "\n")
    status, out, _ = run(capsys, "lint", str(tmp_path))
    assert status == 1
    assert out == f"{tmp_path / 'chat-hello.jsonl'}:2: JSON nested deeper than 100 levels\n"


def test_lint_bad_paths(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    status, _, err = run(capsys, "lint", str(tmp_path))
    assert status == 2
    one_line_error(err, "no *.jsonl file")
    status, _, err = run(capsys, "lint", str(tmp_path / "nope"))
    assert status == 2
    one_line_error(err, "no such file or directory")


# -- import-sse ---------------------------------------------------------------------------------


def test_import_sse_one_read_per_frame_at_an_interval(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "curl output.sse"
    source.write_bytes(TRANSCRIPT)
    argv = ["import-sse", str(source), "--interval", "40", "--first-byte", "300"]
    status, out, err = run(capsys, *argv, "--query-text", "Say hello")
    assert status == 0 and err == ""
    fixture = loads(out)
    assert fixture.id == "curl-output"
    assert fixture.body() == TRANSCRIPT
    assert [c.t for c in fixture.chunks] == [300, 340, 380, 420, 460]
    assert fixture.chunks[1].data == b"event: ping\n\n"
    assert fixture.response.t == 300 and fixture.response.is_stream
    assert fixture.request.json == {
        "inputs": {},
        "query": "Say hello",
        "response_mode": "streaming",
        "conversation_id": "",
        "user": "demo-user",
    }
    assert not fixture.end.incomplete and fixture.end.t == 460


def test_import_sse_by_token_rate_with_a_given_body(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "t.sse"
    source.write_bytes(TRANSCRIPT)
    out_file = tmp_path / "out.jsonl"
    body = '{"inputs":{"topic":"rain"},"response_mode":"streaming","user":"u"}'
    argv = ["import-sse", str(source), "--tokens-per-second", "20", "--json", body]
    status, _, _ = run(
        capsys, *argv, "--path", "/v1/workflows/run?x=1", "--id", "wf", "-o", str(out_file)
    )
    assert status == 0
    fixture = load(out_file)
    assert fixture.id == "wf" and fixture.request.path == "/v1/workflows/run"
    assert fixture.request.query == "x=1" and fixture.request.json["inputs"] == {"topic": "rain"}
    # ping, comment and message_end count one token each; ", 世界" is three ("," "世" "界").
    assert [c.t for c in fixture.chunks] == [0, 50, 100, 250, 300]
    assert "20 tokens/s" in fixture.provenance


def test_import_sse_default_bodies_per_route(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "t.sse"
    source.write_bytes(TRANSCRIPT)
    status, out, _ = run(capsys, "import-sse", str(source), "--path", "/v1/completion-messages")
    assert status == 0
    assert loads(out).request.json == {
        "inputs": {},
        "response_mode": "streaming",
        "user": "demo-user",
    }
    status, _, err = run(
        capsys, "import-sse", str(source), "--path", "/v1/workflows/run", "--query-text", "x"
    )
    assert status == 2
    one_line_error(err, "workflow takes inputs")


def test_import_sse_warns_about_what_lint_would_refuse(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    source = tmp_path / "cut.sse"
    source.write_bytes(TRANSCRIPT[:-30])
    status, out, err = run(capsys, "import-sse", str(source))
    assert status == 0
    fixture = loads(out)
    assert fixture.end.incomplete and fixture.body() == TRANSCRIPT[:-30]
    assert err == ""  # a cut recording says so, so lint accepts it
    source.write_bytes(TRANSCRIPT.replace(b"Hello there", b"app-" + b"s" * 30))
    status, _, err = run(capsys, "import-sse", str(source))
    assert status == 0 and "warning: <stdout>:4: secret: a Dify app key" in err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "the file is empty"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + TRANSCRIPT,
            "HTTP status line",
        ),
        (b"data: \xff\xfe\n\n", "not UTF-8 at byte 6"),
        (b'{"code": "invalid_param", "message": "x", "status": 400}\n', "no SSE event"),
        (b"<html><body>502 Bad Gateway</body></html>\n", "no SSE event"),
    ],
)
def test_import_sse_refuses_what_is_not_a_transcript(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes, expected: str
) -> None:
    source = tmp_path / "in.sse"
    source.write_bytes(content)
    status, out, err = run(capsys, "import-sse", str(source))
    assert (status, out) == (2, "")
    one_line_error(err, "import-sse", str(source), expected)


# -- import-har / export-har --------------------------------------------------------------------


def test_export_then_import_gives_back_every_committed_fixture(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    har = tmp_path / "all.har"
    assert run(capsys, "export-har", str(FIXTURES), "-o", str(har))[0] == 0
    assert json.loads(har.read_text(encoding="utf-8"))["log"]["version"] == "1.2"
    status, _, err = run(capsys, "import-har", str(har), "-o", str(tmp_path / "out"))
    assert status == 0 and "warning" not in err
    for path in FILES:
        back = load(tmp_path / "out" / path.name)
        original = load(path)
        assert back == original
        assert [(c.t, c.data) for c in back.chunks] == [(c.t, c.data) for c in original.chunks]
    # Never overwrite a fixture by accident.
    status, _, err = run(capsys, "import-har", str(har), "-o", str(tmp_path / "out"))
    assert status == 2
    one_line_error(err, "already exists", "--force")
    assert run(capsys, "import-har", str(har), "-o", str(tmp_path / "out"), "--force")[0] == 0
    status, _, err = run(capsys, "import-har", str(har), "-o", str(har))
    assert status == 2
    one_line_error(err, str(har))


def test_export_har_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(
        capsys, "export-har", str(FIXTURES / "chat-slow.jsonl"), "--base-url", "https://x.test"
    )
    assert status == 0
    (entry,) = json.loads(out)["log"]["entries"]
    assert entry["request"]["url"] == "https://x.test/v1/chat-messages"


def test_import_har_from_a_browser(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    original = load(FIXTURES / "chat-slow.jsonl")
    entry = {
        "startedDateTime": "2026-11-25T17:04:49.392Z",
        "time": 5600,
        "request": {
            "method": "POST",
            "url": "https://api.dify.ai/v1/chat-messages",
            "headers": [
                {"name": "Authorization", "value": "Bearer app-" + "r" * 24},
                {"name": "Content-Type", "value": "application/json"},
            ],
            "postData": {"mimeType": "application/json", "text": json.dumps(original.request.json)},
        },
        "response": {
            "status": 200,
            "headers": [{"name": "content-type", "value": "text/event-stream; charset=utf-8"}],
            "content": {"mimeType": "text/event-stream", "text": original.body().decode()},
        },
        "timings": {"send": 0.5, "wait": 499.5, "receive": 5000},
    }
    har = tmp_path / "Recording 1.har"
    har.write_text(json.dumps({"log": {"version": "1.2", "entries": [entry]}}), encoding="utf-8")
    status, _, err = run(capsys, "import-har", str(har), "-o", str(tmp_path / "out"))
    assert status == 0
    written = tmp_path / "out" / "Recording-1-1.jsonl"
    assert f"wrote {written}" in err and "warning" not in err
    fixture = load(written)
    assert fixture.body() == original.body() and fixture.request.json == original.request.json
    assert "Bearer" not in written.read_text(encoding="utf-8")
    assert [c.t for c in fixture.chunks] == [500, 1500, 2500, 3500, 4500, 5500]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("not json", "not JSON, so not a HAR file"),
        ('{"entries": []}', "no 'log' object at the top: not a HAR file"),
        (
            '{"log": {"entries": [{"response": 1}]}}',
            "entry 1: response is missing or not an object",
        ),
        ('{"log": {"entries": []}}', "no text/event-stream entry with a body"),
    ],
)
def test_import_har_refuses_what_is_not_a_har(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str, expected: str
) -> None:
    har = tmp_path / "in.har"
    har.write_text(content, encoding="utf-8")
    status, _, err = run(capsys, "import-har", str(har), "-o", str(tmp_path / "out"))
    assert status == 2
    one_line_error(err, str(har), expected)
    assert not (tmp_path / "out").exists()


# -- retime -------------------------------------------------------------------------------------


def test_retime_to_a_file_and_in_place(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    original = load(FIXTURES / "agent-chat-tools.jsonl")
    out_file = tmp_path / "fast.jsonl"
    argv = ["retime", str(FIXTURES / "agent-chat-tools.jsonl"), "--max-gap", "100", "--speed", "2"]
    assert run(capsys, *argv, "-o", str(out_file))[0] == 0
    fast = load(out_file)
    assert_same_reads(fast, original)
    times = [fast.response.t, *(c.t for c in fast.chunks), fast.end.t]
    assert max(b - a for a, b in itertools.pairwise(times)) <= 100
    assert fast.end.t < original.end.t / 10  # the 10 s ping gaps went
    copy = tmp_path / "agent-chat-tools.jsonl"
    copy.write_text(dumps(original), encoding="utf-8")
    status, out, _ = run(capsys, "retime", str(copy), "--speed", "4", "--in-place")
    assert (status, out) == (0, "")
    quick = load(copy)
    assert_same_reads(quick, original)
    assert quick.end.t == pytest.approx(original.end.t / 4, abs=0.001)


def test_retime_a_broken_fixture(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    text = dumps(load(FIXTURES / "chat-slow.jsonl")).replace('"t":1500', '"t":15')
    path.write_text(text, encoding="utf-8")
    status, _, err = run(capsys, "retime", str(path), "--in-place")
    assert status == 2
    one_line_error(err, f"{path}:5:", "before the previous record")
    assert path.read_text(encoding="utf-8") == text


def assert_same_reads(a: Fixture, b: Fixture) -> None:
    assert [c.data for c in a.chunks] == [c.data for c in b.chunks]
    assert (a.end.bytes, a.end.sha256) == (b.end.bytes, b.end.sha256)
    assert [c.t for c in a.chunks] == sorted(c.t for c in a.chunks)


def test_show_follows_replacements_and_workflow_text(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    end = TRANSCRIPT.split(b"\n\n")[-2] + b"\n\n"
    replace = b'data: {"event":"message_replace",' + CHAT.encode() + b',"answer":"[moderated]"}\n\n'
    (tmp_path / "r.sse").write_bytes(TRANSCRIPT[: -len(end)] + replace + end)
    argv = ["import-sse", str(tmp_path / "r.sse"), "-o", str(tmp_path / "r.jsonl")]
    assert run(capsys, *argv)[0] == 0
    status, out, _ = run(capsys, "show", str(tmp_path / "r.jsonl"))
    assert status == 0 and "replace '[moderated]'" in out
    assert "answer: '[moderated]'" in out
    status, out, _ = run(capsys, "show", str(FIXTURES / "workflow-run.jsonl"))
    assert status == 0 and "ended: workflow_finished, then eof" in out
    assert re.search(r"^answer: '.{10,}'$", out, re.M)
