"""The two sinks of the one pump (``pump.py``): what each side of a session does with
the events the other side's pump delivers.

``BrowserSide`` (upstream → browsers) coalesces output into fewer browser frames, records
it, and hands it to every browser link; an exit status is kept for the session's end.
``UpstreamSide`` (the owner's browser → upstream) answers control messages (acks,
extension requests) in the gateway, records and counts input, and forwards the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import WSMessage, WSMsgType

from ..protocols import (
    Ack,
    Event,
    Exit,
    ExtensionRequest,
    JoinToken,
    Output,
    ProtocolError,
    Resize,
    Resume,
    ShareRequest,
    Stdin,
)
from .links import COALESCE_LIMIT
from .stop import Stop, StopReason

if TYPE_CHECKING:
    from .relay import Session

__all__ = ["BROWSER_GONE", "BrowserSide", "UpstreamSide", "upstream_ended"]

_K8S_V1 = frozenset({"channel.k8s.io", "base64.channel.k8s.io"})

BROWSER_GONE = Stop(StopReason.BROWSER_LEFT, "browser connection lost")


class BrowserSide:
    """Upstream → browsers: output coalesced, recorded, then sent to every link.

    ``gather`` is synchronous: a plain output frame that only joins the batch costs no
    await; the pump awaits ``send_ready`` only when a batch is due (the stream changed,
    the batch reached ``COALESCE_LIMIT``, or no further frame is queued).
    """

    __slots__ = ("_chunks", "_due", "_ready", "_session", "_size", "_stream")

    def __init__(self, session: Session) -> None:
        self._session = session
        self._chunks: list[bytes] = []
        self._size = 0
        self._stream = 0
        # Whole batches waiting to be sent, in order: (data, stream).
        self._ready: list[tuple[bytes, int]] = []
        # The current batch is to be sent with them.
        self._due = False

    def gather(self, data: bytes, stream: int, more: bool) -> bool:
        if self._chunks and (stream != self._stream or self._size >= COALESCE_LIMIT):
            self._close_batch()
        self._stream = stream
        self._chunks.append(data)
        self._size += len(data)
        self._due = self._size >= COALESCE_LIMIT or not more
        return self._due or bool(self._ready)

    async def send_ready(self) -> Stop | None:
        if self._due:
            self._close_batch()
        self._due = False
        ready, self._ready = self._ready, []
        session = self._session
        for data, stream in ready:
            if session.recording is not None:
                session.recording.output(data, stream)
            if not await session.links.send_output(data, stream):
                return BROWSER_GONE
        return None

    async def output(self, data: bytes, stream: int, more: bool) -> Stop | None:
        return await self.send_ready() if self.gather(data, stream, more) else None

    async def settle(self, more: bool) -> Stop | None:
        if self._chunks and (self._size >= COALESCE_LIMIT or not more):
            self._due = True
        return await self.send_ready() if self._due or self._ready else None

    async def event(self, event: Event) -> Stop | None:
        if (stop := await self._send_all()) is not None:
            return stop
        session = self._session
        if type(event) is Exit:
            session.exit = event
        if not await session.links.send_event(event):
            return BROWSER_GONE
        return None

    async def closed(self, msg: WSMessage) -> Stop:
        # Whatever was gathered goes out before the close is acted on.
        if (stop := await self._send_all()) is not None:
            return stop
        return await upstream_ended(self._session, msg)

    async def bad_frame(self, exc: ProtocolError) -> Stop:
        if (stop := await self._send_all()) is not None:
            return stop
        return Stop(StopReason.UPSTREAM_FAILED, f"invalid frame from upstream: {exc}")

    async def _send_all(self) -> Stop | None:
        self._due = bool(self._chunks)
        return await self.send_ready()

    def _close_batch(self) -> None:
        chunks = self._chunks
        if chunks:
            data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._ready.append((data, self._stream))
        self._chunks, self._size = [], 0


class UpstreamSide:
    """The owner's browser → upstream: input forwarded, control messages answered here."""

    __slots__ = ("_encode", "_pending", "_session", "_upstream")

    def __init__(self, session: Session) -> None:
        self._session = session
        self._pending: list[Output] = []
        self._upstream = session.upstream
        self._encode = session.upstream_codec.encode

    def gather(self, data: bytes, stream: int, more: bool) -> bool:
        self._pending.append(Output(data, stream))
        return True

    async def send_ready(self) -> Stop | None:
        pending, self._pending = self._pending, []
        for event in pending:
            if (stop := await self._forward(event)) is not None:
                return stop
        return None

    async def output(self, data: bytes, stream: int, more: bool) -> Stop | None:
        return await self._forward(Output(data, stream))

    async def settle(self, more: bool) -> Stop | None:
        return None

    async def event(self, event: Event) -> Stop | None:
        session = self._session
        if session.recording is not None:
            session.recording.browser(event)
        kind = type(event)
        if kind is Stdin:
            session.traffic.input_offset += len(event.data)  # type: ignore[union-attr]
        elif kind is Ack:
            received = event.received  # type: ignore[union-attr]
            session.links.owner.acked(received or 0)
            await session.links.owner.send_event(Ack(input=session.traffic.input_offset))
            return None
        elif kind is ExtensionRequest:
            session.request_extension()
            return None
        elif kind is Resize:
            if not session.resized(event.width, event.height):  # type: ignore[union-attr]
                return None
        elif kind is ShareRequest:
            session.share_request(event)  # type: ignore[arg-type]
            return None
        elif kind is Resume:
            return Stop(StopReason.BROWSER_PROTOCOL_ERROR, "resume is only a first message")
        elif kind is JoinToken:
            return Stop(StopReason.BROWSER_PROTOCOL_ERROR, "join is only a first message")
        return await self._forward(event)

    async def closed(self, msg: WSMessage) -> Stop:
        return self._session.links.owner.left(msg)

    async def bad_frame(self, exc: ProtocolError) -> Stop:
        return Stop(StopReason.BROWSER_PROTOCOL_ERROR, str(exc))

    async def _forward(self, event: Event) -> Stop | None:
        """Send one event's frames upstream; a Stop when the upstream is gone."""
        for opcode, data in self._encode(event):
            try:
                await self._upstream.send_frame(data, WSMsgType(opcode))
            except ConnectionError:
                return Stop(StopReason.UPSTREAM_FAILED, "upstream connection lost")
        return None


