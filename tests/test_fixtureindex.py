"""Fixture matching in memory: exact, ignored keys, keywords, fallback, query multisets, bodies."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from difytw.fixture import Fixture, FixtureError, MatchRules, Request, Response, end_for
from difytw.fixtureindex import FixtureIndex, Incoming, NoMatch, json_equal
from difytw.fixturewrite import dump
from difytw.fixturewrite import dumps as dump_text

CHAT = "/v1/chat-messages"


def fixture(fixture_id: str, request: Request) -> Fixture:
    return Fixture(
        fixture_id,
        "test",
        "",
        (),
        request,
        Response(1, 200, (("Content-Type", "application/json"),)),
        (),
        end_for(b"", 2),
        source=f"{fixture_id}.jsonl",
    )


def chat(fixture_id: str, query: str, match: MatchRules | None = None, **extra: Any) -> Fixture:
    value = {"inputs": {}, "query": query, "response_mode": "streaming", "user": "rec", **extra}
    return fixture(fixture_id, Request.with_json("POST", CHAT, value, match=match or MatchRules()))


def asking(query: str, **extra: Any) -> Incoming:
    value = {"inputs": {}, "query": query, "response_mode": "blocking", "user": "live", **extra}
    return Incoming("POST", CHAT, "", value, json.dumps(value).encode())


def get(path: str, query: str) -> Fixture:
    return fixture(path.strip("/").replace("/", "-") + "-" + query, Request("GET", path, query))


# -- exact matching ---------------------------------------------------------------------------


def test_json_keys_must_be_equal_but_volatile_keys_are_ignored() -> None:
    index = FixtureIndex([chat("hello", "hello"), chat("bye", "bye")])
    assert index.match(asking("hello")).id == "hello"
    # user, conversation_id, response_mode, auto_generate_name, trace_id, files: all ignored.
    volatile = {
        "conversation_id": "c",
        "auto_generate_name": False,
        "trace_id": "t",
        "files": [{"type": "image"}],
    }
    assert index.match(asking("bye", **volatile)).id == "bye"
    # Keys the fixture does not have do not matter either.
    assert index.match(asking("bye", workflow_id="w")).id == "bye"
    with pytest.raises(NoMatch):
        index.match(asking("hello", inputs={"lang": "fr"}))


def test_a_recorded_volatile_key_is_still_ignored() -> None:
    index = FixtureIndex([chat("c", "q", conversation_id="recorded")])
    assert index.match(asking("q", conversation_id="other")).id == "c"


def test_keys_rule_limits_comparison() -> None:
    index = FixtureIndex([chat("only-query", "q", MatchRules(keys=("query",)))])
    assert index.match(asking("q", inputs={"anything": 1})).id == "only-query"
    with pytest.raises(NoMatch):
        index.match(asking("other"))


def test_keys_rule_can_name_a_volatile_key_and_an_absent_one() -> None:
    rules = MatchRules(keys=("user", "workflow_id"))
    index = FixtureIndex([chat("u", "q", rules)])
    incoming = asking("ignored text")
    live = dict(incoming.json, user="rec")
    assert index.match(Incoming("POST", CHAT, "", live, b"")).id == "u"
    with pytest.raises(NoMatch):
        index.match(Incoming("POST", CHAT, "", dict(live, workflow_id="w"), b""))
    with pytest.raises(NoMatch):
        index.match(incoming)


def test_ignore_rule_replaces_the_default() -> None:
    index = FixtureIndex([chat("strict", "q", MatchRules(ignore=("user",)), conversation_id="")])
    assert index.match(asking("q", conversation_id="", response_mode="streaming")).id == "strict"
    with pytest.raises(NoMatch):
        index.match(asking("q", conversation_id=""))  # response_mode now counts


def test_method_and_path_compare_exactly() -> None:
    index = FixtureIndex([chat("c", "q")])
    good = asking("q")
    for method, path in (("PUT", CHAT), ("post", CHAT), ("POST", CHAT + "/"), ("POST", "/chat")):
        with pytest.raises(NoMatch):
            index.match(Incoming(method, path, "", good.json, good.body))


def test_json_values_compare_as_json() -> None:
    assert json_equal({"a": [1, 2.0]}, {"a": [1.0, 2]})
    assert not json_equal(True, 1)
    assert not json_equal([0], [False])
    assert not json_equal({"a": None}, {})
    assert not json_equal([1], [1, 1])
    assert not json_equal("1", 1)
    index = FixtureIndex([chat("flag", "q", stream=True)])
    with pytest.raises(NoMatch):
        index.match(asking("q", stream=1))


def test_non_object_json_body_compares_whole() -> None:
    index = FixtureIndex([fixture("list", Request.with_json("POST", "/v1/x", [1, 2]))])
    assert index.match(Incoming("POST", "/v1/x", "", [1, 2], b"")).id == "list"
    for other in ([2, 1], {"a": 1}, None):
        with pytest.raises(NoMatch):
            index.match(Incoming("POST", "/v1/x", "", other, b""))


# -- query strings ------------------------------------------------------------------------------


def test_query_parameters_compare_as_multisets() -> None:
    index = FixtureIndex([get("/v1/messages", "a=1&a=2&b=3")])
    assert index.match(Incoming("GET", "/v1/messages", "b=3&a=2&a=1")).id
    # Ignored keys (user) drop out; percent-encoding and '+' decode before comparing.
    assert index.match(Incoming("GET", "/v1/messages", "a=2&user=x&b=%33&a=1"))
    for query in ("a=1&b=3", "a=1&a=1&a=2&b=3", "a=1&a=2&b=3&c=", "a=1&a=2&b=4", ""):
        with pytest.raises(NoMatch):
            index.match(Incoming("GET", "/v1/messages", query))


def test_blank_values_count() -> None:
    index = FixtureIndex([get("/v1/p", "flag=")])
    assert index.match(Incoming("GET", "/v1/p", "flag="))
    with pytest.raises(NoMatch):
        index.match(Incoming("GET", "/v1/p", ""))


@given(
    pairs=st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from(["1", "2", " ", "é"]))),
    seed=st.integers(),
)
def test_query_order_never_matters(pairs: list[tuple[str, str]], seed: int) -> None:
    index = FixtureIndex([get("/v1/m", urlencode(pairs))])
    shuffled = pairs[:]
    random.Random(seed).shuffle(shuffled)
    assert index.match(Incoming("GET", "/v1/m", urlencode([*shuffled, ("user", "u")])))
    with pytest.raises(NoMatch):
        index.match(Incoming("GET", "/v1/m", urlencode([*shuffled, ("a", "extra")])))


# -- non-JSON bodies --------------------------------------------------------------------------


def upload(fixture_id: str, body: bytes, match: MatchRules | None = None) -> Fixture:
    request = Request("POST", "/v1/files/upload", body=body, match=match or MatchRules())
    return fixture(fixture_id, request)


def test_text_body_bytes_must_be_equal() -> None:
    index = FixtureIndex([upload("exact", b"--b\r\nabc")])
    assert index.match(Incoming("POST", "/v1/files/upload", "", None, b"--b\r\nabc")).id == "exact"
    with pytest.raises(NoMatch) as info:
        index.match(Incoming("POST", "/v1/files/upload", "", None, b"--b\r\nabd"))
    assert info.value.nearest == [("exact", "body bytes differ (8 != 8 bytes)")]


def test_empty_keys_accept_any_body_and_no_body_accepts_any() -> None:
    index = FixtureIndex(
        [upload("any", b"recorded", MatchRules(keys=())), get("/v1/parameters", "")]
    )
    assert index.match(Incoming("POST", "/v1/files/upload", "", None, b"x")).id == "any"
    assert index.match(Incoming("GET", "/v1/parameters", "", None, b"stray")).id
    json_any = fixture("j", Request.with_json("POST", CHAT, {"q": 1}, match=MatchRules(keys=())))
    assert FixtureIndex([json_any]).match(Incoming("POST", CHAT, "", None, b"")).id == "j"


# -- keywords and fallback ----------------------------------------------------------------------


def test_keywords_match_case_insensitively_in_query_and_inputs() -> None:
    weather = chat("weather", "What's the weather?", MatchRules(keywords=("Rain", "umbrella")))
    index = FixtureIndex([weather])
    assert index.match(asking("will it RAIN tomorrow")).id == "weather"
    assert index.match(asking("hm", inputs={"topic": "my Umbrella", "n": 3})).id == "weather"
    for miss in (asking("sunny"), asking("x", inputs={"rain": 1}), asking("x", inputs="rain")):
        with pytest.raises(NoMatch):
            index.match(miss)
    with pytest.raises(NoMatch):
        index.match(Incoming("POST", "/v1/completion-messages", "", {"query": "rain"}, b""))


def test_exact_beats_keyword_beats_fallback() -> None:
    fallback = chat("fallback", "default", MatchRules(fallback=True))
    keyword = chat("keyword", "kw", MatchRules(keywords=("rain",)))
    exact = chat("exact", "rain today")
    index = FixtureIndex([fallback, keyword, exact])
    assert index.match(asking("rain today")).id == "exact"
    assert index.match(asking("rain tomorrow")).id == "keyword"
    assert index.match(asking("anything")).id == "fallback"
    assert index.match(asking("default")).id == "fallback"
    assert index.match(asking("kw")).id == "keyword"
    # A fallback only answers its own method and path.
    with pytest.raises(NoMatch):
        index.match(Incoming("POST", "/v1/completion-messages", "", {"query": "x"}, b""))


def test_first_in_index_order_wins_a_tie() -> None:
    a, b = (
        chat("a", "k1", MatchRules(keywords=("x",))),
        chat("b", "k2", MatchRules(keywords=("x",))),
    )
    assert FixtureIndex([a, b]).match(asking("x")).id == "a"
    assert FixtureIndex([b, a]).match(asking("x")).id == "b"


# -- NoMatch explanations -----------------------------------------------------------------------


def test_nearest_explains_what_differed_best_first() -> None:
    index = FixtureIndex(
        [
            get("/v1/parameters", ""),
            chat("chat-two", "hello", inputs={"a": 1}),
            chat("chat-basic", "hello"),
            chat("chat-far", "bye", inputs={"a": 2}, extra=True),
        ]
    )
    with pytest.raises(NoMatch) as info:
        index.match(asking("hi"))
    miss = info.value
    assert miss.message == "No fixture matches POST /v1/chat-messages"
    assert miss.nearest == [
        ("chat-basic", "json key 'query': 'hi' != 'hello'"),
        ("chat-two", "json key 'inputs': {} != {'a': 1}; json key 'query': 'hi' != 'hello'"),
        (
            "chat-far",
            "json key 'inputs': {} != {'a': 2}; json key 'query': 'hi' != 'bye'; "
            "json key 'extra': (absent) != True",
        ),
    ]
    assert "chat-basic: json key 'query'" in str(miss)


def test_nearest_ranks_other_routes_last_and_names_them() -> None:
    index = FixtureIndex([get("/v1/parameters", ""), chat("chat", "x")])
    with pytest.raises(NoMatch) as info:
        index.match(Incoming("GET", CHAT, "", None, b""))
    assert info.value.nearest == [
        ("chat", "method 'GET' != 'POST'"),
        ("v1-parameters-", "path '/v1/chat-messages' != '/v1/parameters'"),
    ]


def test_nearest_explains_query_and_missing_json() -> None:
    index = FixtureIndex([get("/v1/m", "a=1&a=2&b=x"), chat("c", "q")])
    with pytest.raises(NoMatch) as info:
        index.match(Incoming("GET", "/v1/m", "a=1&c=z"))
    assert info.value.nearest[0][1] == (
        "query 'a': '1' != ['1', '2']; query 'b': (absent) != 'x'; query 'c': 'z' != (absent)"
    )
    with pytest.raises(NoMatch) as info:
        index.match(Incoming("POST", CHAT, "", None, b"not json"))
    assert info.value.nearest[0] == ("c", "request has no JSON body")
    assert len(info.value.nearest) == 2


def test_nearest_truncates_long_values_and_keeps_three() -> None:
    index = FixtureIndex([chat(f"c{i}", "x" * 100 + str(i)) for i in range(5)])
    with pytest.raises(NoMatch) as info:
        index.match(asking("y"))
    assert [fixture_id for fixture_id, _ in info.value.nearest] == ["c0", "c1", "c2"]
    assert info.value.nearest[0][1].endswith("...") and len(info.value.nearest[0][1]) < 100


def test_empty_index_has_no_nearest() -> None:
    with pytest.raises(NoMatch) as info:
        FixtureIndex([]).match(asking("q"))
    assert info.value.nearest == [] and str(info.value) == info.value.message


# -- problems ---------------------------------------------------------------------------------


def test_clean_set_has_no_problems() -> None:
    index = FixtureIndex([chat("a", "1"), chat("b", "2"), get("/v1/parameters", "")])
    assert index.problems == ()


def test_problems_duplicate_ids_ambiguity_and_two_fallbacks() -> None:
    index = FixtureIndex(
        [
            chat("dup", "1"),
            chat("dup", "2"),
            chat("same-a", "same", user="one"),
            chat("same-b", "same", user="two"),  # differs only in an ignored key
            chat("f1", "f1", MatchRules(fallback=True)),
            chat("f2", "f2", MatchRules(fallback=True)),
            chat("loose", "anything", MatchRules(keys=("inputs",))),
        ]
    )
    problems = "\n".join(index.problems)
    assert "dup.jsonl:1: duplicate fixture id 'dup': dup.jsonl and dup.jsonl" in problems
    assert [str(p) for p in index.findings if p.fatal] == [
        "dup.jsonl:1: duplicate fixture id 'dup': dup.jsonl and dup.jsonl"
    ]
    assert "f2.jsonl:1: 2 fallback fixtures for POST /v1/chat-messages" in problems
    assert "same-b.jsonl:1: ambiguous: 'same-b' also matches" in problems
    assert "ambiguous: 'same-b' also matches the request recorded in 'same-a'" in problems
    assert "2 fallback fixtures for POST /v1/chat-messages: ['f1', 'f2']" in problems
    # keys=("inputs",) accepts every request recorded here with empty inputs.
    assert "ambiguous: 'loose' also matches the request recorded in 'f1'" in problems
    assert "'same-a' also matches the request recorded in 'same-b'" not in problems


def test_a_problem_names_the_line_of_the_fixture_record(tmp_path: Path) -> None:
    dump(chat("same", "q"), tmp_path / "a.jsonl")
    text = "\n\n" + dump_text(chat("same", "other"))  # two blank lines first
    (tmp_path / "b.jsonl").write_text(text, encoding="utf-8")
    [problem] = FixtureIndex.from_directory(tmp_path).findings
    assert (problem.path, problem.line, problem.fatal) == (str(tmp_path / "b.jsonl"), 3, True)


def test_an_incomplete_fixture_never_answers() -> None:
    whole = chat("whole", "hello")
    cut = replace(chat("cut", "hello"), end=end_for(b"", 2, "reset", incomplete=True))
    index = FixtureIndex([cut, whole])
    assert index.match(asking("hello")).id == "whole"  # although "cut" comes first
    assert (index.fixtures, index.incomplete, index.loaded) == ((whole,), (cut,), (cut, whole))
    assert index.problems == ()  # a duplicate answer, but it never answers
    with pytest.raises(NoMatch):
        FixtureIndex([cut]).match(asking("hello"))
    assert FixtureIndex([cut, replace(whole, id="cut")]).findings[0].fatal  # ids still unique


def test_keyword_overlap_is_not_ambiguity() -> None:
    index = FixtureIndex(
        [chat("a", "rain", MatchRules(keywords=("rain",))), chat("b", "snow and rain")]
    )
    assert index.problems == ()


# -- loading a directory ------------------------------------------------------------------------


def test_from_directory_loads_jsonl_sorted(tmp_path: Path) -> None:
    for name in ("b", "a"):
        dump(chat(name, name), tmp_path / f"{name}.jsonl")
    (tmp_path / "notes.txt").write_text("ignored", encoding="utf-8")
    index = FixtureIndex.from_directory(tmp_path)
    assert [f.id for f in index.fixtures] == ["a", "b"]
    assert index.fixtures[0].source == str(tmp_path / "a.jsonl")
    assert FixtureIndex.from_fixtures(index.fixtures).fixtures == index.fixtures
    (tmp_path / "c.jsonl").write_text("{}\n", encoding="utf-8")
    with pytest.raises(FixtureError, match=r"c\.jsonl:1: record has no 'type'"):
        FixtureIndex.from_directory(tmp_path)
    with pytest.raises(NotADirectoryError, match="not a fixture directory"):
        FixtureIndex.from_directory(tmp_path / "missing")


# -- hypothesis ---------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=5)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=6,
)
objects = st.dictionaries(st.text(max_size=6), json_values, max_size=5)


@given(
    recorded=objects,
    volatile=st.dictionaries(st.sampled_from(["user", "files", "trace_id"]), json_values),
)
def test_a_fixture_matches_its_recording_whatever_the_volatile_keys(
    recorded: dict[str, Any], volatile: dict[str, Any]
) -> None:
    request = Request.with_json("POST", CHAT, recorded)
    index = FixtureIndex([fixture("f", request)])
    assert index.match(Incoming.from_request(request)).id == "f"
    assert index.match(Incoming("POST", CHAT, "", recorded | volatile, b"")).id == "f"


@given(recorded=objects, key=st.text(max_size=6), value=json_values)
def test_changing_a_compared_key_breaks_the_match(
    recorded: dict[str, Any], key: str, value: Any
) -> None:
    request = Request.with_json("POST", CHAT, recorded)
    index = FixtureIndex([fixture("f", request)])
    changed = recorded | {key: value}
    compared = key in recorded and key not in MatchRules().ignore
    if compared and not json_equal(recorded[key], value):
        with pytest.raises(NoMatch) as info:
            index.match(Incoming("POST", CHAT, "", changed, b""))
        assert info.value.nearest[0][1].startswith(f"json key {key!r}")
    else:
        assert index.match(Incoming("POST", CHAT, "", changed, b"")).id == "f"
