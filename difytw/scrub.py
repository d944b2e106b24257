"""Scrubbing secrets out of a recorded exchange (pure: no Twisted).

A secret may straddle two upstream reads (``...app-ab`` | ``cdEF...``), so
the rules run over the *joined* body and the result is cut again at the
original read boundaries: chunk count, order and timing survive, the secret
does not.  Default rules: Dify app and dataset keys, any ``Bearer`` token,
and the request's ``user`` value (a stable placeholder wherever it stands as
a whole value: a JSON string, a ``user=`` query or form value, a multipart
``user`` field).  More rules come from ``--scrub REGEX=PLACEHOLDER``.  The
names of the rules that matched go into the fixture's ``scrubbed`` list.

Scrubbing is a fixed point: no placeholder completes a match of its rule, so
scrubbing scrubbed bytes changes nothing.  ``StreamingScrubber`` scrubs a live
stream read by read and releases each read as soon as nothing after it can
still turn the bytes before it into a secret.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote_plus

USER_PLACEHOLDER = "scrubbed-user"
# Longest secret a rule without a ``tail`` (a ``--scrub`` rule) is caught across reads in:
# a JWT bearer token fits.
WINDOW = 4096
# Released bytes the next scan still sees, for look-behinds such as ``(?<=bearer )``.
CONTEXT = 16
# Held bytes beyond which reads are released even inside a match (a bound on memory).
MAX_HELD = 1 << 16


@dataclass(frozen=True)
class Rule:
    """``pattern`` finds candidates; the bytes of ``group`` are replaced by ``placeholder``
    when ``keep`` (if any) accepts the match.  ``tail`` matches, at the end of the bytes seen
    so far, what could still grow into a match; without one, any of the last ``WINDOW`` bytes
    could."""

    name: str
    pattern: re.Pattern[bytes]
    placeholder: bytes
    group: int = 0
    keep: Callable[[re.Match[bytes]], bool] | None = None
    tail: re.Pattern[bytes] | None = None
    # Where a match may start depends on everything before it (JSON string tokens), so a
    # rescan must start at the lead; other rules start where the unreleased bytes do.
    from_lead: bool = False


def _pending(literal: bytes, then: bytes = b"", flags: int = 0) -> re.Pattern[bytes]:
    """A ``tail``: a proper prefix of ``literal``, or all of it followed by ``then``, at the end."""
    prefixes = [re.escape(literal[:n]) for n in range(1, len(literal))]
    return re.compile(b"(?:" + b"|".join([*prefixes, re.escape(literal) + then]) + rb")\Z", flags)


def literal_rule(name: str, secret: bytes, placeholder: bytes) -> Rule:
    """A rule for one known secret (e.g. the upstream key itself)."""
    return Rule(name, re.compile(re.escape(secret)), placeholder, tail=_pending(secret))


DEFAULT_RULES = (
    # Bearer first: a ``Bearer app-...`` token is replaced as a token, which is stable.
    Rule(
        "bearer-token",
        re.compile(rb"(?i)(?<=bearer )[A-Za-z0-9._~+/=-]{8,}"),
        b"scrubbed",
        tail=_pending(b"bearer ", rb"[A-Za-z0-9._~+/=-]*", re.I),
    ),
    Rule(
        "dify-app-key",
        re.compile(rb"app-[A-Za-z0-9]{20,}"),
        b"app-scrubbed",
        tail=_pending(b"app-", rb"[A-Za-z0-9]*"),
    ),
    Rule(
        "dify-dataset-key",
        re.compile(rb"dataset-[A-Za-z0-9]{20,}"),
        b"dataset-scrubbed",
        tail=_pending(b"dataset-", rb"[A-Za-z0-9]*"),
    ),
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


# Every JSON string token.  Scanning them left to right from a line start is what keeps a
# quote inside a string from being taken for the start of a value; JSON strings never span
# lines, and an unclosed one ends with its line (or, open, with the bytes seen so far).
_STRING = re.compile(rb'"(?:[^"\\\r\n]|\\[^\r\n])*(?:"|\\?(?=[\r\n])|(?P<open>\\?)\Z)')
_FORM_VALUE = rb"[^&#;\s\"'<>]*"


def json_lead(data: bytes) -> bytes:
    """Bytes that put a scan in the JSON-string state found at the end of ``data``:
    ``b""`` outside a string, ``b'"'`` inside one, ``b'"\\\\'`` after a backslash in one."""
    last = deque(_STRING.finditer(data), maxlen=1)
    if not last or last[0].group("open") is None:
        return b""
    return b'"' + last[0].group("open")


def _user_rules(user: str) -> list[Rule]:
    placeholder = USER_PLACEHOLDER.encode()
    encoded = user.encode("utf-8")
    # The longest JSON spelling of the user: \\u00XX for each control byte.
    longest = 6 * len(encoded) + 2

    def json_value(m: re.Match[bytes]) -> bool:
        token, data = m.group(), m.string
        if not len(encoded) + 2 <= len(token) <= longest:
            return False
        # A key (followed by ':') stays, and so does the value of "event", which names the
        # event type (dify-contract.md 2.1): a user called "message" must not rename events.
        after = data[m.end() : m.end() + 8].lstrip(b" \t")
        before = data[max(0, m.start() - CONTEXT) : m.start()].rstrip(b" \t")
        if after.startswith(b":") or before.endswith(b'"event":'):
            return False
        try:
            return bool(json.loads(token) == user)
        except ValueError:
            return False

    def form_value(m: re.Match[bytes]) -> bool:
        try:
            return unquote_plus(m.group(1).decode("utf-8"), errors="strict") == user
        except UnicodeDecodeError:
            return False

    def field_value(m: re.Match[bytes]) -> bool:
        return m.group(1) == encoded

    return [
        Rule(
            "user",
            _STRING,
            b'"' + placeholder + b'"',
            keep=json_value,
            tail=re.compile(rb'"(?:[^"\\\r\n]|\\[^\r\n]){0,%d}(?:\\|"[ \t]*)?\Z' % longest),
            from_lead=True,
        ),
        Rule(
            "user",
            re.compile(rb"(?<![^?&;\s\"'])user=(" + _FORM_VALUE + b")"),
            placeholder,
            group=1,
            keep=form_value,
            tail=_pending(b"user=", _FORM_VALUE),
        ),
        Rule(
            "user",
            re.compile(rb'name="user"\r\n\r\n([^\r\n]*)\r\n'),
            placeholder,
            group=1,
            keep=field_value,
            tail=_pending(b'name="user"\r\n\r\n', rb"[^\r\n]*\r?"),
        ),
    ]


def rules_for(user: str | None, extra: Iterable[Rule] = ()) -> list[Rule]:
    """The default rules, the request's user, then any custom rules."""
    return [*DEFAULT_RULES, *(_user_rules(user) if user else ()), *extra]


