"""Connections on the gateway's listeners: head and idle timeouts, caps, quiet errors.

aiohttp's ``RequestHandler`` has one timer for a connection that is not handling a
request, ``keepalive_timeout``, armed at connect and after each response and never
re-armed by arriving bytes. Its default is an hour, and a client that sends a partial
request head (or one byte every 20 s) counts as idle for all of it. So a few hundred
such connections used to hold file descriptors until the process ran out, and then
the metrics listener's ``/-/health`` failed as well. ``GuardedHandler`` adds what Go's
``ReadHeaderTimeout`` and nginx's ``client_header_timeout`` do:

- **request head timeout**: from connect (or from the first byte of a later request on
  a kept-alive connection) until the whole head has arrived; past it a connection that
  sent part of a head gets ``408`` and is closed, one that sent nothing is just closed.
  aiohttp's own timer stays the **idle keep-alive timeout** (between requests).
- **caps**, checked at connect, refused with a raw ``503`` and closed: connections not
  (yet) upgraded to a WebSocket (``limits.max_http_connections``), and a file
  descriptor budget below ``RLIMIT_NOFILE`` so the process never runs out (accept
  failing with EMFILE would stall every listener, the metrics one included).
- **quiet errors**: aiohttp logs every malformed request at ERROR with a traceback whose
  parser message quotes the request head (cookies included). Here a malformed request
  is one INFO line naming the class of error, never the bytes, rate-limited per peer;
  the client gets a 400 naming the class of error.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from http import HTTPStatus
from typing import Any, cast

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

__all__ = [
    "ConnectionGate",
    "GuardedRunner",
    "PeerLog",
    "fd_budget",
    "raise_fd_limit",
]

log = logging.getLogger("terminal_proxy.listener")

# Descriptors kept free of the main listener's connections: the metrics listener and
# its scrapes, the authorization API pool, the audit and log files, DNS, the event loop.
FD_RESERVE_MIN = 64


class PeerLog:
    """At most ``burst`` lines per peer per ``window`` seconds; bounded memory.

    The first line of a window after a suppressed run says how many were left out.
    """

    def __init__(self, logger: logging.Logger, *, window: float = 60.0, burst: int = 3) -> None:
        self._log = logger
        self._window = window
        self._burst = burst
        # peer -> (window start, lines logged in it, lines suppressed in it)
        self._peers: OrderedDict[str, tuple[float, int, int]] = OrderedDict()
        self.max_peers = 4096

    def log(self, level: int, peer: str, msg: str, *args: object, **kwargs: Any) -> None:
        now = time.monotonic()
        start, logged, dropped = self._peers.pop(peer, (now, 0, 0))
        if now - start >= self._window:
            if dropped:
                self._log.log(
                    logging.INFO,
                    "%d more lines about peer %s were left out",
                    dropped,
                    peer,
                    extra={"fields": {"peer": peer}},
                )
            start, logged, dropped = now, 0, 0
        if logged < self._burst:
            logged += 1
            self._log.log(level, msg, *args, **kwargs)
        else:
            dropped += 1
        self._peers[peer] = (start, logged, dropped)
        while len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)


@dataclass
class ConnectionGate:
    """One listener's connection counts, caps and timeouts (shared by its handlers)."""

    # "main" or "metrics", for log lines.
    name: str
    # Seconds from connect (or a request's first byte) to a complete request head; 0: none.
    head_timeout: float = 10.0
    # Connections not upgraded to a WebSocket; 0: no cap.
    max_http: int = 0
    # Descriptors this listener may use in all; 0: no budget.
    fd_budget: int = 0
    # Descriptors an upgraded connection holds besides its own (its upstream, a recording).
    upgraded_extra_fds: int = 1
    # Called with the reason of every refused or timed-out connection (metrics).
    on_refused: Callable[[str], None] | None = None
    http: int = 0
    upgraded: int = 0
    peer_log: PeerLog = field(default_factory=lambda: PeerLog(log))

    def fds(self) -> int:
        return self.http + self.upgraded * (1 + self.upgraded_extra_fds)

    def refusal(self) -> tuple[str, str] | None:
        """(metric reason, text) when a new connection must be refused, else None."""
        if self.max_http and self.http >= self.max_http:
            return (
                "max_http_connections",
                f"too many connections waiting for a request or an upgrade "
                f"(limits.max_http_connections={self.max_http})",
            )
        if self.fd_budget and self.fds() >= self.fd_budget:
            return (
                "fd_budget",
                f"too many open connections for this process's file descriptor limit "
                f"({self.fd_budget} for the {self.name} listener)",
            )
        return None

    def note(self, reason: str, peer: str, text: str, *args: object) -> None:
        if self.on_refused is not None:
            self.on_refused(reason)
        self.peer_log.log(
            logging.INFO, peer, text, *args, extra={"fields": {"peer": peer, "reason": reason}}
        )


