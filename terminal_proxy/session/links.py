"""The browsers of a session: one link per browser, and the set of them.

A session relays one upstream to a set of browser links. A link sends events to its
browser and reads its browser's messages; how it does that is the link's own business:

* ``DirectLink``: one socket for the session's life; when it is gone, so is the session.
* ``ResumableLink`` (``v1.terminal-proxy`` with ``session.resume_grace``): the browser may
  lose its socket and come back on another one (``attach``). The link keeps the output for
  the replay and the single-use resume token, and waits out the grace; one ``Phase`` says
  where it is (docs/browser-protocol.md).

``LinkSet`` is the session's side towards its browsers: the owner's link (whose input
reaches the upstream) and any others (output only, e.g. viewers); output and events go to
every link, and only the owner's end ends the session.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from aiohttp import WSMessage, WSMsgType

from ..protocols import Codec, Event, Exit, Hello, Output, ProtocolError, Resume
from ..replay import ReplayBudget, ReplayBuffer
from .sockets import (
    DATA,
    LOST,
    Socket,
    Traffic,
    close_socket,
    is_too_big,
    left,
    receive_or_lost,
)
from .stop import Stop, StopReason

__all__ = [
    "COALESCE_LIMIT",
    "BrowserLink",
    "DirectLink",
    "LinkSet",
    "Phase",
    "ResumableLink",
    "SessionGone",
]

log = logging.getLogger("terminal_proxy.session")

# Largest run of output bytes sent as one browser frame (coalescing, replay chunks).
COALESCE_LIMIT = 64 * 1024


class SessionGone(Exception):
    """The session no longer accepts a resume (it is ending or has ended)."""


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


class Phase(enum.Enum):
    """Where a resumable browser link is. Only the first four accept a resume."""

    ATTACHED = "attached"  # a socket is live
    ATTACHING = "attaching"  # a resuming socket gets its replay; output waits for it
    DETACHED = "detached"  # no socket: waiting for a resume within the grace
    LINGERING = "lingering"  # the upstream ended while detached: a last chance to resume
    CLOSED = "closed"  # the session is ending or has ended


_ACCEPTING = frozenset({Phase.ATTACHED, Phase.ATTACHING, Phase.DETACHED, Phase.LINGERING})


class ResumableLink:
    """A browser that may come back on a new socket within the resume grace.

    The session calls ``request_stop`` (given as ``expire``) with resume_expired when the
    grace runs out; ``stopping`` tells the link the session has a verdict already (a
    socket lost then no longer detaches it).
    """

    def __init__(
        self,
        ws: Socket,
        codec: Codec,
        *,
        session_id: str,
        traffic: Traffic,
        grace: float,
        buffer: int,
        budget: ReplayBudget | None,
        close_timeout: float,
        expire: Callable[[Stop], None],
        stopping: Callable[[], bool],
        marker: Callable[[str], None],
    ) -> None:
        self.codec = codec
        self.session_id = session_id
        self._traffic = traffic
        self._grace = grace
        self._close_timeout = close_timeout
        self._expire = expire
        self._stopping = stopping
        self._marker = marker
        self.phase = Phase.ATTACHED
        # The attached socket (None while detached or attaching); latest: the newest one.
        self.socket: Socket | None = ws
        self.latest: Socket = ws
        # The socket receive() is reading (it may lag behind ``socket``).
        self._reading: Socket | None = None
        self._replay = ReplayBuffer(buffer, budget)
        # SHA-256 of the resume tokens that are valid now (normally one).
        self._token_hashes: list[bytes] = []
        # Set in ATTACHED (receive() waits for it) and cleared in ATTACHING (output waits).
        self._attached = asyncio.Event()
        self._attached.set()
        self._not_attaching = asyncio.Event()
        self._not_attaching.set()
        self._detached_at: float | None = None
        self._grace_timer: asyncio.TimerHandle | None = None
        self._lingering: asyncio.Future[None] | None = None
        # An exit status that found no browser: sent on the next attach.
        self._pending_exit: Exit | None = None
        # Futures the handlers of resumed sockets wait on, resolved when let go.
        self._releases: list[tuple[Socket, asyncio.Future[None]]] = []
        self.resumes = 0

    def _enter(self, phase: Phase) -> None:
        self.phase = phase
        if phase is Phase.ATTACHED:
            self._attached.set()
        else:
            self._attached.clear()
        if phase is Phase.ATTACHING:
            self._not_attaching.clear()
        else:
            self._not_attaching.set()

    @property
    def detached(self) -> bool:
        return self.socket is None

    @property
    def accepting(self) -> bool:
        return self.phase in _ACCEPTING

    # Sending --------------------------------------------------------------------------

    async def open(self, expires_in: float | None) -> bool:
        hello = Hello(
            self.session_id, self._new_token(), expires_in=expires_in, resume_grace=self._grace
        )
        return await self.send_event(hello)

    async def send_output(self, data: bytes, stream: int) -> bool:
        """Keep output for the replay, then send it if a browser is attached."""
        await self._not_attaching.wait()
        self._replay.append(data)
        ws = self.socket
        if ws is None:
            return True
        traffic = self._traffic
        for opcode, frame in self.codec.encode(Output(data, stream)):
            try:
                await ws.send_frame(frame, WSMsgType(opcode))
            except ConnectionError:
                self._detach(ws, "browser connection lost")
                return True
            traffic.bytes_out += len(frame)
        return True

    async def send_event(self, event: Event) -> bool:
        """Send an event; never fails: a lost socket detaches, and an exit status that
        found no browser waits for the next attach."""
        await self._not_attaching.wait()
        ws = self.socket
        if ws is None:
            if type(event) is Exit:
                self._pending_exit = event
            return True
        for opcode, frame in self.codec.encode(event):
            try:
                await ws.send_frame(frame, WSMsgType(opcode))
            except ConnectionError:
                self._detach(ws, "browser connection lost")
                if type(event) is Exit:
                    self._pending_exit = event
                return True
            self._traffic.bytes_out += len(frame)
        return True

    # Receiving ------------------------------------------------------------------------

    async def receive(self) -> WSMessage:
        """Read whichever socket is attached; a socket that ends without a normal close
        (1000) detaches the link, and reading waits for the next attach."""
        while True:
            ws = self.socket
            if ws is None:
                self._reading = None
                await self._attached.wait()
                continue
            self._reading = ws
            msg = await receive_or_lost(ws)
            if ws is not self.socket:
                continue  # taken over or detached while we waited: read the new one
            if msg is LOST:
                self._detach(ws, "browser connection lost")
                continue
            if msg.type in DATA or (msg.type is WSMsgType.ERROR and is_too_big(msg.data)):
                return msg
            code = msg.data if msg.type is WSMsgType.CLOSE else ws.close_code
            if code == 1000:
                return msg
            self._detach(ws, _browser_gone(code))

    def left(self, msg: WSMessage) -> Stop:
        return left(msg, self._reading or self.latest)

    def acked(self, received: int) -> None:
        self._replay.release(received)

    # Resume ---------------------------------------------------------------------------

    def _new_token(self) -> str:
        """A fresh 256-bit resume token; only its SHA-256 is kept."""
        token = secrets.token_urlsafe(32)
        self._token_hashes = [hashlib.sha256(token.encode()).digest()]
        return token

    def take_token(self, token: str) -> bytes | None:
        """Check a resume token and use it up: its hash when valid, else None."""
        digest = hashlib.sha256(token.encode()).digest()
        if not self.accepting:
            return None
        for known in self._token_hashes:
            if hmac.compare_digest(digest, known):
                self._token_hashes = []
                return known
        return None

    def restore_token(self, digest: bytes) -> None:
        """Make a taken token valid again (its resume failed on the gateway's side)."""
        if digest not in self._token_hashes:
            self._token_hashes.append(digest)

    def _detach(self, ws: Socket, detail: str) -> None:
        """The attached browser is gone: keep the session for the resume grace."""
        if ws is not self.socket or self._stopping():
            return
        self.socket = None
        self._enter(Phase.DETACHED)
        self._detached_at = asyncio.get_running_loop().time()
        log.info(
            "browser detached",
            extra={
                "fields": {"session": self.session_id, "detail": detail, "resumable_s": self._grace}
            },
        )
        self._marker(f"browser detached ({detail})")
        self._start_grace(restart=True)
        self._release(ws)

    def _start_grace(self, *, restart: bool) -> None:
        if self._grace_timer is not None:
            if not restart:
                return
            self._grace_timer.cancel()
        stop = Stop(StopReason.RESUME_EXPIRED, f"no resume within {self._grace:g}s")
        self._grace_timer = asyncio.get_running_loop().call_later(self._grace, self._expire, stop)

    async def attach(
        self, ws: Socket, resume: Resume, input_offset: int, expires_in: float | None
    ) -> asyncio.Future[None]:
        """Attach a resuming browser socket: hello, the missed output, then live output.

        The caller has checked the token (``take_token``) and the authorization. Any
        attached socket is closed with 4006 (taken over). Returns a future resolved when
        this socket is let go (detached, taken over, or the session ended).
        Raises SessionGone, or ProtocolError for offsets the session never had.
        """
        replay = self._replay
        if not self.accepting:
            raise SessionGone(self.session_id)
        if resume.received > replay.end:
            raise ProtocolError(f"resume: received {resume.received} > produced {replay.end}")
        if resume.sent < input_offset:
            raise ProtocolError(f"resume: sent {resume.sent} < delivered {input_offset}")
        stale = {s for s in (self.socket, self._reading) if s is not None and s is not ws}
        old_hashes = self._token_hashes
        before = self.phase
        self.socket = None
        self._enter(Phase.ATTACHING)
        try:
            missed = replay.since(resume.received)
            hello = Hello(
                self.session_id,
                self._new_token(),
                offset=missed.offset,
                input=input_offset,
                resumed=True,
                reset=missed.reset,
                expires_in=expires_in,
                resume_grace=self._grace,
            )
            frames = list(self.codec.encode(hello))
            data = missed.data
            for start in range(0, len(data), COALESCE_LIMIT):
                frames += self.codec.encode(Output(data[start : start + COALESCE_LIMIT]))
            if self._pending_exit is not None:
                frames += self.codec.encode(self._pending_exit)
            for opcode, frame in frames:
                await ws.send_frame(frame, WSMsgType(opcode))
                self._traffic.bytes_out += len(frame)
            if self.phase is not Phase.ATTACHING:
                raise SessionGone(self.session_id)  # the session ended meanwhile
        except BaseException as exc:
            # The new socket failed at once (or its handler was cancelled): still
            # detached, and the browser may come back with either token.
            self._token_hashes = old_hashes + self._token_hashes
            self._attach_failed(stale, before)
            if isinstance(exc, ConnectionError):
                raise SessionGone(self.session_id) from None
            raise
        self._pending_exit = None
        if self._grace_timer is not None:
            self._grace_timer.cancel()
            self._grace_timer = None
        self._detached_at = None
        self.socket = self.latest = ws
        self._enter(Phase.ATTACHED)
        self.resumes += 1
        release: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._releases.append((ws, release))
        if self._lingering is not None and not self._lingering.done():
            self._lingering.set_result(None)
        self._marker("resumed" + (" (the browser lost some output)" if missed.reset else ""))
        log.info(
            "browser attached",
            extra={
                "fields": {
                    "session": self.session_id,
                    "offset": missed.offset,
                    "replayed_bytes": len(data),
                    "reset": missed.reset,
                }
            },
        )
        for old in stale:
            self._release(old)
            await close_socket(old, Stop(StopReason.TAKEN_OVER), self._close_timeout)
        return release

    def _attach_failed(self, stale: set[Socket], before: Phase) -> None:
        """The session stays detached (grace timer running), or closed if it ended."""
        if self.phase is Phase.ATTACHING:
            if before is Phase.LINGERING:
                self._enter(Phase.LINGERING)
            else:
                self._enter(Phase.DETACHED)
                if self._grace_timer is None and not self._stopping():
                    self._detached_at = asyncio.get_running_loop().time()
                    self._start_grace(restart=False)
        for old in stale:
            self._release(old)

    def _release(self, ws: Socket) -> None:
        keep = []
        for owner, future in self._releases:
            if owner is ws:
                if not future.done():
                    future.set_result(None)
            else:
                keep.append((owner, future))
        self._releases = keep

    # Ending ---------------------------------------------------------------------------

    def begin_end(self) -> None:
        if self._grace_timer is not None:
            self._grace_timer.cancel()
        self._enter(Phase.CLOSED)

    async def linger(self, stopped: asyncio.Future[Stop]) -> None:
        """The upstream ended while detached: wait out the grace for the browser to come
        back for the last output and the exit status (or for ``stopped``)."""
        if self._detached_at is None:
            return
        loop = asyncio.get_running_loop()
        remaining = self._detached_at + self._grace - loop.time()
        if remaining <= 0:
            return
        lingering: asyncio.Future[None] = loop.create_future()
        self._lingering = lingering
        self._enter(Phase.LINGERING)
        waits: list[asyncio.Future[Any]] = [lingering, stopped]
        try:
            await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._enter(Phase.CLOSED)

    async def close(self, stop: Stop) -> None:
        if self.socket is not None:
            await close_socket(self.socket, stop, self._close_timeout)

    def finish(self) -> None:
        for _, future in self._releases:
            if not future.done():
                future.set_result(None)
        self._releases = []
        if self._lingering is not None and not self._lingering.done():
            self._lingering.cancel()
        self._replay.clear()


def _browser_gone(code: int | None) -> str:
    """How a browser socket that ended without 1000 went, for the log and the recording:
    a page that closed or navigated away says 1001 in a clean close frame; only a socket
    that ended without one (1006) lost its connection."""
    if code == 1001:
        return "page closed or left (1001)"
    if code is None or code == 1006:
        return "browser connection lost (1006)"
    return f"browser closed ({code})"


class LinkSet:
    """The session's browsers: the owner's link first, then any others (output only).

    Output and events go to every link. The owner's link failing for good ends the
    session (False); another link failing only leaves the set.
    """

    __slots__ = ("_others", "owner")

    def __init__(self, owner: BrowserLink) -> None:
        self.owner = owner
        self._others: list[BrowserLink] = []

    def __iter__(self) -> Iterator[BrowserLink]:
        yield self.owner
        yield from self._others

    def __len__(self) -> int:
        return 1 + len(self._others)

    def add(self, link: BrowserLink) -> None:
        self._others.append(link)

    def discard(self, link: BrowserLink) -> None:
        if link in self._others:
            self._others.remove(link)

    async def send_output(self, data: bytes, stream: int) -> bool:
        ok = await self.owner.send_output(data, stream)
        for link in self._others[:] if self._others else ():
            if not await link.send_output(data, stream):
                self.discard(link)
        return ok

    async def send_event(self, event: Event) -> bool:
        ok = await self.owner.send_event(event)
        for link in self._others[:] if self._others else ():
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
