"""One participant of a shared session: a browser that joined someone else's terminal.

A participant has its own socket, role (viewer or writer) and a bounded queue towards its
browser, drained by its own task: the session's output is queued without waiting, so a
slow participant never slows the owner or the others. When the queue would exceed its
bound, it is dropped and the participant gets a fresh ``screen`` snapshot instead (the
terminal model has every byte it missed), never unbounded memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from aiohttp import WSMsgType

from ..protocols import Codec, Event, Output, SharingNotice
from ..tasks import cancel_and_wait, spawn
from .resumable import ResumeTokens
from .sockets import Socket, close_socket
from .stop import Stop

__all__ = ["Participant", "Screen"]

log = logging.getLogger("terminal_proxy.session")


class Screen(Protocol):
    """What a participant asks the session for when it (re)starts from a snapshot."""

    def catch_up(self, participant: Participant) -> list[Event]:
        """The screen snapshot, the size and the participants, as of now."""
        ...


class Participant:
    """A viewer's or writer's browser, and what is queued for it."""

    def __init__(
        self,
        *,
        participant_id: str,
        user: str,
        role: str,
        ws: Socket,
        codec: Codec,
        limit: int,
        close_timeout: float,
        session_id: str,
    ) -> None:
        self.id = participant_id
        self.user = user
        self.role = role
        self.since = time.time()
        self.ws = ws
        self.codec = codec
        self._limit = limit
        self._close_timeout = close_timeout
        self._session_id = session_id
        self._queue: deque[bytes | Event] = deque()
        self._queued = 0
        # Start from a snapshot: a joiner, or one that fell behind.
        self.stale = True
        self._wake = asyncio.Event()
        self._wake.set()
        self._sender: asyncio.Task[None] | None = None
        # Set by the sender whenever it has sent everything queued.
        self._drained = asyncio.Event()
        # When the last "refused" notice went out (at most one a second).
        self._refused_at = 0.0
        self.closing: Stop | None = None
        # Admitted without signing in (sharing.anonymous_viewers): its resume needs only
        # its token.
        self.anonymous = False
        # Resume (docs/sharing.md): single-use tokens, and the grace timer while detached.
        self.tokens = ResumeTokens()
        self._grace: asyncio.TimerHandle | None = None

    @property
    def detached(self) -> bool:
        return self._grace is not None

    def detach(self, grace: float, expire: Callable[[], None]) -> None:
        """The socket is gone without a normal close: wait ``grace`` seconds for a resume
        (output meanwhile goes into the terminal model only), then ``expire``."""
        self.stale = True
        self._queue.clear()
        self._queued = 0
        self._grace = asyncio.get_running_loop().call_later(grace, expire)

    def attach(self, ws: Socket, screen: Screen) -> None:
        """A resumed socket: it starts from a fresh snapshot."""
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        self.ws = ws
        self.stale = True
        self._queue.clear()
        self._queued = 0
        self._wake.set()
        self.start(screen)

    def describe(self) -> dict[str, object]:
        return {
            "participant": self.id,
            "user": self.user,
            "role": self.role,
            "since": round(self.since, 3),
        }

    def start(self, screen: Screen) -> None:
        self._sender = spawn(
            self._send_loop(screen), name=f"session-{self._session_id}-participant-{self.id}"
        )

    def push_output(self, data: bytes) -> None:
        """Queue output; past the bound, drop the queue and start over from a snapshot."""
        if self.stale or self._grace is not None:
            return  # the snapshot the sender takes next has these bytes
        if self._queued + len(data) > self._limit:
            self._queue.clear()
            self._queued = 0
            self.stale = True
            log.info(
                "participant fell behind: sending a fresh screen",
                extra={"fields": {"session": self._session_id, "participant": self.id}},
            )
        else:
            self._queue.append(data)
            self._queued += len(data)
        self._wake.set()

    def push_event(self, event: Event) -> None:
        if self.stale:
            return  # the catch-up after the snapshot says it all
        self._queue.append(event)
        self._wake.set()

    def refused(self, request: str, reason: str) -> None:
        """Tell the participant a request was refused (at most once a second)."""
        now = time.monotonic()
        if now - self._refused_at < 1.0:
            return
        self._refused_at = now
        self.push_event(SharingNotice("refused", (("request", request), ("reason", reason))))

    async def _send_loop(self, screen: Screen) -> None:
        ws = self.ws
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.stale:
                # Taken, and the queue emptied, in one step: every byte before is in the
                # snapshot and every byte after is queued.
                events = screen.catch_up(self)
                self._queue.clear()
                self._queued = 0
                self.stale = False
                for event in events:
                    if not await self._send(ws, event):
                        return
            while self._queue:
                item = self._queue.popleft()
                if isinstance(item, bytes):
                    self._queued -= len(item)
                    item = Output(item)
                if not await self._send(ws, item):
                    return
            self._drained.set()

    async def _send(self, ws: Socket, event: Event) -> bool:
        for opcode, frame in self.codec.encode(event):
            try:
                await ws.send_frame(frame, WSMsgType(opcode))
            except ConnectionError:
                return False
        return True

    async def close(self, stop: Stop) -> None:
        """Close the socket with ``stop``'s code and reason, after what is queued (within
        the close timeout)."""
        if self.closing is None:
            self.closing = stop
        sender = self._sender
        if sender is not None and not sender.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._close_timeout):
                    while self._queue or self.stale:
                        self._drained.clear()
                        await self._drained.wait()
        await self.stop_sending()
        await close_socket(self.ws, self.closing, self._close_timeout)

    async def pause(self) -> None:
        """Stop the sender (the socket is gone; a resume starts another)."""
        if self._sender is not None:
            await cancel_and_wait([self._sender])

    async def stop_sending(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        await self.pause()
