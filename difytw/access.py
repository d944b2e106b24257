"""The access gate difyproxy runs before forwarding: who, where, how often, as which user.

:class:`AccessPolicy` is what ``twist difyproxy`` was told (``--auth``, ``--user-template``,
``--allow``, limits, CORS); :class:`AccessGate` applies it to one request, in this order:

1. CORS: a preflight is answered here (never upstream); a foreign ``Origin`` is refused;
2. authentication (:mod:`difytw.auth`) -> an identity, else 401/403;
   a client's ``X-Forwarded-For`` (and -Proto, -Host) is kept only from a
   ``--trusted-proxy`` peer;
3. the allow-list (:mod:`difytw.allowlist`) -> the route, else 403/404/405/400;
4. the Dify ``user`` (:mod:`difytw.identity`, :mod:`difytw.formuser`) is written into the
   query, the JSON body or the multipart field the route reads it from;
5. the rate, then a stream slot (:mod:`difytw.limits`), held until the exchange ends.

Refusals are ``DifyError`` (a :class:`~difytw.refusal.Refusal`), answered by the proxy's
error handler as Dify-shaped JSON; their extra headers are set here first.  The gate swaps
``request.content`` (and its Content-Type) for a rewritten body when it has to, so the
proxy forwards whatever the gate left; a 20 MB upload is rewritten from spool to spool in
slices on the proxy's cooperator, never whole in memory nor in one reactor turn.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, cast
from urllib.parse import urlsplit

from twisted.internet.defer import CancelledError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import Cooperator, TaskDone
from twisted.logger import Logger

from difytw.accesslog import ProxyExchange
from difytw.allowlist import AllowList, Route, UserPlace, api_segments
from difytw.auth import Authenticator, Caller, Network, NoAuth, trusted_peer
from difytw.cors import CorsPolicy, is_preflight, strip_upstream
from difytw.formuser import FormUser, content_type_for, form_boundary
from difytw.identity import MAX_JSON, Decision, UserRule, UserTemplate, rewrite_json, rewrite_query
from difytw.limits import Rate, RateLimiter, StreamSlots
from difytw.refusal import Refusal
from difytw.uri import RequestTarget

_log = Logger()

SLICE = 2**16  # bytes of a spooled body read per cooperator step
SPOOL_IN_MEMORY = 2**20  # a rewritten body beyond this goes to a temporary file
_BODY_METHODS = (b"POST", b"PUT", b"PATCH", b"DELETE")
# Allow-list verdicts remembered per (method, path); the table is emptied when full so
# that paths carrying ids (one per conversation) cannot grow it without bound.
ROUTE_MEMORY = 512


@dataclass(frozen=True)
class AccessPolicy:
    """Defaults: ``--auth none`` (loopback only, checked by the command line), every
    Dify ``user`` filled in, the end-user routes, 4 streams per user, 4096 in all."""

    auth: Authenticator = field(default_factory=NoAuth)
    user_template: UserTemplate = field(default_factory=UserTemplate)
    allow: AllowList = field(default_factory=AllowList)
    rate: Rate | None = None
    max_streams_per_user: int | None = 4
    max_streams: int | None = 4096
    cors: CorsPolicy = field(default_factory=CorsPolicy)
    # --trusted-proxy: the proxies in front whose X-Forwarded-For chain is believed.
    trusted_proxies: tuple[Network, ...] = ()

    @classmethod
    def fixed_user(cls, user: str) -> AccessPolicy:
        """No authentication and one end user for every caller (the offline demo)."""
        return cls(auth=NoAuth(user, names_own_user=False))


def _header(request: ProxyExchange, name: bytes) -> str | None:
    values = request.requestHeaders.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


def _is_json(content_type: str) -> bool:
    # Flask's Request.is_json: application/json or application/*+json.
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def _size(content: IO[bytes] | None) -> int:
    if content is None:
        return 0
    content.seek(0, 2)
    size = content.tell()
    content.seek(0)
    return size


class AccessGate:
    """Applies an :class:`AccessPolicy`; ``admit`` before forwarding, ``head`` after the
    upstream response headers were copied."""

    def __init__(
        self,
        policy: AccessPolicy,
        *,
        upstream: str,
        prefix: bytes,
        clock: IReactorTime,
        cooperator: Cooperator,
    ) -> None:
        self.policy = policy
        self._upstream_path = (urlsplit(upstream).path or "").encode("ascii")
        self._prefix = prefix
        self._cooperator = cooperator
        self.rate = RateLimiter(policy.rate, clock.seconds) if policy.rate is not None else None
        self.slots = StreamSlots(per_key=policy.max_streams_per_user, total=policy.max_streams)
        self._routes: dict[tuple[bytes, bytes], Route] = {}

    async def admit(self, request: ProxyExchange, target: RequestTarget) -> RequestTarget | None:
        """The target to forward (its query may carry the enforced ``user``), or None when
        the gate has answered the request itself (a CORS preflight).

        ``target`` is under the proxy's prefix (the proxy answered 404 otherwise).
        """
        try:
            return await self._admit(request, target, target.path[len(self._prefix) :])
        except Refusal as refusal:
            for name, value in refusal.headers:
                request.responseHeaders.setRawHeaders(name, [value])
            _log.info(
                "refused {method} {path}: {status} {code}",
                method=request.method.decode("latin-1"),
                path=target.path.decode("latin-1"),
                status=refusal.status,
                code=refusal.code,
            )
            raise

    async def _admit(
        self, request: ProxyExchange, target: RequestTarget, rest: bytes
    ) -> RequestTarget | None:
        policy = self.policy
        origin = _header(request, b"origin")
        if is_preflight(request.method, origin, _header(request, b"access-control-request-method")):
            assert origin is not None
            granted = policy.cors.preflight(
                origin,
                _header(request, b"access-control-request-method") or "",
                _header(request, b"access-control-request-headers") or "",
            )
            request.setResponseCode(204)
            for name, value in granted:
                request.responseHeaders.addRawHeader(name, value)
            request.head_at = request.clock.seconds()
            request.outcome = "cors_preflight"
            return None
        for name, value in policy.cors.response_headers(origin, _header(request, b"host")):
            request.responseHeaders.addRawHeader(name, value)

        peer = getattr(request.getClientAddress(), "host", None)
        caller = Caller(
            {
                name.lower(): list(values)
                for name, values in request.requestHeaders.getAllRawHeaders()
            },
            peer if isinstance(peer, str) else None,
        )
        identity = policy.auth.authenticate(caller)
        if not trusted_peer(caller.peer, policy.trusted_proxies):
            # As nginx's realip: a chain is only as good as the proxy that sent it, and a
            # client not in --trusted-proxy could have written any address in it.  The
            # forwarded request then names this peer alone (headers.py appends it), with
            # this hop's own scheme and Host.
            for name in (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"):
                request.requestHeaders.removeHeader(name)
        rule = UserRule.for_identity(identity, policy.user_template)
        route = self._route(request.method, rest)
        if self.rate is not None and not rule.keep_named:
            self.rate.check(rule.user)  # before any body work: the key is already known
        query, decision = await self._place_user(request, target, route, rule)
        if self.rate is not None and rule.keep_named:
            self.rate.check(decision.user)
        if decision.forged is not None:
            _log.warn(
                "caller {identity!r} named Dify user {named!r}; sent as {user!r} instead",
                identity=identity.sub[:100],
                named=decision.forged[:100],
                user=decision.user,
                path=target.path.decode("latin-1"),
            )
        cast(Any, request).dify_user = decision.user  # the stop call needs this user
        if route.stream:
            lease = self.slots.acquire(decision.user)
            request.notifyFinish().addBoth(lambda _: lease.release())
        return RequestTarget(target.path, query)

    def _route(self, method: bytes, rest: bytes) -> Route:
        """``policy.allow.check`` for this method and path, remembered: the policy is fixed
        and the check is pure, while decoding the path and trying every route on each
        request cost ~5 % of a request's CPU.  Refusals are not remembered (they raise)."""
        key = (method, rest)
        route = self._routes.get(key)
        if route is None:
            route = self.policy.allow.check(
                method.decode("latin-1"), api_segments(self._upstream_path, rest)
            )
            if len(self._routes) >= ROUTE_MEMORY:
                self._routes.clear()
            self._routes[key] = route
        return route

    async def _place_user(
        self, request: ProxyExchange, target: RequestTarget, route: Route, rule: UserRule
    ) -> tuple[bytes | None, Decision]:
        """Write ``user`` where ``route`` reads it; returns the query to forward."""
        place = route.user
        content_type = _header(request, b"content-type") or ""
        size = _size(request.content)
        if place is UserPlace.BY_METHOD:
            if request.method not in _BODY_METHODS:
                place = UserPlace.QUERY
            elif form_boundary(content_type.encode("latin-1")) is not None:
                place = UserPlace.FORM
            elif size and _is_json(content_type):
                place = UserPlace.JSON
            else:
                place = UserPlace.NONE
        if place is UserPlace.QUERY:
            query, decision = rewrite_query(target.query, rule)
            return (target.query if query is None else query), decision
        if place is UserPlace.JSON:
            if size and not _is_json(content_type):
                raise Refusal(
                    415,
                    "unsupported_media_type",
                    "Did not attempt to load JSON data because the request Content-Type "
                    "was not 'application/json'.",
                )
            if size > MAX_JSON:
                raise Refusal(
                    413, "request_entity_too_large", f"A JSON body may be at most {MAX_JSON} bytes."
                )
            body = request.content.read() if request.content is not None and size else b""
            new, decision = rewrite_json(body, rule)
            if new is not None:
                self._replace_body(request, io.BytesIO(new))
                if not size:
                    request.requestHeaders.setRawHeaders(b"Content-Type", [b"application/json"])
            return target.query, decision
        if place is UserPlace.FORM:
            boundary = form_boundary(content_type.encode("latin-1"))
            if boundary is None:
                raise Refusal(
                    415, "unsupported_media_type", "This route takes multipart/form-data."
                )
            return target.query, await self._form(request, boundary, rule)
        return target.query, Decision(rule.user, rewrite=False, forged=None)

    async def _form(self, request: ProxyExchange, boundary: bytes, rule: UserRule) -> Decision:
        content = request.content
        if content is None:
            content = io.BytesIO()
        if rule.keep_named:
            scan = FormUser(boundary)
            await self._feed(content, scan)
            decision = rule.decide(scan.close())
            if not decision.rewrite:
                return decision
        else:
            decision = rule.decide([])  # recomputed from the fields found below
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
        try:
            form = FormUser(boundary, user=rule.user, write=spool.write)
            await self._feed(content, form)
            decision = rule.decide(form.close())
        except BaseException:
            spool.close()
            raise
        if decision.rewrite or not rule.keep_named:
            self._replace_body(request, cast(IO[bytes], spool))
            request.requestHeaders.setRawHeaders(b"Content-Type", [content_type_for(boundary)])
        else:
            spool.close()
        return decision

    async def _feed(self, content: IO[bytes], form: FormUser) -> None:
        def slices() -> Iterator[None]:
            content.seek(0)
            while chunk := content.read(SLICE):
                form.feed(chunk)
                yield None
            content.seek(0)

        task = self._cooperator.cooperate(slices())
        try:
            await task.whenDone()
        except CancelledError:
            with contextlib.suppress(TaskDone):
                task.stop()
            raise

    @staticmethod
    def _replace_body(request: ProxyExchange, body: IO[bytes]) -> None:
        old, request.content = request.content, body
        body.seek(0)
        if old is not None:
            old.close()

    def head(self, request: ProxyExchange) -> None:
        """After upstream's headers were copied: none of its ``Access-Control-*`` (Dify
        allows every origin), ours instead."""
        headers = request.responseHeaders
        for name in strip_upstream(list(headers.getAllRawHeaders())):
            headers.removeHeader(name)
        try:
            granted = self.policy.cors.response_headers(
                _header(request, b"origin"), _header(request, b"host")
            )
        except Refusal:  # cannot happen: admit() refused such requests already
            granted = []
        vary = b", ".join(headers.getRawHeaders(b"vary", [])).lower()
        for name, value in granted:
            if name == b"Vary":
                if b"origin" not in vary:
                    headers.addRawHeader(name, value)
            else:
                headers.setRawHeaders(name, [value])
