"""An in-memory WebSocket end with the shape of ``terminal_proxy.session.sockets.Socket``.

The session's unit tests (tests/test_session_core.py) drive the relay with these instead
of real sockets: ``feed`` what the peer sends, read ``sent`` (or ``wait_sent``) for what
the session sent, ``hang_up`` to drop the connection, ``peer_close`` for a close frame.
"""

from __future__ import annotations

import asyncio

from aiohttp import WSMessage, WSMsgType


class FakeSocket:
    def __init__(self, name: str = "socket") -> None:
        self.name = name
        self._inbox: asyncio.Queue[WSMessage] = asyncio.Queue()
        self.sent: list[tuple[WSMsgType, bytes]] = []
        self._changed = asyncio.Event()
        self._closed = False
        self._close_code: int | None = None
        self.close_message = b""
        # Set to make every send fail as a dropped connection does.
        self.broken = False

    def __repr__(self) -> str:
        return f"FakeSocket({self.name})"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def close_code(self) -> int | None:
        return self._close_code

    async def receive(self) -> WSMessage:
        return await self._inbox.get()

    async def send_frame(
        self, message: bytes, opcode: WSMsgType, compress: int | None = None
    ) -> None:
        if self.broken or self._closed:
            raise ConnectionResetError("fake socket: connection lost")
        self.sent.append((opcode, bytes(message)))
        self._changed.set()

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        if self._closed:
            return False
        self._closed = True
        self._close_code = code
        self.close_message = message
        self._inbox.put_nowait(WSMessage(WSMsgType.CLOSING, None, None))
        self._changed.set()
        return True

    # The peer's side --------------------------------------------------------------------

    def feed(self, data: bytes | str) -> None:
        kind = WSMsgType.TEXT if isinstance(data, str) else WSMsgType.BINARY
        self._inbox.put_nowait(WSMessage(kind, data, None))

    def peer_close(self, code: int = 1000, reason: str = "") -> None:
        self._close_code = code
        self._inbox.put_nowait(WSMessage(WSMsgType.CLOSE, code, reason))

    def hang_up(self) -> None:
        """The connection dropped: sends fail, the reader sees a 1006 close."""
        self.broken = True
        self._close_code = 1006
        self._inbox.put_nowait(WSMessage(WSMsgType.CLOSED, None, None))

    def payloads(self) -> bytes:
        return b"".join(data for kind, data in self.sent if kind is WSMsgType.BINARY)

    def texts(self) -> list[str]:
        return [data.decode() for kind, data in self.sent if kind is WSMsgType.TEXT]

    async def wait_sent(self, predicate: object) -> None:
        """Wait until ``predicate(self)`` is true (re-checked after every send)."""
        assert callable(predicate)
        while not predicate(self):
            self._changed.clear()
            await self._changed.wait()
