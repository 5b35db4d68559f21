"""A fake browser: an aiohttp WebSocket client speaking any browser subprotocol.

It encodes and decodes with the project's codecs (in the CLIENT role, as a browser is a
client), which tests/test_protocols.py checks independently against literal frames.
For ``v1.terminal-proxy`` it keeps what a resuming browser keeps (the hello's session id
and token, the output offset, every input byte sent) and ``resume_term`` resumes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
from multidict import CIMultiDictProxy

from terminal_proxy.protocols import (
    STDERR,
    TERMINAL_PROXY,
    Ack,
    Event,
    Exit,
    ExpiryWarning,
    ExtensionAnswer,
    ExtensionRequest,
    Hello,
    Opcode,
    Output,
    Resize,
    Resume,
    Role,
    Stdin,
    StdinClosed,
    codec_for,
)
from tests.support.logcapture import remember_secret

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
    # v1.terminal-proxy: the latest hello, the output offset (bytes of the session's
    # output received, counting from the hello's offset), every input byte sent, and the
    # other control messages received (expiry warnings, extension answers, acks).
    hello: Hello | None = None
    offset: int = 0
    sent_input: bytearray = field(default_factory=bytearray)
    controls: list[Event] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.codec = codec_for(self.protocol, Role.CLIENT)

    async def send_stdin(self, data: bytes) -> None:
        if self.protocol == TERMINAL_PROXY:
            self.sent_input.extend(data)
        for opcode, payload in self.codec.encode(Stdin(data)):
            await self._send(opcode, payload)

    async def send_event(self, event: Event) -> None:
        for opcode, payload in self.codec.encode(event):
            await self._send(opcode, payload)

    async def request_extension(self) -> ExtensionAnswer:
        await self.send_event(ExtensionRequest())
        event = await self.next_control(ExtensionAnswer)
        assert isinstance(event, ExtensionAnswer)
        return event

    async def ack(self) -> Ack:
        await self.send_event(Ack(received=self.offset))
        event = await self.next_control(Ack)
        assert isinstance(event, Ack)
        return event

    async def next_control(self, kind: type, timeout: float = WAIT) -> Event:
        """Receive until a control message of ``kind`` arrives; return (and consume) it."""
        async with asyncio.timeout(timeout):
            while True:
                for index, event in enumerate(self.controls):
                    if isinstance(event, kind):
                        return self.controls.pop(index)
                assert not self.closed, f"closed ({self.close_code} {self.close_reason!r})"
                await self._receive_one()

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
                    self.offset += len(event.data)
                elif isinstance(event, Exit):
                    self.exits.append(event)
                elif isinstance(event, Hello):
                    remember_secret(event.token)
                    self.hello = event
                    self.offset = event.offset
                elif isinstance(event, (ExpiryWarning, ExtensionAnswer, Ack)):
                    self.controls.append(event)
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


def drop(term: Term) -> None:
    """Kill the client's TCP connection: no close frame, nothing flushed."""
    connection = term.ws._conn
    assert connection is not None and connection.transport is not None
    connection.transport.abort()


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


async def wait_hello(term: Term) -> Hello:
    """The first message of a v1.terminal-proxy socket."""
    async with asyncio.timeout(WAIT):
        while term.hello is None:
            assert not term.closed, f"closed ({term.close_code} {term.close_reason!r})"
            await term._receive_one()
    return term.hello


async def resume_term(
    session: aiohttp.ClientSession,
    url: str,
    old: Term,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> Term:
    """Resume ``old``'s session on a new socket the way a browser does.

    The new Term carries on with ``old``'s output and input; when the gateway accepts, the
    input it has not got is re-sent. When it refuses, the returned Term is closed with
    the gateway's code and reason.
    """
    hello = old.hello
    assert hello is not None, "no hello on the old socket"
    ws = await session.ws_connect(
        f"{url}?resume={hello.session}", protocols=[TERMINAL_PROXY], headers=headers
    )
    new = Term(ws, TERMINAL_PROXY, stdout=bytearray(old.stdout), offset=old.offset)
    new.sent_input = bytearray(old.sent_input)
    resume = Resume(
        hello.session, token or hello.token, received=old.offset, sent=len(old.sent_input)
    )
    await new.send_event(resume)
    async with asyncio.timeout(WAIT):
        while new.hello is None and not new.closed:
            await new._receive_one()
    if new.hello is not None:
        missing = bytes(new.sent_input[new.hello.input :])
        if missing:
            await new.send_event(Stdin(missing))
    return new


async def resume_refusal(
    session: aiohttp.ClientSession,
    url: str,
    old: Term,
    *,
    headers: dict[str, str] | None = None,
) -> tuple[int, str]:
    """Resume ``old``'s session by a hand-made upgrade request that the gateway refuses
    before the upgrade: the HTTP status and the first line of the body (the reason)."""
    assert old.hello is not None, "no hello on the old socket"
    status, body, _ = await raw_handshake(
        session, f"{url}?resume={old.hello.session}", protocols=TERMINAL_PROXY, headers=headers
    )
    assert status != 101, "the resume was upgraded"
    return status, body.partition("\n")[0]


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