async def upstream_ended(session: Session, msg: WSMessage) -> Stop:
    """The upstream's close (or failure), turned into the session's verdict."""
    kind, data = msg.type, msg.data
    if kind is WSMsgType.CLOSING:
        # Our own close() woke this receive(): the session is already ending.
        return Stop(StopReason.UPSTREAM_CLOSED, "closed by the gateway")
    # A CLOSE message carries the peer's own code; ws.close_code may already say 1006
    # when our automatic close reply could not be written (the peer hung up first).
    closed = kind is WSMsgType.CLOSE and isinstance(data, int)
    code = data if closed else session.upstream.close_code
    reason = msg.extra if isinstance(msg.extra, str) else ""
    session.upstream_close = (code, reason)
    if kind is WSMsgType.ERROR:
        return Stop(StopReason.UPSTREAM_FAILED, f"{type(data).__name__}: {data}")
    if code in (1000, 1001):
        if session.exit is None and session.upstream_codec.name in _K8S_V1 and code == 1000:
            # channel.k8s.io v1 writes the error stream only on failure: a clean close
            # without one is success.
            session.exit = Exit(0)
            if not await session.links.send_event(session.exit):
                return BROWSER_GONE
        if session.exit is not None:
            exit_code = session.exit.code
            if exit_code is None:
                return Stop(StopReason.UPSTREAM_FAILED, session.exit.message or "command failed")
            return Stop(StopReason.EXITED, session.exit.message, exit_code=exit_code)
        return Stop(StopReason.UPSTREAM_CLOSED, f"upstream closed ({code})")
    if code is None or code == 1006:
        return Stop(StopReason.UPSTREAM_FAILED, "connection lost")
    return Stop(StopReason.UPSTREAM_FAILED, f"closed with {code} {reason}".strip())
