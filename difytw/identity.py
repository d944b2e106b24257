"""The Dify ``user`` a request carries, derived from its identity and written in (pure).

Dify reads ``user`` from exactly one place per route -- the JSON body, the query string or
a multipart field -- and believes it (dify-contract.md section 1.1): whoever picks ``user``
can read that user's conversations (section 8.9).  So the proxy derives ``user`` itself
(``--user-template``, e.g. ``acme:{sub}``) and overwrites whatever the caller named, or
fills it in when missing: a request that needs a ``user`` never goes upstream without one
(section 9.7; a missing optional ``user`` would land in Dify's shared ``DEFAULT-USER``).

This module holds the template, the per-request :class:`UserRule`, and the JSON-body and
query-string rewrites; the multipart field is :mod:`difytw.formuser`.  Bytes that need no
change are passed on as they came (``None`` means "unchanged").
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote_plus

from difytw.auth import Identity
from difytw.refusal import Refusal

# Dify keeps the user string in end_users.session_id, a varchar(255).
MAX_USER = 255
# What a JSON body may weigh for the proxy to parse it; Dify's JSON requests are small.
MAX_JSON = 16 * 1024 * 1024


@dataclass(frozen=True)
class UserTemplate:
    """``--user-template``: literal text around ``{sub}`` (``{{``/``}}`` for braces)."""

    template: str = "{sub}"

    def __post_init__(self) -> None:
        template = self.template
        try:
            fields = [item[1:] for item in string.Formatter().parse(template)]
        except ValueError as error:
            raise ValueError(f"--user-template {template!r}: {error}") from None
        for name, spec, conversion in fields:
            if name is not None and (name != "sub" or spec or conversion):
                raise ValueError(
                    f"--user-template {template!r}: only {{sub}} may be used, not {{{name}}}"
                )

    def render(self, sub: str) -> str:
        user = self.template.format(sub=sub)
        if not user or len(user) > MAX_USER or not user.isprintable():
            raise Refusal(
                403,
                "invalid_identity",
                f"The caller's identity does not make a valid Dify user "
                f"(1-{MAX_USER} printable characters).",
            )
        return user


@dataclass(frozen=True, slots=True)
class UserRule:
    """What one request's ``user`` must be.

    ``keep_named``: a non-empty ``user`` the caller named is kept (``--auth none`` and a
    direct loopback caller only, see ``auth.NoAuth``);
    otherwise anything but ``user`` itself is overwritten.
    """

    user: str
    keep_named: bool = False

    @classmethod
    def for_identity(cls, identity: Identity, template: UserTemplate) -> UserRule:
        return cls(template.render(identity.sub), keep_named=identity.names_own_user)

    def decide(self, named: list[Any]) -> Decision:
        """``named``: every value the request gives ``user`` in one place, the one Dify
        reads first (first query pair or form field, but the *last* duplicate JSON key)."""
        first = named[0] if named else None
        if self.keep_named and isinstance(first, str) and first:
            return Decision(first, rewrite=False, forged=None)
        if named == [self.user]:
            return Decision(self.user, rewrite=False, forged=None)
        forged = next((v for v in named if v not in (None, "", self.user)), None)
        return Decision(self.user, rewrite=True, forged=None if forged is None else str(forged))


@dataclass(frozen=True, slots=True)
class Decision:
    """The ``user`` that goes upstream, whether the request must change, and the other
    non-empty ``user`` it named, if any (to be logged: an attempt to act as someone else)."""

    user: str
    rewrite: bool
    forged: str | None


def invalid_json() -> Refusal:
    # Dify's own text for a body get_json() cannot read (contract section 1.1).
    return Refusal(400, "invalid_param", "Invalid JSON payload received or JSON payload is empty.")


def rewrite_json(body: bytes, rule: UserRule) -> tuple[bytes | None, Decision]:
    """The JSON object ``body`` with ``user`` set; None when it already was.

    A body that is not one JSON object is refused (400 ``invalid_param``).  Duplicate
    ``user`` keys are always rewritten away, so no reader can pick a different one.
    """
    if len(body) > MAX_JSON:
        raise Refusal(
            413, "request_entity_too_large", f"A JSON body may be at most {MAX_JSON} bytes."
        )
    if not body:
        decision = rule.decide([])
        return _dump({"user": decision.user}), decision
    outermost: list[list[tuple[str, Any]]] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        outermost[:] = [pairs]  # the last object closed is the outermost one
        return dict(pairs)

    try:
        payload = json.loads(body, object_pairs_hook=pairs_hook)
    except (ValueError, RecursionError):
        raise invalid_json() from None
    if not isinstance(payload, dict):
        raise Refusal(400, "invalid_param", "The JSON body must be a JSON object.")
    named = [value for key, value in reversed(outermost[0]) if key == "user"]
    decision = rule.decide(named)
    if not decision.rewrite:
        return None, decision
    payload["user"] = decision.user
    return _dump(payload), decision


def _dump(payload: dict[str, Any]) -> bytes:
    try:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (valid JSON text, not valid UTF-8)
        return json.dumps(payload, separators=(",", ":")).encode("ascii")


def _key(piece: bytes) -> str:
    return unquote_plus(piece.partition(b"=")[0].decode("latin-1"), encoding="utf-8")


def rewrite_query(query: bytes | None, rule: UserRule) -> tuple[bytes | None, Decision]:
    """The raw query with ``user`` set; None when it already was.

    Only the ``user`` pair changes: every other byte of the query is kept (the proxy
    relays queries byte for byte).  Keys are compared decoded, as the server reads them
    (``us%65r`` is ``user``).  A ``user`` hidden after a ``;`` is refused: old form
    parsers split on ``;`` too and would read a different ``user`` than this one.
    """
    pieces = query.split(b"&") if query else []
    named: list[Any] = []
    kept: list[bytes] = []
    for piece in pieces:
        if any(_key(sub) == "user" for sub in piece.split(b";")[1:]):
            raise Refusal(400, "invalid_param", "The query names 'user' after a ';'.")
        if _key(piece) == "user":
            named.append(unquote_plus(piece.partition(b"=")[2].decode("latin-1")))
        else:
            kept.append(piece)
    decision = rule.decide(named)
    if not decision.rewrite:
        return None, decision
    kept.append(b"user=" + quote(decision.user, safe="").encode("ascii"))
    return b"&".join(kept), decision
