"""The access flags of ``twist difyproxy``: what they build, and what stops startup."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.python import usage

from difytw.access import AccessPolicy
from difytw.allowlist import UserPlace
from difytw.auth import HeaderAuth, JwtAuth, NoAuth, TokenAuth
from difytw.authconfig import parse_networks, token_line
from difytw.limits import Rate
from difytw.proxytap import Options

ENV = {"DIFY_API_KEY": "app-flag-test"}
BASE = ["--upstream", "https://api.dify.ai/v1"]
LOOPBACK = ["--listen", "tcp:8080:interface=127.0.0.1"]
PUBLIC = ["--listen", "tcp:8080:interface=0.0.0.0"]


def policy(*argv: str) -> AccessPolicy:
    options = Options(environ=ENV)
    options.parseOptions([*BASE, *argv])
    return options.config.access


def refused(*argv: str) -> str:
    with pytest.raises(usage.UsageError) as caught:
        policy(*argv)
    return str(caught.value)


def test_defaults_are_auth_none_on_loopback_with_limits() -> None:
    access = policy()
    assert access == AccessPolicy()
    assert isinstance(access.auth, NoAuth) and access.auth.names_own_user
    assert (access.max_streams_per_user, access.max_streams, access.rate) == (4, 4096, None)
    assert not access.cors.origins


@pytest.mark.parametrize("listen", ["tcp:8080", "tcp:8080:interface=0.0.0.0", "tcp6:8080"])
def test_auth_none_on_a_public_listener_refuses_to_start(listen: str) -> None:
    message = refused("--listen", listen)
    assert "--auth tokens:FILE" in message and "--auth jwt" in message
    assert "--auth header:" in message and "127.0.0.1" in message


def test_every_access_flag(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(token_line(b"t", "alice") + "\n", encoding="utf-8")
    access = policy(
        *PUBLIC,
        "--auth", f"tokens:{tokens}",
        "--user-template", "acme:{sub}",
        "--allow", "/workflows/logs",
        "--allow", "GET /workflows/run/{id}",
        "--max-streams-per-user", "2",
        "--max-streams", "100",
        "--rate", "60/min",
        "--cors-origin", "https://app.example.com",
        "--cors-origin", "https://admin.example.com",
        "--cors-credentials",
    )  # fmt: skip
    assert isinstance(access.auth, TokenAuth)
    assert access.user_template.render("x") == "acme:x"
    assert access.allow.check("GET", ["workflows", "logs"]).user is UserPlace.NONE
    assert (access.max_streams_per_user, access.max_streams) == (2, 100)
    assert access.rate == Rate(60, 60.0)
    assert access.cors.origins == {"https://app.example.com", "https://admin.example.com"}
    assert access.cors.credentials


def test_jwt_and_header_modes(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 40)
    access = policy(*PUBLIC, "--auth", "jwt", "--jwt-secret-file", str(secret),
                    "--jwt-audience", "difyproxy", "--jwt-claim", "email")  # fmt: skip
    assert isinstance(access.auth, JwtAuth)
    assert (access.auth.algorithm, access.auth.audience, access.auth.claim) == (
        "HS256",
        "difyproxy",
        "email",
    )
    access = policy(
        *PUBLIC,
        "--auth", "header:X-Forwarded-User",
        "--trusted-proxy", "10.0.0.0/8,192.168.0.0/16",
        "--trusted-proxy", "::1",
    )  # fmt: skip
    assert isinstance(access.auth, HeaderAuth)
    assert access.auth.header == b"X-Forwarded-User" and len(access.auth.networks) == 3
    assert access.trusted_proxies == access.auth.networks


def test_trusted_proxy_keeps_a_forwarded_chain_under_any_authenticating_mode(
    tmp_path: Path,
) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(token_line(b"t", "alice") + "\n", encoding="utf-8")
    access = policy(*PUBLIC, "--auth", f"tokens:{tokens}", "--trusted-proxy", "10.0.0.0/8")
    assert access.trusted_proxies == parse_networks(["10.0.0.0/8"])
    assert policy(*PUBLIC, "--auth", f"tokens:{tokens}").trusted_proxies == ()
    assert "--auth none" in refused(*LOOPBACK, "--trusted-proxy", "127.0.0.1")


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--auth", "tokens:/nonexistent/tokens.txt"], "/nonexistent/tokens.txt"),
        (["--auth", "jwt"], "--jwt-secret-file"),
        (["--auth", "header:X-User"], "--trusted-proxy"),
        (["--auth", "header:X-User", "--trusted-proxy", "10.0.0.300/8"], "--trusted-proxy"),
        (["--auth", "header:X User", "--trusted-proxy", "10.0.0.0/8"], "header"),
        (["--auth", "basic"], "--auth"),
        (["--trusted-proxy", "10.0.0.0/8"], "--trusted-proxy"),
        (["--jwt-audience", "x"], "--jwt-audience"),
        (["--user-template", "{user}"], "--user-template"),
        (["--allow", "workflows/logs"], "--allow"),
        (["--max-streams-per-user", "0"], "--max-streams-per-user"),
        (["--max-streams", "many"], "--max-streams"),
        (["--rate", "lots"], "--rate"),
        (["--cors-origin", "app.example.com"], "--cors-origin"),
        (["--cors-origin", "*", "--cors-credentials"], "--cors-credentials"),
        (
            ["--auth", "header:X-User", "--trusted-proxy", "10.0.0.0/8", "--cors-origin", "*"],
            "--cors-origin",
        ),
    ],
)
def test_mistakes_stop_startup_naming_the_flag(argv: list[str], names: str) -> None:
    assert names in refused(*LOOPBACK, *argv)


def test_a_malformed_token_file_names_its_line(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("# ok\n" + token_line(b"t", "alice") + "\nsecret-token bob\n")
    message = refused(*LOOPBACK, "--auth", f"tokens:{tokens}")
    assert message.startswith(f"{tokens}:3:") and "secret-token" not in message


def test_demo_refuses_a_public_listener() -> None:
    # The demo has no auth: it must not listen beyond loopback (test_proxytap has the table).
    options = Options(environ={})
    with pytest.raises(usage.UsageError, match="--demo"):
        options.parseOptions(["--demo", *PUBLIC])
