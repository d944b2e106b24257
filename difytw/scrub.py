"""Scrubbing secrets out of a recorded exchange (pure: no Twisted).

A secret may straddle two upstream reads (``...app-ab`` | ``cdEF...``), so
the rules run over the *joined* body and the result is cut again at the
original read boundaries: chunk count, order and timing survive, the secret
does not.  Default rules: Dify app and dataset keys, any ``Bearer`` token,
and the request's ``user`` value (a stable placeholder wherever it appears).
More rules come from ``--scrub REGEX=PLACEHOLDER``.  The names of the rules
that matched go into the fixture's ``scrubbed`` list.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

USER_PLACEHOLDER = "scrubbed-user"


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern[bytes]
    placeholder: bytes


DEFAULT_RULES = (
    Rule("dify-app-key", re.compile(rb"app-[A-Za-z0-9]{20,}"), b"app-scrubbed"),
    Rule("dify-dataset-key", re.compile(rb"dataset-[A-Za-z0-9]{20,}"), b"dataset-scrubbed"),
    Rule("bearer-token", re.compile(rb"(?i)(?<=bearer )[A-Za-z0-9._~+/=-]{8,}"), b"scrubbed"),
)


class RuleError(ValueError):
    """A ``--scrub`` rule that cannot be used."""


def parse_rule(spec: str) -> Rule:
    """``REGEX=PLACEHOLDER`` (the last ``=`` splits, so a regex may contain ``=``)."""
    regex, sep, placeholder = spec.rpartition("=")
    if not sep or not regex:
        raise RuleError(f"--scrub needs REGEX=PLACEHOLDER, got {spec!r}")
    try:
        pattern = re.compile(regex.encode("utf-8"))
    except re.error as e:
        raise RuleError(f"--scrub {spec!r}: bad regular expression: {e}") from None
    if pattern.match(b""):
        raise RuleError(f"--scrub {spec!r}: the pattern matches the empty string")
    # Named by its placeholder, not its regex: rule names are written into fixtures, and a
    # regex may spell out the very secret it removes.
    return Rule(f"custom:{placeholder}", pattern, placeholder.encode("utf-8"))


def rules_for(user: str | None, extra: Iterable[Rule] = ()) -> list[Rule]:
    """The default rules, the request's user, then any custom rules."""
    rules = list(DEFAULT_RULES)
    if user:
        # Both JSON styles: raw UTF-8 (orjson) and \\uXXXX escapes (json.dumps).
        forms = {user.encode("utf-8"), user.encode("ascii", "backslashreplace")}
        escaped = user.encode("unicode_escape").replace(b"\\x", b"\\u00")
        forms.add(escaped)
        alternation = b"|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
        rules.append(Rule("user", re.compile(alternation), USER_PLACEHOLDER.encode()))
    rules.extend(extra)
    return rules


def _matches(data: bytes, rules: Sequence[Rule]) -> list[tuple[int, int, bytes, str]]:
    """Non-overlapping matches of all rules, leftmost first, longest on ties."""
    found = [
        (m.start(), m.end(), rule.placeholder, rule.name)
        for rule in rules
        for m in rule.pattern.finditer(data)
        if m.end() > m.start()
    ]
    found.sort(key=lambda f: (f[0], -(f[1] - f[0])))
    chosen: list[tuple[int, int, bytes, str]] = []
    edge = 0
    for match in found:
        if match[0] >= edge:
            chosen.append(match)
            edge = match[1]
    return chosen


def scrub_bytes(data: bytes, rules: Sequence[Rule]) -> tuple[bytes, set[str]]:
    out, applied = scrub_chunks([data], rules)
    return b"".join(out), applied


def scrub_chunks(
    chunks: Sequence[bytes], rules: Sequence[Rule], *, keep_empty: bool = False
) -> tuple[list[bytes], set[str]]:
    """Scrub the joined chunks and cut the result at the original boundaries.

    A boundary that fell inside a secret moves to the start of its
    placeholder, so no piece of the secret survives on either side.  A chunk
    left empty is dropped unless ``keep_empty`` (then the result lines up with
    ``chunks`` one to one).
    """
    joined = b"".join(chunks)
    matches = _matches(joined, rules)
    if not matches:
        return list(chunks), set()
    pieces: list[bytes] = []
    shifts: list[tuple[int, int, int]] = []  # (old start, old end, new start)
    cursor = 0
    new_length = 0
    for start, end, placeholder, _ in matches:
        pieces.append(joined[cursor:start])
        new_length += start - cursor
        shifts.append((start, end, new_length))
        pieces.append(placeholder)
        new_length += len(placeholder)
        cursor = end
    pieces.append(joined[cursor:])
    scrubbed = b"".join(pieces)

    def moved(offset: int) -> int:
        delta = 0
        for (start, end, new_start), match in zip(shifts, matches, strict=True):
            if offset <= start:
                break
            if offset < end:
                return new_start  # inside a secret: cut before its placeholder
            delta = new_start + len(match[2]) - end
        return offset + delta

    result: list[bytes] = []
    previous = 0
    boundary = 0
    for chunk in chunks:
        boundary += len(chunk)
        cut = moved(boundary) if boundary < len(joined) else len(scrubbed)
        result.append(scrubbed[previous:cut])
        previous = cut
    kept = result if keep_empty else [piece for piece in result if piece]
    return kept, {m[3] for m in matches}


def scrub_text(text: str, rules: Sequence[Rule]) -> tuple[str, set[str]]:
    data, applied = scrub_bytes(text.encode("utf-8"), rules)
    return data.decode("utf-8", "replace"), applied
