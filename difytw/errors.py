"""Dify's error shapes, as bytes on the wire (pure: no Twisted).

Dify answers every failure before a stream starts with a JSON body
``{"code": ..., "message": ..., "status": ...}`` whose ``status`` mirrors the
HTTP status (dify-contract.md section 3).  Once an SSE stream has started the
status line is gone, so a failure is a final ``data:`` frame carrying
``"event": "error"`` (section 2.5).  Both difyproxy and difyreplay speak
through these two functions so a client can switch on ``code`` whichever
server produced the error.
"""

from __future__ import annotations

import json
from typing import Any

JSON_CONTENT_TYPE = b"application/json"
SSE_CONTENT_TYPE = b"text/event-stream; charset=utf-8"


class DifyError(Exception):
    """A failure that is answered as Dify's JSON error body."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> bytes:
        return error_body(self.status, self.code, self.message, **self.extra)

    def frame(self) -> bytes:
        return error_frame(self.status, self.code, self.message)


def error_body(status: int, code: str, message: str, **extra: Any) -> bytes:
    """The JSON body Dify sends for a non-stream error (key order as Dify's)."""
    payload: dict[str, Any] = {"code": code, "message": message}
    payload.update(extra)
    payload["status"] = status
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def error_frame(status: int, code: str, message: str) -> bytes:
    """A final in-stream error frame (section 2.5: ``code, status, message``)."""
    payload = {"event": "error", "code": code, "status": status, "message": message}
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode("utf-8") + b"\n\n"
