"""Who is calling difyproxy: the four ``--auth`` modes, as pure decisions (no Twisted).

A proxy that injects a paid Dify key for anyone who asks is an open relay, and Dify trusts
whatever ``user`` it is sent (dify-contract.md sections 1.1 and 8.9), so every request is
first tied to an identity here.  Each authenticator looks at a :class:`Caller` (the
request's headers and its direct peer address) and returns an :class:`Identity` or raises
a Dify-shaped :class:`~difytw.refusal.Refusal` whose ``code`` a client can switch on:

- 401 ``unauthorized``: no usable credentials (missing header, wrong scheme);
- 401 ``invalid_token``: a token or JWT that was presented and rejected;
- 401 ``token_expired``: a JWT past its ``exp`` (the client should fetch a new one);
- 403 ``untrusted_proxy``: an identity header from an address not in ``--trusted-proxy``;
- 403 ``forbidden_host`` / ``forwarded_request``: with ``--auth none``, a request not
  addressed to a loopback name, or one that came through another proxy.

Loading the token file, keys and CIDRs is in :mod:`difytw.authconfig`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt

from difytw.headers import FORWARDING
from difytw.refusal import Refusal, unauthorized

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
ANONYMOUS = "anonymous"


@dataclass(frozen=True, slots=True)
class Caller:
    """What authentication may look at: headers (lower-cased names) and the TCP peer."""

    headers: dict[bytes, list[bytes]]
    peer: str | None  # the direct peer's IP; None for e.g. a UNIX socket

    def values(self, name: bytes) -> list[bytes]:
        return self.headers.get(name.lower(), [])


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller.

    ``names_own_user`` is only true for ``--auth none``: with no authentication there is
    nobody to hold a ``user`` to, so a direct loopback caller (typically your own backend
    in development) may name its end users, and only a missing ``user`` is filled in from
    ``sub``.
    """

    sub: str
    names_own_user: bool = False


class Authenticator(Protocol):
    def authenticate(self, caller: Caller) -> Identity: ...


def bearer_token(caller: Caller) -> bytes:
    """The token of ``Authorization: Bearer <token>``; the scheme is case-insensitive
    (RFC 9110 section 11.1), as in Dify's own parser (contract section 1.1)."""
    values = caller.values(b"authorization")
    if len(values) != 1 or b" " not in values[0].strip():
        raise unauthorized(
            "unauthorized", "Authorization header must be provided and start with 'Bearer'."
        )
    scheme, _, token = values[0].strip().partition(b" ")
    if scheme.lower() != b"bearer" or not token.strip():
        raise unauthorized("unauthorized", "Authorization scheme must be 'Bearer'.")
    return token.strip()


@dataclass(frozen=True)
class NoAuth:
    """``--auth none``: everyone is ``sub``; see ``Identity.names_own_user``.

    The demo uses ``NoAuth("demo-user", names_own_user=False)``: one fixed end user.
    """

    sub: str = ANONYMOUS
    names_own_user: bool = True

    def authenticate(self, caller: Caller) -> Identity:
        # A loopback listener is not proof of a local caller: a public nginx in front of
        # 127.0.0.1 passes "Host: 127.0.0.1" and would hand the key -- and, with a caller-
        # named user, everyone's conversations -- to the internet.  Such a hop announces
        # itself with a forwarding header, so with no authentication none is accepted.
        forwarded = next((name for name in FORWARDING if caller.values(name)), None)
        if forwarded is not None:
            raise Refusal(
                403,
                "forwarded_request",
                f"This request came through another proxy (it carries "
                f"{forwarded.decode('ascii').title()}), and with --auth none difyproxy "
                "answers only callers on its own machine.  Start it with --auth tokens:FILE, "
                "--auth jwt or --auth header:NAME --trusted-proxy CIDR to serve it behind a "
                "proxy.",
            )
        # DNS rebinding: a web page can make its own host name resolve to 127.0.0.1, and
        # the browser then calls a loopback listener as that page's own origin.  With no
        # authentication, only requests addressed to a loopback name are answered.
        hosts = caller.values(b"host")
        if len(hosts) != 1 or not loopback_host(hosts[0]):
            raise Refusal(
                403,
                "forbidden_host",
                "With --auth none this proxy answers only requests addressed to a loopback "
                "host (localhost, 127.0.0.1, [::1]); put an --auth mode in front of it for "
                "any other name.",
            )
        # Naming one's own Dify user is for local development only: a direct TCP caller
        # from loopback.  A UNIX-socket peer has no address to tell a local tool from a
        # reverse proxy on that socket, so it gets ``sub`` like any other.
        address = peer_address(caller.peer)
        direct = address is not None and address.is_loopback
        return Identity(self.sub, names_own_user=self.names_own_user and direct)