def _raw_response(status: HTTPStatus, text: str, *, retry_after: int | None = None) -> bytes:
    """A complete HTTP/1.1 response that closes the connection, written without aiohttp
    (no request object exists when a connection is refused at connect or times out)."""
    body = f"{status.value} {status.phrase}: {text}\n".encode()
    head = [
        f"HTTP/1.1 {status.value} {status.phrase}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# Parser errors by class: what the log line and the 400 body say. Never the parser's own
# message: it quotes the request head.
_PARSE_ERRORS: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.LineTooLong, "request line or header too long"),
    (http_exceptions.BadHttpMethod, "bad request method"),
    (http_exceptions.BadStatusLine, "bad request line"),
    (http_exceptions.InvalidHeader, "invalid header"),
    (http_exceptions.InvalidURLError, "invalid request target"),
    (http_exceptions.TransferEncodingError, "bad transfer encoding"),
    (http_exceptions.ContentLengthError, "bad content length"),
    (http_exceptions.BadHttpMessage, "malformed request"),
)


def _parse_error(exc: BaseException | None) -> str:
    for cls, text in _PARSE_ERRORS:
        if isinstance(exc, cls):
            return text
    return "malformed request"


class _Conn(Enum):
    """Where a connection is, for the gate's counts."""

    NEW = "new"
    HTTP = "http"  # counted in gate.http: idle, sending a head, or handled before upgrade
    UPGRADED = "upgraded"  # counted in gate.upgraded
    REFUSED = "refused"  # refused at connect, never counted
    CLOSED = "closed"


