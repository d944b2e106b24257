"""A Dify-shaped refusal that also carries response headers (pure: no Twisted).

The access checks (auth, allow-list, limits, CORS) refuse with Dify's JSON error body like
every other proxy error (dify-contract.md section 3), but some refusals are only complete
with a header: a 401 names its scheme in ``WWW-Authenticate`` (RFC 9110 section 11.6.1, and
Dify sends ``Bearer realm="api"``, contract section 1.1), a 429/503 says when to come back
in ``Retry-After`` (RFC 9110 section 10.2.3).  ``DifyError.extra`` would put those into the
JSON body, so they travel beside it instead.
"""

from __future__ import annotations

import math

from difytw.errors import DifyError

# The realm this proxy names in its challenges; not Dify's "api" so a client can tell
# which hop refused it.
REALM = b'Bearer realm="difyproxy"'


class Refusal(DifyError):
    """A ``DifyError`` plus the response headers that belong to it."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(status, code, message)
        self.headers = headers


def unauthorized(code: str, message: str) -> Refusal:
    """401 with the Bearer challenge a client needs to know what to send."""
    return Refusal(401, code, message, headers=((b"WWW-Authenticate", REALM),))


def retry_after(status: int, code: str, message: str, seconds: float) -> Refusal:
    """429/503 with ``Retry-After`` in whole seconds, never less than one."""
    wait = max(1, math.ceil(seconds))
    return Refusal(status, code, message, headers=((b"Retry-After", b"%d" % wait),))