@dataclass(frozen=True)
class _Match:
    start: int  # the replaced bytes
    end: int
    outer: tuple[int, int]  # the whole match: no read boundary may be released inside it
    rule: Rule


def _matches(data: bytes, rules: Sequence[Rule], skip: int) -> list[_Match]:
    """Non-overlapping matches of all rules, leftmost first, longest on ties, then the
    earlier rule; none that start in the first ``skip`` bytes (the lead)."""
    found = []
    for index, rule in enumerate(rules):
        # Starting at ``skip`` keeps a match that began in released bytes (found and replaced
        # already, or none) from swallowing the start of a secret after them; look-behinds
        # such as ``(?<=bearer )`` still see the context before ``skip``.
        for m in rule.pattern.finditer(data, 0 if rule.from_lead else skip):
            start, end = m.span(rule.group)
            if end > start and m.start() >= skip and (rule.keep is None or rule.keep(m)):
                found.append((start, start - end, index, _Match(start, end, m.span(), rule)))
    found.sort(key=lambda f: f[:3])
    chosen: list[_Match] = []
    edge = 0
    for *_, match in found:
        if match.start >= edge:
            chosen.append(match)
            edge = match.end
    return chosen


def _cut(chunks: Sequence[bytes], data: bytes, skip: int, matches: list[_Match]) -> list[bytes]:
    """``data[skip:]`` (the joined chunks) with ``matches`` replaced, cut at the chunks'
    boundaries; a boundary inside a secret moves to the start of its placeholder."""
    pieces: list[bytes] = []
    spans: list[tuple[int, int, int, int]] = []  # old start, old end, new start, new end
    cursor, length = skip, 0
    for match in matches:
        placeholder = match.rule.placeholder
        pieces += [data[cursor : match.start], placeholder]
        length += match.start - cursor
        spans.append((match.start, match.end, length, length + len(placeholder)))
        length += len(placeholder)
        cursor = match.end
    pieces.append(data[cursor:])
    scrubbed = b"".join(pieces)

    def moved(offset: int) -> int:
        old_end, new_end = skip, 0
        for start, end, new_start, after in spans:
            if offset <= start:
                break
            if offset < end:
                return new_start  # inside a secret: cut before its placeholder
            old_end, new_end = end, after
        return new_end + offset - old_end

    result: list[bytes] = []
    previous, boundary = 0, skip
    for chunk in chunks:
        boundary += len(chunk)
        cut = moved(boundary) if boundary < len(data) else len(scrubbed)
        result.append(scrubbed[previous:cut])
        previous = cut
    return result


