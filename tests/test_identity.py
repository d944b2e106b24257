"""The Dify ``user``: template, decisions, and the JSON and query rewrites (in memory)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

import pytest
from hypothesis import given
from hypothesis import strategies as st

from difytw.auth import Identity
from difytw.identity import (
    MAX_JSON,
    UserRule,
    UserTemplate,
    rewrite_json,
    rewrite_query,
)
from difytw.refusal import Refusal

ENFORCE = UserRule("acme:alice")
KEEP = UserRule("anonymous", keep_named=True)


def refusal(action: Any) -> Refusal:
    with pytest.raises(Refusal) as caught:
        action()
    return caught.value


# -- template -------------------------------------------------------------------------


def test_template_puts_the_identity_in() -> None:
    assert UserTemplate("acme:{sub}").render("alice") == "acme:alice"
    assert UserTemplate("{{literal}}-{sub}").render("b{x}") == "{literal}-b{x}"
    assert UserTemplate("fixed").render("anyone") == "fixed"


@pytest.mark.parametrize("template", ["{user}", "{sub.__class__}", "{sub!r}", "{sub:>9}", "{", "}"])
def test_template_takes_only_plain_sub(template: str) -> None:
    with pytest.raises(ValueError, match="--user-template"):
        UserTemplate(template)


@pytest.mark.parametrize("sub", ["x" * 256, "tab\there", "nl\n", ""])
def test_an_identity_that_makes_no_valid_user_is_403(sub: str) -> None:
    error = refusal(lambda: UserTemplate("{sub}").render(sub))
    assert (error.status, error.code) == (403, "invalid_identity")


def test_rule_for_identity() -> None:
    template = UserTemplate("t:{sub}")
    assert UserRule.for_identity(Identity("a"), template) == UserRule("t:a")
    anonymous = Identity("anonymous", names_own_user=True)
    assert UserRule.for_identity(anonymous, template) == UserRule("t:anonymous", keep_named=True)


# -- decisions --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "named", "user", "rewrite", "forged"),
    [
        (ENFORCE, [], "acme:alice", True, None),
        (ENFORCE, ["acme:alice"], "acme:alice", False, None),
        (ENFORCE, ["bob"], "acme:alice", True, "bob"),
        (ENFORCE, ["acme:alice", "bob"], "acme:alice", True, "bob"),
        (ENFORCE, [""], "acme:alice", True, None),
        (ENFORCE, [None], "acme:alice", True, None),
        (ENFORCE, [7], "acme:alice", True, "7"),
        (KEEP, [], "anonymous", True, None),
        (KEEP, ["bob"], "bob", False, None),
        (KEEP, ["", "bob"], "anonymous", True, "bob"),
        (KEEP, [None], "anonymous", True, None),
        (KEEP, [3], "anonymous", True, "3"),
    ],
)
def test_decide(
    rule: UserRule, named: list[Any], user: str, rewrite: bool, forged: str | None
) -> None:
    decision = rule.decide(named)
    assert (decision.user, decision.rewrite, decision.forged) == (user, rewrite, forged)


# -- JSON bodies --------------------------------------------------------------------------


def test_json_forged_user_is_overwritten_and_the_rest_kept() -> None:
    body = json.dumps({"query": "日本", "inputs": {"user": "inner"}, "user": "bob"}).encode()
    new, decision = rewrite_json(body, ENFORCE)
    assert new is not None and decision.forged == "bob"
    assert json.loads(new) == {"query": "日本", "inputs": {"user": "inner"}, "user": "acme:alice"}
    assert "日本".encode() in new  # raw UTF-8, as Dify's newer clients send it


def test_json_with_the_right_user_goes_byte_for_byte() -> None:
    body = b'{ "user" : "acme:alice",\n "n": 1.50 }'
    assert rewrite_json(body, ENFORCE) == (None, ENFORCE.decide(["acme:alice"]))


def test_json_duplicate_user_keys_are_collapsed() -> None:
    # json.loads keeps the last duplicate, so {"user": victim, "user": me} must not pass.
    body = b'{"user":"victim","user":"acme:alice"}'
    new, decision = rewrite_json(body, ENFORCE)
    assert new == b'{"user":"acme:alice"}' and decision.forged == "victim"


def test_json_missing_or_empty_body_gets_a_user() -> None:
    assert rewrite_json(b"", ENFORCE)[0] == b'{"user":"acme:alice"}'
    assert rewrite_json(b'{"rating":"like"}', ENFORCE)[0] == (
        b'{"rating":"like","user":"acme:alice"}'
    )


def test_json_escaped_key_is_still_user() -> None:
    new, decision = rewrite_json(b'{"\\u0075ser":"bob"}', ENFORCE)
    assert json.loads(new or b"") == {"user": "acme:alice"} and decision.forged == "bob"


def test_json_keep_named() -> None:
    assert rewrite_json(b'{"user":"bob"}', KEEP)[0] is None
    assert rewrite_json(b'{"user":"a","user":"b"}', KEEP)[1].user == "b"  # as Dify reads it
    assert json.loads(rewrite_json(b'{"user":""}', KEEP)[0] or b"") == {"user": "anonymous"}
    assert json.loads(rewrite_json(b'{"user":null}', KEEP)[0] or b"") == {"user": "anonymous"}


@pytest.mark.parametrize("body", [b"[1,2]", b'"user"', b"null", b"3"])
def test_json_must_be_an_object(body: bytes) -> None:
    error = refusal(lambda: rewrite_json(body, ENFORCE))
    assert (error.status, error.code) == (400, "invalid_param")


@pytest.mark.parametrize("body", [b"{", b"user=bob", b"{'user': 1}", b" ", b"[" * 100000])
def test_invalid_json_is_400(body: bytes) -> None:
    assert refusal(lambda: rewrite_json(body, ENFORCE)).code == "invalid_param"


def test_json_lone_surrogate_survives_as_an_escape() -> None:
    new, _ = rewrite_json(b'{"q":"\\ud800","user":"x"}', ENFORCE)
    assert json.loads(new or b"") == {"q": "\ud800", "user": "acme:alice"}


def test_json_over_the_limit_is_413() -> None:
    error = refusal(lambda: rewrite_json(b" " * (MAX_JSON + 1), ENFORCE))
    assert error.status == 413


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@given(st.dictionaries(st.text(max_size=6), json_values, max_size=5), st.text(min_size=1))
def test_json_property_user_set_everything_else_equal(payload: dict[str, Any], user: str) -> None:
    rule = UserRule(user)
    new, decision = rewrite_json(json.dumps(payload).encode(), rule)
    result = json.loads(new) if new is not None else payload
    assert result["user"] == user == decision.user
    assert {k: v for k, v in result.items() if k != "user"} == {
        k: v for k, v in payload.items() if k != "user"
    }
    assert (new is None) == (payload.get("user") == user)


# -- query strings ------------------------------------------------------------------------


def test_query_forged_user_replaced_other_bytes_kept() -> None:
    query = b"last_id=&limit=20&user=bob&x=%41%e6%96%87&&sort_by=-updated_at"
    new, decision = rewrite_query(query, ENFORCE)
    assert new == b"last_id=&limit=20&x=%41%e6%96%87&&sort_by=-updated_at&user=acme%3Aalice"
    assert decision.forged == "bob"


@pytest.mark.parametrize(
    "query", [b"us%65r=bob", b"user=bob&user=acme%3Aalice", b"user", b"user=", b"USER=x&user=b"]
)
def test_query_every_spelling_of_user_is_replaced(query: bytes) -> None:
    new, _ = rewrite_query(query, ENFORCE)
    assert new is not None
    assert parse_qs(new.decode(), keep_blank_values=True)["user"] == ["acme:alice"]


def test_query_missing_user_is_added_and_right_user_untouched() -> None:
    assert rewrite_query(None, ENFORCE)[0] == b"user=acme%3Aalice"
    assert rewrite_query(b"", ENFORCE)[0] == b"user=acme%3Aalice"
    assert rewrite_query(b"a=1&user=acme%3Aalice", ENFORCE)[0] is None
    assert rewrite_query(b"a=1&user=acme:alice", ENFORCE)[0] is None


def test_query_user_after_a_semicolon_is_refused() -> None:
    error = refusal(lambda: rewrite_query(b"x=1;user=bob&user=acme%3Aalice", ENFORCE))
    assert (error.status, error.code) == (400, "invalid_param")


def test_query_keep_named() -> None:
    assert rewrite_query(b"user=bob", KEEP) == (None, KEEP.decide(["bob"]))
    assert rewrite_query(b"user=a%2Fb&x", KEEP)[0] is None
    assert rewrite_query(b"x=1", KEEP)[0] == b"x=1&user=anonymous"
    assert rewrite_query(b"user=&x=1", KEEP)[0] == b"x=1&user=anonymous"


pieces = st.lists(
    st.text("abcxyz=%2041+-_.", max_size=8).filter(lambda p: not p.startswith(("user", "us%"))),
    max_size=6,
)


@given(pieces, st.lists(st.text("abc-", max_size=4), max_size=3), st.text(min_size=1))
def test_query_property(others: list[str], named: list[str], user: str) -> None:
    query = "&".join(others + [f"user={n}" for n in named]).encode()
    new, decision = rewrite_query(query, UserRule(user))
    if new is None:
        assert named == [user]
        return
    assert parse_qs(new.decode(), keep_blank_values=True)["user"] == [user]
    kept = [p for p in query.split(b"&") if not p.startswith(b"user=")] if query else []
    assert new.split(b"&")[:-1] == kept  # every other piece, byte for byte, in order
    assert decision.user == user
