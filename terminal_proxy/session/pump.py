"""The one pump: frames from one side, decoded to events, handed to the other side.

Both directions are this function with other arguments (as Workhorse's proxy.go runs one
function both ways): upstream → browsers reads the upstream socket and gives a
``BrowserSide``, browser → upstream reads the owner's link and gives an ``UpstreamSide``.
What differs lives in the sink: coalescing output into fewer browser frames is the
browser side's business, control messages the upstream side's.

The hot path is a plain output frame: ``Codec.plain_output`` takes it without building an
event, and the sink gathers its bytes (synchronously, no await) while more frames are
already parsed and queued (``more``), so a busy terminal's many small frames cost one
browser write and one await.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sized
from typing import Protocol

from aiohttp import WSMessage

from ..protocols import Codec, Event, Output, ProtocolError
from .sockets import DATA, Traffic
from .stop import Stop

__all__ = ["Sink", "pump"]


class Sink(Protocol):
    """Where a pump delivers; every async method returns a Stop when the session must end."""

    def gather(self, data: bytes, stream: int, more: bool) -> bool:
        """Take plain output without waiting; True when something is due to be sent
        (then the pump awaits ``send_ready``). ``more``: further frames are queued."""
        ...

    async def send_ready(self) -> Stop | None:
        """Send what ``gather`` said is due."""
        ...

    async def output(self, data: bytes, stream: int, more: bool) -> Stop | None:
        """Output bytes; ``more``: further frames are already queued behind this one."""
        ...

    async def event(self, event: Event) -> Stop | None:
        """Any other event."""
        ...

    async def settle(self, more: bool) -> Stop | None:
        """The frame's events are all delivered; send what waits unless ``more``."""
        ...

    async def closed(self, msg: WSMessage) -> Stop:
        """The source ended with ``msg`` (close, error): deliver what waits, say why."""
        ...

    async def bad_frame(self, exc: ProtocolError) -> Stop:
        """The source sent a frame its subprotocol does not allow."""
        ...


async def pump(
    receive: Callable[[], Awaitable[WSMessage]],
    codec: Codec,
    sink: Sink,
    traffic: Traffic,
    *,
    queued: Sized = (),
    inbound: bool = False,
) -> Stop:
    """Relay until the source ends or the sink says stop; the Stop says why.

    ``queued`` is the source's queue of parsed messages (``sockets.parsed_queue``);
    ``inbound`` counts the payloads as the browser's (``traffic.bytes_in``).
    """
    decode = codec.decode
    plain_output = codec.plain_output
    loop = asyncio.get_running_loop()
    while True:
        msg = await receive()
        if msg.type not in DATA:
            return await sink.closed(msg)
        payload = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
        traffic.last_activity = loop.time()
        if inbound:
            traffic.bytes_in += len(payload)
        # The common frame (plain output) skips decode() and its event object.
        if (plain := plain_output(msg.type, payload)) is not None:  # type: ignore[arg-type]
            due = sink.gather(plain[1], plain[0], bool(queued))
            if due and (stop := await sink.send_ready()) is not None:
                return stop
            continue
        try:
            events = decode(msg.type, payload)  # type: ignore[arg-type]
        except ProtocolError as exc:
            return await sink.bad_frame(exc)
        for event in events:
            if type(event) is Output:
                stop = await sink.output(event.data, event.stream, True)
            else:
                stop = await sink.event(event)
            if stop is not None:
                return stop
        if (stop := await sink.settle(bool(queued))) is not None:
            return stop
