"""Caller authentication (difytw.auth, difytw.authconfig), in memory."""

from __future__ import annotations

import hashlib
import hmac
import io
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given
from hypothesis import strategies as st

from difytw.auth import Caller, HeaderAuth, Identity, JwtAuth, NoAuth, TokenAuth, bearer_token
from difytw.authconfig import (
    ConfigError,
    jwt_auth,
    listens_on_loopback,
    load_tokens,
    main,
    parse_networks,
    parse_tokens,
    token_line,
)
from difytw.refusal import Refusal

SECRET = b"a-test-secret-that-is-long-enough-for-hs256"


def caller(
    authorization: str | None = None, peer: str | None = "127.0.0.1", **extra: str
) -> Caller:
    headers: dict[bytes, list[bytes]] = {}
    if authorization is not None:
        headers[b"authorization"] = [authorization.encode()]
    for name, value in extra.items():
        headers[name.replace("_", "-").lower().encode()] = [value.encode()]
    return Caller(headers, peer)


def refusal(action: Any) -> Refusal:
    with pytest.raises(Refusal) as caught:
        action()
    return caught.value


# -- bearer --------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "Bearer", "Bearer ", "Token"])
def test_missing_bearer_is_401_unauthorized_with_a_challenge(value: str | None) -> None:
    error = refusal(lambda: bearer_token(caller(value)))
    assert (error.status, error.code) == (401, "unauthorized")
    assert (b"WWW-Authenticate", b'Bearer realm="difyproxy"') in error.headers


def test_other_schemes_are_refused_and_bearer_is_case_insensitive() -> None:
    assert refusal(lambda: bearer_token(caller("Basic abc"))).code == "unauthorized"
    assert bearer_token(caller("bEaReR tok-1")) == b"tok-1"


def test_two_authorization_headers_are_refused() -> None:
    both = Caller({b"authorization": [b"Bearer a", b"Bearer b"]}, None)
    assert refusal(lambda: bearer_token(both)).status == 401


# -- tokens --------------------------------------------------------------------------


def tokens(*pairs: tuple[str, str]) -> TokenAuth:
    return parse_tokens([token_line(t.encode(), u) for t, u in pairs], "tokens.txt")


def test_token_file_maps_tokens_to_users() -> None:
    auth = tokens(("tok-alice", "alice"), ("tok-bob", "bob smith"))
    assert auth.authenticate(caller("Bearer tok-alice")) == Identity("alice")
    assert auth.authenticate(caller("Bearer tok-bob")) == Identity("bob smith")
    error = refusal(lambda: auth.authenticate(caller("Bearer tok-mallory")))
    assert (error.status, error.code) == (401, "invalid_token")


def test_token_file_stores_no_plain_token_in_the_auth_object() -> None:
    auth = tokens(("tok-alice", "alice"))
    assert "tok-alice" not in repr(auth)
    assert auth.entries == ((hashlib.sha256(b"tok-alice").digest(), "alice"),)


@given(
    st.dictionaries(
        st.text("abcdefXYZ0123456789-_", min_size=1, max_size=12),
        st.text("abcxyz", min_size=1, max_size=5),
        max_size=6,
    ),
    st.text("abcdefXYZ0123456789-_", min_size=1, max_size=12),
)
def test_exactly_the_listed_tokens_authenticate(known: dict[str, str], presented: str) -> None:
    lines = ["# users", ""] + [token_line(t.encode(), u) for t, u in known.items()]
    if not known:
        with pytest.raises(ConfigError):
            parse_tokens(lines, "t")
        return
    auth = parse_tokens(lines, "t")
    if presented in known:
        assert auth.authenticate(caller(f"Bearer {presented}")).sub == known[presented]
    else:
        assert refusal(lambda: auth.authenticate(caller(f"Bearer {presented}"))).status == 401


