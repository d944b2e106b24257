"""What the replay server refuses before it replays, as pure decisions (no Twisted).

The fake Dify answers bad requests the way Dify does, with its JSON error shape and
messages (dify-contract.md 1.1 and 3): a missing or wrong Bearer key (401), a JSON route
whose body is not JSON, too large or of another Content-Type (400/413/415), a bad
``X-Replay-Fault`` spec, and a generation request Dify would refuse before starting a
run.  Each check raises :class:`~difytw.errors.DifyError`; ``difytw.replay`` turns it
into the response and the journal entry.
"""

from __future__ import annotations

import hmac
import json
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode

from difytw.errors import DifyError
from difytw.faults import FAULT_HEADER, FAULT_QUERY_PARAM, FaultError, Faults
from difytw.fixtureindex import FixtureIndex

# Routes that take `response_mode` (dify-contract.md 1.2); Dify streams only
# when the value is exactly "streaming", so absent means blocking.
MODE_ROUTES = ("/chat-messages", "/completion-messages", "/workflows/run")
# The three stop endpoints (dify-contract.md 1.2 and 4).
STOP_ROUTE = re.compile(
    r"^/v1/(?:chat-messages|completion-messages|workflows/tasks)/(?P<task>[^/]+)/stop$"
)
# The largest body read for matching; a JSON route refuses a bigger one with 413 rather
# than match it as empty (Dify's own nginx stops far smaller bodies, contract 3).
MAX_BODY = 16 << 20
TOO_LARGE = "The data value transmitted exceeds the capacity limit."  # Werkzeug's 413
# Werkzeug's UnsupportedMediaType from get_json() on another Content-Type.
NOT_JSON = (
    "Did not attempt to load JSON data because the request Content-Type was not 'application/json'."
)
# Statuses a `status=CODE` fault answers with, as Dify names them (section 3).
FAULT_CODES = {
    400: ("invalid_param", "Injected fault: invalid parameter."),
    401: ("unauthorized", "Access token is invalid"),
    403: ("forbidden", "The app's API service has been disabled."),
    404: ("not_found", "Conversation Not Exists."),
    413: ("file_too_large", "File size exceeded."),
    415: ("unsupported_file_type", "File type not allowed."),
    429: ("too_many_requests", "Too many requests. Please try again later."),
    500: ("internal_server_error", "Internal Server Error, please contact support."),
    502: ("bad_gateway", "Bad Gateway"),
    503: ("service_unavailable", "Service Unavailable"),
    504: ("gateway_timeout", "Gateway Timeout"),
}
# A fake Dify's stand-in for "Query or prefix prompt is too long": real apps hit the
# model's context limit; a question this long has no business in a chat box.
MAX_QUERY_CHARS = 20_000
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_key(header: bytes | None, api_key: str | None) -> str:
    """The journal's ``auth`` for an ``Authorization`` value, or Dify's 401.

    Dify's validate_and_get_api_token (dify-contract.md 1.1).  Real Dify never answers
    without a well-formed Bearer, so neither does its stand-in: a client that forgets the
    header must fail here, not first in production.
    """
    if header is None or b" " not in header:
        raise DifyError(
            401, "unauthorized", "Authorization header must be provided and start with 'Bearer'"
        )
    scheme, _, token = header.partition(b" ")
    if scheme.lower() != b"bearer":
        raise DifyError(401, "unauthorized", "Authorization scheme must be 'Bearer'")
    # Twisted strips header values, so a token here is never empty.
    if api_key is None:
        return "unchecked"  # no --api-key: any key is one this fake knows
    if not hmac.compare_digest(token.strip(), api_key.encode("utf-8")):
        raise DifyError(401, "unauthorized", "Access token is invalid")
    return "ok"


def faults_of(header: str, query: str) -> tuple[Faults, str]:
    """The faults asked for (header and query parameter), and the query without them."""
    spec = header
    if FAULT_QUERY_PARAM in query:
        pairs = parse_qsl(query, keep_blank_values=True)
        spec = ",".join([spec, *(v for k, v in pairs if k == FAULT_QUERY_PARAM)])
        query = urlencode([(k, v) for k, v in pairs if k != FAULT_QUERY_PARAM])
    try:
        return Faults.parse(spec), query
    except FaultError as e:
        raise DifyError(400, "invalid_param", f"Bad {FAULT_HEADER}: {e}") from None


def fault_error(status: int) -> DifyError:
    """The error a ``status=CODE`` fault answers with."""
    code, message = FAULT_CODES.get(status, ("injected_fault", "Injected fault."))
    return DifyError(status, code, message)


def is_json_route(method: bytes, path: str, index: FixtureIndex) -> bool:
    """Whether Dify reads this request's body with ``get_json()``."""
    if method == b"POST" and (path.endswith(MODE_ROUTES) or STOP_ROUTE.match(path)):
        return True
    return index.expects_json(method.decode("latin-1"), path)


def body_is_read(length: int, *, json_route: bool) -> bool:
    """Whether a body of ``length`` bytes is read for matching (413 on a JSON route)."""
    if length <= MAX_BODY:
        return True
    if json_route:
        raise DifyError(413, "request_entity_too_large", TOO_LARGE)
    return False  # matched as empty


def json_body(content_type: bytes | None, body: bytes) -> Any:
    """The body of a JSON route, read as Flask's ``get_json()`` does (dify-contract.md 1.1)."""
    mimetype = (content_type or b"").partition(b";")[0].strip().lower()
    if not (
        mimetype == b"application/json"
        or (mimetype.startswith(b"application/") and mimetype.endswith(b"+json"))
    ):
        raise DifyError(415, "unsupported_media_type", NOT_JSON)
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        message = "Invalid JSON payload received or JSON payload is empty."
        raise DifyError(400, "invalid_param", message) from None


def check_generation(path: str, payload: Any) -> None:
    """What Dify refuses before it starts a run (answered as JSON, never a stream)."""
    if not isinstance(payload, dict) or not path.endswith(MODE_ROUTES):
        return
    query = payload.get("query", "")
    if not isinstance(query, str):
        raise DifyError(400, "invalid_param", "query must be a string.")
    if _CONTROL.search(query):
        # Dify stores the query in PostgreSQL text columns, which refuse NUL outright.
        raise DifyError(400, "invalid_param", "query must not contain control characters.")
    if len(query) > MAX_QUERY_CHARS:
        raise DifyError(
            400,
            "completion_request_error",
            "Query or prefix prompt is too long, you can reduce the prefix prompt, or shrink "
            "the max token, or switch to a llm with a larger token limit size.",
        )
    if "inputs" in payload and not isinstance(payload["inputs"], dict):
        raise DifyError(400, "invalid_param", "inputs must be an object.")


def wants_blocking(path: str, payload: Any) -> bool:
    """Whether a generation request asked for the blocking (folded JSON) answer."""
    if not isinstance(payload, dict) or not path.endswith(MODE_ROUTES):
        return False
    return payload.get("response_mode") != "streaming"
