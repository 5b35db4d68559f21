"""The HTTP side shared by the GitLab and native contracts.

``GET <backend><path>/authorize?<query>`` with the browser's headers (cookies included)
minus hop-by-hop and body headers, the original Host kept, plus a signed JWT header;
redirects are not followed; bodies are read up to a bound. Subclasses parse a 200.
"""

from __future__ import annotations

import abc
import asyncio
import json
import time
from typing import Any

import httpx
import jwt

from ..config import AuthorizationConfig
from ..errors import AuthorizationTimeout, AuthorizationUnavailable, InvalidAuthorization
from . import BrowserRequest, Grant, PassBack

__all__ = ["HttpAuthorizer", "forwardable_headers", "new_client"]

# RFC 9110 hop-by-hop headers plus body headers that make no sense on a GET
# (Workhorse's list, and Proxy-Connection which some clients still send).
_DROP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-type",
        "content-encoding",
        "content-length",
        "content-disposition",
        "accept-encoding",
    }
)
# Headers of the API's answer that must not be replayed to the browser.
_DROP_FROM_ANSWER = _DROP | {
    "date",
    "server",
    "gitlab-workhorse-send-data",
    "gitlab-sv",
    "gitlab-lb",
}


def forwardable_headers(headers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    """The browser's headers minus hop-by-hop, body headers and those Connection names."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    return [(n, v) for n, v in headers if n.lower() not in _DROP and n.lower() not in named]


# Requests in flight to the authorization API, and how many of them may be re-polls (the
# rest stay free for new sessions).
MAX_CONNECTIONS = 32
MAX_REPOLLS = 16


def new_client(config: AuthorizationConfig) -> httpx.AsyncClient:
    """A pooled client; environment proxies are ignored (the API is ours to reach).

    The pool is small on purpose: httpcore checks every pooled connection (a poll()
    each) on every request, so a large pool costs CPU on every session set-up; 32
    connections still carry hundreds of authorizations per second (docs/performance.md).
    """
    return httpx.AsyncClient(
        timeout=httpx.Timeout(config.timeout),
        follow_redirects=False,
        trust_env=False,
        limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=8),
    )


class HttpAuthorizer(abc.ABC):
    """Sends the authorize request; subclasses turn a 200 into a Grant."""

    # Header carrying the signed JWT, and the JWT's issuer.
    jwt_header: str = ""
    jwt_issuer: str = ""

    def __init__(self, config: AuthorizationConfig, client: httpx.AsyncClient) -> None:
        if config.backend is None:
            raise ValueError("authorization.backend is not set")
        # Base URL of the web app; the browser's path is appended to its path.
        self._backend = httpx.URL(config.backend.rstrip("/"))
        self._config = config
        self._client = client
        # The last signed JWT: (iat, token).
        self._jwt: tuple[int, str] | None = None
        # Requests wait here, not in httpcore's pool: its queue is rescanned on every
        # assignment (quadratic in waiters), so thousands of re-polls falling due
        # together used to starve the event loop and end in pool timeouts. Re-polls take
        # at most MAX_REPOLLS slots, and a re-poll's wait for one counts towards its
        # authorization.timeout: slow answers holding every slot make the waiting
        # re-polls fail (and fail closed after the grace) instead of queueing for ever.
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._repoll_slots = asyncio.Semaphore(MAX_REPOLLS)

    async def aclose(self) -> None:
        await self._client.aclose()

    def signed_headers(self) -> list[tuple[str, str]]:
        """Headers identifying the gateway to the web app.

        ``iat`` has a resolution of one second, so the token is signed once per second
        and reused within it (signing is a visible part of a session's set-up cost).
        """
        secret = self._config.secret
        if secret is None:
            return []
        now = int(time.time())
        if self._jwt is None or self._jwt[0] != now:
            token = jwt.encode({"iss": self.jwt_issuer, "iat": now}, secret.reveal(), "HS256")
            self._jwt = (now, token)
        return [(self.jwt_header, self._jwt[1])]

    def url_for(self, request: BrowserRequest) -> httpx.URL:
        path = self._backend.path.rstrip("/") + request.path + "/authorize"
        query = request.query_string.encode("ascii", "replace")
        return self._backend.copy_with(path=path, query=query or None)

    async def authorize(self, request: BrowserRequest) -> Grant | PassBack:
        # The wait for a slot is bounded by limits.handshake_timeout (the caller's).
        async with self._slots:
            return await self._ask(request)

    async def reauthorize(self, request: BrowserRequest, grant: Grant) -> Grant | PassBack:
        # The web app is asked the very same question again (Workhorse's auth checker).
        try:
            async with asyncio.timeout(self._config.timeout):
                async with self._repoll_slots, self._slots:
                    return await self._ask(request, deadline=False)
        except TimeoutError:
            raise AuthorizationTimeout(
                "authorization API timed out",
                detail=f"re-authorization took longer than {self._config.timeout:g}s "
                "(waiting for a connection, the answer and its body together)",
            ) from None

    async def _ask(self, request: BrowserRequest, *, deadline: bool = True) -> Grant | PassBack:
        """One request; authorization.timeout bounds all of it, body included (``deadline``
        False: the caller's deadline does)."""
        headers = forwardable_headers(request.headers)
        headers += self.extra_headers()
        headers += self.signed_headers()
        limit = self._config.max_response_body
        timeout = self._config.timeout if deadline else None
        try:
            async with (
                asyncio.timeout(timeout),
                self._client.stream("GET", self.url_for(request), headers=headers) as r,
            ):
                body = bytearray()
                async for chunk in r.aiter_raw():
                    body += chunk
                    if len(body) > limit:
                        break
        except TimeoutError:
            raise AuthorizationTimeout(
                "authorization API timed out",
                detail=f"authorization API answer took longer than {self._config.timeout:g}s",
            ) from None
        except httpx.TimeoutException as exc:
            raise AuthorizationTimeout(
                "authorization API timed out", detail=f"authorization API timed out: {exc!r}"
            ) from exc
        except httpx.HTTPError as exc:
            raise AuthorizationUnavailable(
                "authorization API unreachable",
                detail=f"authorization API request failed: {type(exc).__name__}: {exc}",
            ) from exc
        if len(body) > limit:
            if r.status_code == 200:
                raise InvalidAuthorization(
                    f"authorization API response is larger than {limit} bytes"
                )
            body = bytearray(f"authorization API response over {limit} bytes\n".encode())
        if r.status_code != 200:
            kept = tuple(
                (n, v) for n, v in r.headers.multi_items() if n.lower() not in _DROP_FROM_ANSWER
            )
            return PassBack(r.status_code, kept, bytes(body))
        return self.parse(r.headers.get("content-type", ""), bytes(body))

    def extra_headers(self) -> list[tuple[str, str]]:
        return []

    @abc.abstractmethod
    def parse(self, content_type: str, body: bytes) -> Grant:
        """Turn a 200 answer into a Grant or raise InvalidAuthorization."""


def load_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidAuthorization("authorization API returned malformed JSON") from exc


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()
