"""The HTTP side shared by the GitLab and native contracts.

``GET <backend><path>/authorize?<query>`` with the browser's headers (cookies included)
minus hop-by-hop and body headers, the original Host kept, plus a signed JWT header;
redirects are not followed; bodies are read up to a bound. Subclasses parse a 200.
"""

from __future__ import annotations

import abc
import asyncio
import json
import math
import re
import time
from typing import Any

import aiohttp
import jwt
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from ..config import AuthorizationConfig
from ..errors import (
    AuthorizationTimeout,
    AuthorizationUnavailable,
    InvalidAuthorization,
    PathRejected,
)
from ..httpclient import OriginClient
from . import BrowserRequest, Grant, JoinGrant, JoinRequest, PassBack

__all__ = ["JOIN_HEADER", "HttpAuthorizer", "forwardable_headers", "new_client"]

# A join's description on the authorize request (docs/authorization-api.md).
JOIN_HEADER = "Terminal-Proxy-Join"

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


def new_client(config: AuthorizationConfig) -> OriginClient:
    """A pooled client for the authorization API (``httpclient.py``).

    Not httpx, and no longer aiohttp's ``ClientSession``: a keep-alive HTTP/1.1 client for
    this one origin, on aiohttp's C parser, which cuts the authorization's share of a
    session set-up again (docs/performance.md). Every pooled connection is kept alive (no
    reconnects under load); environment proxies are ignored (the API is ours to reach); no
    cookie jar (a cookie the API sets must never ride along with another user's request);
    no Accept-Encoding (bodies are read raw); ``authorization.timeout`` bounds each whole
    request, answer body included (``HttpAuthorizer``).
    """
    if config.backend is None:
        raise ValueError("authorization.backend is not set")
    return OriginClient(URL(config.backend), max_idle=MAX_CONNECTIONS)


