"""The access flags of ``twist difyproxy`` (auth, user, allow-list, limits, CORS).

:class:`AccessOptions` is a ``usage.Options`` base that ``difytw.proxytap.Options``
extends: Twisted collects ``optParameters``/``optFlags`` from every class in the MRO, so
these flags join the proxy's own.  ``access_policy(listen)`` turns them into an
:class:`~difytw.access.AccessPolicy` or stops startup with a ``UsageError`` naming the
flag, or the file and line, that is wrong.

The one decision made here rather than in a pure module: ``--auth none`` (the default)
is only accepted when the listener is loopback or a UNIX socket; anywhere else the proxy
would be an open relay for the Dify key, so it refuses to start and says which flag to add.
"""

from __future__ import annotations

from twisted.python import usage

from difytw.access import AccessPolicy
from difytw.allowlist import AllowList
from difytw.auth import Authenticator, HeaderAuth, Network, NoAuth
from difytw.authconfig import ConfigError, jwt_auth, listens_on_loopback, load_tokens
from difytw.authconfig import parse_networks as parse_cidrs
from difytw.cors import CorsPolicy
from difytw.identity import UserTemplate
from difytw.limits import Rate, positive

OPEN_RELAY = (
    "difyproxy refuses to listen on {listen} with --auth none: anyone who can reach it "
    "could spend your Dify key and read every user's conversations.  Add one of "
    "--auth tokens:FILE, --auth jwt (with --jwt-secret-file or --jwt-public-key-file) or "
    "--auth header:X-Forwarded-User --trusted-proxy CIDR; or listen on 127.0.0.1."
)


class AccessOptions(usage.Options):
    optParameters = [
        [
            "auth",
            None,
            "none",
            "Syntax: none | tokens:FILE | jwt | header:NAME.  Who may call the proxy.  "
            "none: loopback listeners only, for local development: requests that came "
            "through another proxy (X-Forwarded-For, Forwarded, X-Real-IP...) are refused; "
            "direct loopback callers may name their Dify user, anyone else is the template "
            "applied to 'anonymous'.  tokens:FILE: "
            "'Authorization: Bearer TOKEN' checked against FILE's 'sha256:<hex>  <user "
            "id>' lines (make them with: python -m difytw.auth new-token USER).  jwt: a "
            "Bearer JWT (see --jwt-*).  header:NAME: the identity an auth gateway puts in "
            "header NAME, believed only from --trusted-proxy addresses.",
        ],
        ["jwt-secret-file", None, None, "Syntax: FILE.  HS256 secret (32+ bytes)."],
        [
            "jwt-public-key-file",
            None,
            None,
            "Syntax: FILE (PEM).  RS256 (RSA) or ES256 (P-256) public key.",
        ],
        ["jwt-audience", None, None, "Syntax: AUD.  Required 'aud' of every JWT."],
        ["jwt-issuer", None, None, "Syntax: ISS.  Required 'iss' of every JWT."],
        ["jwt-claim", None, "sub", "Syntax: CLAIM.  The JWT claim that names the caller."],
        [
            "user-template",
            None,
            "{sub}",
            "Syntax: TEXT with {sub}.  The Dify 'user' sent upstream for identity {sub}, "
            "e.g. acme:{sub}; it overwrites any 'user' the caller names.",
        ],
        [
            "max-streams-per-user",
            None,
            "4",
            "Syntax: N.  Generation/stream requests one user may have open; more -> 429.",
        ],
        ["max-streams", None, "4096", "Syntax: N.  Open streams in all; more -> 503."],
        [
            "rate",
            None,
            None,
            "Syntax: N/s|min|hour, e.g. 60/min.  Requests per user (burst N); more -> 429 "
            "with Retry-After.  Default: no rate limit.",
        ],
    ]
    optFlags = [
        [
            "cors-credentials",
            None,
            "Let --cors-origin origins send cookies (Access-Control-Allow-Credentials).",
        ]
    ]

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self["trusted-proxy"] = []
        self["allow"] = []
        self["cors-origin"] = []

    def opt_trusted_proxy(self, cidr: str) -> None:
        # Twisted prints a docstring as it is, line breaks included: so one line each.
        """Syntax: CIDR[,CIDR].  Proxies whose X-Forwarded-For/-Proto/-Host are kept; repeatable."""
        self["trusted-proxy"].append(cidr)

    def opt_allow(self, route: str) -> None:
        """Syntax: '[METHODS ]/path' ({id}, *, **).  Serve it too, e.g. /workflows/logs."""
        self["allow"].append(route)

    def opt_cors_origin(self, origin: str) -> None:
        """Syntax: ORIGIN.  Let pages from ORIGIN (exact; '*': any) call (repeatable)."""
        self["cors-origin"].append(origin)

    def access_policy(self, listen: str) -> AccessPolicy:
        try:
            trusted = parse_cidrs(self["trusted-proxy"])
            auth = self._authenticator(listen, trusted)
            cors = CorsPolicy.from_flags(self["cors-origin"], bool(self["cors-credentials"]))
            if cors.wildcard and isinstance(auth, HeaderAuth):
                raise ConfigError(
                    "--cors-origin '*' with --auth header: would let any site act with "
                    "the gateway's cookies; name the origins instead"
                )
            return AccessPolicy(
                auth=auth,
                user_template=UserTemplate(self["user-template"]),
                allow=AllowList.with_allowed(self["allow"]),
                rate=Rate.parse(self["rate"]) if self["rate"] is not None else None,
                max_streams_per_user=positive(
                    "--max-streams-per-user", self["max-streams-per-user"]
                ),
                max_streams=positive("--max-streams", self["max-streams"]),
                cors=cors,
                trusted_proxies=trusted,
            )
        except ValueError as error:  # ConfigError included
            raise usage.UsageError(str(error)) from None

    def _authenticator(self, listen: str, trusted: tuple[Network, ...]) -> Authenticator:
        mode, _, argument = self["auth"].partition(":")
        jwt_flags = [
            f"--{name}"
            for name in ("jwt-secret-file", "jwt-public-key-file", "jwt-audience", "jwt-issuer")
            if self[name] is not None
        ]
        if mode != "jwt" and jwt_flags:
            raise ConfigError(f"{jwt_flags[0]} only applies to --auth jwt")
        if mode == "none" and trusted:
            raise ConfigError(
                "--trusted-proxy does not apply to --auth none, which refuses every request "
                "that came through a proxy; pick another --auth mode to serve one"
            )
        if mode == "none" and not argument:
            if not listens_on_loopback(listen):
                raise ConfigError(OPEN_RELAY.format(listen=listen))
            return NoAuth()
        if mode == "tokens" and argument:
            return load_tokens(argument)
        if mode == "jwt" and not argument:
            return jwt_auth(
                secret_file=self["jwt-secret-file"],
                public_key_file=self["jwt-public-key-file"],
                audience=self["jwt-audience"],
                issuer=self["jwt-issuer"],
                claim=self["jwt-claim"],
            )
        if mode == "header" and argument:
            if not trusted:
                raise ConfigError(
                    "--auth header:NAME needs --trusted-proxy CIDR: the gateway's address"
                )
            name = argument.strip()
            if not name or not all(c.isalnum() or c in "-_" for c in name) or not name.isascii():
                raise ConfigError(f"--auth header:{name!r}: not a header name")
            return HeaderAuth(name.encode("ascii"), trusted)
        raise ConfigError(f"--auth {self['auth']!r}: use none, tokens:FILE, jwt or header:NAME")
