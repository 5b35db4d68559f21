"""A browser's resume (or join) of another replica's session, passed through to it.

The session id names the replica that holds the session (``<replica id>.<random>``).
When a resume reaches another replica (no sticky routing, a rebalanced load balancer),
that replica forwards it: it dials the holder's internal listener with the browser's
request, signed (``signing.py``), and

* before the upgrade, the holder's refusal (404, 410, 403, the authorization API's own
  answer, 429/503 with ``Retry-After``…) goes back to the browser as it is;
* after it, the browser is upgraded with the subprotocol the holder chose and every
  frame is passed through verbatim both ways, close codes and reasons included: the
  holder's last output reaches the browser before its close frame.

The holder does everything else (authorization, token, replay, limits), seeing the
browser's own address in ``X-Forwarded-For``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

from ..authorization.http import forwardable_headers
from ..errors import ReplicaUnreachable, ResumeRefused
from ..tasks import cancel_and_wait, spawn
from ..wsdial import ERROR_BODY_LIMIT
from .directory import ReplicaDirectory
from .signing import HEADER, sign

__all__ = ["Forwarder", "replica_of"]

log = logging.getLogger("terminal_proxy.cluster")

# Browser headers the forwarding sets itself (or that only the two ends may set).
_OWN = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "x-forwarded-for",
        "x-forwarded-proto",
        HEADER.lower(),
    }
)
# Headers of the holder's refusal that are not passed on.
_NOT_PASSED = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})


class HandshakeRejected(Exception):
    """The upstream answered the upgrade with an HTTP status instead of 101."""

    def __init__(
        self,
        status: int,
        reason: str,
        content_type: str,
        body: bytes,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(status)
        self.status = status
        self.reason = reason
        self.content_type = content_type
        self.body = body
        # The answer's headers, for a caller that passes the refusal on (forwarding).
        self.headers = headers


class BodyReadingResponse(aiohttp.ClientResponse):
    """Reads a bounded error body when the upgrade is refused.

    aiohttp's ws_connect closes a non-101 response without reading it, and the
    kube-apiserver puts the only useful explanation (its Status JSON) in that body.
    """

    async def start(self, connection: Any) -> aiohttp.ClientResponse:
        response = await super().start(connection)
        if self.status != 101 and self.method == "GET":
            body = b""
            try:
                while len(body) < ERROR_BODY_LIMIT and not self.content.at_eof():
                    chunk = await self.content.read(ERROR_BODY_LIMIT - len(body))
                    if not chunk:
                        break
                    body += chunk
            except (TimeoutError, aiohttp.ClientError):
                pass
            raise HandshakeRejected(
                self.status,
                self.reason or "",
                self.headers.get("Content-Type", ""),
                body,
                tuple(self.headers.items()),
            )
        return response


def replica_of(session_id: str) -> str:
    """The replica id a session id names ("" when it names none)."""
    tag, dot, rest = session_id.partition(".")
    return tag if dot and rest else ""


class Forwarder:
    """Forwards browsers' resumes and joins to the replica holding the session."""

    def __init__(
        self,
        *,
        replica_id: str,
        secret: bytes,
        directory: ReplicaDirectory,
        timeout: float,
        close_timeout: float,
        max_message_size: int,
        outcome: Callable[[str], None] = lambda outcome: None,
    ) -> None:
        self.replica_id = replica_id
        self._secret = secret
        self._directory = directory
        # The holder's whole handshake (its authorization included); 0: none.
        self._timeout = timeout
        self._close_timeout = close_timeout
        self._max_message_size = max_message_size
        self._outcome = outcome
        self._session: aiohttp.ClientSession | None = None
        # Forwarded sessions finishing their close (they outlive a cancelled handler).
        self._ending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, enable_cleanup_closed=False),
            response_class=BodyReadingResponse,
            # forward() bounds the dial itself; aiohttp's default total timeout would leave
            # a timer behind per upgraded connection (docs/performance.md).
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
            trust_env=False,
            skip_auto_headers=("User-Agent",),
        )

    async def aclose(self) -> None:
        await cancel_and_wait(list(self._ending))
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(
        self,
        request: web.Request,
        *,
        replica: str,
        scheme: str,
        forwarded_for: str,
        offered: list[str],
        make_socket: Callable[[str], web.WebSocketResponse],
        pending: AbstractContextManager[None],
        request_id: str,
    ) -> web.StreamResponse:
        """Pass ``request`` to ``replica``: its refusal, or the upgraded browser once the
        session between them has ended."""
        assert self._session is not None, "Forwarder.start() was not called"
        base = await self._directory.internal_url(replica)
        fields: dict[str, object] = {"request_id": request_id, "replica": replica}
        if base is None:
            self._outcome("unknown_replica")
            raise ResumeRefused(
                "no such session to resume",
                status=404,
                detail=f"replica {replica} is not in the cluster's directory",
            )
        target = request.raw_path
        headers = [
            (name, value)
            for name, value in forwardable_headers(tuple(request.headers.items()))
            if name.lower() not in _OWN
        ]
        headers += [
            ("X-Forwarded-For", forwarded_for),
            ("X-Forwarded-Proto", scheme),
            (HEADER, sign(self._secret, self.replica_id, "GET", target, time.time())),
        ]
        try:
            with pending:
                async with asyncio.timeout(self._timeout or None):
                    peer = await self._session.ws_connect(
                        base + target,
                        protocols=offered,
                        headers=headers,
                        autoclose=True,
                        autoping=True,
                        max_msg_size=self._max_message_size,
                        timeout=aiohttp.ClientWSTimeout(ws_close=self._close_timeout),
                        compress=0,
                        # Our browser socket pings the browser; the holder pings us.
                        heartbeat=None,
                    )
        except HandshakeRejected as refused:
            self._outcome(str(refused.status))
            log.info(
                "forwarded request refused by replica %s: %d",
                replica,
                refused.status,
                extra={"fields": fields | {"status": refused.status}},
            )
            passed = [(n, v) for n, v in refused.headers if n.lower() not in _NOT_PASSED]
            response = web.Response(status=refused.status, body=refused.body, headers=passed)
            response.force_close()
            return response
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._outcome("unreachable")
            raise ReplicaUnreachable(
                f"replica {replica} unreachable",
                detail=f"replica {replica} at {base}: {type(exc).__name__}: {exc}",
            ) from None
        try:
            browser = make_socket(peer.protocol or "")
            await browser.prepare(request)
        except BaseException:
            await asyncio.shield(peer.close(code=1001, message=b"browser connection lost"))
            raise
        self._outcome("101")
        log.info("forwarded to replica %s", replica, extra={"fields": fields})
        await self._relay(browser, peer, replica, request_id)
        return browser

    async def _relay(
        self,
        browser: web.WebSocketResponse,
        peer: aiohttp.ClientWebSocketResponse,
        replica: str,
        request_id: str,
    ) -> None:
        """Both ways until both are closed; each way closes the other side with the code
        and reason its source closed with."""
        tasks = [
            spawn(_pipe(peer, browser, None), name=f"forward-{request_id}-from-replica"),
            spawn(
                _pipe(browser, peer, (1001, "browser connection lost")),
                name=f"forward-{request_id}-from-browser",
            ),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Also when aiohttp cancels this handler (the browser's connection closed
            # right after its close frame): the close still reaches the holder.
            ending = spawn(self._end(tasks, peer), name=f"forward-{request_id}-end")
            self._ending.add(ending)
            ending.add_done_callback(self._ending.discard)
            await asyncio.shield(ending)

    async def _end(
        self, tasks: list[asyncio.Task[None]], peer: aiohttp.ClientWebSocketResponse
    ) -> None:
        """The other way ends with the close the first one sent; then nothing is left."""
        await asyncio.wait(tasks, timeout=self._close_timeout + 1)
        await cancel_and_wait(tasks)
        if not peer.closed:
            await peer.close(code=1001, message=b"browser connection lost")


async def _pipe(
    source: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
    sink: aiohttp.ClientWebSocketResponse | web.WebSocketResponse,
    lost: tuple[int, str] | None,
) -> None:
    """Pass ``source``'s messages to ``sink`` in order; then close ``sink`` as ``source``
    closed. When ``source`` vanished without a close frame: close ``sink`` with ``lost``,
    or (None) drop its connection without one too, so that a browser resumes as it would
    have with the holder itself (the web client resumes after a 1006 only; a lost link
    between replicas must not cost a live session)."""
    while True:
        msg = await source.receive()
        if msg.type is WSMsgType.BINARY:
            if not await _send(sink.send_bytes(msg.data)):
                return
        elif msg.type is WSMsgType.TEXT:
            if not await _send(sink.send_str(msg.data)):
                return
        elif msg.type is WSMsgType.CLOSE:
            code, reason = int(msg.data), str(msg.extra or "")
            break
        else:  # CLOSING, CLOSED, ERROR: gone without (or after) a close frame
            if source.close_code not in (None, 1006):
                code, reason = source.close_code or 1000, ""
            elif lost is not None:
                code, reason = lost
            else:
                _drop(sink)
                return
            break
    if not sink.closed:
        await sink.close(code=code, message=reason.encode())


def _drop(ws: aiohttp.ClientWebSocketResponse | web.WebSocketResponse) -> None:
    """End ``ws``'s connection without a close frame."""
    if isinstance(ws, web.WebSocketResponse):
        writer = ws._writer  # aiohttp keeps the transport only there
        transport = None if writer is None else writer.transport
    else:
        connection = ws._conn
        transport = None if connection is None else connection.transport
    if transport is not None:
        transport.abort()


async def _send(sending: Awaitable[None]) -> bool:
    try:
        await sending
    except ConnectionError:
        return False
    return True
