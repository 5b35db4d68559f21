"""A keep-alive HTTP/1.1 client for GETs to one origin: the authorization API's.

Every session set-up and every re-poll is one GET to the same web app, so this is all the
client does (``connections.py`` says why it is not aiohttp's ``ClientSession``): a request
head written as one buffer on a pooled connection, the answer parsed by aiohttp's C parser
(chunked bodies included), the body read up to a bound. Idle connections are reused most
recent first and dropped after ``KEEPALIVE`` seconds (aiohttp's client default), when the
server said ``Connection: close``, or when an answer was not read to its end. A request
that fails on a reused connection before any answer (the server closed it meanwhile) is
sent once more on a new one, as aiohttp does for idempotent requests.

No cookie jar (a cookie the API sets must never ride along with another user's request),
no redirects followed (a 3xx is an answer like any other), no proxies from the environment;
the caller bounds each request's time, body included.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import ClientOSError, ServerDisconnectedError
from aiohttp.client_proto import ResponseHandler
from multidict import CIMultiDictProxy
from yarl import URL

from .connections import Resolver, connect, expect_answer, request_head

__all__ = ["KEEPALIVE", "Answer", "OriginClient"]

# Seconds an idle connection is kept (aiohttp's client default; servers commonly keep
# theirs longer, so the client lets go first and never sends on a closing connection).
KEEPALIVE = 15.0


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    # At most ``body_limit`` + 1 bytes: longer means the body was over the limit.
    body: bytes


class OriginClient:
    """GETs to ``origin`` (scheme, host and port of a URL), at most ``max_idle`` connections
    kept between requests (the caller bounds how many are in flight)."""

    def __init__(self, origin: URL, *, max_idle: int) -> None:
        if origin.scheme not in ("http", "https") or origin.host is None:
            raise ValueError(f"not an http(s) origin: {origin}")
        self._host = origin.host
        self._port = origin.port or (443 if origin.scheme == "https" else 80)
        self._authority = origin.host_port_subcomponent or origin.host
        self._ssl = ssl.create_default_context() if origin.scheme == "https" else None
        self._resolver = Resolver()
        self._max_idle = max_idle
        # (connection, loop time it went idle); the most recent last.
        self._idle: list[tuple[ResponseHandler, float]] = []

    async def get(
        self, target: str, headers: Sequence[tuple[str, str]], *, body_limit: int
    ) -> Answer:
        """``GET target`` with ``headers`` as given; ``Host`` (the origin's) and ``Accept:
        */*`` unless they name their own (the browser's Host is passed on, as Workhorse
        does)."""
        head = request_head(target, (("Host", self._authority), ("Accept", "*/*")), headers)
        protocol = self._reusable()
        if protocol is not None:
            try:
                return await self._exchange(protocol, head, body_limit)
            except (ServerDisconnectedError, ClientOSError, ConnectionResetError):
                pass  # closed by the server while idle: once more, on a new connection
        protocol = await connect(self._host, self._port, self._ssl, self._resolver)
        return await self._exchange(protocol, head, body_limit)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for protocol, _ in idle:
            protocol.close()

    def _reusable(self) -> ResponseHandler | None:
        now = time.monotonic()
        while self._idle:
            protocol, since = self._idle.pop()
            if now - since < KEEPALIVE and protocol.is_connected() and not protocol.should_close:
                expect_answer(protocol)
                return protocol
            protocol.close()
        return None

    async def _exchange(self, protocol: ResponseHandler, head: bytes, body_limit: int) -> Answer:
        kept = False
        try:
            assert protocol.transport is not None
            protocol.transport.write(head)
            message, payload = await protocol.read()
            body = bytearray()
            while len(body) <= body_limit:
                chunk = await payload.readany()
                if not chunk:
                    break
                body += chunk
            if len(body) <= body_limit and payload.is_eof() and not protocol.should_close:
                kept = self._keep(protocol)
            return Answer(message.code, message.headers, bytes(body[: body_limit + 1]))
        finally:
            if not kept:
                protocol.close()

    def _keep(self, protocol: ResponseHandler) -> bool:
        if len(self._idle) >= self._max_idle:
            return False
        self._idle.append((protocol, time.monotonic()))
        return True
