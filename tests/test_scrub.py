"""Scrubbing on the reassembled stream, in memory."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from difytw.scrub import (
    USER_PLACEHOLDER,
    RuleError,
    StreamingScrubber,
    parse_rule,
    rules_for,
    scrub_bytes,
    scrub_chunks,
    scrub_text,
)

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


# -- the request's user: only where it stands as a whole value (issue 4 item 3) ----------------


def scrub(body: bytes, user: str) -> bytes:
    return scrub_bytes(body, rules_for(user))[0]


def test_a_short_user_is_replaced_only_as_a_whole_json_string() -> None:
    body = b'data: {"event":"message","created_at":1764000000,"user":"1","n":"10","a":["1"]}\n\n'
    assert scrub(body, "1") == (
        b'data: {"event":"message","created_at":1764000000,"user":"scrubbed-user",'
        b'"n":"10","a":["scrubbed-user"]}\n\n'
    )
    # A one-letter user leaves keys and longer strings alone.
    assert scrub(b'{"message":"e","answer":"hello"}', "e") == (
        b'{"message":"scrubbed-user","answer":"hello"}'
    )


def test_an_escaped_quote_is_not_the_start_of_a_value() -> None:
    # ``"a,"`` then ``,"b"``: the bytes ``","`` are a closing quote, a comma and an opening one.
    body = b'{"x":"a,","b":","}'
    assert scrub(body, ",") == b'{"x":"a,","b":"scrubbed-user"}'
    assert scrub(b'{"x":"say \\"bob\\""}', "bob") == b'{"x":"say \\"bob\\""}'


def test_keys_and_event_names_stay() -> None:
    body = b'data: {"event": "message", "message": "message"}\n\n'
    assert scrub(body, "message") == b'data: {"event": "message", "message": "scrubbed-user"}\n\n'


def test_a_placeholder_is_never_matched_again() -> None:
    for user in ("user", "scrubbed", "-", "scrubbed-user", "u"):
        body = f'{{"user":"{user}","q":"user={user}"}}'.encode()
        once = scrub(body, user)
        assert scrub(once, user) == once
        assert b"scrubbed-scrubbed" not in once


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("user=alice&x=1", "user=scrubbed-user&x=1"),
        ("x=alice&user=alice", "x=alice&user=scrubbed-user"),
        ("user=alicex&nouser=alice", "user=alicex&nouser=alice"),
        ("user=a%20b%2Bc", "user=scrubbed-user"),
        ("user=a+b%2bc", "user=scrubbed-user"),
    ],
)
def test_user_as_a_query_value(query: str, expected: str) -> None:
    user = "alice" if "alice" in query else "a b+c"
    assert scrub_text(query, rules_for(user))[0] == expected


def test_user_as_a_multipart_field() -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="user"\r\n\r\nbob\r\n'
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="bob.txt"\r\n\r\n'
        b"bob\r\n--b--\r\n"
    )
    assert scrub(body, "bob") == body.replace(
        b"\r\n\r\nbob\r\n--b\r\nC", b"\r\n\r\nscrubbed-user\r\n--b\r\nC", 1
    )


def _replaced(value: object, user: str) -> object:
    """What a JSON value must read as after scrubbing: user-valued strings replaced."""
    if isinstance(value, str):
        return USER_PLACEHOLDER if value == user else value
    if isinstance(value, list):
        return [_replaced(v, user) for v in value]
    if isinstance(value, dict):
        return {
            k: v if k == "event" and isinstance(v, str) else _replaced(v, user)
            for k, v in value.items()
        }
    return value


def _events(user: str) -> st.SearchStrategy[list[object]]:
    text = st.one_of(st.just(user), st.text(max_size=6), st.sampled_from(["message", "1", "e"]))
    scalars = st.one_of(text, st.integers(), st.booleans(), st.none())
    values = st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(text, inner, max_size=3)
        ),
        max_leaves=8,
    )
    return st.lists(st.dictionaries(text, values, min_size=1, max_size=4), min_size=1, max_size=4)


@settings(max_examples=300)
@given(st.data(), st.text(min_size=1, max_size=8), st.booleans())
def test_any_user_in_any_json_events(data: st.DataObject, user: str, spaced: bool) -> None:
    events = data.draw(_events(user))
    dumps = (
        json.dumps if spaced else lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":"))
    )
    frames = [b"data: " + dumps(event).encode() + b"\n\n" for event in events]
    body = b"event: ping\n\n".join(frames)
    rules = rules_for(user)
    once, _ = scrub_bytes(body, rules)
    # Still the same SSE frames, each the same JSON with the user's values replaced.
    parsed = [json.loads(line[6:]) for line in once.split(b"\n\n") if line.startswith(b"data: ")]
    assert parsed == [_replaced(event, user) for event in events]
    assert scrub_bytes(once, rules)[0] == once
    # Cut anywhere, by whole-body scrubbing and by the streaming scrubber.
    for cut in range(len(body) + 1):
        split, _ = scrub_chunks([body[:cut], body[cut:]], rules)
        assert b"".join(split) == once
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=8)))
    reads = [body[a:b] for a, b in itertools.pairwise([0, *cuts, len(body)]) if b > a]
    scrubber = StreamingScrubber(rules)
    out = [d for i, read in enumerate(reads) for _, d in scrubber.push(float(i), read)]
    out += [d for _, d in scrubber.flush()]
    assert b"".join(out) == once and len(out) <= len(reads)


def test_reads_are_held_only_while_a_secret_could_be_pending() -> None:
    scrubber = StreamingScrubber(rules_for("alice"))
    assert scrubber.push(1, b'data: {"answer":"hi"}\n\n') == [(1, b'data: {"answer":"hi"}\n\n')]
    assert scrubber.push(2, b'data: {"answer":"' + KEY[:6]) == []  # could be a key
    assert scrubber.push(3, KEY[6:] + b'","user":"al') == []  # could be the user
    assert scrubber.push(4, b"ice") == []  # the user, unless more follows
    # A cut inside a secret moves before its placeholder (read 4 is left empty).
    assert scrubber.push(5, b'"}\n\n') == [
        (2, b'data: {"answer":"'),
        (3, b'app-scrubbed","user":'),
        (5, b'"scrubbed-user"}\n\n'),
    ]
    assert scrubber.push(6, b"Authorization: Bear") == []
    assert scrubber.push(7, b"er abcdefgh ok") == [
        (6, b"Authorization: Bear"),
        (7, b"er scrubbed ok"),
    ]
    assert scrubber.flush() == [] and scrubber.applied == {"dify-app-key", "user", "bearer-token"}


def test_a_rule_without_a_tail_holds_its_window() -> None:
    scrubber = StreamingScrubber([parse_rule("sk-[a-z]{4}=SK")], window=8)
    assert scrubber.push(1, b"abc sk-a") == []
    assert scrubber.push(2, b"bcd and more") == []  # read 1 ends inside a match
    assert scrubber.push(3, b"x" * 9) == [(1, b"abc "), (2, b"SK and more")]
    assert scrubber.flush() == [(3, b"x" * 9)]
