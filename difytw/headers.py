"""Which headers cross the proxy, both ways (pure: no Twisted).

Headers are handled as ``(name, [values])`` pairs, the shape Twisted's
``Headers.getAllRawHeaders()`` yields, so the proxy never re-parses values it passes on.
Names compare case-insensitively (RFC 9110 section 5.1).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

RawHeaders = list[tuple[bytes, list[bytes]]]

# RFC 9110 section 7.6.1: connection-specific fields a proxy must not forward, plus the
# legacy Keep-Alive / Proxy-Connection and every Proxy-* field (Proxy-Authorization is
# meant for this hop only).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Never sent upstream, whatever the client says:
# - authorization/cookie: the client's own credentials; the app key replaces them
#   (dify-contract.md section 9.8);
# - accept-encoding: a compressed upstream answer could not be relayed unbuffered byte for
#   byte (section 9.2); the HTTP client asks for identity itself;
# - host/content-length/expect: the HTTP client sets its own for the upstream hop;
# - x-forwarded-proto/-host: this proxy states them; a client-supplied value is a spoof,
#   unless the caller is a trusted proxy (``trust_forwarding``), whose values go on;
# - forwarded/x-real-ip: other ways to name the client, which this proxy does not vouch
#   for; X-Forwarded-For alone says who called (as nginx's realip module keeps it).
_NOT_UPSTREAM = frozenset(
    {
        b"authorization",
        b"cookie",
        b"cookie2",
        b"accept-encoding",
        b"host",
        b"content-length",
        b"expect",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
        b"x-real-ip",
    }
)

EVENT_STREAM = b"text/event-stream"

# Fields that only a proxy adds, saying who its own caller was.  A request that carries one
# came through another proxy (``--auth none`` refuses it: its caller is not on this machine,
# issue 6), and none of them is believed from a client this proxy does not trust.
FORWARDING = (
    b"forwarded",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-forwarded-proto",
    b"x-real-ip",
)


def connection_listed(values: Iterable[bytes] | None) -> frozenset[bytes]:
    """Lower-cased field names listed in Connection header values (RFC 9110 section 7.6.1)."""
    if not values:
        return frozenset()
    names = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                names.add(token)
    return frozenset(names)


def _is_hop_by_hop(lower: bytes, listed: frozenset[bytes]) -> bool:
    return lower in HOP_BY_HOP or lower.startswith(b"proxy-") or lower in listed


def _find(pairs: Sequence[tuple[bytes, Sequence[bytes]]], lower: bytes) -> list[bytes]:
    found: list[bytes] = []
    for name, values in pairs:
        if name.lower() == lower:
            found.extend(values)
    return found


def upstream_request_headers(
    pairs: Iterable[tuple[bytes, Sequence[bytes]]],
    *,
    api_key: bytes,
    client_address: bytes | None,
    scheme: bytes,
    trust_forwarding: bool = False,
) -> RawHeaders:
    """The headers to send upstream for a client request carrying ``pairs``.

    ``client_address`` is appended to X-Forwarded-For (None for e.g. a UNIX socket peer,
    where there is no address to state); ``scheme`` is the client hop's ``http``/``https``.

    An incoming X-Forwarded-For chain is kept: whether the client may extend one is a
    question of trust, answered before this by difyproxy's access gate
    (``access.AccessGate``), which removes the chain of a peer not in ``--trusted-proxy``.
    With ``trust_forwarding`` (difyproxy, behind that gate) an incoming X-Forwarded-Proto
    and X-Forwarded-Host are believed too: behind a TLS-terminating nginx the client's
    scheme is ``https`` though this hop is ``http``, and its host is the public name.
    Without it (the replay server's record passthrough) this hop's own values are sent.
    """
    pairs = list(pairs)
    listed = connection_listed(_find(pairs, b"connection"))
    out: RawHeaders = []
    forwarded_for: list[bytes] = []
    host: list[bytes] = []
    forwarded_host: bytes | None = None
    for name, values in pairs:
        lower = name.lower()
        if lower == b"host":
            host = list(values)
        if lower == b"x-forwarded-for":
            forwarded_for.extend(values)
            continue
        if trust_forwarding and lower == b"x-forwarded-proto":
            scheme = _forwarded_scheme(values) or scheme
        if trust_forwarding and lower == b"x-forwarded-host":
            forwarded_host = _forwarded_host(values)
        if lower in _NOT_UPSTREAM or _is_hop_by_hop(lower, listed):
            continue
        out.append((name, list(values)))
    out.append((b"Authorization", [b"Bearer " + api_key]))
    if client_address is not None:
        forwarded_for.append(client_address)
    if forwarded_for:
        # One comma-joined value: several X-Forwarded-For lines are legal but many
        # upstream parsers only read the first.
        out.append((b"X-Forwarded-For", [b", ".join(forwarded_for)]))
    out.append((b"X-Forwarded-Proto", [scheme]))
    if forwarded_host is not None or host:
        out.append((b"X-Forwarded-Host", [forwarded_host or host[0]]))
    return out


_SCHEMES = frozenset({b"http", b"https"})
_HOST_BYTES = re.compile(rb"[A-Za-z0-9.\-:\[\]_]{1,255}")


def _forwarded_scheme(values: Sequence[bytes]) -> bytes | None:
    """A forwarding header's scheme, if it is ``http`` or ``https`` (see ``_first_of``)."""
    token = _first_of(values).lower()
    return token if token in _SCHEMES else None


def _forwarded_host(values: Sequence[bytes]) -> bytes | None:
    """A forwarding header's ``host[:port]``, if it is a plausible one (see ``_first_of``)."""
    token = _first_of(values)
    return token if _HOST_BYTES.fullmatch(token) else None


def _first_of(values: Sequence[bytes]) -> bytes:
    """The first comma-separated element: the one the proxy nearest the client wrote, as
    nginx reads it."""
    return values[0].split(b",", 1)[0].strip() if values else b""


def is_event_stream(content_type: Sequence[bytes] | None) -> bool:
    """True when the upstream Content-Type is SSE (dify-contract.md section 9.4).

    The answer's own type decides, never the request's response_mode: Dify answers a
    streaming request that fails early with JSON (400/401/404/429).
    """
    if not content_type:
        return False
    media_type = content_type[0].split(b";", 1)[0].strip().lower()
    return media_type == EVENT_STREAM


def client_response_headers(
    pairs: Iterable[tuple[bytes, Sequence[bytes]]], *, stream: bool
) -> RawHeaders:
    """The upstream response headers to pass to the client.

    Hop-by-hop fields are dropped.  A stream additionally loses any Content-Length (SSE is
    open-ended; HTTP/1.1 chunking frames it) and gains ``Cache-Control: no-cache`` and
    ``X-Accel-Buffering: no`` so caches and nginx-style buffers in front of this proxy pass
    each event on at once (dify-contract.md sections 2.2 and 9.2; Dify sets neither).
    """
    pairs = list(pairs)
    listed = connection_listed(_find(pairs, b"connection"))
    out: RawHeaders = []
    for name, values in pairs:
        lower = name.lower()
        if _is_hop_by_hop(lower, listed):
            continue
        if stream and lower in (b"content-length", b"cache-control", b"x-accel-buffering"):
            continue
        if lower == b"content-encoding":
            # Twisted's ContentDecoderAgent (always under treq) sets an empty
            # Content-Encoding on answers that had none; an empty coding means nothing.
            values = [value for value in values if value.strip()]
            if not values:
                continue
        out.append((name, list(values)))
    if stream:
        out.append((b"Cache-Control", [b"no-cache"]))
        out.append((b"X-Accel-Buffering", [b"no"]))
    return out