class HttpAuthorizer(abc.ABC):
    """Sends the authorize request; subclasses turn a 200 into a Grant."""

    # Header carrying the signed JWT, and the JWT's issuer.
    jwt_header: str = ""
    jwt_issuer: str = ""

    def __init__(self, config: AuthorizationConfig, client: OriginClient) -> None:
        if config.backend is None:
            raise ValueError("authorization.backend is not set")
        # Base URL of the web app; the browser's path is appended to its path.
        self._backend = URL(config.backend.rstrip("/"))
        self._config = config
        self._client = client
        # The last signed JWT: (iat, token).
        self._jwt: tuple[int, str] | None = None
        # Requests wait here, not in the HTTP client's pool (httpcore's queue, used
        # before, was rescanned on every assignment: thousands of re-polls falling due
        # together starved the event loop). Re-polls take at most MAX_REPOLLS slots, and
        # a re-poll's wait for one counts towards its authorization.timeout; a new
        # session's wait is bounded by limits.handshake_timeout.
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._repoll_slots = asyncio.Semaphore(MAX_REPOLLS)

    async def aclose(self) -> None:
        await self._client.aclose()

    def signed_headers(self, claims: dict[str, Any] | None = None) -> list[tuple[str, str]]:
        """Headers identifying the gateway to the web app.

        ``iat`` has a resolution of one second, so the token is signed once per second
        and reused within it (signing is a visible part of a session's set-up cost);
        a token with ``claims`` (a join's) is signed for its request alone.
        """
        secret = self._config.secret
        if secret is None:
            return []
        now = int(time.time())
        if claims:
            payload = {"iss": self.jwt_issuer, "iat": now, **claims}
            return [(self.jwt_header, jwt.encode(payload, secret.reveal(), "HS256"))]
        if self._jwt is None or self._jwt[0] != now:
            token = jwt.encode({"iss": self.jwt_issuer, "iat": now}, secret.reveal(), "HS256")
            self._jwt = (now, token)
        return [(self.jwt_header, self._jwt[1])]

    def url_for(self, request: BrowserRequest) -> URL:
        """The backend's path prefix + the browser's path exactly as sent + /authorize.

        The gateway refuses paths with dot-segments before authorization
        (terminal_proxy/requestpath.py); should one get here anyway, a URL whose path
        would not reach the API as built here is refused rather than asked about.
        """
        backend = self._backend
        path = backend.raw_path.rstrip("/") + request.path + "/authorize"
        query = request.query_string.encode("ascii", "replace").decode("ascii")
        url = URL.build(
            scheme=backend.scheme,
            authority=backend.raw_authority,
            path=path,
            query_string=query,
            encoded=True,
        )
        if url.raw_path != path or any(seg in (".", "..") for seg in path.split("/")):
            raise PathRejected(
                "the request path would change on its way to the authorization API",
                detail=f"authorization path {path!r} would be normalized",
            )
        return url

    async def authorize(self, request: BrowserRequest) -> Grant | PassBack:
        async with self._slots:
            answer = await self._ask(request)
        assert not isinstance(answer, JoinGrant)
        return answer

    async def reauthorize(self, request: BrowserRequest, grant: Grant) -> Grant | PassBack:
        # The web app is asked the very same question again (Workhorse's auth checker).
        # authorization.timeout bounds the wait for a connection slot too, so slow answers
        # holding every re-poll slot make the waiting re-polls fail (closed, after the
        # grace) instead of stopping revocation for every session.
        try:
            async with asyncio.timeout(self._config.timeout):
                async with self._repoll_slots, self._slots:
                    answer = await self._ask(request)
                    assert not isinstance(answer, JoinGrant)
                    return answer
        except TimeoutError:
            raise AuthorizationTimeout(
                "authorization API timed out",
                detail=f"re-authorization took longer than {self._config.timeout:g}s "
                "(waiting for a connection, the answer and its body together)",
            ) from None

    async def authorize_join(
        self, request: BrowserRequest, join: JoinRequest
    ) -> JoinGrant | PassBack:
        """A join of a shared terminal: the authorize request with the join described
        (``Terminal-Proxy-Join`` header and JWT claim); a 200 names the role."""
        async with self._slots:
            answer = await self._ask(request, join)
        assert not isinstance(answer, Grant)
        return answer

    async def _ask(
        self, request: BrowserRequest, join: JoinRequest | None = None
    ) -> Grant | JoinGrant | PassBack:
        # Header values go as UTF-8, byte for byte what the browser sent (the gateway
        # refuses a request whose headers are not UTF-8 before it gets here).
        headers = forwardable_headers(request.headers)
        headers += self.extra_headers()
        if join is None:
            headers += self.signed_headers()
        else:
            document = join.document()
            headers += [(JOIN_HEADER, json.dumps(document, separators=(",", ":")))]
            headers += self.signed_headers({"join": document})
        limit = self._config.max_response_body
        try:
            async with asyncio.timeout(self._config.timeout):
                answer = await self._client.get(
                    self.url_for(request).raw_path_qs, headers, body_limit=limit
                )
        except TimeoutError as exc:
            raise AuthorizationTimeout(
                "authorization API timed out",
                detail=f"authorization API took longer than {self._config.timeout:g}s",
            ) from exc
        except (aiohttp.ClientError, HttpProcessingError, OSError) as exc:
            raise AuthorizationUnavailable(
                "authorization API unreachable",
                detail=f"authorization API request failed: {type(exc).__name__}: {exc}",
            ) from exc
        status, answer_headers, body = answer.status, answer.headers, answer.body
        if len(body) > limit:
            if status == 200:
                raise InvalidAuthorization(
                    f"authorization API response is larger than {limit} bytes"
                )
            body = f"authorization API response over {limit} bytes\n".encode()
        if status != 200:
            kept = tuple(
                (n, v) for n, v in answer_headers.items() if n.lower() not in _DROP_FROM_ANSWER
            )
            return PassBack(status, kept, body)
        if join is not None:
            return self.parse_join(answer_headers.get("content-type", ""), body)
        return self.parse(answer_headers.get("content-type", ""), body)

    def extra_headers(self) -> list[tuple[str, str]]:
        return []

    @abc.abstractmethod
    def parse(self, content_type: str, body: bytes) -> Grant:
        """Turn a 200 answer into a Grant or raise InvalidAuthorization."""

    def parse_join(self, content_type: str, body: bytes) -> JoinGrant:
        """Turn a 200 answer to a join into a JoinGrant or raise InvalidAuthorization."""
        raise InvalidAuthorization("this contract does not describe joins")


# Deepest nesting of an answer's JSON (the contracts need 4 levels): deeper documents are
# refused before parsing, so no answer can exhaust the parser's recursion.
MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def load_json(body: bytes) -> Any:
    """Parse an answer: malformed, too deep, or holding a non-finite number (NaN,
    Infinity, or one too large for a float) is InvalidAuthorization."""
    _check_depth(body)
    try:
        return json.loads(body, parse_constant=_non_finite, parse_float=_finite_float)
    except RecursionError as exc:  # nesting hidden from _check_depth (UTF-16 bodies)
        raise _too_deep() from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidAuthorization("authorization API returned malformed JSON") from exc


def _check_depth(body: bytes) -> None:
    if body.count(b"[") + body.count(b"{") <= MAX_JSON_DEPTH:
        return
    depth = 0
    for bracket in _JSON_BRACKET.finditer(_JSON_STRING.sub(b'""', body)):
        depth += 1 if bracket[0] in b"[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise _too_deep()


def _too_deep() -> InvalidAuthorization:
    return InvalidAuthorization(
        f"authorization API returned JSON nested deeper than {MAX_JSON_DEPTH} levels"
    )


def _non_finite(name: str) -> Any:
    raise InvalidAuthorization(
        f"authorization API returned a non-finite number ({name}); numbers must be finite"
    )


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidAuthorization(
            "authorization API returned a number too large to represent; numbers must be finite"
        )
    return value


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()
