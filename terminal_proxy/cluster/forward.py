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
import ssl
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager

import aiohttp
from aiohttp import WSMsgType, web
from aiohttp.http_exceptions import HttpProcessingError

from ..authorization.http import forwardable_headers
from ..connections import Resolver
from ..errors import ReplicaUnreachable, ResumeRefused
from ..tasks import cancel_and_wait, spawn
from ..wsdial import HandshakeRefused, WebSocketDial, open_websocket
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
        self._resolver = Resolver()
        # For https internal URLs: the system's CAs, as aiohttp's default was.
        self._tls: ssl.SSLContext | None = None
        # Forwarded sessions finishing their close (they outlive a cancelled handler).
        self._ending: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        await cancel_and_wait(list(self._ending))

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
        dial = WebSocketDial(
            url=base + target,
            protocols=offered,
            headers=headers,
            ssl=self._ssl(base),
            # Our browser socket pings the browser; the holder pings us.
            heartbeat=None,
            pong_timeout=None,
            max_msg_size=self._max_message_size,
            close_timeout=self._close_timeout,
        )
        try:
            with pending:
                async with asyncio.timeout(self._timeout or None):
                    peer = await open_websocket(dial, self._resolver)
        except HandshakeRefused as refused:
            if refused.status == 101:  # a 101 that is not a WebSocket upgrade
                self._outcome("unreachable")
                raise ReplicaUnreachable(
                    f"replica {replica} unreachable",
                    detail=f"replica {replica} at {base}: {refused.message}",
                ) from None
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
        except (aiohttp.ClientError, HttpProcessingError, OSError, TimeoutError) as exc:
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

    def _ssl(self, base: str) -> ssl.SSLContext | None:
        if not base.startswith(("https:", "wss:")):
            return None
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

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
    """End ``ws``'s connection without a close frame (both kinds of aiohttp socket keep
    their transport in their frame writer)."""
    writer = ws._writer
    transport = None if writer is None else writer.transport
    if transport is not None:
        transport.abort()


async def _send(sending: Awaitable[None]) -> bool:
    try:
        await sending
    except ConnectionError:
        return False
    return True
