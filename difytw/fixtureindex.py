"""Which fixture answers an incoming request: the fixture index and its match rules.

This module owns matching (docs/fixture-format.md, "Matching"): method and path equal, query
parameters equal as multisets, JSON body keys equal, minus the volatile keys a real client changes
on every call; a fixture whose ``end`` says incomplete never matches.  Exact matches beat keyword
matches, which beat a route's fallback.  When nothing matches, :class:`NoMatch` says which
fixtures came nearest and what differed, and the index lists the problems of a fixture set
(duplicate ids, ambiguous fixtures) up front, each at the file and line of the fixture it is
about, for ``twist difyreplay`` and ``difytw-fixture lint`` to report.  Pure: no Twisted.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from difytw.fixture import Fixture, Request, load

_ABSENT = object()


@dataclass(frozen=True)
class Incoming:
    """A request as it arrived: raw query string, parsed JSON body (``None`` if not JSON)."""

    method: str
    path: str
    query: str = ""
    json: Any = None
    body: bytes = b""

    @classmethod
    def from_request(cls, request: Request) -> Incoming:
        """The request a fixture recorded, as if it arrived again."""
        json = request.json if request.has_json else None
        return cls(request.method, request.path, request.query, json, request.body or b"")


@dataclass(frozen=True)
class IndexProblem:
    """A problem of a fixture set, at the fixture (file, line of its record) it is about."""

    path: str
    line: int
    problem: str
    # Duplicate ids: the journal, the 404's nearest list and the logs could not say
    # which file answered, so the replay server refuses to start.
    fatal: bool = False

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.problem}"


class NoMatch(Exception):
    """No fixture answers a request; ``nearest`` holds (fixture id, what differed), best first."""

    def __init__(self, message: str, nearest: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.message = message
        self.nearest = nearest

    def __str__(self) -> str:
        near = "; ".join(f"{fixture_id}: {why}" for fixture_id, why in self.nearest)
        return f"{self.message} (nearest: {near})" if near else self.message


class FixtureIndex:
    """An ordered set of fixtures that answers :meth:`match` queries."""

    def __init__(self, fixtures: Iterable[Fixture]) -> None:
        self.loaded: tuple[Fixture, ...] = tuple(fixtures)
        # A fixture whose end says incomplete (a recording cut short: the client left, the
        # upstream reset) never answers: matched, its truncated stream would become the
        # permanent answer to that request, and a recording replay would never record it
        # again.  It stays on disk, for review.
        self.incomplete = tuple(f for f in self.loaded if f.end.incomplete)
        self.fixtures = tuple(f for f in self.loaded if not f.end.incomplete)
        self._routes: dict[tuple[str, str], list[Fixture]] = {}
        for fixture in self.fixtures:
            route = (fixture.request.method, fixture.request.path)
            self._routes.setdefault(route, []).append(fixture)
        self.findings: tuple[IndexProblem, ...] = tuple(self._problems())
        self.problems: tuple[str, ...] = tuple(str(problem) for problem in self.findings)

    @classmethod
    def from_directory(cls, path: str | os.PathLike[str]) -> FixtureIndex:
        """Every ``*.jsonl`` in ``path``, in file-name order; FixtureError on a bad file."""
        directory = Path(path)
        if not directory.is_dir():
            # A mistyped --fixtures would otherwise serve an empty index and 404 everything.
            raise NotADirectoryError(f"not a fixture directory: {os.fspath(path)}")
        return cls(load(file) for file in sorted(directory.glob("*.jsonl")))

    @classmethod
    def from_fixtures(cls, fixtures: Iterable[Fixture]) -> FixtureIndex:
        return cls(fixtures)

    def match(self, incoming: Incoming) -> Fixture:
        """The fixture that answers ``incoming``; the first one in index order on a tie."""
        route = self._routes.get((incoming.method, incoming.path), [])
        for fixture in route:
            if not differences(fixture, incoming):
                return fixture
        for fixture in route:
            if keyword_hit(fixture, incoming):
                return fixture
        for fixture in route:
            if fixture.request.match.fallback:
                return fixture
        raise NoMatch(
            f"No fixture matches {incoming.method} {incoming.path}", self.nearest(incoming)
        )

    def expects_json(self, method: str, path: str) -> bool:
        """Whether a fixture recorded a JSON body for this route: then it is one of Dify's
        JSON routes, which refuse any other body (dify-contract.md 1.1)."""
        return any(f.request.has_json for f in self._routes.get((method, path), []))

    def nearest(self, incoming: Incoming, limit: int = 3) -> list[tuple[str, str]]:
        """Up to ``limit`` fixtures that differ least from ``incoming``, with the differences."""
        scored = []
        for position, fixture in enumerate(self.fixtures):
            diffs = differences(fixture, incoming)
            # Another method, then another path, is further away than any body difference.
            head = diffs[0] if diffs else ""
            distance = 2 if head.startswith("path ") else 1 if head.startswith("method ") else 0
            scored.append(((distance, len(diffs), position), fixture.id, diffs))
        scored.sort(key=lambda item: item[0])
        return [(fixture_id, "; ".join(diffs[:3])) for _, fixture_id, diffs in scored[:limit]]

    def _problems(self) -> Iterable[IndexProblem]:
        first: dict[str, Fixture] = {}
        for fixture in self.loaded:
            if fixture.id in first:
                problem = (
                    f"duplicate fixture id {fixture.id!r}: "
                    f"{first[fixture.id].source} and {fixture.source}"
                )
                yield IndexProblem(fixture.source, fixture.line, problem, fatal=True)
            first.setdefault(fixture.id, fixture)
        for (method, path), route in self._routes.items():
            fallbacks = [f for f in route if f.request.match.fallback]
            if len(fallbacks) > 1:
                # At the second one: the first in file-name order answers, the rest never do.
                ids = [f.id for f in fallbacks]
                problem = f"{len(ids)} fallback fixtures for {method} {path}: {ids}"
                yield IndexProblem(fallbacks[1].source, fallbacks[1].line, problem)
            for i, a in enumerate(route):
                for b in route[i + 1 :]:
                    for owner, other in ((a, b), (b, a)):
                        if not differences(other, Incoming.from_request(owner.request)):
                            problem = (
                                f"ambiguous: {other.id!r} also matches the request recorded "
                                f"in {owner.id!r} ({owner.source}, {method} {path})"
                            )
                            yield IndexProblem(other.source, other.line, problem)
                            break


def differences(fixture: Fixture, incoming: Incoming) -> list[str]:
    """What keeps ``fixture`` from matching ``incoming`` exactly (empty list: it matches)."""
    request = fixture.request
    if incoming.path != request.path:
        return [f"path {incoming.path!r} != {request.path!r}"]
    if incoming.method != request.method:
        return [f"method {incoming.method!r} != {request.method!r}"]
    ignore = set(request.match.ignore)
    diffs = _query_differences(_params(incoming.query, ignore), _params(request.query, ignore))
    keys = request.match.keys
    if keys == ():
        return diffs  # "keys": [] accepts any body
    if request.has_json:
        diffs += _json_differences(request.json, incoming.json, keys, ignore)
    elif request.body is not None and incoming.body != request.body:
        diffs.append(f"body bytes differ ({len(incoming.body)} != {len(request.body)} bytes)")
    return diffs


def keyword_hit(fixture: Fixture, incoming: Incoming) -> bool:
    """A demo fixture's loose match: same route, a keyword occurs in ``query`` or ``inputs``."""
    request = fixture.request
    if (incoming.method, incoming.path) != (request.method, request.path):
        return False
    texts: list[str] = []
    if isinstance(incoming.json, dict):
        query, inputs = incoming.json.get("query"), incoming.json.get("inputs")
        texts += [query] if isinstance(query, str) else []
        if isinstance(inputs, dict):
            texts += [value for value in inputs.values() if isinstance(value, str)]
    haystack = "\n".join(texts).casefold()
    return any(keyword.casefold() in haystack for keyword in request.match.keywords if keyword)


