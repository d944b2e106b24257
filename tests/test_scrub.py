"""Scrubbing on the reassembled stream, in memory."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from difytw.scrub import USER_PLACEHOLDER, RuleError, parse_rule, rules_for, scrub_chunks

KEY = b"app-" + b"Zx9" * 10


def test_a_key_split_across_two_reads_is_scrubbed() -> None:
    body = b'data: {"note":"' + KEY + b'","user":"alice"}\n\n'
    for cut in range(1, len(body)):
        chunks = [body[:cut], body[cut:]]
        out, applied = scrub_chunks(chunks, rules_for("alice"))
        joined = b"".join(out)
        assert KEY not in joined and b"alice" not in joined
        for piece in out:
            assert not any(KEY[i:j] in piece for i in range(0, 8) for j in range(i + 25, len(KEY)))
        assert b"app-scrubbed" in joined and USER_PLACEHOLDER.encode() in joined
        assert applied == {"dify-app-key", "user"}
        assert 1 <= len(out) <= 2


def test_bearer_tokens_and_dataset_keys() -> None:
    body = b"Authorization: Bearer abc.def-ghi_123 and dataset-" + b"q" * 24
    out, applied = scrub_chunks([body], rules_for(None))
    assert out == [b"Authorization: Bearer scrubbed and dataset-scrubbed"]
    assert applied == {"bearer-token", "dify-dataset-key"}


def test_user_in_both_json_styles() -> None:
    rules = rules_for("用户1")
    out, _ = scrub_chunks(['{"user":"用户1"}'.encode(), b'{"user": "\\u7528\\u62371"}'], rules)
    assert out == [b'{"user":"scrubbed-user"}', b'{"user": "scrubbed-user"}']


def test_nothing_to_scrub_keeps_chunks_identical() -> None:
    chunks = [b"data: a", b"\n\n", b"data: b\n\n"]
    assert scrub_chunks(chunks, rules_for("bob")) == (chunks, set())


def test_custom_rule() -> None:
    rule = parse_rule(r"sk-[a-z]{4}=sk-redacted")
    out, applied = scrub_chunks([b"x sk-abcd y"], rules_for(None, [rule]))
    assert out == [b"x sk-redacted y"] and applied == {"custom:sk-redacted"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [("noequals", "REGEX=PLACEHOLDER"), ("(=x", "bad regular expression"), ("a*=x", "empty")],
)
def test_bad_custom_rules(spec: str, message: str) -> None:
    with pytest.raises(RuleError, match=message):
        parse_rule(spec)


@given(
    st.lists(
        st.sampled_from([b"data: ", b"hello ", KEY, b"\n\n", "é😀".encode(), b"alice"]), max_size=12
    ),
    st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_any_split_scrubs_like_the_joined_body(parts: list[bytes], cuts: list[int]) -> None:
    body = b"".join(parts)
    points = sorted({0, len(body), *(min(c, len(body)) for c in cuts)})
    chunks = [body[a:b] for a, b in itertools.pairwise(points) if b > a]
    rules = rules_for("alice")
    whole, _ = scrub_chunks([body], rules)
    split, _ = scrub_chunks(chunks, rules)
    assert b"".join(split) == b"".join(whole)
    assert len(split) <= len(chunks)
    assert KEY not in b"".join(split)