@pytest.mark.parametrize(
    ("lines", "where"),
    [
        (["# ok", "plain-token-oops  alice"], "tokens.txt:2:"),
        (["sha256:" + "a" * 63 + "  alice"], "tokens.txt:1:"),
        (["sha256:" + "a" * 64], "tokens.txt:1:"),
        (["sha256:" + "a" * 64 + "  alice", "sha256:" + "A" * 64 + "  bob"], "tokens.txt:2:"),
        (["sha256:" + "b" * 64 + "  al\x07ice"], "tokens.txt:1:"),
        (["# nobody"], "tokens.txt:"),
    ],
)
def test_a_malformed_token_file_names_file_and_line_without_echoing(
    lines: list[str], where: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_tokens(lines, "tokens.txt")
    message = str(caught.value)
    assert message.startswith(where)
    assert "plain-token-oops" not in message


def test_load_tokens_reads_a_file_and_names_a_missing_one(tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text(token_line(b"t1", "u1") + "\n", encoding="utf-8")
    assert load_tokens(str(path)).authenticate(caller("Bearer t1")).sub == "u1"
    with pytest.raises(ConfigError, match="--auth tokens:"):
        load_tokens(str(tmp_path / "missing.txt"))


def test_hash_token_reads_stdin_and_new_token_prints_a_matching_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert main(["hash-token", "alice"]) == 0
    line = capsys.readouterr().out.strip()
    assert line == f"sha256:{hashlib.sha256(b's3cret').hexdigest()}  alice"
    assert main(["new-token", "bob"]) == 0
    out, err = capsys.readouterr()
    token = err.split()[-1]
    auth = parse_tokens([out], "stdout")
    assert auth.authenticate(caller(f"Bearer {token}")).sub == "bob"


# -- JWT -----------------------------------------------------------------------------


def hs(claims: dict[str, Any], secret: bytes = SECRET, **kw: Any) -> str:
    return jwt.encode(claims, secret, algorithm="HS256", **kw)


def later(seconds: int = 600) -> int:
    return int(time.time()) + seconds


@pytest.fixture
def secret_file(tmp_path: Path) -> str:
    path = tmp_path / "jwt.secret"
    path.write_bytes(SECRET + b"\n")
    return str(path)


def test_hs256_jwt_names_its_subject(secret_file: str) -> None:
    auth = jwt_auth(secret_file=secret_file, public_key_file=None)
    token = hs({"sub": "alice", "exp": later()})
    assert auth.authenticate(caller(f"Bearer {token}")) == Identity("alice")


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"sub": "a", "exp": later(-120)}, "token_expired"),
        ({"sub": "a", "exp": later(), "nbf": later(300)}, "invalid_token"),
        ({"sub": "a"}, "invalid_token"),  # no exp: a token that never expires
        ({"exp": later()}, "invalid_token"),  # no subject
        ({"sub": 42, "exp": later()}, "invalid_token"),
    ],
)
def test_bad_claims_are_refused(secret_file: str, claims: dict[str, Any], code: str) -> None:
    auth = jwt_auth(secret_file=secret_file, public_key_file=None)
    error = refusal(lambda: auth.authenticate(caller(f"Bearer {hs(claims)}")))
    assert (error.status, error.code) == (401, code)


def test_forged_and_unsigned_tokens_are_refused(secret_file: str) -> None:
    auth = jwt_auth(secret_file=secret_file, public_key_file=None)
    forged = hs({"sub": "admin", "exp": later()}, secret=b"x" * 40)
    unsigned = jwt.encode({"sub": "admin", "exp": later()}, None, algorithm="none")
    good = hs({"sub": "alice", "exp": later()})
    header, _, signature = good.split(".")
    swapped = hs({"sub": "admin", "exp": later()}).split(".")[1]
    for token in (forged, unsigned, f"{header}.{swapped}.{signature}", "not.a.jwt", "x"):
        assert refusal(lambda t=token: auth.authenticate(caller(f"Bearer {t}"))).status == 401