def loopback_host(host: bytes) -> bool:
    """Whether a Host header names this machine's loopback (port ignored)."""
    name = host.strip().lower()
    if name.startswith(b"["):
        name = name[1 : name.find(b"]")] if b"]" in name else b""
    elif name.count(b":") == 1:
        name = name.partition(b":")[0]
    if name == b"localhost" or name.endswith(b".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.decode("ascii")).is_loopback
    except (ValueError, UnicodeDecodeError):
        return False


def token_digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


@dataclass(frozen=True)
class TokenAuth:
    """``--auth tokens:FILE``: bearer tokens, known only by their SHA-256, mapped to ids.

    Every entry is compared with ``hmac.compare_digest`` and none is skipped, so the time
    taken says nothing about which stored hash came close.
    """

    entries: tuple[tuple[bytes, str], ...] = field(repr=False)

    def authenticate(self, caller: Caller) -> Identity:
        digest = token_digest(bearer_token(caller))
        found: str | None = None
        for stored, user in self.entries:
            if hmac.compare_digest(stored, digest):
                found = user
        if found is None:
            raise unauthorized("invalid_token", "The access token is not valid.")
        return Identity(found)


_JWT_REFUSALS: tuple[tuple[type[Exception], str, str], ...] = (
    (jwt.ExpiredSignatureError, "token_expired", "The token has expired."),
    (jwt.ImmatureSignatureError, "invalid_token", "The token is not valid yet (nbf)."),
    (jwt.InvalidAudienceError, "invalid_token", "The token's audience is not accepted."),
    (jwt.InvalidIssuerError, "invalid_token", "The token's issuer is not accepted."),
    (jwt.MissingRequiredClaimError, "invalid_token", "The token lacks a required claim."),
    (jwt.InvalidAlgorithmError, "invalid_token", "The token's algorithm is not accepted."),
    (jwt.InvalidSignatureError, "invalid_token", "The token's signature is not valid."),
)


@dataclass(frozen=True)
class JwtAuth:
    """``--auth jwt``: a JWT verified with PyJWT; the identity is the ``claim`` claim.

    ``algorithm`` is fixed by the key (HS256 for a secret, RS256/ES256 for a public key),
    never taken from the token's header: that is what stops algorithm confusion
    (RFC 8725 section 2.1).  ``exp`` is required: a token that never expires is refused.
    """

    key: Any = field(repr=False)
    algorithm: str
    audience: str | None = None
    issuer: str | None = None
    claim: str = "sub"
    leeway: float = 0.0

    def authenticate(self, caller: Caller) -> Identity:
        token = bearer_token(caller)
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", self.claim]},
            )
        except jwt.PyJWTError as error:
            for kind, code, message in _JWT_REFUSALS:
                if isinstance(error, kind):
                    raise unauthorized(code, message) from None
            raise unauthorized("invalid_token", "The token could not be decoded.") from None
        subject = claims.get(self.claim)
        if not isinstance(subject, str) or not subject:
            raise unauthorized("invalid_token", f"The token's {self.claim!r} is not a string.")
        return Identity(subject)


def peer_address(peer: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The peer as an address; an IPv4-mapped IPv6 peer (a tcp6 listener) as IPv4."""
    if peer is None:
        return None
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def trusted_peer(peer: str | None, networks: Sequence[Network]) -> bool:
    """Whether the direct peer is in ``networks`` (``--trusted-proxy``)."""
    address = peer_address(peer)
    return address is not None and any(address in network for network in networks)


@dataclass(frozen=True)
class HeaderAuth:
    """``--auth header:NAME``: an auth gateway in front (oauth2-proxy's
    ``X-Forwarded-User`` style) already knows the user and says so in a header.

    A header is only as trustworthy as whoever set it, so it is believed only from a
    direct peer in ``networks``; any request from elsewhere is refused, header or not
    (a caller who can reach the proxy directly could set the header itself).
    """

    header: bytes
    networks: Sequence[Network]

    def authenticate(self, caller: Caller) -> Identity:
        if not trusted_peer(caller.peer, self.networks):
            raise Refusal(
                403,
                "untrusted_proxy",
                "This proxy takes identities only from its trusted gateway.",
            )
        values = caller.values(self.header)
        if len(values) != 1:
            raise unauthorized(
                "unauthorized",
                f"The gateway must send exactly one {self.header.decode('latin-1')} header.",
            )
        try:
            subject = values[0].decode("utf-8").strip()
        except UnicodeDecodeError:
            subject = ""
        if not subject:
            raise unauthorized("unauthorized", "The gateway's identity header is empty.")
        return Identity(subject)


if __name__ == "__main__":  # python -m difytw.auth hash-token | new-token (see authconfig)
    from difytw.authconfig import main

    raise SystemExit(main())
