"""The two things a session talks to, as the session sees them: WebSocket ends.

``Socket`` is the part of aiohttp's server and client WebSockets the session uses, so the
relay and the browser links take any object of that shape: aiohttp's sockets in the
gateway, small fakes in the unit tests (tests/session/).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sized
from typing import Any, Protocol

from aiohttp import WSMessage, WSMsgType

from .stop import Stop, StopReason, reason_bytes

__all__ = [
    "DATA",
    "LOST",
    "Socket",
    "Traffic",
    "close_socket",
    "is_too_big",
    "left",
    "parsed_queue",
    "receive_or_lost",
    "set_pong_timeout",
    "unwatch",
]

DATA = (WSMsgType.BINARY, WSMsgType.TEXT)


class Socket(Protocol):
    """One WebSocket end: aiohttp's ``WebSocketResponse`` or ``ClientWebSocketResponse``."""

    @property
    def closed(self) -> bool: ...

    @property
    def close_code(self) -> int | None: ...

    async def receive(self) -> WSMessage: ...

    async def send_frame(
        self, message: bytes, opcode: WSMsgType, compress: int | None = None
    ) -> None: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...


class Traffic:
    """What crossed a session: payload bytes each way (wire sizes), input bytes given to
    the upstream, and the loop time of the last data frame (for the idle timeout)."""

    __slots__ = ("bytes_in", "bytes_out", "input_offset", "last_activity")

    def __init__(self) -> None:
        self.bytes_in = 0
        self.bytes_out = 0
        # Stdin bytes given to the upstream (a resuming browser re-sends from here).
        self.input_offset = 0
        self.last_activity = 0.0


def parsed_queue(ws: object) -> Sized:
    """The messages aiohttp has parsed and queued but not yet returned by ``receive()``.

    aiohttp has no public "is a message ready" check, so this looks at the reader's
    queue. If a future aiohttp moves it (or ``ws`` is not aiohttp's), the result is always
    empty: every message is then sent on its own (correct, just without coalescing).
    """
    queue = getattr(getattr(ws, "_reader", None), "_buffer", None)
    return queue if isinstance(queue, Sized) else ()


def set_pong_timeout(ws: object, seconds: float) -> bool:
    """Give ``ws`` (aiohttp's, with a heartbeat) ``seconds`` to answer a ping.

    aiohttp waits half the heartbeat for a pong and has no public way to change that, so
    this sets its private ``_pong_heartbeat``. If a future aiohttp drops it, nothing is set
    (False) and the deadline is aiohttp's own, half the ping interval: still a deadline.
    """
    if not hasattr(ws, "_pong_heartbeat"):
        return False
    setattr(ws, "_pong_heartbeat", seconds)  # noqa: B010 (a private attribute, on purpose)
    return True


def unwatch(protocol: object) -> None:
    """Stop ``protocol`` (aiohttp's, under a closing socket) calling its socket back on
    every chunk received.

    aiohttp resets a socket's heartbeat from that callback, also after the socket is
    closed (re-arming a ``ping_interval`` timer that holds the closed socket), and the
    callback is the connection's only reference back to its socket: without it, an ended
    session and both its sockets are freed by reference counting, not by the collector
    (docs/performance.md). Both the browser's and the upstream's sockets call this from
    their ``_set_closing``/``_set_closed``; on anything else it sets nothing.
    """
    if hasattr(protocol, "_data_received_cb"):
        setattr(protocol, "_data_received_cb", None)  # noqa: B010 (private, on purpose)


async def close_socket(ws: Socket, stop: Stop, close_timeout: float) -> None:
    """Close one browser socket with ``stop``'s code and reason, within ``close_timeout``."""
    if ws.closed:
        return
    try:
        async with asyncio.timeout(close_timeout):
            await ws.close(code=stop.browser_code, message=reason_bytes(stop.browser_reason))
    except (TimeoutError, ConnectionError):
        pass


def is_too_big(exc: Any) -> bool:
    return getattr(exc, "code", None) == 1009


# What a browser socket's reader returns when receive() itself failed: aiohttp answers
# pings inside receive(), and a pong it cannot write (a client flooding pings and never
# reading) raises there. The browser is gone.
LOST = WSMessage(WSMsgType.ERROR, ConnectionResetError("browser connection lost"), None)


async def receive_or_lost(ws: Socket) -> WSMessage:
    """``ws.receive()``, or ``LOST`` when the connection failed under it."""
    try:
        return await ws.receive()
    except ConnectionError:
        return LOST


def left(msg: WSMessage, ws: Socket) -> Stop:
    """Why a browser socket's non-data message ends its reading."""
    if msg.type is WSMsgType.ERROR and is_too_big(msg.data):
        return Stop(StopReason.MESSAGE_TOO_BIG, str(msg.data))
    if msg is LOST:
        return Stop(StopReason.BROWSER_LEFT, "browser connection lost")
    code = msg.data if msg.type is WSMsgType.CLOSE else ws.close_code
    return Stop(StopReason.BROWSER_LEFT, f"browser closed ({code})")
