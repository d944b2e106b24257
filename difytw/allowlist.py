"""Which Dify routes a caller may reach, by method and path (pure: no Twisted).

By default only the end-user surface of the Service API passes (dify-contract.md section
1.2): chat, completion, workflow run, the three stop endpoints, file upload/preview,
messages, feedback, suggested questions, conversations and their variables, audio,
parameters, meta, info, site and the workflow events stream.  App-wide routes see every
user's data at once (section 8.9: ``/app/feedbacks``, ``/workflows/logs``,
``/workflows/run/{id}``, annotations, ``/end-users``) and ``/datasets`` is another key
family altogether (section 1.2, last paragraph), so they answer 403 ``route_not_allowed``
unless ``--allow`` names them.  A path that is no Dify route at all is 404 ``not_found``
as Dify would answer it; a known path with the wrong method is 405.

Patterns: literal segments, ``{name}`` for an id (must be a UUID, else 400
``invalid_param``: Dify's own ids all are, and a non-UUID id can only be a probe), ``*``
for any one segment (tokens that are not UUIDs) and a final ``**`` for any rest.
Matching is on the *decoded* path segments, as Dify's router sees them, so ``%61pp``
cannot slip ``/app/feedbacks`` past the list.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from urllib.parse import unquote

from difytw.refusal import Refusal

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE"})


class UserPlace(enum.Enum):
    """Where Dify reads ``user`` on a route (contract section 1.2, column U)."""

    JSON = "json"
    QUERY = "query"
    FORM = "form"
    NONE = "none"  # app-wide routes: no user to enforce
    BY_METHOD = "by-method"  # routes named only by --allow: query for GET, else the body


@dataclass(frozen=True, slots=True)
class Route:
    methods: frozenset[str]
    pattern: tuple[str, ...]
    user: UserPlace
    stream: bool = False  # may hold a long answer open: counts against stream limits
    allowed: bool = True

    def match(self, segments: Sequence[str]) -> str | None:
        """ "ok", "id" when only an id segment is not a UUID, or None for no match."""
        pattern = self.pattern
        if pattern and pattern[-1] == "**":
            pattern = pattern[:-1]
            if len(segments) < len(pattern):
                return None
            segments = segments[: len(pattern)]
        elif len(segments) != len(pattern):
            return None
        verdict = "ok"
        for want, got in zip(pattern, segments, strict=True):
            if want == "*":
                continue
            if want.startswith("{"):
                if not _UUID.fullmatch(got):
                    verdict = "id"
            elif want != got:
                return None
        return verdict


def _route(spec: str, user: UserPlace, *, stream: bool = False, allowed: bool = True) -> Route:
    methods, path = spec.split(" ", 1)
    return Route(frozenset(methods.split(",")), _pattern(path), user, stream, allowed)


def _pattern(path: str) -> tuple[str, ...]:
    return tuple(path.strip("/").split("/")) if path.strip("/") else ()


J, Q, F, N = UserPlace.JSON, UserPlace.QUERY, UserPlace.FORM, UserPlace.NONE
CATALOG: tuple[Route, ...] = (
    _route("POST /chat-messages", J, stream=True),
    _route("POST /chat-messages/{task_id}/stop", J),
    _route("POST /completion-messages", J, stream=True),
    _route("POST /completion-messages/{task_id}/stop", J),
    _route("POST /workflows/run", J, stream=True),
    _route("POST /workflows/tasks/{task_id}/stop", J),
    _route("GET /workflow/{workflow_run_id}/events", Q, stream=True),
    _route("POST /files/upload", F),
    _route("GET /files/{file_id}/preview", Q),
    _route("GET /messages", Q),
    _route("POST /messages/{message_id}/feedbacks", J),
    _route("GET /messages/{message_id}/suggested", Q),
    _route("GET /conversations", Q),
    _route("DELETE /conversations/{conversation_id}", J),
    _route("POST /conversations/{conversation_id}/name", J),
    _route("GET /conversations/{conversation_id}/variables", Q),
    _route("PUT /conversations/{conversation_id}/variables/{variable_id}", J),
    _route("POST /audio-to-text", F),
    _route("POST /text-to-audio", J, stream=True),
    _route("GET /parameters", Q),
    _route("GET /meta", Q),
    _route("GET /info", Q),
    _route("GET /site", Q),
    # Known, but only with --allow: app-wide reads and admin writes (contract 8.9, 9.9),
    # a caller-chosen workflow version, and human-input forms (newest Dify only).
    _route("POST /workflows/{workflow_id}/run", J, stream=True, allowed=False),
    _route("GET /workflows/run/{workflow_run_id}", N, allowed=False),
    _route("GET /workflows/logs", N, allowed=False),
    _route("GET /app/feedbacks", N, allowed=False),
    _route("GET /end-users/{end_user_id}", N, allowed=False),
    _route("GET,POST /apps/annotations", N, allowed=False),
    _route("PUT,DELETE /apps/annotations/{annotation_id}", N, allowed=False),
    _route("POST /apps/annotation-reply/*", N, allowed=False),
    _route("GET /apps/annotation-reply/*/status/{job_id}", N, allowed=False),
    _route("GET /form/human_input/*", Q, allowed=False),
    _route("POST /form/human_input/*", J, allowed=False),
    _route("GET,POST,PUT,PATCH,DELETE /datasets/**", N, allowed=False),
    _route("GET,POST,PUT,PATCH,DELETE /workspaces/**", N, allowed=False),
)


def _shape(pattern: tuple[str, ...]) -> tuple[str, ...]:
    """A pattern with its id names dropped: ``{id}`` and ``{task_id}`` are the same."""
    return tuple("{}" if segment.startswith("{") else segment for segment in pattern)


def parse_allow(text: str) -> tuple[frozenset[str] | None, tuple[str, ...]]:
    """``--allow '[GET,POST ]/path/{id}'`` -> (methods or None for all, pattern)."""
    methods_text, _, path = text.strip().rpartition(" ")
    methods = None
    if methods_text:
        methods = frozenset(m.strip().upper() for m in methods_text.split(","))
    if methods is not None and not methods <= METHODS:
        raise ValueError(f"--allow {text!r}: methods must be among {', '.join(sorted(METHODS))}")
    pattern = _pattern(path)
    if not path.startswith("/") or "" in pattern or "**" in pattern[:-1]:
        raise ValueError(
            f"--allow {text!r}: use '[METHODS ]/path' with {{id}}, * or a final ** segments"
        )
    return methods, pattern


@dataclass(frozen=True)
class AllowList:
    """The routes known, each allowed or not; by default the catalog as it is."""

    routes: tuple[Route, ...] = CATALOG

    @classmethod
    def with_allowed(cls, allow: Iterable[str]) -> AllowList:
        """The catalog with ``--allow`` entries switched on, or added when unknown."""
        routes = list(CATALOG)
        for text in allow:
            methods, pattern = parse_allow(text)
            known = False
            for route in list(routes):
                named = route.methods if methods is None else route.methods & methods
                if _shape(route.pattern) != _shape(pattern) or not named:
                    continue
                known = True
                # Only the methods named are switched on; the route's others stay as they were.
                routes[routes.index(route)] = replace(route, methods=named, allowed=True)
                if named != route.methods:
                    routes.append(replace(route, methods=route.methods - named))
            if not known:
                routes.append(Route(methods or METHODS, pattern, UserPlace.BY_METHOD))
        return cls(tuple(routes))

    def check(self, method: str, segments: Sequence[str]) -> Route:
        """The route ``method`` + ``segments`` may take, or a Dify-shaped refusal."""
        method = "GET" if method == "HEAD" else method  # HEAD is GET without a body
        matches = [(route, route.match(segments)) for route in self.routes]
        exact = [route for route, verdict in matches if verdict == "ok"]
        if not exact:
            wrong_id = [route for route, verdict in matches if verdict == "id"]
            if wrong_id:
                ids = [w for w, g in zip(wrong_id[0].pattern, segments, strict=False) if "{" in w]
                raise Refusal(400, "invalid_param", f"{ids[0].strip('{}')} must be a UUID.")
            raise Refusal(
                404,
                "not_found",
                "The requested URL was not found on the server. If you entered the URL "
                "manually please check your spelling and try again.",
            )
        # An --allow entry beside a blocked catalog route for the same path wins.
        for route in sorted(exact, key=lambda r: not r.allowed):
            if method in route.methods:
                if not route.allowed:
                    raise Refusal(403, "route_not_allowed", "This proxy does not serve this route.")
                return route
        if not any(route.allowed for route in exact):
            raise Refusal(403, "route_not_allowed", "This proxy does not serve this route.")
        allowed = sorted({m for route in exact if route.allowed for m in route.methods})
        raise Refusal(
            405,
            "method_not_allowed",
            "The method is not allowed for the requested URL.",
            headers=((b"Allow", ", ".join(allowed).encode("ascii")),),
        )


def api_segments(upstream_path: bytes, rest: bytes) -> list[str]:
    """The decoded Service API path after ``/v1``, as Dify routes it.

    ``upstream_path`` is the path of ``--upstream``.  When it already ends in ``/v1``
    (https://api.dify.ai/v1) every path after the prefix is a Service API path as it is;
    otherwise (the host alone, as the demo, or a user pointing at https://api.dify.ai)
    clients send ``/v1/...`` themselves and ``v1`` must be the *first* segment after the
    prefix.  A ``v1`` deeper in the path proves nothing: ``/datasets/x/v1/parameters`` or
    ``/console/api/v1/chat-messages`` are other Dify surfaces, which the key must never
    reach, so anything without the leading ``v1`` is 403 ``route_not_allowed``.
    """
    segments = [unquote(s.decode("ascii"), errors="strict") for s in rest.split(b"/")[1:]]
    if upstream_path.rstrip(b"/").rpartition(b"/")[2] == b"v1":
        return segments
    if not segments or segments[0] != "v1":
        raise Refusal(403, "route_not_allowed", "This proxy serves the Service API (/v1/...) only.")
    return segments[1:]