def scrub_bytes(data: bytes, rules: Sequence[Rule]) -> tuple[bytes, set[str]]:
    out, applied = scrub_chunks([data], rules)
    return b"".join(out), applied


def scrub_chunks(
    chunks: Sequence[bytes], rules: Sequence[Rule], *, keep_empty: bool = False
) -> tuple[list[bytes], set[str]]:
    """Scrub the joined chunks and cut the result at the original boundaries.

    A boundary that fell inside a secret moves to the start of its placeholder, so no
    piece of the secret survives on either side.  A chunk left empty is dropped unless
    ``keep_empty`` (then the result lines up with ``chunks`` one to one).
    """
    data = b"".join(chunks)
    matches = _matches(data, rules, 0)
    if not matches:
        return list(chunks), set()
    result = _cut(chunks, data, 0, matches)
    kept = result if keep_empty else [piece for piece in result if piece]
    return kept, {m.rule.name for m in matches}


def scrub_text(text: str, rules: Sequence[Rule]) -> tuple[str, set[str]]:
    data, applied = scrub_bytes(text.encode("utf-8"), rules)
    return data.decode("utf-8", "replace"), applied


class StreamingScrubber:
    """Scrubs a stream of timed reads, releasing each read once nothing can follow it that
    would make a secret of the bytes up to its end (see ``_safe``).

    Held reads stay unscrubbed and are scanned again, after the lead of what was released,
    as more arrive, so the result equals scrubbing the whole body at once -- unless held
    bytes pass ``MAX_HELD`` (a run of key characters that never ends): then the oldest reads
    go out scrubbed and the rest is held scrubbed, which loses that equality, not a secret.
    """

    def __init__(self, rules: Sequence[Rule], window: int = WINDOW) -> None:
        self.rules = list(rules)
        self.window = window
        self.applied: set[str] = set()
        self._held: list[tuple[float, bytes]] = []
        self._lead = b""  # json_lead of what was released before _context
        self._context = b""  # the last CONTEXT bytes released, as they came

    def push(self, t: float, data: bytes) -> list[tuple[float, bytes]]:
        if not data:
            return []
        self._held.append((t, data))
        return self._release(final=False)

    def flush(self) -> list[tuple[float, bytes]]:
        return self._release(final=True)

    def _release(self, final: bool) -> list[tuple[float, bytes]]:
        reads = [d for _, d in self._held]
        lead = self._lead + self._context
        data = lead + b"".join(reads)
        matches = _matches(data, self.rules, len(lead))
        ends = list(itertools.accumulate((len(d) for d in reads), initial=len(lead)))[1:]
        count, forced = len(reads), False
        if not final:
            count = self._safe(data, ends, matches)
            held = len(data) - (ends[count - 1] if count else len(lead))
            if held > MAX_HELD:
                forced = True
                count = sum(1 for end in ends if end <= len(data) - self.window)
        if not count:
            return []
        pieces = _cut(reads, data, len(lead), matches) if matches else reads
        edge = ends[count - 1]
        self.applied |= {m.rule.name for m in matches if forced or m.start < edge}
        released = [(t, p) for (t, _), p in zip(self._held, pieces[:count], strict=False) if p]
        seen = self._context + b"".join(reads[:count])
        self._context = seen[-CONTEXT:]
        self._lead = json_lead(self._lead + seen[: len(seen) - len(self._context)])
        times = [t for t, _ in self._held[count:]]
        rest = pieces[count:] if forced else reads[count:]
        self._held = list(zip(times, rest, strict=True))
        return released

    def _safe(self, data: bytes, ends: list[int], matches: list[_Match]) -> int:
        """How many held reads may go: each ends before any rule's pending tail (where a
        secret could still start) and outside every match (with what it looked at)."""
        hold = len(data)
        for rule in self.rules:
            if rule.tail is None:
                hold = min(hold, len(data) - self.window)
            elif tail := rule.tail.search(data):
                hold = min(hold, tail.start())
        count = 0
        for i, end in enumerate(ends):
            if end > hold:
                break
            if not any(m.outer[0] < end < m.outer[1] for m in matches):
                count = i + 1
        return count