def json_equal(a: Any, b: Any) -> bool:
    """JSON value equality: unlike ``==``, ``true`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return (
            isinstance(b, dict) and a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
        )
    if isinstance(a, list):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b  # JSON has one number type: 1 and 1.0 are the same value
    return type(a) is type(b) and bool(a == b)


def _params(query: str, ignore: set[str]) -> Counter[tuple[str, str]]:
    return Counter(
        pair for pair in parse_qsl(query, keep_blank_values=True) if pair[0] not in ignore
    )


def _query_differences(got: Counter[tuple[str, str]], want: Counter[tuple[str, str]]) -> list[str]:
    if got == want:
        return []
    names = sorted({name for name, _ in (got - want) + (want - got)})
    return [f"query {name!r}: {_values(got, name)} != {_values(want, name)}" for name in names]


def _values(params: Counter[tuple[str, str]], name: str) -> str:
    values = sorted(value for key, value in params.elements() if key == name)
    return "(absent)" if not values else repr(values[0]) if len(values) == 1 else repr(values)


def _json_differences(
    recorded: Any, got: Any, keys: tuple[str, ...] | None, ignore: set[str]
) -> list[str]:
    if got is None:
        return ["request has no JSON body"]
    if not isinstance(recorded, dict) or (keys is None and not isinstance(got, dict)):
        return [] if json_equal(got, recorded) else ["JSON body differs"]
    if not isinstance(got, dict):
        return [f"JSON body is {type(got).__name__}, not an object"]
    names = keys if keys is not None else [k for k in recorded if k not in ignore]
    diffs = []
    for name in names:
        mine, theirs = got.get(name, _ABSENT), recorded.get(name, _ABSENT)
        if not json_equal(mine, theirs):
            diffs.append(f"json key {name!r}: {_show(mine)} != {_show(theirs)}")
    return diffs


def _show(value: Any) -> str:
    text = "(absent)" if value is _ABSENT else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
