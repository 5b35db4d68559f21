"""A fake authorization API that speaks the real contracts.

GitLab (Rails) contract: answers ``GET …/terminal.ws/authorize`` with
``application/vnd.gitlab-workhorse+json`` ``{"Channel": {...}}`` after verifying the
``Gitlab-Workhorse-Api-Request`` JWT (HS256, iss=gitlab-workhorse, iat) with PyJWT and
the ``Gitlab-Workhorse`` header, as Rails' ``verify_api_request!`` does. Native contract:
``application/json`` ``{"version": 1, "user": ..., "connection": ...}``.

A test switches its behaviour at any time (``deny``, ``change``, ``fail``, ``stall``,
``malformed``) and synchronises on ``wait_requests(n)``, never on sleeps.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web

__all__ = ["AuthRequest", "FakeAuthApi"]


@dataclass
class AuthRequest:
    """One authorize request as the fake saw it."""

    path: str
    query: str
    headers: dict[str, list[str]]
    host: str
    jwt_ok: bool
    answered: int = 0
    # The path as it came on the wire (``path`` is decoded).
    raw_path: str = ""


@dataclass
class FakeAuthApi:
    secret: bytes
    contract: str = "gitlab"
    # The connection details to hand out (GitLab's Channel object / native connection).
    channel: dict[str, Any] = field(default_factory=dict)
    user: dict[str, Any] | None = None
    # Behaviour: "ok", "deny", "fail", "stall", "malformed", "wrong_content_type",
    # "redirect", "huge", "bad_details".
    mode: str = "ok"
    deny_status: int = 403
    # Set: a 200 answer carries exactly these bytes (with the contract's content type).
    raw_body: bytes | None = None
    requests: list[AuthRequest] = field(default_factory=list)
    url: str = ""
    # Requests being answered now, and the most at once, per query string.
    in_flight: dict[str, int] = field(default_factory=dict)
    max_in_flight: dict[str, int] = field(default_factory=dict)
    max_total_in_flight: int = 0
    # A Set-Cookie the API adds to every answer (a client must never send it back).
    set_cookie: str | None = None
    # Native contract, joins of shared terminals (a request with Terminal-Proxy-Join):
    # the role and user answered (role None: no role named).
    join_role: str | None = "viewer"
    join_user: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self._changed = asyncio.Condition()
        self._stall = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeAuthApi:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stall.set()
        assert self._runner is not None
        await self._runner.cleanup()

    def release_stalled(self) -> None:
        self._stall.set()

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        if mode != "stall":
            self._stall.set()
        else:
            self._stall = asyncio.Event()

    async def wait_requests(self, count: int, timeout: float = 10) -> AuthRequest:
        """Wait until ``count`` requests have been answered (or stalled); return the last."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: len(self.requests) >= count)
        return self.requests[count - 1]

    def _verify(self, request: web.Request) -> bool:
        header = (
            "Gitlab-Workhorse-Api-Request"
            if self.contract == "gitlab"
            else ("Terminal-Proxy-Api-Request")
        )
        token = request.headers.get(header)
        if token is None:
            return False
        issuer = "gitlab-workhorse" if self.contract == "gitlab" else "terminal-proxy"
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=["HS256"],
                issuer=issuer,
                options={"require": ["iss", "iat"]},
            )
        except jwt.PyJWTError:
            return False
        return abs(time.time() - float(claims["iat"])) < 60

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        key = request.query_string
        self.in_flight[key] = self.in_flight.get(key, 0) + 1
        self.max_in_flight[key] = max(self.max_in_flight.get(key, 0), self.in_flight[key])
        self.max_total_in_flight = max(self.max_total_in_flight, sum(self.in_flight.values()))
        try:
            response = await self._answer(request)
            if self.set_cookie is not None:
                response.headers["Set-Cookie"] = self.set_cookie
            return response
        finally:
            self.in_flight[key] -= 1

    async def _answer(self, request: web.Request) -> web.StreamResponse:
        headers: dict[str, list[str]] = {}
        for key, value in request.headers.items():
            headers.setdefault(key.lower(), []).append(value)
        record = AuthRequest(
            path=request.path,
            query=request.query_string,
            headers=headers,
            host=request.host,
            jwt_ok=self._verify(request),
            raw_path=request.raw_path.split("?", 1)[0],
        )
        async with self._changed:
            self.requests.append(record)
            self._changed.notify_all()
        if not request.path.endswith("/terminal.ws/authorize"):
            return web.Response(status=404, text="Not found")
        if self.contract == "gitlab" and "gitlab-workhorse" not in headers:
            return web.Response(status=403, text="missing Gitlab-Workhorse header")
        if not record.jwt_ok:
            return web.Response(status=500, text="JWT::DecodeError")
        mode = self.mode
        if mode == "stall":
            await self._stall.wait()
            mode = self.mode
        record.answered = 1
        if mode == "deny":
            return web.Response(
                status=self.deny_status,
                text="You are not allowed to open this terminal",
                headers={"WWW-Authenticate": 'Bearer realm="gitlab"', "X-Custom": "kept"},
            )
        if mode == "fail":
            return web.Response(status=500, text="Internal Server Error")
        if mode == "redirect":
            raise web.HTTPFound("/users/sign_in")
        if mode == "malformed":
            return web.Response(body=b"{not json", content_type=self._content_type())
        if mode == "wrong_content_type":
            return web.Response(text="<html>login</html>", content_type="text/html")
        if mode == "huge":
            return web.Response(status=403, text="x" * 100_000)
        if self.contract == "native" and "terminal-proxy-join" in headers:
            answer: dict[str, Any] = {"version": 1}
            if self.join_role is not None:
                answer["role"] = self.join_role
            if self.join_user is not None:
                answer["user"] = self.join_user
            return web.Response(body=json.dumps(answer).encode(), content_type="application/json")
        body = self.body() if self.raw_body is None else self.raw_body
        return web.Response(body=body, content_type=self._content_type())

    def _content_type(self) -> str:
        return (
            "application/vnd.gitlab-workhorse+json"
            if self.contract == "gitlab"
            else ("application/json")
        )

    def body(self) -> bytes:
        if self.contract == "gitlab":
            if self.mode == "bad_details":
                return json.dumps({"Channel": {**self.channel, "Url": "http://x"}}).encode()
            return json.dumps({"Channel": self.channel}).encode()
        doc: dict[str, Any] = {"version": 1, "connection": self.channel}
        if self.user is not None:
            doc["user"] = self.user
        return json.dumps(doc).encode()
