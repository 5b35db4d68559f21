"""A fake browser: an aiohttp WebSocket client speaking any browser subprotocol.

It encodes and decodes with the project's codecs (in the CLIENT role, as a browser is a
client), which tests/test_protocols.py checks independently against literal frames.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
from multidict import CIMultiDictProxy

from terminal_proxy.protocols import (
    STDERR,
    Exit,
    Opcode,
    Output,
    Resize,
    Role,
    Stdin,
    StdinClosed,
    codec_for,
)

WAIT = 10.0


@dataclass
class Term:
    ws: aiohttp.ClientWebSocketResponse
    protocol: str
    stdout: bytearray = field(default_factory=bytearray)
    stderr: bytearray = field(default_factory=bytearray)
    exits: list[Exit] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    closed: bool = False
    # Data frames received.
    frames: int = 0

    def __post_init__(self) -> None:
        self.codec = codec_for(self.protocol, Role.CLIENT)

    async def send_stdin(self, data: bytes) -> None:
        for opcode, payload in self.codec.encode(Stdin(data)):
            await self._send(opcode, payload)

    async def resize(self, width: int, height: int) -> None:
        for opcode, payload in self.codec.encode(Resize(width, height)):
            await self._send(opcode, payload)

    async def close_stdin(self) -> None:
        for opcode, payload in self.codec.encode(StdinClosed()):
            await self._send(opcode, payload)

    async def _send(self, opcode: Opcode, payload: bytes) -> None:
        if opcode == Opcode.TEXT:
            await self.ws.send_str(payload.decode())
        else:
            await self.ws.send_bytes(payload)

    async def _receive_one(self) -> None:
        msg = await self.ws.receive()
        if msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
            self.frames += 1
            data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
            opcode = Opcode.TEXT if msg.type is aiohttp.WSMsgType.TEXT else Opcode.BINARY
            for event in self.codec.decode(opcode, data):
                if isinstance(event, Output):
                    (self.stderr if event.stream == STDERR else self.stdout).extend(event.data)
                elif isinstance(event, Exit):
                    self.exits.append(event)
            return
        self.closed = True
        # The code in the peer's close frame (ws.close_code turns 1006 when our automatic
        # reply races the peer hanging up).
        self.close_code = msg.data if msg.type is aiohttp.WSMsgType.CLOSE else self.ws.close_code
        self.close_reason = msg.extra if isinstance(msg.extra, str) else ""

    async def read_until(self, needle: bytes, *, stream: str = "stdout") -> bytes:
        """Receive until ``needle`` shows up (or the socket closes: then fail)."""
        buffer = self.stdout if stream == "stdout" else self.stderr
        async with asyncio.timeout(WAIT):
            while needle not in buffer:
                assert not self.closed, (
                    f"closed ({self.close_code} {self.close_reason!r}) before {needle!r}; "
                    f"got {bytes(buffer)[-200:]!r}"
                )
                await self._receive_one()
        return bytes(buffer)

    async def wait_closed(self, timeout: float = WAIT) -> tuple[int | None, str]:
        async with asyncio.timeout(timeout):
            while not self.closed:
                await self._receive_one()
        return self.close_code, self.close_reason


async def open_term(
    session: aiohttp.ClientSession,
    url: str,
    protocol: str,
    *,
    headers: dict[str, str] | None = None,
) -> Term:
    ws = await session.ws_connect(url, protocols=[protocol], headers=headers, autoclose=True)
    assert ws.protocol == protocol, f"negotiated {ws.protocol!r}, wanted {protocol!r}"
    return Term(ws, protocol)


async def raw_handshake(
    session: aiohttp.ClientSession,
    url: str,
    *,
    protocols: str | None = "terminal.gitlab.com",
    headers: dict[str, str] | None = None,
    upgrade: bool = True,
    connection: bool = True,
) -> tuple[int, str, CIMultiDictProxy[str]]:
    """An upgrade request made by hand, to read the status and body of a refusal."""
    hdrs = {"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    if upgrade:
        hdrs["Upgrade"] = "websocket"
    if connection:
        hdrs["Connection"] = "Upgrade"
    if protocols is not None:
        hdrs["Sec-WebSocket-Protocol"] = protocols
    hdrs.update(headers or {})
    async with session.get(url, headers=hdrs, allow_redirects=False) as resp:
        return resp.status, await resp.text(), resp.headers
