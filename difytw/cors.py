"""Cross-origin browser access, answered by the proxy itself (pure: no Twisted).

Dify's Service API allows every origin (flask-cors, dify-contract.md section 1.1), which is
how app keys end up in front-end code (section 8.7).  Here no origin is allowed unless
``--cors-origin`` names it exactly (the Fetch standard compares serialized origins, so no
patterns), upstream's own ``Access-Control-*`` headers never reach the client, and:

- a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is answered here, 204
  for an allowed origin, method and headers, else 403 ``cors_not_allowed``; it never goes
  upstream and needs no credentials (browsers send none on a preflight);
- any other request whose ``Origin`` is neither allowed nor the page's own host is
  refused with 403 ``cors_not_allowed``: a form on another site can POST
  ``multipart/form-data`` without a preflight, and behind a cookie-based auth gateway
  that would upload as the victim (cross-site request forgery);
- ``--cors-origin '*'`` answers ``Access-Control-Allow-Origin: *`` and can never be
  combined with credentials (Fetch standard, CORS protocol and credentials).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from difytw.refusal import Refusal

METHODS = b"GET, POST, PUT, PATCH, DELETE"
_METHODS = frozenset(METHODS.decode().split(", ")) | {"HEAD"}
# What Dify's own CORS allows (Content-Type, Authorization) plus the tracing headers it
# reads (contract section 1.1).
ALLOWED_HEADERS = frozenset(
    {"authorization", "content-type", "x-trace-id", "traceparent", "tracestate"}
)
EXPOSED = b"Retry-After, X-Version, X-Env, X-Workflow-Run-Id"
MAX_AGE = b"600"

Headers = list[tuple[bytes, bytes]]


def refused(message: str) -> Refusal:
    return Refusal(403, "cors_not_allowed", message)


@dataclass(frozen=True)
class CorsPolicy:
    origins: frozenset[str] = field(default_factory=frozenset)
    credentials: bool = False

    @classmethod
    def from_flags(cls, origins: Iterable[str], credentials: bool = False) -> CorsPolicy:
        cleaned = set()
        for origin in origins:
            origin = origin.strip().rstrip("/")
            if origin != "*" and ("://" not in origin or origin.count("/") != 2):
                raise ValueError(
                    f"--cors-origin {origin!r}: an origin is scheme://host[:port], "
                    "e.g. https://app.example.com (or '*')"
                )
            cleaned.add(origin if origin == "*" else origin.lower())
        if "*" in cleaned and credentials:
            raise ValueError("--cors-origin '*' cannot be used with --cors-credentials")
        if credentials and not cleaned:
            raise ValueError("--cors-credentials needs at least one --cors-origin")
        return cls(frozenset(cleaned), credentials)

    @property
    def wildcard(self) -> bool:
        return "*" in self.origins

    def _allows(self, origin: str) -> bool:
        return self.wildcard or origin.lower() in self.origins

    def _grant(self, origin: str) -> Headers:
        if self.wildcard:
            return [(b"Access-Control-Allow-Origin", b"*")]
        headers = [(b"Access-Control-Allow-Origin", origin.encode("latin-1"))]
        if self.credentials:
            headers.append((b"Access-Control-Allow-Credentials", b"true"))
        return headers

    def response_headers(self, origin: str | None, host: str | None) -> Headers:
        """Headers for any answer to a non-preflight request; refuses foreign origins."""
        headers: Headers = [(b"Vary", b"Origin")] if self.origins else []
        if origin is None:
            return headers
        if self._allows(origin):
            return [*headers, *self._grant(origin), (b"Access-Control-Expose-Headers", EXPOSED)]
        if host is not None and _host_of(origin) == host.lower():
            return headers  # the page's own origin: not a cross-origin request at all
        raise refused(
            f"Origin {origin[:100]!r} may not call this proxy; its operator can allow it "
            "with --cors-origin."
        )

    def preflight(self, origin: str, method: str, request_headers: str) -> Headers:
        """The 204 answer's headers for a preflight, or a 403 refusal."""
        if not self._allows(origin):
            raise refused(f"Origin {origin[:100]!r} is not allowed (--cors-origin).")
        if method.strip() not in _METHODS:
            raise refused(f"Method {method[:20]!r} is not allowed cross-origin.")
        asked = [h.strip().lower() for h in request_headers.split(",") if h.strip()]
        extra = [h for h in asked if h not in ALLOWED_HEADERS]
        if extra:
            raise refused(f"Header {extra[0][:40]!r} is not allowed cross-origin.")
        return [
            *self._grant(origin),
            (b"Access-Control-Allow-Methods", METHODS),
            (b"Access-Control-Allow-Headers", ", ".join(asked).encode("ascii")),
            (b"Access-Control-Max-Age", MAX_AGE),
            (b"Vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        ]


def _host_of(origin: str) -> str:
    """``https://app.example.com:8443`` -> ``app.example.com:8443``.

    Compared with the Host header only, not the scheme: behind a TLS-terminating reverse
    proxy the page is https while this hop is plain http.
    """
    return origin.partition("://")[2].lower()


def is_preflight(method: bytes, origin: str | None, request_method: str | None) -> bool:
    return method == b"OPTIONS" and origin is not None and request_method is not None


def strip_upstream(pairs: Iterable[tuple[bytes, Sequence[bytes]]]) -> list[bytes]:
    """Names of upstream ``Access-Control-*`` headers, which the client must never see:
    Dify allows every origin, and that is not this proxy's policy."""
    return [name for name, _ in pairs if name.lower().startswith(b"access-control-")]