class GuardedHandler(RequestHandler):
    """aiohttp's protocol plus the head timeout, the caps and quiet errors (module doc)."""

    def __init__(self, manager: web.Server, *, gate: ConnectionGate, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._gate = gate
        self._head_timer: asyncio.TimerHandle | None = None
        # Bytes of the current request head have arrived (a timeout then answers 408).
        self._head_started = False
        self._state = _Conn.NEW
        self._peer = "-"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if isinstance(peer, tuple) else "-"
        refusal = self._gate.refusal()
        if refusal is not None:
            self._state = _Conn.REFUSED
            reason, text = refusal
            self._gate.note(reason, self._peer, "connection refused: %s", text)
            # (uvloop's transports are not asyncio.Transport subclasses: no isinstance.)
            transport = cast(asyncio.Transport, transport)
            transport.write(_raw_response(HTTPStatus.SERVICE_UNAVAILABLE, text, retry_after=1))
            transport.close()
            return
        self._state = _Conn.HTTP
        self._gate.http += 1
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._state is _Conn.REFUSED:
            return
        if self._state is _Conn.HTTP:
            self._gate.http -= 1
        elif self._state is _Conn.UPGRADED:
            self._gate.upgraded -= 1
        self._state = _Conn.CLOSED
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._upgraded:
            # A session's frames (the head timer went with the upgrade request's head).
            super().data_received(data)
            return
        if self._state is _Conn.REFUSED:
            return
        waiting = not self._messages and not self._request_in_progress and not self._upgraded
        if data and waiting and self._head_timer is None:
            self._arm_head_timer()
        if data and waiting:
            self._head_started = True
        super().data_received(data)
        if self._messages or self._upgraded:
            # A whole head (or a parse error, answered next) has arrived.
            self._cancel_head_timer()

    def set_parser(self, parser: Any, data_received_cb: Callable[[], None] | None = None) -> None:
        # Called by WebSocketResponse at the upgrade: the connection is a session now.
        if self._state is _Conn.HTTP:
            self._state = _Conn.UPGRADED
            self._gate.http -= 1
            self._gate.upgraded += 1
        self._cancel_head_timer()
        super().set_parser(parser, data_received_cb)
        if self._upgraded:
            # From here aiohttp feeds the WebSocket reader only, and skips the HTTP
            # parser when reading pauses and resumes: it is dead weight, ~0.8 KiB per
            # idle session (docs/performance.md). Its queue of parsed requests (an empty
            # deque, ~0.6 KiB) is only ever tested for emptiness from here on.
            self._parser = None
            self._messages = ()  # type: ignore[assignment]

    def _arm_head_timer(self) -> None:
        if self._gate.head_timeout > 0:
            self._head_started = False
            self._head_timer = self._loop.call_later(self._gate.head_timeout, self._head_expired)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._messages or self._request_in_progress or self._upgraded:
            return
        if self.transport is None:
            return
        timeout = self._gate.head_timeout
        text = f"request head not received within {timeout:g}s"
        self._gate.note(
            "head_timeout", self._peer, "connection closed: %s (limits.request_head_timeout)", text
        )
        if self._head_started:
            self.transport.write(_raw_response(HTTPStatus.REQUEST_TIMEOUT, text))
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status == 500:
            # A bug in a handler: the traceback matters, but at most a few per peer.
            self._gate.peer_log.log(
                logging.ERROR,
                self._peer,
                "error handling a request from %s",
                self._peer,
                exc_info=exc,
                extra={"fields": {"peer": self._peer}},
            )
            text = "internal error"
        else:
            # Parser errors (400), or aiohttp's 504 for a handler's stray TimeoutError.
            malformed = isinstance(exc, http_exceptions.HttpProcessingError)
            text = _parse_error(exc) if malformed else HTTPStatus(status).phrase.lower()
            self._gate.peer_log.log(
                logging.INFO,
                self._peer,
                "malformed request from %s: %s" if malformed else "request from %s failed: %s",
                self._peer,
                text,
                extra={"fields": {"peer": self._peer, "status": status}},
            )
        if request.writer.output_size > 0:
            raise ConnectionError("response already started")
        phrase = HTTPStatus(status).phrase
        response = web.Response(status=status, text=f"{status} {phrase}: {text}\n")
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        # aiohttp's other error lines ("Unhandled exception"): kept, but rate-limited.
        self._gate.peer_log.log(logging.ERROR, self._peer, *args, **kwargs)


class GuardedServer(web.Server):
    """aiohttp's low-level server making ``GuardedHandler`` protocols."""

    def __init__(self, server: web.Server, gate: ConnectionGate) -> None:
        # Same handler, request factory and handler kwargs as the server AppRunner made.
        super().__init__(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
        self.gate = gate

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, loop=self._loop, gate=self.gate, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """``web.AppRunner`` whose connections go through a ``ConnectionGate``.

    ``keepalive_timeout`` (aiohttp's handler argument) is the idle keep-alive timeout.
    """

    def __init__(self, app: web.Application, gate: ConnectionGate, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.gate = gate

    async def _make_server(self) -> web.Server:
        return GuardedServer(await super()._make_server(), self.gate)


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as Go's runtime and nginx's
    worker_rlimit_nofile do); log the change. Returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return soft if soft != resource.RLIM_INFINITY else 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("file descriptor limit stays %d: raising it to %d failed: %s", soft, hard, exc)
        return soft
    log.info("file descriptor limit raised from %d to %d (the hard limit)", soft, hard)
    return hard


def fd_budget(soft_limit: int) -> tuple[int, int]:
    """(main listener's budget, metrics listener's budget) for a soft RLIMIT_NOFILE.

    The main listener may use all but a reserve (64, or 1/16 of the limit when larger);
    the metrics listener half of that reserve, so it answers when the main one is full.
    """
    reserve = max(FD_RESERVE_MIN, soft_limit // 16)
    return max(soft_limit - reserve, 1), max(reserve // 2, 1)