def test_audience_issuer_and_claim_are_checked(secret_file: str) -> None:
    auth = jwt_auth(
        secret_file=secret_file,
        public_key_file=None,
        audience="difyproxy",
        issuer="https://idp.example",
        claim="email",
    )
    good = {"email": "a@x", "aud": "difyproxy", "iss": "https://idp.example", "exp": later()}
    assert auth.authenticate(caller(f"Bearer {hs(good)}")).sub == "a@x"
    for change in ({"aud": "other"}, {"iss": "https://evil"}, {"email": ""}):
        token = hs({**good, **change})
        assert refusal(lambda t=token: auth.authenticate(caller(f"Bearer {t}"))).status == 401


def pem(key: Any) -> bytes:
    data: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


@pytest.mark.parametrize("kind", ["RS256", "ES256"])
def test_public_key_jwts_and_no_algorithm_confusion(tmp_path: Path, kind: str) -> None:
    private: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    path = tmp_path / "key.pem"
    path.write_bytes(pem(private))
    auth = jwt_auth(secret_file=None, public_key_file=str(path))
    assert isinstance(auth, JwtAuth) and auth.algorithm == kind
    token = jwt.encode({"sub": "carol", "exp": later()}, private, algorithm=kind)
    assert auth.authenticate(caller(f"Bearer {token}")).sub == "carol"
    # RFC 8725 2.1: an HS256 token "signed" with the public key must not pass.
    header = jwt.utils.base64url_encode(b'{"alg":"HS256","typ":"JWT"}').decode()
    body = jwt.utils.base64url_encode(b'{"sub":"admin","exp":9999999999}').decode()
    mac = hmac.new(pem(private), f"{header}.{body}".encode(), hashlib.sha256).digest()
    confused = f"{header}.{body}.{jwt.utils.base64url_encode(mac).decode()}"
    assert refusal(lambda: auth.authenticate(caller(f"Bearer {confused}"))).status == 401


def test_jwt_configuration_mistakes_name_the_flag(tmp_path: Path, secret_file: str) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"tiny")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(pem(ec.generate_private_key(ec.SECP384R1())))
    small = tmp_path / "rsa1024.pem"
    small.write_bytes(pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)))
    cases = [
        ({"secret_file": None, "public_key_file": None}, "--jwt-secret-file"),
        ({"secret_file": secret_file, "public_key_file": str(p384)}, "exactly one"),
        ({"secret_file": str(short), "public_key_file": None}, "--jwt-secret-file"),
        ({"secret_file": str(tmp_path / "no"), "public_key_file": None}, "--jwt-secret-file"),
        ({"secret_file": None, "public_key_file": str(garbage)}, "--jwt-public-key-file"),
        ({"secret_file": None, "public_key_file": str(p384)}, "P-256"),
        ({"secret_file": None, "public_key_file": str(small)}, "2048"),
    ]
    for kwargs, expected in cases:
        with pytest.raises(ConfigError, match=expected):
            jwt_auth(**kwargs)


# -- header from a trusted gateway ----------------------------------------------------


def gateway(*cidrs: str) -> HeaderAuth:
    return HeaderAuth(b"x-forwarded-user", parse_networks(list(cidrs)))


def test_identity_header_is_believed_only_from_trusted_peers() -> None:
    auth = gateway("10.0.0.0/8", "::1/128")
    assert auth.authenticate(caller(peer="10.1.2.3", x_forwarded_user="dana")).sub == "dana"
    assert auth.authenticate(caller(peer="::ffff:10.9.9.9", x_forwarded_user="ed")).sub == "ed"
    assert auth.authenticate(caller(peer="::1", x_forwarded_user="fay")).sub == "fay"
    for peer in ("192.168.1.1", "127.0.0.1", None, "not-an-ip"):
        error = refusal(lambda p=peer: auth.authenticate(caller(peer=p, x_forwarded_user="x")))
        assert (error.status, error.code) == (403, "untrusted_proxy")


