"""A browser that may come back on another socket: ``v1.terminal-proxy`` with resume.

The browser may lose its socket and come back on a new one (``attach``) within
``session.resume_grace``. The link keeps the output for the replay and the single-use
resume tokens, and waits out the grace; one ``Phase`` says where it is, and every phase
change goes through ``_enter`` (docs/browser-protocol.md).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from typing import Any

from aiohttp import WSMessage, WSMsgType

from ..protocols import Codec, Event, Exit, Hello, Output, ProtocolError, Resume
from ..replay import ReplayBudget, ReplayBuffer, safe_boundary
from .links import COALESCE_LIMIT, SessionGone
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
from .stop import Stop, StopReason, ended, no_stop

__all__ = ["Phase", "Releases", "ResumableLink", "ResumeTokens"]

log = logging.getLogger("terminal_proxy.session")


class ResumeTokens:
    """A link's single-use resume tokens; only their SHA-256 is kept (normally one)."""

    __slots__ = ("_hashes",)

    def __init__(self) -> None:
        self._hashes: list[bytes] = []

    def new(self) -> str:
        """A fresh 256-bit token; it replaces every earlier one."""
        token = secrets.token_urlsafe(32)
        self._hashes = [hashlib.sha256(token.encode()).digest()]
        return token

    def take(self, token: str) -> bytes | None:
        """Check a token and use it up: its hash when valid, else None."""
        digest = hashlib.sha256(token.encode()).digest()
        for known in self._hashes:
            if hmac.compare_digest(digest, known):
                self._hashes = []
                return known
        return None

    def restore(self, digest: bytes) -> None:
        if digest not in self._hashes:
            self._hashes.append(digest)

    def valid(self) -> list[bytes]:
        return list(self._hashes)

    def keep(self, earlier: list[bytes]) -> None:
        """Earlier tokens stay valid beside the current ones (a failed attach)."""
        self._hashes = earlier + self._hashes


class Releases:
    """Futures the handlers of resumed sockets wait on, resolved when let go."""

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: list[tuple[Socket, asyncio.Future[None]]] = []

    def add(self, ws: Socket) -> asyncio.Future[None]:
        release: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((ws, release))
        return release

    def release(self, ws: Socket) -> None:
        keep = []
        for owner, future in self._waiting:
            if owner is ws:
                if not future.done():
                    future.set_result(None)
            else:
                keep.append((owner, future))
        self._waiting = keep

    def release_all(self) -> None:
        for _, future in self._waiting:
            if not future.done():
                future.set_result(None)
        self._waiting = []


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
        self._tokens = ResumeTokens()
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
        self._releases = Releases()
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
            self.session_id,
            self._tokens.new(),
            expires_in=expires_in,
            resume_grace=self._grace,
            role="owner",
            participant="owner",
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

    def kept_output(self) -> tuple[int, bytes]:
        """The output kept for the replay from a safe boundary on (a terminal can start
        reading there), its offset, and the offset of the next byte: (start, data)."""
        replay = self._replay
        kept = replay.since(replay.start)
        cut = safe_boundary(kept.data) if replay.start else 0
        return kept.offset + cut, kept.data[cut:]

    @property
    def produced(self) -> int:
        """Output bytes the session has produced (the next byte's offset)."""
        return self._replay.end

    def take_token(self, token: str) -> bytes | None:
        """Check a resume token and use it up: its hash when valid, else None."""
        return self._tokens.take(token) if self.accepting else None

    def restore_token(self, digest: bytes) -> None:
        """Make a taken token valid again (its resume failed on the gateway's side)."""
        self._tokens.restore(digest)

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
        self._releases.release(ws)

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
        old_tokens = self._tokens.valid()
        before = self.phase
        self.socket = None
        self._enter(Phase.ATTACHING)
        try:
            missed = replay.since(resume.received)
            hello = Hello(
                self.session_id,
                self._tokens.new(),
                offset=missed.offset,
                input=input_offset,
                resumed=True,
                reset=missed.reset,
                expires_in=expires_in,
                resume_grace=self._grace,
                role="owner",
                participant="owner",
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
            self._tokens.keep(old_tokens)
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
        release = self._releases.add(ws)
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
            self._releases.release(old)
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
            self._releases.release(old)

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
        self._releases.release_all()
        if self._lingering is not None and not self._lingering.done():
            self._lingering.cancel()
        self._replay.clear()
        # The session has ended: let go of it (stop.py, no_stop).
        self._expire = no_stop
        self._stopping = ended
        self._marker = _unmarked


def _unmarked(text: str) -> None:
    """A recording marker after the session ended: there is no recording left to mark."""


def _browser_gone(code: int | None) -> str:
    """How a browser socket that ended without 1000 went, for the log and the recording:
    a page that closed or navigated away says 1001 in a clean close frame; only a socket
    that ended without one (1006) lost its connection."""
    if code == 1001:
        return "page closed or left (1001)"
    if code is None or code == 1006:
        return "browser connection lost (1006)"
    return f"browser closed ({code})"
