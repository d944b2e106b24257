"""``import-sse``: a raw SSE transcript (e.g. saved ``curl -N`` output) as a fixture (pure).

This module owns what a transcript must be (the response body only, UTF-8, at least one
event), the request it answered (the body a Dify client sends for a streamed run,
dify-contract.md 1.2, unless the caller gives the whole body), and the fixture itself: one read
per frame, paced by :mod:`difytw.pacing`, under the headers Dify sends on a stream (2.2).
"""

from __future__ import annotations

from typing import Any

from difytw.eventcatalog import (
    COMPLETION,
    STREAM_TYPE,
    WORKFLOW,
    family,
    split_frames,
    unfinished,
)
from difytw.fixture import Fixture, Request, Response, end_for
from difytw.pacing import paced
from difytw.sse import Event, decode

DEFAULT_INTERVAL = 50.0  # ms: about the gap between LLM deltas in the recorded fixtures
_NO_BODY = object()


class TranscriptError(ValueError):
    """Not a transcript, or a request that cannot be built; ``str()`` says what is wrong."""


def transcript_frames(data: bytes) -> list[bytes]:
    """The frames of a raw event stream (they join back to ``data``)."""
    if not data.strip():
        raise TranscriptError("the file is empty")
    if data.startswith(b"HTTP/"):
        raise TranscriptError("starts with an HTTP status line; save the body only (curl -N)")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TranscriptError(f"not UTF-8 at byte {e.start}; an event stream is UTF-8") from None
    if not any(isinstance(item, Event) for item in decode(data, dispatch_empty=True)):
        raise TranscriptError("no SSE event in it (a data: or event: block ending in a blank line)")
    return split_frames(data)


def transcript_request(
    target: str,
    method: str = "POST",
    query_text: str | None = None,
    body: Any = _NO_BODY,
    user: str = "demo-user",
) -> Request:
    """The request for ``target`` (a path, maybe with ``?query``): ``body`` as given, else the
    one a Dify client sends for a streamed run of the route's app type."""
    path, _, query = target.partition("?")
    if not path.startswith("/"):
        raise TranscriptError(f"path {target!r} must start with '/'")
    headers = (("Content-Type", "application/json"),)
    if body is not _NO_BODY:
        return Request.with_json(method, path, body, query=query, headers=headers)
    if method.upper() == "GET":
        return Request(method, path, query)
    kind = family(path, ())
    if kind == WORKFLOW and query_text is not None:
        raise TranscriptError("a workflow takes inputs, not a query text; give the whole body")
    default: dict[str, Any] = {"inputs": {}}
    if kind != WORKFLOW and (kind != COMPLETION or query_text is not None):
        # 1.2: query is required on chat routes and optional on completion.
        default["query"] = "Hello" if query_text is None else query_text
    default["response_mode"] = "streaming"
    if kind not in (WORKFLOW, COMPLETION):
        default["conversation_id"] = ""  # 1.2: "" starts a new conversation
    default["user"] = user
    return Request.with_json(method, path, default, query=query, headers=headers)


def transcript_fixture(
    data: bytes,
    fixture_id: str,
    provenance: str,
    request: Request,
    *,
    first_byte: float = 0.0,
    interval: float | None = None,
    tokens_per_second: float | None = None,
    notes: str = "",
) -> Fixture:
    """The fixture of a transcript; ``provenance`` gets the pacing appended."""
    frames = transcript_frames(data)
    if tokens_per_second is not None:
        chunks = paced(frames, first_byte, tokens_per_second=tokens_per_second)
        pacing = f"{tokens_per_second:g} tokens/s"
    else:
        interval = DEFAULT_INTERVAL if interval is None else interval
        chunks = paced(frames, first_byte, interval=interval)
        pacing = f"one frame every {interval:g} ms"
    return Fixture(
        fixture_id,
        f"{provenance} (paced: {pacing})",
        notes,
        (),
        request,
        Response(first_byte, 200, (("Content-Type", STREAM_TYPE),)),
        tuple(chunks),
        # fixture-format.md 5: a last frame without its blank line is a knowingly cut body.
        end_for(data, chunks[-1].t, incomplete=unfinished(data) > 0),
    )
