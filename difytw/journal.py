"""The replay server's journal: what reached the fake Dify, and how it ended.

Tests and the demo read it to prove what crossed the wire: which requests
arrived (with allow-listed headers only: never ``Authorization`` or
``Cookie``, of which only the count and the presence are kept), whether the
key was right, which fixture answered, how many body bytes went out and how
the exchange ended (``completed``, ``client_closed`` at byte N, ``reset``,
``timeout``, or an error status).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest

# Request headers worth showing in a journal; everything else is dropped so a
# secret sent by mistake never lands in a log or a test report.
JOURNAL_HEADERS = frozenset(
    {
        "accept",
        "content-type",
        "content-length",
        "transfer-encoding",
        "user-agent",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-trace-id",
        "traceparent",
        "x-replay-fault",
        "accept-encoding",
        "connection",
    }
)


def allowed_headers(pairs: Iterable[tuple[bytes, list[bytes]]]) -> list[tuple[str, str]]:
    kept: list[tuple[str, str]] = []
    for name, values in pairs:
        text = name.decode("latin-1")
        if text.lower() in JOURNAL_HEADERS:
            kept.extend((text, value.decode("latin-1")) for value in values)
    return kept


@dataclass
class JournalEntry:
    id: int
    time: float
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    # How many Authorization values arrived, and whether a Cookie did: never the values.
    # Behind the proxy exactly one (the app key) and no cookie prove the client's own
    # credentials stayed at the proxy (dify-contract.md 9.8).
    authorization_values: int
    cookie: bool
    auth: str  # "ok" | "unchecked" (any well-formed Bearer: no --api-key) | "missing" | "wrong"
    body_sha256: str
    body_bytes: int
    fixture: str | None = None
    fault: str = ""
    status: int | None = None
    bytes_sent: int = 0
    outcome: str = "pending"
    closed_at_byte: int | None = None
    ended_at: float | None = None
    stop: dict[str, Any] | None = field(default=None)  # for stop-endpoint calls

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


class Journal:
    """An in-process list of ``JournalEntry``, with a way to wait for ends."""

    def __init__(self) -> None:
        self.entries: list[JournalEntry] = []
        self._next_id = 1
        self._waiting: list[Deferred[JournalEntry]] = []

    def open(self, **fields: Any) -> JournalEntry:
        entry = JournalEntry(id=self._next_id, **fields)
        self._next_id += 1
        self.entries.append(entry)
        return entry

    def open_request(self, request: IRequest, path: str, query: str, at: float) -> JournalEntry:
        """An entry for ``request`` as it arrived: allow-listed headers, credentials only
        counted, the body's size and SHA-256 (its position left at the start)."""
        content = request.content
        assert content is not None
        content.seek(0, 2)
        length = content.tell()
        content.seek(0)
        digest = hashlib.sha256()
        while block := content.read(1 << 20):
            digest.update(block)
        content.seek(0)
        return self.open(
            time=at,
            method=request.method.decode("latin-1"),
            path=path,
            query=query,
            headers=allowed_headers(request.requestHeaders.getAllRawHeaders()),
            authorization_values=len(request.requestHeaders.getRawHeaders(b"authorization", [])),
            cookie=request.requestHeaders.hasHeader(b"cookie"),
            auth="missing",  # until the key check says otherwise
            body_sha256=digest.hexdigest(),
            body_bytes=length,
        )

    def close(self, entry: JournalEntry, outcome: str, at: float) -> None:
        if entry.ended_at is not None:
            return
        entry.outcome = outcome
        entry.ended_at = at
        if outcome == "client_closed":
            entry.closed_at_byte = entry.bytes_sent
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(entry)

    def next_end(self) -> Deferred[JournalEntry]:
        """A Deferred that fires with the next entry to end."""
        d: Deferred[JournalEntry] = Deferred()
        self._waiting.append(d)
        return d

    def clear(self) -> None:
        self.entries.clear()

    def as_json(self) -> list[dict[str, Any]]:
        return [entry.as_json() for entry in self.entries]
