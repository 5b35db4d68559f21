"""Opening a client WebSocket on a connection of our own: the upstream dial's fast path.

aiohttp's ``ClientSession.ws_connect`` builds a general HTTP request for every dial (URL
and header objects, cookie and proxy handling, a connector with its pool keys, happy
eyeballs, a response object with a copy of our headers): about three quarters of a dial's
CPU (docs/performance.md, "the upstream dial"). A terminal's dial is always the same small
thing, so ``open_websocket`` does just that:

1. the connection (``connections.py``): to the address (names resolved through a short
   cache, as aiohttp's resolver did), TLS verified against the given context;
2. the request: one buffer, written once (request line, Host, the WebSocket headers, the
   authorized headers exactly as given);
3. the answer, parsed by aiohttp's C HTTP parser (its ``ResponseHandler`` protocol): 101
   with ``Upgrade: websocket``, ``Connection: upgrade`` and the right
   ``Sec-WebSocket-Accept``, or ``HandshakeRefused`` with a bounded body (the
   kube-apiserver's Status JSON is the only explanation it gives);
4. aiohttp's own frame reader, writer and ``ClientWebSocketResponse`` on top, wired as
   aiohttp wires them, so the relay runs on exactly the socket it ran on before.

No response object survives the handshake: the socket closes through ``_Leg``, which holds
only the protocol (no headers, no copy of the request's bearer token).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import ClientError, ClientWebSocketResponse, ClientWSTimeout
from aiohttp._websocket.reader import WebSocketDataQueue  # aiohttp exports it nowhere else
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_websocket import WS_KEY, WebSocketReader, WebSocketWriter
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy
from yarl import URL

from .connections import Resolver, connect, request_head
from .session.sockets import set_pong_timeout, unwatch

__all__ = [
    "HandshakeRefused",
    "UpstreamSocket",
    "WebSocketDial",
    "open_websocket",
]

# What a refused handshake's body may be (the rest is not read).
ERROR_BODY_LIMIT = 16 * 1024
# aiohttp's read size and queue bound for a WebSocket (DEFAULT_CHUNK_SIZE).
_QUEUE_LIMIT = 2**16


class HandshakeRefused(Exception):
    """The server answered the upgrade with something else than a valid 101.

    ``status`` is the HTTP status; ``message`` says what was wrong when the status was 101
    (aiohttp's words: "Invalid upgrade header", ...), and is empty for another status,
    whose ``body`` (at most ``ERROR_BODY_LIMIT`` bytes) and headers are kept.
    """

    def __init__(
        self,
        status: int,
        *,
        message: str = "",
        reason: str = "",
        content_type: str = "",
        body: bytes = b"",
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.reason = reason
        self.content_type = content_type
        self.body = body
        self.headers = headers


class UpstreamSocket(ClientWebSocketResponse):
    """aiohttp's client WebSocket, which stops watching its connection once closing.

    aiohttp has the connection call the socket back on every chunk received (to reset the
    heartbeat) for as long as the connection lives. Bytes that arrive after the close (the
    upstream's answer to our close frame, its FIN) then re-armed a ``ping_interval`` timer
    on a socket already closed, and nothing cancelled it: every closed upstream socket (its
    transport, reader, writer: ~40 objects) stayed alive for the ping interval plus the pong
    deadline, tens of thousands of dead sockets under a stream of set-ups for the collector
    to walk (docs/performance.md). The callback is also the connection's reference back to
    the socket: without it the two are freed by reference counting when the session ends.
    """

    def _set_closing(self) -> None:
        super()._set_closing()
        unwatch(getattr(self._response, "_protocol", None))

    def _set_closed(self) -> None:
        super()._set_closed()
        unwatch(getattr(self._response, "_protocol", None))


@dataclass(frozen=True, slots=True)
class WebSocketDial:
    """One dial: where, what to send, and the socket's settings."""

    url: str
    # Offered subprotocols, in order of preference.
    protocols: Sequence[str]
    # Sent as given, after the WebSocket's own headers.
    headers: Sequence[tuple[str, str]]
    ssl: ssl.SSLContext | None
    heartbeat: float | None
    pong_timeout: float | None
    max_msg_size: int
    close_timeout: float


class _Leg:
    """What ``ClientWebSocketResponse`` closes through: the connection, nothing else.

    aiohttp gives it the HTTP response (headers, request info, connection); the socket
    only ever calls ``close()`` on it and reads ``connection`` (``None``: aiohttp's
    defaults for the heartbeat's timer rounding, no ``get_extra_info``).
    """

    __slots__ = ("_protocol",)
    connection = None

    def __init__(self, protocol: ResponseHandler) -> None:
        self._protocol = protocol

    def close(self) -> None:
        self._protocol.close()


async def open_websocket(dial: WebSocketDial, resolver: Resolver) -> UpstreamSocket:
    """Connect, upgrade and return the socket; ``HandshakeRefused`` for a refusal, the
    connection's own ``OSError`` (``ssl.SSLError`` among them) for a failed connection."""
    url = URL(dial.url)
    host, port = url.host, url.port
    # http(s) as ws(s), as aiohttp's ws_connect takes them (the forwarder's internal URLs).
    if host is None or port is None or url.scheme not in ("ws", "wss", "http", "https"):
        raise ValueError(f"not a WebSocket URL: {url.scheme}://{url.raw_host}")
    protocol = await connect(host, port, dial.ssl, resolver)
    try:
        key = base64.b64encode(os.urandom(16))
        assert protocol.transport is not None
        head = [
            ("Host", url.host_port_subcomponent or host),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", key.decode()),
        ]
        if dial.protocols:
            head.append(("Sec-WebSocket-Protocol", ",".join(dial.protocols)))
        protocol.transport.write(request_head(url.raw_path_qs, head, dial.headers))
        message, payload = await protocol.read()
        if message.code != 101:
            raise await _refused(message.code, message.reason, message.headers, payload)
        chosen = _check_upgrade(message.headers, key, dial.protocols)
        return _socket(protocol, chosen, dial)
    except BaseException:
        protocol.close()
        raise


async def _refused(
    status: int, reason: str, headers: CIMultiDictProxy[str], payload: StreamReader
) -> HandshakeRefused:
    body = b""
    try:
        while len(body) < ERROR_BODY_LIMIT and not payload.at_eof():
            chunk = await payload.read(ERROR_BODY_LIMIT - len(body))
            if not chunk:
                break
            body += chunk
    except (OSError, ClientError):
        pass  # a truncated explanation: the status still says it
    return HandshakeRefused(
        status,
        reason=reason,
        content_type=headers.get("Content-Type", ""),
        body=body,
        headers=tuple(headers.items()),
    )


def _check_upgrade(
    headers: CIMultiDictProxy[str], key: bytes, offered: Sequence[str]
) -> str | None:
    """aiohttp's checks of a 101, with its words; the chosen subprotocol, if any."""
    get = headers.get
    if get("Upgrade", "").lower() != "websocket":
        raise HandshakeRefused(101, message="Invalid upgrade header")
    if get("Connection", "").lower() != "upgrade":
        raise HandshakeRefused(101, message="Invalid connection header")
    accept = base64.b64encode(hashlib.sha1(key + WS_KEY).digest()).decode()  # noqa: S324
    if get("Sec-WebSocket-Accept", "") != accept:
        raise HandshakeRefused(101, message="Invalid challenge response")
    answered = get("Sec-WebSocket-Protocol")
    if not offered or answered is None:
        return None
    for name in (part.strip() for part in answered.split(",")):
        if name in offered:
            return name
    return None


@functools.lru_cache(maxsize=8)
def _timeouts(close: float) -> ClientWSTimeout:
    """One (frozen) timeout object per close timeout, not one per session."""
    return ClientWSTimeout(ws_receive=None, ws_close=close)


def _socket(protocol: ResponseHandler, chosen: str | None, dial: WebSocketDial) -> UpstreamSocket:
    """aiohttp's reader, writer and socket, wired as ``ClientSession._ws_connect`` does."""
    loop = asyncio.get_running_loop()
    transport = protocol.transport
    assert transport is not None
    # The 101 was the connection's only HTTP message: its parser is not needed again (on
    # connection loss aiohttp skips it when None).
    protocol._parser = None
    queue = WebSocketDataQueue(protocol, _QUEUE_LIMIT, loop=loop)
    writer = WebSocketWriter(protocol, transport, use_mask=True)
    ws = UpstreamSocket(
        queue,
        writer,
        chosen,
        _Leg(protocol),  # type: ignore[arg-type]
        _timeouts(dial.close_timeout),
        True,  # autoclose
        True,  # autoping
        loop,
        heartbeat=dial.heartbeat,
    )
    if dial.heartbeat and dial.pong_timeout:
        set_pong_timeout(ws, dial.pong_timeout)  # aiohttp's own: half the heartbeat
    ws._parser = WebSocketReader(queue, dial.max_msg_size, compress=False, decode_text=True)
    callback = None if dial.heartbeat is None else ws._on_data_received
    protocol.set_parser(ws._parser, queue, data_received_cb=callback)
    # The connection's own queue of HTTP answers (an empty deque, ~0.6 KiB per session)
    # is never used again: from here every byte goes to the frame reader. aiohttp only
    # tests it for emptiness after the upgrade, which an empty tuple answers the same.
    protocol._buffer = ()  # type: ignore[assignment]
    return ws
