"""The browsers of a session: one link per browser, and the set of them.

A session relays one upstream to a set of browser links. A link sends events to its
browser and reads its browser's messages; how it does that is the link's own business:

* ``DirectLink``: one socket for the session's life; when it is gone, so is the session.
* ``ResumableLink`` (``resumable.py``; ``v1.terminal-proxy`` with ``session.resume_grace``):
  the browser may lose its socket and come back on another one.

``LinkSet`` is the session's side towards its browsers: the owner's link (whose input
reaches the upstream) and any others (output only, e.g. viewers); output and events go to
every link, and only the owner's end ends the session.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterator
from typing import Protocol

from aiohttp import WSMessage, WSMsgType

from ..protocols import Codec, Event, Output
from .sockets import (
    Socket,
    Traffic,
    close_socket,
    left,
    receive_or_lost,
)
from .stop import Stop

__all__ = [
    "COALESCE_LIMIT",
    "BrowserLink",
    "DirectLink",
    "LinkSet",
    "OutputLink",
    "SessionGone",
]

log = logging.getLogger("terminal_proxy.session")

# Largest run of output bytes sent as one browser frame (coalescing, replay chunks).
COALESCE_LIMIT = 64 * 1024


class SessionGone(Exception):
    """The session no longer accepts a resume (it is ending or has ended)."""


class OutputLink(Protocol):
    """What the session sends its links besides the owner's (the participants of a shared
    session, ``sharing.py``): output and events, and the end."""

    async def send_output(self, data: bytes, stream: int) -> bool: ...

    async def send_event(self, event: Event) -> bool: ...

    def begin_end(self) -> None: ...

    async def close(self, stop: Stop) -> None: ...

    def finish(self) -> None: ...


class BrowserLink(Protocol):
    """One browser of a session, as the relay sees it."""

    codec: Codec
    # The browser's latest socket (for the end-of-session fields).
    latest: Socket
    # Times a new socket took over (resumes).
    resumes: int

    @property
    def detached(self) -> bool:
        """No socket is attached now (the browser may come back)."""
        ...

    async def open(self, expires_in: float | None) -> bool:
        """Greet the browser (v1.terminal-proxy hello); False when it is gone."""
        ...

    async def send_output(self, data: bytes, stream: int) -> bool:
        """Send output; False when this browser is gone for good."""
        ...

    async def send_event(self, event: Event) -> bool:
        """Send one non-output event; False when this browser is gone for good."""
        ...

    async def receive(self) -> WSMessage:
        """The browser's next data message, or the non-data message that ends its input."""
        ...

    def left(self, msg: WSMessage) -> Stop:
        """Why ``msg`` (the non-data message ``receive`` returned) ends the input."""
        ...

    def acked(self, received: int) -> None:
        """The browser has ``received`` output bytes (v1.terminal-proxy ack)."""
        ...

    def begin_end(self) -> None:
        """The session is ending: accept no resume, stop the link's timers."""
        ...

    async def linger(self, stopped: asyncio.Future[Stop]) -> None:
        """The upstream ended while detached: give the browser its last chance to come
        back for the exit status, until ``stopped`` or the grace runs out."""
        ...

    async def close(self, stop: Stop) -> None:
        """Close the attached socket, if any, with ``stop``'s code and reason."""
        ...

    def finish(self) -> None:
        """The session has ended: let go of everything held."""
        ...


class DirectLink:
    """A browser on one socket for the session's whole life."""

    __slots__ = ("_close_timeout", "_traffic", "codec", "latest")
    resumes = 0
    detached = False

    def __init__(self, ws: Socket, codec: Codec, traffic: Traffic, close_timeout: float) -> None:
        self.latest = ws
        self.codec = codec
        self._traffic = traffic
        self._close_timeout = close_timeout

    async def open(self, expires_in: float | None) -> bool:
        return True

    async def send_output(self, data: bytes, stream: int) -> bool:
        ws, traffic = self.latest, self._traffic
        for opcode, frame in self.codec.encode(Output(data, stream)):
            try:
                await ws.send_frame(frame, WSMsgType(opcode))
            except ConnectionError:
                return False
            traffic.bytes_out += len(frame)
        return True

    async def send_event(self, event: Event) -> bool:
        ws, traffic = self.latest, self._traffic
        for opcode, frame in self.codec.encode(event):
            try:
                await ws.send_frame(frame, WSMsgType(opcode))
            except ConnectionError:
                return False
            traffic.bytes_out += len(frame)
        return True

    async def receive(self) -> WSMessage:
        return await receive_or_lost(self.latest)

    def left(self, msg: WSMessage) -> Stop:
        return left(msg, self.latest)

    def acked(self, received: int) -> None:
        pass

    def begin_end(self) -> None:
        pass

    async def linger(self, stopped: asyncio.Future[Stop]) -> None:
        pass

    async def close(self, stop: Stop) -> None:
        await close_socket(self.latest, stop, self._close_timeout)

    def finish(self) -> None:
        pass


class LinkSet:
    """The session's browsers: the owner's link first, then any others (output only).

    Output and events go to every link. The owner's link failing for good ends the
    session (False); another link failing only leaves the set.
    """

    __slots__ = ("_others", "owner")

    def __init__(self, owner: BrowserLink) -> None:
        self.owner = owner
        self._others: list[OutputLink] = []

    def __iter__(self) -> Iterator[OutputLink]:
        yield self.owner
        yield from self._others

    def __len__(self) -> int:
        return 1 + len(self._others)

    def add(self, link: OutputLink) -> None:
        self._others.append(link)

    def discard(self, link: OutputLink) -> None:
        if link in self._others:
            self._others.remove(link)

    def send_output(self, data: bytes, stream: int) -> Awaitable[bool]:
        # The hot path: with one link, its own coroutine is awaited (no frame of ours).
        if not self._others:
            return self.owner.send_output(data, stream)
        return self._send_output_all(data, stream)

    async def _send_output_all(self, data: bytes, stream: int) -> bool:
        ok = await self.owner.send_output(data, stream)
        for link in self._others[:]:
            if not await link.send_output(data, stream):
                self.discard(link)
        return ok

    async def send_event(self, event: Event) -> bool:
        ok = await self.owner.send_event(event)
        for link in self._others[:]:
            if not await link.send_event(event):
                self.discard(link)
        return ok

    def begin_end(self) -> None:
        for link in self:
            link.begin_end()

    async def close(self, stop: Stop) -> None:
        await asyncio.gather(*(link.close(stop) for link in self))

    def finish(self) -> None:
        for link in self:
            link.finish()
