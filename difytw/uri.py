"""Raw request-target safety and upstream URL building (pure: no Twisted).

difyproxy routes on the request-target exactly as it arrived (``request.uri``), never on a
decoded path: routers decode ``%2F`` into ``/`` and ``%2e%2e`` into ``..`` *after* a naive
prefix check, which is how "/dify/%2e%2e/admin" escapes a prefix.  So the target is vetted
here byte by byte, and the upstream URL is the upstream base plus the untouched remainder of
the path plus the untouched query.

What is refused (Dify's 400 ``bad_request`` JSON, nothing reaches upstream):

- anything but origin-form (RFC 9112 section 3.2.1): absolute-form ``http://evil/...``,
  authority-form, asterisk-form, and ``//host`` network-path references;
- bytes outside RFC 3986's URI alphabet (raw backslash, NUL, space, non-ASCII, ``{}|^``...);
  HTTP forbids them in a request-target, and the HTTP client under treq would re-encode
  them, so relaying them could never be byte-exact anyway;
- in the path: dot-segments however spelled (``.``, ``..``, ``%2e%2e``, ``.%2E``), empty
  segments (``a//b``), percent-escapes that are malformed or decode to ``/``, ``\\``, NUL or
  invalid UTF-8;
- ``%00`` anywhere, and a fragment (``#`` never belongs on the wire).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes, urlsplit

from difytw.errors import DifyError

# RFC 3986 section 2: unreserved, sub-delims, ":" "@" "/" "?" and "%" for pct-encoded.
_URI_ALPHABET = (
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/?%"
)
_MALFORMED_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_ENCODED_NUL = re.compile(rb"%00")
_FORBIDDEN_DECODED = (b"/", b"\\", b"\x00")
_DOT_SEGMENTS = (b".", b"..")


def _bad_request(message: str) -> DifyError:
    return DifyError(400, "bad_request", message)


@dataclass(frozen=True, slots=True)
class RequestTarget:
    """An origin-form request-target that passed every check, split at the first ``?``."""

    path: bytes
    query: bytes | None  # None when there was no "?" at all; b"" for a bare "?"

    @classmethod
    def parse(cls, raw: bytes) -> RequestTarget:
        """Vet a raw request-target; raise a 400 ``DifyError`` for anything unsafe."""
        if not raw.startswith(b"/"):
            # RFC 9112 section 3.2: only origin-form is meaningful for this proxy; an
            # absolute-form target would let a client pick the host.
            raise _bad_request("The request target must be an absolute path (origin-form).")
        if raw.startswith(b"//"):
            raise _bad_request("The request target must not start with '//'.")
        stray = raw.translate(None, _URI_ALPHABET)
        if stray:
            raise _bad_request(f"The request target contains a forbidden byte {stray[:1]!r}.")
        if _ENCODED_NUL.search(raw):
            raise _bad_request("The request target must not contain %00.")
        path, question, query = raw.partition(b"?")
        _check_path(path)
        return cls(path, query if question else None)


def _check_path(path: bytes) -> None:
    segments = path.split(b"/")[1:]
    last = len(segments) - 1
    for index, segment in enumerate(segments):
        if not segment:
            if index != last:  # a trailing "/" is an ordinary empty last segment
                raise _bad_request("The request path must not contain empty segments ('//').")
            continue
        decoded = segment
        if b"%" in segment:
            if _MALFORMED_ESCAPE.search(segment):
                raise _bad_request("The request path contains a malformed percent-escape.")
            decoded = unquote_to_bytes(segment)
            for forbidden in _FORBIDDEN_DECODED:
                if forbidden in decoded:
                    raise _bad_request("The request path must not encode '/', '\\' or NUL.")
            try:
                decoded.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad_request("The request path must decode to UTF-8.") from None
        if decoded in _DOT_SEGMENTS:
            # RFC 3986 section 5.2.4 would resolve these upstream, outside the prefix.
            raise _bad_request("The request path must not contain '.' or '..' segments.")


def normalize_prefix(prefix: str) -> bytes:
    """``"/dify/"`` -> ``b"/dify"``; ``""`` or ``"/"`` -> ``b""`` (proxy everything).

    The prefix is held to the same rules as request paths so that a raw byte comparison
    against vetted targets is meaningful.
    """
    raw = prefix.encode("ascii", "strict").rstrip(b"/")
    if not raw:
        return b""
    if not raw.startswith(b"/"):
        raise ValueError(f"prefix must start with '/': {prefix!r}")
    try:
        target = RequestTarget.parse(raw)
    except DifyError as error:
        raise ValueError(f"unsafe prefix {prefix!r}: {error.message}") from None
    if target.query is not None or b"%" in raw:
        raise ValueError(f"prefix must be a plain path: {prefix!r}")
    return raw


def normalize_upstream(url: str) -> bytes:
    """Check an ``--upstream`` base URL and return it without a trailing slash."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"upstream must be an http:// or https:// URL: {url!r}")
    if not parts.hostname:
        raise ValueError(f"upstream has no host: {url!r}")
    if parts.username is not None or parts.password is not None:
        # The key is injected as a header; credentials in the URL would leak into logs.
        raise ValueError(f"upstream must not carry user:password: {url!r}")
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise ValueError(f"upstream must not have a query or fragment: {url!r}")
    try:
        parts.port  # noqa: B018 -- urlsplit validates the port lazily
    except ValueError as error:
        raise ValueError(f"upstream has a bad port: {url!r}") from error
    raw = url.encode("ascii", "strict").rstrip(b"/")
    stray = raw.translate(None, _URI_ALPHABET + b"[]")
    if stray:
        raise ValueError(f"upstream contains a forbidden character {stray[:1]!r}: {url!r}")
    return raw


class UpstreamRoute:
    """Maps ``{prefix}{rest}`` to ``{upstream}{rest}``, query kept byte for byte."""

    def __init__(self, prefix: str, upstream: str) -> None:
        self.prefix = normalize_prefix(prefix)
        self.upstream = normalize_upstream(upstream)

    def url_for(self, target: RequestTarget) -> bytes | None:
        """The upstream URL for a vetted target, or None when it is outside the prefix."""
        path = target.path
        prefix = self.prefix
        if prefix:
            if path == prefix:
                rest = b""
            elif path.startswith(prefix) and path[len(prefix) : len(prefix) + 1] == b"/":
                rest = path[len(prefix) :]
            else:
                return None
        else:
            rest = path
        if target.query is None:
            return self.upstream + rest
        return self.upstream + rest + b"?" + target.query
