"""Startup side of authentication: token files, JWT keys, CIDRs, listener checks (pure).

Everything here runs while ``twist difyproxy`` parses its options, so a mistake stops
startup with one line naming the file and line (``tokens.txt:7: ...``) or the flag
(``--trusted-proxy 10.0.0.300/8: ...``), and never echoes what might be a secret: a token
file line is described, not quoted, in case someone pasted a plain token into it.

Token file format (``--auth tokens:FILE``), one entry a line, ``#`` starts a comment::

    sha256:<64 hex digits>  <user id>

``python -m difytw.auth hash-token [USER]`` reads a token on stdin and prints its line;
``python -m difytw.auth new-token USER`` makes a random token and prints both.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import secrets
import sys
from collections.abc import Iterable, Sequence

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from difytw.auth import JwtAuth, Network, TokenAuth, token_digest

_ENTRY = re.compile(r"^sha256:([0-9a-fA-F]{64})\s+(\S.*)$")
_LISTEN_FIELD = re.compile(r"((?:\\.|[^:\\])*)(?::|$)")
# RFC 7518 section 3.2: an HS256 key must be at least as long as the hash, 256 bits.
MIN_HMAC_KEY = 32
MIN_RSA_BITS = 2048
_LOOPBACK_NAMES = ("localhost",)


class ConfigError(ValueError):
    """A startup mistake; the message names the file:line or the flag."""


def _printable(text: str) -> bool:
    return text.isprintable()


def parse_tokens(lines: Iterable[str], origin: str) -> TokenAuth:
    """The entries of a token file; ``origin`` is the file name used in messages."""
    entries: list[tuple[bytes, str]] = []
    seen: dict[bytes, int] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _ENTRY.match(line)
        if match is None:
            raise ConfigError(
                f"{origin}:{number}: expected 'sha256:<64 hex digits>  <user id>' "
                "(make one with: python -m difytw.auth hash-token USER)"
            )
        digest, user = bytes.fromhex(match.group(1)), match.group(2).strip()
        if not _printable(user) or len(user) > 255:
            raise ConfigError(f"{origin}:{number}: the user id must be 1-255 printable characters")
        if digest in seen:
            raise ConfigError(f"{origin}:{number}: the same token hash is on line {seen[digest]}")
        seen[digest] = number
        entries.append((digest, user))
    if not entries:
        raise ConfigError(f"{origin}: no tokens (every caller would be refused)")
    return TokenAuth(tuple(entries))


def load_tokens(path: str) -> TokenAuth:
    try:
        with open(path, encoding="utf-8") as handle:
            return parse_tokens(handle.readlines(), path)
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--auth tokens:{path}: {error}") from None


def _read(flag: str, path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as error:
        raise ConfigError(f"{flag} {path}: {error}") from None


def jwt_auth(
    *,
    secret_file: str | None,
    public_key_file: str | None,
    audience: str | None = None,
    issuer: str | None = None,
    claim: str = "sub",
) -> JwtAuth:
    """HS256 from a secret file or RS256/ES256 from a PEM public key, chosen by the key."""
    if (secret_file is None) == (public_key_file is None):
        raise ConfigError(
            "--auth jwt needs exactly one of --jwt-secret-file FILE (HS256) or "
            "--jwt-public-key-file FILE (RS256/ES256, PEM)"
        )
    if secret_file is not None:
        secret = _read("--jwt-secret-file", secret_file).strip()
        if len(secret) < MIN_HMAC_KEY:
            raise ConfigError(
                f"--jwt-secret-file {secret_file}: the secret must be at least "
                f"{MIN_HMAC_KEY} bytes for HS256"
            )
        return JwtAuth(secret, "HS256", audience=audience, issuer=issuer, claim=claim)
    assert public_key_file is not None
    flag = f"--jwt-public-key-file {public_key_file}"
    try:
        key = load_pem_public_key(_read("--jwt-public-key-file", public_key_file))
    except (ValueError, TypeError):
        raise ConfigError(f"{flag}: not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError(f"{flag}: an RSA key must have at least {MIN_RSA_BITS} bits")
        return JwtAuth(key, "RS256", audience=audience, issuer=issuer, claim=claim)
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return JwtAuth(key, "ES256", audience=audience, issuer=issuer, claim=claim)
    raise ConfigError(f"{flag}: need an RSA (RS256) or P-256 EC (ES256) public key")


def parse_networks(values: Sequence[str], flag: str = "--trusted-proxy") -> tuple[Network, ...]:
    """CIDRs (or single addresses) given to ``flag``; host bits set are a typo, refused."""
    networks: list[Network] = []
    for value in values:
        for text in value.split(","):
            text = text.strip()
            try:
                networks.append(ipaddress.ip_network(text, strict=True))
            except ValueError as error:
                raise ConfigError(f"{flag} {text!r}: {error}") from None
    return tuple(networks)


def listen_fields(endpoint: str) -> tuple[str, dict[str, str], list[str]]:
    """A Twisted endpoint string as (type, key=value options, positional args).

    Twisted escapes ``:`` with a backslash (``tcp6:8080:interface=\\:\\:1``).
    """
    fields = [
        re.sub(r"\\(.)", r"\1", match.group(1))
        for match in _LISTEN_FIELD.finditer(endpoint)
        if match.end() > match.start()
    ]
    kind, options, positional = (fields[0].lower() if fields else ""), {}, []
    for item in fields[1:]:
        name, equals, value = item.partition("=")
        if equals:
            options[name] = value
        else:
            positional.append(item)
    return kind, options, positional


def listens_on_loopback(endpoint: str) -> bool:
    """True when only this machine can connect: a loopback interface or a UNIX socket."""
    kind, options, _ = listen_fields(endpoint)
    if kind == "unix":
        return True  # reachable through the file system only, guarded by its permissions
    if kind not in ("tcp", "tcp6", "ssl"):
        return False  # unknown (e.g. systemd: sockets): cannot tell, so not loopback
    interface = options.get("interface", "")
    if interface in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return False  # "" is every interface


def token_line(token: bytes, user: str) -> str:
    return f"sha256:{token_digest(token).hex()}  {user}".rstrip()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m difytw.auth", description="Make lines for a --auth tokens:FILE file."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    hashing = commands.add_parser("hash-token", help="hash a token read from stdin")
    hashing.add_argument("user", nargs="?", default="", help="user id to put after the hash")
    making = commands.add_parser("new-token", help="make a random token for USER")
    making.add_argument("user", help="user id the token stands for")
    args = parser.parse_args(argv)
    if args.command == "hash-token":
        # stdin, not argv: a token on the command line is visible to every user in ps.
        token = sys.stdin.readline().strip().encode("utf-8")
        if not token:
            parser.error('no token on stdin; e.g. printf %s "$TOKEN" | python -m difytw.auth')
        print(token_line(token, args.user))
        return 0
    token = secrets.token_urlsafe(32).encode("ascii")
    print(f"token (give to the caller):   {token.decode()}", file=sys.stderr)
    print(token_line(token, args.user))
    return 0