def test_trusted_peer_without_a_usable_header_is_401() -> None:
    auth = gateway("127.0.0.1/32")
    assert refusal(lambda: auth.authenticate(caller())).status == 401
    assert refusal(lambda: auth.authenticate(caller(x_forwarded_user="  "))).status == 401
    two = Caller({b"x-forwarded-user": [b"a", b"b"]}, "127.0.0.1")
    assert refusal(lambda: auth.authenticate(two)).status == 401


@pytest.mark.parametrize("bad", ["10.0.0.300/8", "10.0.0.1/8", "nope", ""])
def test_bad_cidrs_name_the_flag(bad: str) -> None:
    with pytest.raises(ConfigError, match="--trusted-proxy"):
        parse_networks([bad])


def test_none_gives_everyone_one_identity() -> None:
    local = {"host": "127.0.0.1:8080"}
    assert NoAuth().authenticate(caller(**local)) == Identity("anonymous", names_own_user=True)
    demo = NoAuth("demo-user", names_own_user=False)
    assert demo.authenticate(caller("Bearer whatever", **local)) == Identity("demo-user")


@pytest.mark.parametrize(
    "field",
    ["forwarded", "x_forwarded_for", "x_forwarded_host", "x_forwarded_proto", "x_real_ip"],
)
def test_none_refuses_requests_that_came_through_another_proxy(field: str) -> None:
    """A public nginx in front of 127.0.0.1 passes a loopback Host: only the forwarding
    header it adds shows the caller is not on this machine."""
    for auth in (NoAuth(), NoAuth("demo-user", names_own_user=False)):
        error = refusal(lambda a=auth: a.authenticate(caller(host="127.0.0.1", **{field: "x"})))
        assert (error.status, error.code) == (403, "forwarded_request")
        assert "--auth tokens:FILE" in error.message
        assert field.replace("_", "-") in error.message.lower()


@pytest.mark.parametrize(
    ("peer", "names_own_user"),
    [
        ("127.0.0.1", True),
        ("127.8.0.1", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        (None, False),  # a UNIX socket: could be a reverse proxy on that socket
        ("10.0.0.1", False),
        ("not-an-ip", False),
    ],
)
def test_none_lets_only_direct_loopback_callers_name_their_user(
    peer: str | None, names_own_user: bool
) -> None:
    identity = NoAuth().authenticate(caller(peer=peer, host="localhost"))
    assert identity == Identity("anonymous", names_own_user=names_own_user)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1:8080",
        "127.9.9.9:1",
        "localhost",
        "LOCALHOST:8080",
        "app.localhost:3000",
        "[::1]",
        "[::1]:8080",
        "::1",
    ],
)
def test_none_answers_loopback_host_names(host: str) -> None:
    assert NoAuth().authenticate(caller(host=host)).sub == "anonymous"


@pytest.mark.parametrize(
    "host",
    [
        None,
        "",
        "evil.example",
        "evil.example:8080",
        "10.0.0.1:8080",
        "[2001:db8::1]:80",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
    ],
)
def test_none_refuses_other_host_names_against_dns_rebinding(host: str | None) -> None:
    extra = {} if host is None else {"host": host}
    with pytest.raises(Refusal) as refused:
        NoAuth().authenticate(caller(**extra))
    assert (refused.value.status, refused.value.code) == (403, "forbidden_host")


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("tcp:8080:interface=127.0.0.1:backlog=1024", True),
        ("tcp:8080:interface=127.5.0.1", True),
        ("tcp6:8080:interface=\\:\\:1", True),
        ("tcp:8080:interface=localhost", True),
        ("unix:/run/difyproxy.sock", True),
        ("tcp:8080", False),
        ("tcp:8080:interface=0.0.0.0", False),
        ("tcp6:8080:interface=\\:\\:", False),
        ("tcp:8080:interface=192.168.1.5", False),
        ("ssl:443:privateKey=k.pem", False),
        ("systemd:domain=INET:index=0", False),
    ],
)
def test_which_listeners_are_loopback(endpoint: str, loopback: bool) -> None:
    assert listens_on_loopback(endpoint) is loopback
