"""The method-aware endpoint allow-list (difytw.allowlist), in memory."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from difytw.allowlist import CATALOG, AllowList, Route, UserPlace, api_segments, parse_allow
from difytw.refusal import Refusal

ID = str(uuid.UUID(int=0x1234))
DEFAULT = AllowList()


def check(method: str, path: str, allow: AllowList = DEFAULT) -> Route:
    return allow.check(method, path.strip("/").split("/") if path.strip("/") else [])


def refusal(action: Any) -> Refusal:
    with pytest.raises(Refusal) as caught:
        action()
    return caught.value


END_USER = [
    ("POST", "/chat-messages", UserPlace.JSON, True),
    ("POST", f"/chat-messages/{ID}/stop", UserPlace.JSON, False),
    ("POST", "/completion-messages", UserPlace.JSON, True),
    ("POST", f"/completion-messages/{ID}/stop", UserPlace.JSON, False),
    ("POST", "/workflows/run", UserPlace.JSON, True),
    ("POST", f"/workflows/tasks/{ID}/stop", UserPlace.JSON, False),
    ("GET", f"/workflow/{ID}/events", UserPlace.QUERY, True),
    ("POST", "/files/upload", UserPlace.FORM, False),
    ("GET", f"/files/{ID}/preview", UserPlace.QUERY, False),
    ("GET", "/messages", UserPlace.QUERY, False),
    ("POST", f"/messages/{ID}/feedbacks", UserPlace.JSON, False),
    ("GET", f"/messages/{ID}/suggested", UserPlace.QUERY, False),
    ("GET", "/conversations", UserPlace.QUERY, False),
    ("DELETE", f"/conversations/{ID}", UserPlace.JSON, False),
    ("POST", f"/conversations/{ID}/name", UserPlace.JSON, False),
    ("GET", f"/conversations/{ID}/variables", UserPlace.QUERY, False),
    ("PUT", f"/conversations/{ID}/variables/{ID}", UserPlace.JSON, False),
    ("POST", "/audio-to-text", UserPlace.FORM, False),
    ("POST", "/text-to-audio", UserPlace.JSON, True),
    ("GET", "/parameters", UserPlace.QUERY, False),
    ("HEAD", "/parameters", UserPlace.QUERY, False),
    ("GET", "/meta", UserPlace.QUERY, False),
    ("GET", "/info", UserPlace.QUERY, False),
    ("GET", "/site", UserPlace.QUERY, False),
]


@pytest.mark.parametrize(("method", "path", "place", "stream"), END_USER)
def test_the_end_user_surface_passes_by_default(
    method: str, path: str, place: UserPlace, stream: bool
) -> None:
    route = check(method, path)
    assert (route.user, route.stream) == (place, stream)


APP_WIDE = [
    ("GET", "/app/feedbacks"),
    ("GET", "/workflows/logs"),
    ("GET", f"/workflows/run/{ID}"),
    ("POST", f"/workflows/{ID}/run"),
    ("GET", "/apps/annotations"),
    ("POST", "/apps/annotations"),
    ("PUT", f"/apps/annotations/{ID}"),
    ("DELETE", f"/apps/annotations/{ID}"),
    ("POST", "/apps/annotation-reply/enable"),
    ("GET", f"/apps/annotation-reply/enable/status/{ID}"),
    ("GET", f"/end-users/{ID}"),
    ("GET", "/datasets"),
    ("POST", f"/datasets/{ID}/document/create-by-text"),
    ("GET", "/workspaces/current/models/model-types/text-embedding"),
    ("POST", "/form/human_input/some-token"),
]


@pytest.mark.parametrize(("method", "path"), APP_WIDE)
def test_app_wide_routes_are_403_by_default(method: str, path: str) -> None:
    error = refusal(lambda: check(method, path))
    assert (error.status, error.code) == (403, "route_not_allowed")


def test_allow_switches_known_routes_on_with_their_user_place() -> None:
    allow = AllowList.with_allowed(["/workflows/logs", "GET /workflows/run/{id}", "/datasets/**"])
    assert check("GET", "/workflows/logs", allow).user is UserPlace.NONE
    assert check("GET", f"/workflows/run/{ID}", allow).user is UserPlace.NONE
    assert check("DELETE", f"/datasets/{ID}", allow).allowed
    assert refusal(lambda: check("GET", "/app/feedbacks", allow)).status == 403
    # Naming a method switches on only that method's route.
    only_get = AllowList.with_allowed(["GET /apps/annotations"])
    assert check("GET", "/apps/annotations", only_get).allowed
    assert refusal(lambda: check("POST", "/apps/annotations", only_get)).status == 403


def test_allow_adds_unknown_routes_with_user_by_method() -> None:
    allow = AllowList.with_allowed(["POST /new-endpoint/*", "/v2/**"])
    route = check("POST", "/new-endpoint/abc", allow)
    assert route.user is UserPlace.BY_METHOD and route.methods == {"POST"}
    assert check("PATCH", "/v2/a/b/c", allow).allowed
    assert refusal(lambda: check("GET", "/new-endpoint/abc", allow)).status == 405


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/chat-messages", 405, "method_not_allowed"),
        ("PUT", "/parameters", 405, "method_not_allowed"),
        ("OPTIONS", "/chat-messages", 405, "method_not_allowed"),
        ("GET", "/admin", 404, "not_found"),
        ("POST", "/chat-messages/", 404, "not_found"),
        ("GET", "/", 404, "not_found"),
        ("POST", "/chat-messages/not-a-uuid/stop", 400, "invalid_param"),
        ("GET", "/conversations/1/variables", 400, "invalid_param"),
        ("DELETE", "/conversations/../x", 404, "not_found"),
    ],
)
def test_refusals(method: str, path: str, status: int, code: str) -> None:
    segments = path.split("/")[1:]
    error = refusal(lambda: DEFAULT.check(method, segments))
    assert (error.status, error.code) == (status, code)


def test_405_names_the_allowed_methods() -> None:
    error = refusal(lambda: check("GET", "/chat-messages"))
    assert (b"Allow", b"POST") in error.headers
    error = refusal(lambda: check("POST", f"/conversations/{ID}"))
    assert (b"Allow", b"DELETE") in error.headers


def test_uuid_message_names_the_id() -> None:
    error = refusal(lambda: check("POST", "/chat-messages/123/stop"))
    assert error.message == "task_id must be a UUID."


def test_uppercase_uuids_pass() -> None:
    assert check("GET", f"/messages/{ID.upper()}/suggested").allowed


@pytest.mark.parametrize(
    ("upstream", "rest", "segments"),
    [
        (b"/v1", b"/chat-messages", ["chat-messages"]),
        (b"", b"/v1/chat-messages", ["chat-messages"]),
        (b"/api/v1/", b"/app/%66eedbacks", ["app", "feedbacks"]),
        (b"/v1", b"", []),
        (b"/v1", b"/v1/x", ["v1", "x"]),
        (b"/v1", b"/datasets/x/v1/parameters", ["datasets", "x", "v1", "parameters"]),
        (b"/", b"/v1/parameters", ["parameters"]),
        (b"/api", b"/%76%31/parameters", ["parameters"]),
        (b"", b"/v1", []),
    ],
)
def test_api_segments_are_decoded_and_relative_to_v1(
    upstream: bytes, rest: bytes, segments: list[str]
) -> None:
    assert api_segments(upstream, rest) == segments


@pytest.mark.parametrize("upstream", [b"", b"/", b"/api", b"/v1/other"])
@pytest.mark.parametrize(
    "rest",
    [
        b"/parameters",
        b"/datasets/x/v1/parameters",
        b"/console/api/v1/chat-messages",
        b"/api/v1/chat-messages",
        b"/x/v1",
        b"/V1/parameters",
        b"/v1x/parameters",
        b"/",
        b"",
    ],
)
def test_without_v1_upstream_only_a_leading_v1_is_the_service_api(
    upstream: bytes, rest: bytes
) -> None:
    """A ``v1`` anywhere but first after the prefix is another Dify surface (issue 6)."""
    error = refusal(lambda: api_segments(upstream, rest))
    assert (error.status, error.code) == (403, "route_not_allowed")


def test_percent_encoding_cannot_slip_past() -> None:
    error = refusal(lambda: DEFAULT.check("GET", api_segments(b"/v1", b"/%61pp/feedbacks")))
    assert error.status == 403


@pytest.mark.parametrize(
    "text", ["workflows/logs", "FETCH /x", "GET /a//b", "/a/**/b", "GET,BREW /x", ""]
)
def test_parse_allow_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="--allow"):
        parse_allow(text)


def test_parse_allow() -> None:
    assert parse_allow("get,Post /a/{id}/b") == (frozenset({"GET", "POST"}), ("a", "{id}", "b"))
    assert parse_allow("/datasets/**") == (None, ("datasets", "**"))


def test_catalog_patterns_are_unambiguous_for_valid_ids() -> None:
    """No two catalog routes with a common method match the same concrete path."""
    for route in CATALOG:
        concrete = [
            ID if s.startswith("{") else ("x" if s in ("*", "**") else s) for s in route.pattern
        ]
        for method in route.methods:
            owners = [
                other
                for other in CATALOG
                if method in other.methods and other.match(concrete) == "ok"
            ]
            assert owners == [route], (method, concrete)
