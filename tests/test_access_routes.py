"""The access gate's remembered allow-list verdicts: same answers as the list, bounded."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock, Cooperator

from difytw import access
from difytw.access import AccessGate, AccessPolicy
from difytw.allowlist import api_segments
from difytw.refusal import Refusal


def gate() -> AccessGate:
    return AccessGate(
        AccessPolicy(),
        upstream="http://127.0.0.1:5001/v1",
        prefix=b"/dify",
        clock=Clock(),
        cooperator=Cooperator(scheduler=lambda step: None),
    )


@pytest.mark.parametrize(
    ("method", "rest"),
    [
        (b"POST", b"/chat-messages"),
        (b"GET", b"/parameters"),
        (b"HEAD", b"/parameters"),
        (b"POST", b"/chat-messages/0b7e5b39-2a3c-4e8a-9d0e-6a1f2b3c4d5e/stop"),
    ],
)
def test_a_remembered_route_is_the_one_the_list_gives(method: bytes, rest: bytes) -> None:
    subject = gate()
    expected = subject.policy.allow.check(method.decode(), api_segments(b"/v1", rest))
    assert subject._route(method, rest) == expected
    assert subject._route(method, rest) == expected  # second time from memory


@pytest.mark.parametrize(
    ("method", "rest", "status"),
    [
        (b"POST", b"/app/feedbacks", 403),
        (b"GET", b"/chat-messages", 405),
        (b"POST", b"/chat-messages/not-a-uuid/stop", 400),
        (b"GET", b"/nowhere", 404),
    ],
)
def test_refusals_are_raised_every_time(method: bytes, rest: bytes, status: int) -> None:
    subject = gate()
    for _ in range(2):
        with pytest.raises(Refusal) as raised:
            subject._route(method, rest)
        assert raised.value.status == status
    assert subject._routes == {}


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access, "ROUTE_MEMORY", 3)
    subject = gate()
    ids = [f"/messages/0b7e5b39-2a3c-4e8a-9d0e-6a1f2b3c4d{n:02d}/suggested" for n in range(10)]
    for rest in ids:
        subject._route(b"GET", rest.encode())
        assert len(subject._routes) <= 3
