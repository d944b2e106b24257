"""The checks behind ``difytw-fixture lint``: one ``file:line: problem`` per finding (pure).

This module owns what makes a fixture fit to commit, beyond the format rules ``fixture.loads``
enforces (record order, types, the end record's byte count and sha256): no credential anywhere
in the file, the response headers docs/fixture-format.md section 3 asks for, and for streams the
SSE grammar (WHATWG 9.2.6) and the Dify contract (dify-contract.md 2.1-2.6, via
:mod:`difytw.streamlint`); across the files of a folder, what the replay server's index reports
(duplicate ids, ambiguous fixtures).  A finding names the line of the record it is about.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from difytw.fixture import Fixture, FixtureError, load, loads, read_text
from difytw.fixtureindex import FixtureIndex
from difytw.scrub import DEFAULT_RULES
from difytw.streamlint import Lines, stream_problems

# fixture-format.md 3: the serving side sets these; a recorded value would be stale.
CONNECTION_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})
# Credentials are never recorded (fixture.SECRET_HEADERS covers the request side).
SECRET_RESPONSE_HEADERS = frozenset({"set-cookie"})
_SECRET_NAMES = {
    "dify-app-key": "a Dify app key",
    "dify-dataset-key": "a Dify dataset key",
    "bearer-token": "a Bearer token",
}


@dataclass(frozen=True, order=True)
class Finding:
    path: str
    line: int
    problem: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.problem}"


def lint_file(path: str | os.PathLike[str]) -> list[Finding]:
    name = os.fspath(path)
    try:
        text = read_text(name)
    except FixtureError as e:
        return [Finding(name, e.line, e.problem)]
    return lint_text(text, name, Path(name).stem)


def lint_text(text: str, source: str = "<string>", stem: str | None = None) -> list[Finding]:
    """Every problem of one fixture file, sorted by line; empty when it is fit to commit."""
    findings = set(_secrets_in_lines(text, source))
    try:
        fixture = loads(text, source)
    except FixtureError as e:
        findings.add(Finding(source, e.line, e.problem))
        return sorted(findings)
    except ValueError as e:  # fixture.loads lets a non-ASCII b64 string through unlabelled
        findings.add(Finding(source, 1, f"the fixture does not load: {e}"))
        return sorted(findings)
    lines = Lines.of(text)
    if stem is not None and fixture.id != stem:
        findings.add(
            Finding(source, lines.head, f"id {fixture.id!r} is not the file name {stem!r}")
        )
    findings.update(_secrets_in_body(fixture, source, lines))
    findings.update(_header_problems(fixture, source, lines))
    problems = (
        stream_problems(fixture, lines) if fixture.response.is_stream else _json(fixture, lines)
    )
    findings.update(Finding(source, line, problem) for line, problem in problems)
    return sorted(findings)


def index_findings(paths: Iterable[str | os.PathLike[str]]) -> list[Finding]:
    """What ``twist difyreplay`` would report for these files: duplicate ids, ambiguous
    fixtures, extra fallbacks.  A replay server serves one folder, so each folder is one
    index; files that do not load are left to :func:`lint_file`."""
    folders: dict[Path, dict[Path, Fixture]] = {}
    for given in paths:
        path = Path(given)
        key = path.resolve()
        try:
            fixture = load(path)
        except (FixtureError, ValueError, OSError):
            continue
        folders.setdefault(key.parent, {}).setdefault(key, fixture)
    findings = []
    for files in folders.values():
        # File-name order, as FixtureIndex.from_directory indexes a folder.
        index = FixtureIndex(files[key] for key in sorted(files))
        findings += [Finding(p.path, p.line, p.problem) for p in index.findings]
    return findings


def _secrets_in_lines(text: str, source: str) -> Iterator[Finding]:
    """Raw lines, and the strings JSON decodes them to (an escape could hide a key)."""
    for number, line in enumerate(text.split("\n"), 1):
        texts = [line]
        with contextlib.suppress(ValueError, RecursionError):  # loads() reports these lines
            texts.extend(_strings(json.loads(line)))
        for value in texts:
            for rule, secret in _secrets(value.encode("utf-8", "surrogatepass")):
                yield Finding(source, number, _secret_problem(rule, secret))


def _secrets_in_body(fixture: Fixture, source: str, lines: Lines) -> Iterator[Finding]:
    """The joined body (a key can straddle two reads, or hide in a b64 chunk)."""
    starts = []
    offset = 0
    for chunk in fixture.chunks:
        starts.append(offset)
        offset += len(chunk.data)
    for rule, secret, at in _secrets_at(fixture.body()):
        index = max(i for i, start in enumerate(starts) if start <= at)
        yield Finding(source, lines.chunk(index), _secret_problem(rule, secret))
    for rule, secret, _ in _secrets_at(fixture.request.body or b""):
        yield Finding(source, lines.request, _secret_problem(rule, secret))


def _secrets(data: bytes) -> Iterator[tuple[str, bytes]]:
    for rule, secret, _ in _secrets_at(data):
        yield rule, secret


def _secrets_at(data: bytes) -> Iterator[tuple[str, bytes, int]]:
    for rule in DEFAULT_RULES:
        for match in rule.pattern.finditer(data):
            # The recorder's own output (``Bearer scrubbed``) is what a clean fixture holds.
            if match.group() != rule.placeholder:
                yield rule.name, match.group(), match.start()


def _secret_problem(rule: str, secret: bytes) -> str:
    # Print only a prefix: the lint output itself ends up in CI logs.
    shown = secret[:8].decode("utf-8", "replace")
    return f"secret: {_SECRET_NAMES.get(rule, rule)} ({shown}...) must be scrubbed"


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _header_problems(fixture: Fixture, source: str, lines: Lines) -> Iterator[Finding]:
    for name, _ in fixture.response.headers:
        lower = name.lower()
        if lower in SECRET_RESPONSE_HEADERS:
            problem = f"response header {name!r} must never be recorded (a session credential)"
            yield Finding(source, lines.response, problem)
        elif lower in CONNECTION_HEADERS:
            problem = f"response header {name!r} is set by the serving side (fixture-format.md 3)"
            yield Finding(source, lines.response, problem)


def _json(fixture: Fixture, lines: Lines) -> list[tuple[int, str]]:
    """A JSON response parses; an error one has Dify's ``{code, message, status}`` (contract 3)."""
    response = fixture.response
    if "json" not in response.content_type:
        return []
    line = lines.chunk(0) if fixture.chunks else lines.end
    try:
        value = json.loads(fixture.body())
    except ValueError as e:
        return [(line, f"Content-Type says JSON, but the body is not JSON ({e})")]
    if response.status < 400 or not isinstance(value, dict):
        return []
    problems = [
        (line, f"error body has no {key!r} (Dify errors are {{code, message, status}}, 3)")
        for key in ("code", "message")
        if key not in value
    ]
    if "status" in value and value["status"] != response.status:
        problems.append(
            (line, f"error body status {value['status']!r} is not the HTTP {response.status}")
        )
    return problems
